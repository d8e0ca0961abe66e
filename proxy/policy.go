package proxy

import (
	"fmt"
	"strings"
	"time"
)

// Protocol is what a service speaks on its port, declared in the registry's service meta
// `protocol` or in configuration, never sniffed.
type Protocol string

// The protocols. TCP is the default, as in Consul: it proxies anything, with no L7 features.
const (
	TCP   Protocol = "tcp"
	HTTP  Protocol = "http"  // HTTP/1.1 to the app (pooled keep-alive); HTTP/2 between sidecars
	HTTP2 Protocol = "http2" // h2c to the app; HTTP/2 between sidecars
	GRPC  Protocol = "grpc"  // as HTTP2, without an overall timeout by default (streams live long)
)

// ParseProtocol returns the protocol named by s ("" means TCP).
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToLower(strings.TrimSpace(s))); p {
	case "":
		return TCP, nil
	case TCP, HTTP, HTTP2, GRPC:
		return p, nil
	}
	return "", fmt.Errorf("unknown protocol %q (want tcp, http, http2 or grpc)", s)
}

// IsHTTP reports whether p is proxied at L7.
func (p Protocol) IsHTTP() bool { return p == HTTP || p == HTTP2 || p == GRPC }

// appH2 reports whether the app speaks HTTP/2 (h2c) on its port.
func (p Protocol) appH2() bool { return p == HTTP2 || p == GRPC }

// Defaults of a Policy, applied by withDefaults to zero fields. They follow Envoy's where
// Envoy has one (connect timeout, breakers, retry budget) and Istio's default of 2 retries.
const (
	DefaultConnectTimeout = 5 * time.Second
	// DefaultTimeout bounds the wait for response headers across all tries for http and
	// http2 upstreams (Envoy's route default). gRPC upstreams get no overall timeout by
	// default: streams are long-lived and gRPC carries its own deadlines.
	DefaultTimeout         = 15 * time.Second
	DefaultRetries         = 2
	DefaultBudgetPercent   = 20.0
	DefaultBudgetMinRetry  = 3
	DefaultMaxConnections  = 1024
	DefaultMaxPending      = 1024
	DefaultMaxRequests     = 1024
	DefaultReplayBodyBytes = 64 << 10
	DefaultConnsPerPeer    = 2
)

// RetryOn is a set of conditions under which a failed attempt is retried.
type RetryOn uint8

// Retry conditions. Connect failures and refused streams are safe for every method: the
// peer processed nothing. The others are safe only for idempotent methods (GET, HEAD,
// OPTIONS, TRACE, PUT, DELETE) unless listed explicitly with 5xx or gateway-error.
const (
	// RetryConnectFailure: the connection to the instance could not be made, or the peer
	// sidecar could not reach its app.
	RetryConnectFailure RetryOn = 1 << iota
	// RetryRefusedStream: HTTP/2 REFUSED_STREAM, GOAWAY before the stream was processed, or
	// a peer breaker that refused the request.
	RetryRefusedStream
	// RetryIdempotent: for idempotent methods, any 5xx, a reset, or a per-try timeout.
	RetryIdempotent
	// Retry5xx: any 5xx response, whatever the method.
	Retry5xx
	// RetryGatewayError: 502, 503 or 504, whatever the method.
	RetryGatewayError

	// DefaultRetryOn applies when RetryOn is zero.
	DefaultRetryOn = RetryConnectFailure | RetryRefusedStream | RetryIdempotent
)

var retryOnNames = []struct {
	name string
	bit  RetryOn
}{
	{"connect-failure", RetryConnectFailure},
	{"refused-stream", RetryRefusedStream},
	{"idempotent", RetryIdempotent},
	{"5xx", Retry5xx},
	{"gateway-error", RetryGatewayError},
}

// ParseRetryOn parses condition names (connect-failure, refused-stream, idempotent, 5xx,
// gateway-error). An empty list means the default.
func ParseRetryOn(names []string) (RetryOn, error) {
	var r RetryOn
outer:
	for _, n := range names {
		n = strings.ToLower(strings.TrimSpace(n))
		for _, c := range retryOnNames {
			if c.name == n {
				r |= c.bit
				continue outer
			}
		}
		return 0, fmt.Errorf("unknown retry condition %q (want connect-failure, refused-stream, idempotent, 5xx or gateway-error)", n)
	}
	return r, nil
}

// Names lists the conditions in r.
func (r RetryOn) Names() []string {
	out := []string{}
	for _, c := range retryOnNames {
		if r&c.bit != 0 {
			out = append(out, c.name)
		}
	}
	return out
}

// Breakers are Envoy-style circuit breakers for one upstream. When one is full the request
// is answered 503 with `x-podmesh-overloaded: <name>` (a connection is closed for TCP).
type Breakers struct {
	MaxConnections     int // connections to all instances (HTTP/2 and TCP); 1024
	MaxPendingRequests int // requests waiting for an instance or a connection; 1024
	MaxRequests        int // requests in flight; 1024
	// MaxRetries caps concurrent retries in absolute terms. Zero leaves only the retry
	// budget (RetryBudget) in charge, as Envoy does once a budget is configured.
	MaxRetries int
}

// RetryBudget caps concurrent retries at Percent of the requests in flight, but always
// allows MinConcurrent of them (Envoy's retry_budget; defaults 20% and 3).
type RetryBudget struct {
	Percent       float64
	MinConcurrent int
}

// HashSource says where a request's consistent-hash key comes from.
type HashSource uint8

// Hash key sources.
const (
	HashNone     HashSource = iota
	HashHeader              // a request header
	HashCookie              // a cookie
	HashSourceIP            // the client's address (the only source for TCP)
)

// HashOn selects the consistent-hash key for ring hash and maglev.
type HashOn struct {
	Source HashSource
	Name   string // header or cookie name
}

// ParseHashOn parses "header:NAME", "cookie:NAME" or "source_ip" ("" means none).
func ParseHashOn(s string) (HashOn, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return HashOn{}, nil
	}
	if s == "source_ip" || s == "source" {
		return HashOn{Source: HashSourceIP}, nil
	}
	kind, name, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if ok && name != "" {
		switch strings.ToLower(kind) {
		case "header":
			if !validToken(name) {
				return HashOn{}, fmt.Errorf("hash key %q: %q is not a valid header name", s, name)
			}
			return HashOn{Source: HashHeader, Name: name}, nil
		case "cookie":
			return HashOn{Source: HashCookie, Name: name}, nil
		}
	}
	return HashOn{}, fmt.Errorf("hash key %q: want header:NAME, cookie:NAME or source_ip", s)
}

// String is the inverse of ParseHashOn.
func (h HashOn) String() string {
	switch h.Source {
	case HashHeader:
		return "header:" + h.Name
	case HashCookie:
		return "cookie:" + h.Name
	case HashSourceIP:
		return "source_ip"
	}
	return ""
}

// Policy is the resilience configuration of one upstream. The zero value means the
// defaults above; withDefaults applies them in one place.
type Policy struct {
	ConnectTimeout time.Duration // dial (and TLS handshake) of one connection; 5s
	// Timeout bounds the time until response headers, across all tries. Once headers are
	// forwarded the body streams without a deadline. Zero means the default for the
	// protocol (15s, none for grpc); negative means none.
	Timeout time.Duration
	// PerTryTimeout bounds one attempt until response headers. Zero means none (only
	// Timeout applies).
	PerTryTimeout time.Duration
	Retries       int     // retries after the first attempt; 2; negative means none
	RetryOn       RetryOn // DefaultRetryOn when zero
	RetryBudget   RetryBudget
	Breakers      Breakers
	HashOn        HashOn
	// ReplayBodyBytes is the largest request body buffered so that it can be replayed on a
	// retry (64 KiB). Larger or unknown-length bodies are streamed and retried only when
	// not a byte of them was sent.
	ReplayBodyBytes int
	// ConnsPerPeer is how many HTTP/2 connections are kept to each peer sidecar, so that
	// the peer's frame reading spreads over more than one core (2).
	ConnsPerPeer int
}

func (p Policy) withDefaults(proto Protocol) Policy {
	if p.ConnectTimeout <= 0 {
		p.ConnectTimeout = DefaultConnectTimeout
	}
	if p.Timeout == 0 && proto != GRPC {
		p.Timeout = DefaultTimeout
	}
	if p.Timeout < 0 {
		p.Timeout = 0
	}
	if p.PerTryTimeout < 0 {
		p.PerTryTimeout = 0
	}
	if p.Retries == 0 {
		p.Retries = DefaultRetries
	}
	if p.Retries < 0 {
		p.Retries = 0
	}
	if p.RetryOn == 0 {
		p.RetryOn = DefaultRetryOn
	}
	if p.RetryBudget.Percent <= 0 {
		p.RetryBudget.Percent = DefaultBudgetPercent
	}
	if p.RetryBudget.MinConcurrent <= 0 {
		p.RetryBudget.MinConcurrent = DefaultBudgetMinRetry
	}
	if p.Breakers.MaxConnections <= 0 {
		p.Breakers.MaxConnections = DefaultMaxConnections
	}
	if p.Breakers.MaxPendingRequests <= 0 {
		p.Breakers.MaxPendingRequests = DefaultMaxPending
	}
	if p.Breakers.MaxRequests <= 0 {
		p.Breakers.MaxRequests = DefaultMaxRequests
	}
	if p.ReplayBodyBytes <= 0 {
		p.ReplayBodyBytes = DefaultReplayBodyBytes
	}
	if p.ConnsPerPeer <= 0 {
		p.ConnsPerPeer = DefaultConnsPerPeer
	}
	return p
}

// Limits protect a listener against abusive or broken clients. The zero value means the
// defaults below.
type Limits struct {
	MaxHeaderBytes    int           // request line plus headers; 32 KiB (431 beyond)
	MaxHeaderCount    int           // header fields; 100 (431 beyond)
	ReadHeaderTimeout time.Duration // to read a request head; 10s
	IdleTimeout       time.Duration // keep-alive idle; 60s
	MaxConnections    int           // open connections per listener; 1024 (more are closed)
	// MaxConcurrentStreams per HTTP/2 connection accepted by the listener; 250.
	MaxConcurrentStreams int
}

// Limits defaults.
const (
	DefaultMaxHeaderBytes       = 32 << 10
	DefaultMaxHeaderCount       = 100
	DefaultReadHeaderTimeout    = 10 * time.Second
	DefaultIdleTimeout          = 60 * time.Second
	DefaultListenerConnections  = 1024
	DefaultMaxConcurrentStreams = 250
)

func (l Limits) withDefaults() Limits {
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxHeaderCount <= 0 {
		l.MaxHeaderCount = DefaultMaxHeaderCount
	}
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.MaxConnections <= 0 {
		l.MaxConnections = DefaultListenerConnections
	}
	if l.MaxConcurrentStreams <= 0 {
		l.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	return l
}
