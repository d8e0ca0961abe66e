// Package sidecar is the sidecar program: its configuration (flags and YAML), the wiring
// of discovery → lb → proxy, self-registration in the registry, and the admin listener.
package sidecar

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/podmesh/podmesh/lb"
	"github.com/podmesh/podmesh/proxy"
	"github.com/podmesh/podmesh/tracing"
)

// Config is the sidecar's configuration, from flags or a YAML file (-config) with the same
// fields plus per-upstream policy. The zero value of every field means its default;
// withDefaults applies them all, in one place, and Validate checks the result.
type Config struct {
	Service   string            `yaml:"service" json:"service"`     // the local service's registry name
	ID        string            `yaml:"id" json:"id"`               // instance ID; default SERVICE-HOST-PORT of the advertised inbound
	Protocol  string            `yaml:"protocol" json:"protocol"`   // what the app speaks: tcp (default), http, http2, grpc
	Inbound   string            `yaml:"inbound" json:"inbound"`     // listener for peer sidecars, host:port; with app, or neither (outbound only)
	Advertise string            `yaml:"advertise" json:"advertise"` // address registered for the inbound; default its host
	App       string            `yaml:"app" json:"app"`             // the app's host:port inside the pod
	Admin     string            `yaml:"admin" json:"admin"`         // /ready /live /config /metrics; default 127.0.0.1:19000
	Metrics   string            `yaml:"metrics" json:"metrics"`     // optional separate /metrics listener, advertised as meta metrics_port
	Registry  string            `yaml:"registry" json:"registry"`   // Consul HTTP API; default $CONSUL_HTTP_ADDR, then http://127.0.0.1:8500
	Register  *bool             `yaml:"register" json:"register"`   // register the instance (default true); false when the launcher does
	Tags      []string          `yaml:"tags" json:"tags"`           // registration tags
	Meta      map[string]string `yaml:"meta" json:"meta"`           // extra registration meta
	Check     Check             `yaml:"check" json:"check"`
	TLS       TLS               `yaml:"tls" json:"tls"`
	Upstreams []Upstream        `yaml:"upstreams" json:"upstreams"`
	Limits    Limits            `yaml:"limits" json:"limits"`
	// MaxRequests bounds requests in flight to the app (1024); peers get 503s beyond it.
	MaxRequests int `yaml:"max_requests" json:"max_requests"`
	// DrainTimeout bounds the graceful drain on SIGTERM (8s, inside a 10s stop grace).
	DrainTimeout Duration `yaml:"drain_timeout" json:"drain_timeout"`
	// ReadyTimeout is how long /ready waits for the first discovery answer of every
	// upstream before reporting ready anyway (5s).
	ReadyTimeout Duration `yaml:"ready_timeout" json:"ready_timeout"`
	// ReadyFD is an inherited descriptor (3 or above) the sidecar writes "READY=1\n" to,
	// then closes, the first time /ready would answer 200: whoever started it learns it is
	// ready without polling (s6's notification-fd). Closed without a word when the sidecar
	// stops first. 0: none. A flag only: a descriptor belongs to a process, not a file.
	ReadyFD int `yaml:"-" json:"ready_fd,omitempty"`

	// TraceEndpoint is the OTLP/HTTP collector spans are exported to: host:port or
	// http://host:port (/v1/traces is added), or a full URL. Empty: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
	// then OTEL_EXPORTER_OTLP_ENDPOINT; none of them: tracing off.
	TraceEndpoint string `yaml:"trace_endpoint" json:"trace_endpoint,omitempty"`
	// TraceSample is the fraction of requests without a sampling decision that start a
	// trace (1.0); requests with one follow it (parent-based).
	TraceSample *float64 `yaml:"trace_sample" json:"trace_sample"`
	// TracePropagation is the trace header formats written: w3c, b3, b3multi (all by
	// default). Every format is read, W3C first.
	TracePropagation tracing.Propagation `yaml:"trace_propagation" json:"trace_propagation"`
	// AccessLog writes one JSON line per request, with its trace and span IDs, on stderr.
	AccessLog bool `yaml:"access_log" json:"access_log"`
}

// Check is the app health check the sidecar runs and reports to the registry through a
// TTL check: the registry may not reach the app inside its pod, and a sidecar that dies
// stops refreshing the TTL, so its instance goes critical.
type Check struct {
	HTTP            string   `yaml:"http" json:"http"`                         // path probed with GET on the app; empty: TCP connect
	Interval        Duration `yaml:"interval" json:"interval"`                 // 2s
	Timeout         Duration `yaml:"timeout" json:"timeout"`                   // 1s
	TTL             Duration `yaml:"ttl" json:"ttl"`                           // 3 × interval
	DeregisterAfter Duration `yaml:"deregister_after" json:"deregister_after"` // critical this long: the registry drops the instance (1m, Consul's minimum)
}

// TLS is mutual TLS between sidecars. It is on unless explicitly disabled: the sidecar
// fetches a leaf certificate for its service and the trust bundle from the registry's
// Connect CA (or a Consul agent's: GET /v1/agent/connect/ca/leaf/SERVICE and
// /v1/agent/connect/ca/roots, blocking), its inbound listener accepts TLS 1.3 from
// sidecars with a certificate of the mesh only, callers are authorized against the
// intentions for the service (kept fresh by a blocking query; the default decision is the
// registry's X-Consul-Default-ACL-Policy, deny when it sends none), and every dial to an
// upstream checks that the peer's SPIFFE ID names that upstream.
type TLS struct {
	// Enabled: true (the default) or false, which sends plaintext between sidecars and
	// authorizes nobody: only where every sidecar of the mesh has it off (benchmarks).
	Enabled *bool `yaml:"enabled" json:"enabled"`
}

// On reports whether mutual TLS is enabled (after defaults).
func (t TLS) On() bool { return t.Enabled == nil || *t.Enabled }

// Upstream is one service the app calls, on a local listener, with its policy.
type Upstream struct {
	Name     string `yaml:"name" json:"name"`
	Listen   string `yaml:"listen" json:"listen"`     // local host:port the app calls
	Protocol string `yaml:"protocol" json:"protocol"` // overrides the instances' meta protocol
	LB       string `yaml:"lb" json:"lb"`             // round_robin, random, least_request (default), ring_hash, maglev
	// HashOn is the consistent-hash key of ring_hash and maglev: header:NAME, cookie:NAME
	// or source_ip (the default for those policies).
	HashOn         string   `yaml:"hash_on" json:"hash_on"`
	ConnectTimeout Duration `yaml:"connect_timeout" json:"connect_timeout"` // 5s
	// Timeout bounds the wait for response headers over all tries: 15s, none for grpc;
	// "none" disables it.
	Timeout       Duration `yaml:"timeout" json:"timeout"`
	PerTryTimeout Duration `yaml:"per_try_timeout" json:"per_try_timeout"` // none
	Retries       *int     `yaml:"retries" json:"retries"`                 // 2; 0 disables retries
	// RetryOn replaces the default [connect-failure, refused-stream, idempotent]; 5xx and
	// gateway-error retry those statuses for every method.
	RetryOn  []string         `yaml:"retry_on" json:"retry_on"`
	Breakers Breakers         `yaml:"breakers" json:"breakers"`
	Budget   Budget           `yaml:"retry_budget" json:"retry_budget"`
	Outlier  lb.OutlierConfig `yaml:"outlier" json:"outlier"`
}

// Breakers are the upstream's circuit breakers (Envoy's defaults 1024/1024/1024; retries
// are bounded by the retry budget unless max_retries is set).
type Breakers struct {
	MaxConnections     int `yaml:"max_connections" json:"max_connections"`
	MaxPendingRequests int `yaml:"max_pending_requests" json:"max_pending_requests"`
	MaxRequests        int `yaml:"max_requests" json:"max_requests"`
	MaxRetries         int `yaml:"max_retries" json:"max_retries"`
}

// Budget is the retry budget: percent of requests in flight, at least min_concurrent.
type Budget struct {
	Percent       float64 `yaml:"percent" json:"percent"`               // 20
	MinConcurrent int     `yaml:"min_concurrent" json:"min_concurrent"` // 3
}

// Limits are the abuse limits of every listener (see proxy.Limits for the defaults).
type Limits struct {
	MaxHeaderBytes    int      `yaml:"max_header_bytes" json:"max_header_bytes"`       // 32 KiB
	MaxHeaderCount    int      `yaml:"max_header_count" json:"max_header_count"`       // 100
	ReadHeaderTimeout Duration `yaml:"read_header_timeout" json:"read_header_timeout"` // 10s
	IdleTimeout       Duration `yaml:"idle_timeout" json:"idle_timeout"`               // 60s
	MaxConnections    int      `yaml:"max_connections" json:"max_connections"`         // 1024 per listener
}

// Duration is a time.Duration written as a Go duration string ("1.5s") in YAML, or
// "none" for no limit (stored as -1).
type Duration time.Duration

// None is the Duration "none".
const None = Duration(-1)

// UnmarshalYAML parses a duration string or "none".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as 5s", n.Line)
	}
	v, err := parseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = v
	return nil
}

// MarshalYAML writes the duration back as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalText writes the duration as a string (for JSON in /config).
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d Duration) String() string {
	if d < 0 {
		return "none"
	}
	return time.Duration(d).String()
}

func parseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if s == "none" || s == "off" {
		return None, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (such as 5s) or none", s)
	}
	if v < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	return Duration(v), nil
}

// Defaults applied by withDefaults.
const (
	DefaultAdmin         = "127.0.0.1:19000"
	DefaultRegistry      = "http://127.0.0.1:8500"
	DefaultCheckInterval = 2 * time.Second
	DefaultCheckTimeout  = time.Second
	DefaultCheckTTLs     = 3 // TTL = this many intervals
	DefaultDeregister    = time.Minute
	DefaultDrainTimeout  = 8 * time.Second
	DefaultReadyTimeout  = 5 * time.Second
)

// withDefaults returns c with every unset field at its default. getenv reads
// CONSUL_HTTP_ADDR.
func (c Config) withDefaults(getenv func(string) string) Config {
	if c.Protocol == "" {
		c.Protocol = string(proxy.TCP)
	}
	c.Protocol = strings.ToLower(c.Protocol)
	if c.Admin == "" {
		c.Admin = DefaultAdmin
	}
	if c.Registry == "" {
		c.Registry = getenv("CONSUL_HTTP_ADDR")
	}
	if c.Registry == "" {
		c.Registry = DefaultRegistry
	}
	if !strings.Contains(c.Registry, "://") {
		c.Registry = "http://" + c.Registry
	}
	if c.Register == nil {
		// An outbound-only sidecar (no inbound) has nothing to register.
		t := c.Service != "" && c.Inbound != ""
		c.Register = &t
	}
	if c.Advertise == "" && c.Inbound != "" {
		if h, _, err := net.SplitHostPort(c.Inbound); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
			c.Advertise = h
		}
	}
	if c.ID == "" && c.Service != "" && c.Inbound == "" {
		c.ID = c.Service // outbound only: never registered, the ID only names it in logs
	}
	if c.ID == "" && c.Service != "" {
		_, port, _ := net.SplitHostPort(c.Inbound)
		host := c.Advertise
		if host == "" {
			host, _ = os.Hostname()
		}
		c.ID = c.Service + "-" + strings.NewReplacer(":", "-", "[", "", "]", "").Replace(host) + "-" + port
	}
	if c.TLS.Enabled == nil {
		on := true
		c.TLS.Enabled = &on
	}
	if c.Check.Interval == 0 {
		c.Check.Interval = Duration(DefaultCheckInterval)
	}
	if c.Check.Timeout == 0 {
		c.Check.Timeout = Duration(DefaultCheckTimeout)
	}
	if c.Check.TTL == 0 {
		c.Check.TTL = DefaultCheckTTLs * c.Check.Interval
	}
	if c.Check.DeregisterAfter == 0 {
		c.Check.DeregisterAfter = Duration(DefaultDeregister)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = Duration(DefaultDrainTimeout)
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = Duration(DefaultReadyTimeout)
	}
	if c.MaxRequests == 0 {
		c.MaxRequests = proxy.DefaultMaxRequests
	}
	if c.TraceSample == nil {
		r := tracing.DefaultSampleRatio
		c.TraceSample = &r
	}
	if c.TracePropagation == 0 {
		c.TracePropagation = tracing.PropagateW3C | tracing.PropagateB3Single | tracing.PropagateB3Multi
	}
	ups := make([]Upstream, len(c.Upstreams))
	for i, u := range c.Upstreams {
		u.Protocol = strings.ToLower(u.Protocol)
		if u.LB == "" {
			u.LB = string(lb.DefaultPolicy)
		}
		if (u.LB == string(lb.RingHash) || u.LB == string(lb.Maglev)) && u.HashOn == "" {
			u.HashOn = "source_ip"
		}
		if u.ConnectTimeout == 0 {
			u.ConnectTimeout = Duration(proxy.DefaultConnectTimeout)
		}
		if u.Retries == nil {
			r := proxy.DefaultRetries
			u.Retries = &r
		}
		if len(u.RetryOn) == 0 {
			u.RetryOn = proxy.DefaultRetryOn.Names()
		}
		b := &u.Breakers
		if b.MaxConnections == 0 {
			b.MaxConnections = proxy.DefaultMaxConnections
		}
		if b.MaxPendingRequests == 0 {
			b.MaxPendingRequests = proxy.DefaultMaxPending
		}
		if b.MaxRequests == 0 {
			b.MaxRequests = proxy.DefaultMaxRequests
		}
		if u.Budget.Percent == 0 {
			u.Budget.Percent = proxy.DefaultBudgetPercent
		}
		if u.Budget.MinConcurrent == 0 {
			u.Budget.MinConcurrent = proxy.DefaultBudgetMinRetry
		}
		ups[i] = u
	}
	c.Upstreams = ups
	return c
}

// check is one named validation rule; it returns nil or an error naming the field and the
// bad value.
type check struct {
	name string
	fn   func(c *Config) error
}

// fieldErr formats a validation error: field, value, what is wrong.
func fieldErr(field string, value any, problem string) error {
	return fmt.Errorf("%s: %q: %s", field, fmt.Sprint(value), problem)
}

// A sidecar has one of three shapes:
//
//   - service, inbound and app: it serves the app to peer sidecars (and calls upstreams);
//   - service and upstreams, no inbound nor app: outbound only. The service name is its
//     identity towards its upstreams (the name of its mutual TLS leaf); it opens no inbound
//     listener, registers nothing and probes no app, and /ready still waits for its leaf
//     and roots when TLS is on (the launcher's ingress, a pod without x-podmesh.port);
//   - upstreams alone, with -tls=false: outbound only without an identity.
var checks = []check{
	{"something to do", func(c *Config) error {
		if c.Service == "" && len(c.Upstreams) == 0 {
			return errors.New("service: nothing to do: set -service (with -inbound and -app) or at least one -upstream")
		}
		return nil
	}},
	{"service", func(c *Config) error {
		if c.Service == "" {
			if c.Inbound != "" || c.App != "" {
				return fieldErr("service", "", "required with inbound and app")
			}
			return nil
		}
		if !validName(c.Service) {
			return fieldErr("service", c.Service, "want letters, digits, '-', '_' or '.'")
		}
		switch {
		case c.Inbound == "" && c.App == "" && len(c.Upstreams) == 0:
			return fieldErr("inbound", "", "required with service (with app), unless the sidecar has upstreams and serves them only")
		case c.Inbound == "" && c.App != "":
			return fieldErr("inbound", "", "required with app")
		case c.Inbound != "" && c.App == "":
			return fieldErr("app", "", "required with inbound")
		}
		return nil
	}},
	{"register", func(c *Config) error {
		if c.Service != "" && c.Inbound == "" && c.Register != nil && *c.Register {
			return fieldErr("register", true, "an outbound-only sidecar (no inbound) has nothing to register")
		}
		return nil
	}},
	{"tls", func(c *Config) error {
		if c.TLS.On() && c.Service == "" && c.Inbound == "" && c.App == "" && len(c.Upstreams) > 0 {
			return fieldErr("service", "", "required with tls (the sidecar's identity towards its upstreams): "+
				"set -service (an outbound-only sidecar needs no -inbound nor -app), or -tls=false where no sidecar uses mTLS")
		}
		return nil
	}},
	{"id", func(c *Config) error {
		if c.ID != "" && validName(c.Service) && strings.ContainsAny(c.ID, "/ \t") {
			return fieldErr("id", c.ID, "must not contain '/' or spaces")
		}
		return nil
	}},
	{"protocol", func(c *Config) error {
		if _, err := proxy.ParseProtocol(c.Protocol); err != nil {
			return fieldErr("protocol", c.Protocol, "want tcp, http, http2 or grpc")
		}
		return nil
	}},
	{"addresses", func(c *Config) error {
		for _, a := range []struct{ field, addr string }{
			{"inbound", c.Inbound}, {"app", c.App}, {"admin", c.Admin}, {"metrics", c.Metrics},
		} {
			if a.addr == "" {
				continue
			}
			if err := checkHostPort(a.addr); err != nil {
				return fieldErr(a.field, a.addr, err.Error())
			}
		}
		if a := c.Advertise; a != "" {
			if _, err := netip.ParseAddr(a); err != nil && strings.ContainsAny(a, ":/ \t") {
				return fieldErr("advertise", a, "want a host name or IP address, without a port")
			}
		}
		return nil
	}},
	{"registry", func(c *Config) error {
		u, err := url.Parse(c.Registry)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fieldErr("registry", c.Registry, "want an http:// or https:// URL")
		}
		return nil
	}},
	{"check", func(c *Config) error {
		k := c.Check
		switch {
		case k.HTTP != "" && !strings.HasPrefix(k.HTTP, "/"):
			return fieldErr("check.http", k.HTTP, "want a path starting with /")
		case k.Interval < Duration(100*time.Millisecond):
			return fieldErr("check.interval", k.Interval, "want at least 100ms")
		case k.Timeout < 0 || k.Timeout > k.Interval:
			return fieldErr("check.timeout", k.Timeout, "want a duration up to check.interval")
		case k.TTL < k.Interval:
			return fieldErr("check.ttl", k.TTL, "want at least check.interval")
		case k.DeregisterAfter < Duration(time.Minute):
			return fieldErr("check.deregister_after", k.DeregisterAfter, "want at least 1m (the registry's minimum)")
		}
		return nil
	}},
	{"drain and ready", func(c *Config) error {
		if c.DrainTimeout < 0 {
			return fieldErr("drain_timeout", c.DrainTimeout, "want a duration")
		}
		if c.ReadyTimeout < 0 {
			return fieldErr("ready_timeout", c.ReadyTimeout, "want a duration")
		}
		if c.ReadyFD != 0 && c.ReadyFD < 3 {
			return fieldErr("ready_fd", c.ReadyFD, "want a descriptor of 3 or above (0, 1 and 2 are stdin, stdout and stderr)")
		}
		if c.MaxRequests < 0 {
			return fieldErr("max_requests", c.MaxRequests, "want a positive number")
		}
		return nil
	}},
	{"tracing", func(c *Config) error {
		if r := c.TraceSample; r != nil && !(*r >= 0 && *r <= 1) {
			return fieldErr("trace_sample", *r, "want a ratio from 0 to 1")
		}
		if e := c.TraceEndpoint; e != "" {
			v := e
			if !strings.Contains(v, "://") {
				v = "http://" + v
			}
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
				return fieldErr("trace_endpoint", e, "want host:port or an http:// or https:// URL")
			}
		}
		return nil
	}},
	{"limits", func(c *Config) error {
		l := c.Limits
		switch {
		case l.MaxHeaderBytes < 0 || (l.MaxHeaderBytes > 0 && l.MaxHeaderBytes < 1024):
			return fieldErr("limits.max_header_bytes", l.MaxHeaderBytes, "want at least 1024")
		case l.MaxHeaderCount < 0:
			return fieldErr("limits.max_header_count", l.MaxHeaderCount, "want a positive number")
		case l.MaxConnections < 0:
			return fieldErr("limits.max_connections", l.MaxConnections, "want a positive number")
		case l.ReadHeaderTimeout < 0:
			return fieldErr("limits.read_header_timeout", l.ReadHeaderTimeout, "want a duration")
		case l.IdleTimeout < 0:
			return fieldErr("limits.idle_timeout", l.IdleTimeout, "want a duration")
		}
		return nil
	}},
	{"upstreams", func(c *Config) error {
		names := map[string]bool{}
		listens := map[string]string{c.Admin: "admin"}
		if c.Inbound != "" {
			listens[c.Inbound] = "inbound"
		}
		if c.Metrics != "" {
			listens[c.Metrics] = "metrics"
		}
		for i, u := range c.Upstreams {
			f := func(name string) string { return fmt.Sprintf("upstreams[%d].%s", i, name) }
			if err := checkUpstream(u, f); err != nil {
				return err
			}
			if names[u.Name] {
				return fieldErr(f("name"), u.Name, "duplicate upstream")
			}
			names[u.Name] = true
			if other, ok := listens[u.Listen]; ok && u.Listen != "" && !strings.HasSuffix(u.Listen, ":0") {
				return fieldErr(f("listen"), u.Listen, "already used by "+other)
			}
			listens[u.Listen] = u.Name
		}
		return nil
	}},
}

func checkUpstream(u Upstream, f func(string) string) error {
	if u.Name == "" || !validName(u.Name) {
		return fieldErr(f("name"), u.Name, "want a service name (letters, digits, '-', '_' or '.')")
	}
	if err := checkHostPort(u.Listen); err != nil {
		return fieldErr(f("listen"), u.Listen, err.Error())
	}
	if u.Protocol != "" {
		if _, err := proxy.ParseProtocol(u.Protocol); err != nil {
			return fieldErr(f("protocol"), u.Protocol, "want tcp, http, http2 or grpc")
		}
	}
	if err := (lb.Config{Policy: lb.Policy(u.LB)}).Validate(); err != nil {
		return fieldErr(f("lb"), u.LB, "want round_robin, random, least_request, ring_hash or maglev")
	}
	if _, err := proxy.ParseHashOn(u.HashOn); err != nil {
		return fieldErr(f("hash_on"), u.HashOn, "want header:NAME, cookie:NAME or source_ip")
	}
	if u.HashOn != "" && u.LB != string(lb.RingHash) && u.LB != string(lb.Maglev) {
		return fieldErr(f("hash_on"), u.HashOn, "only ring_hash and maglev use a hash key")
	}
	if _, err := proxy.ParseRetryOn(u.RetryOn); err != nil {
		return fieldErr(f("retry_on"), strings.Join(u.RetryOn, ","), err.Error())
	}
	switch {
	case u.ConnectTimeout < 0:
		return fieldErr(f("connect_timeout"), u.ConnectTimeout, "want a duration")
	case u.Retries != nil && *u.Retries < 0:
		return fieldErr(f("retries"), *u.Retries, "want 0 or more")
	case u.Retries != nil && *u.Retries > 10:
		return fieldErr(f("retries"), *u.Retries, "want at most 10")
	case u.Breakers.MaxConnections < 0:
		return fieldErr(f("breakers.max_connections"), u.Breakers.MaxConnections, "want a positive number")
	case u.Breakers.MaxPendingRequests < 0:
		return fieldErr(f("breakers.max_pending_requests"), u.Breakers.MaxPendingRequests, "want a positive number")
	case u.Breakers.MaxRequests < 0:
		return fieldErr(f("breakers.max_requests"), u.Breakers.MaxRequests, "want a positive number")
	case u.Breakers.MaxRetries < 0:
		return fieldErr(f("breakers.max_retries"), u.Breakers.MaxRetries, "want 0 (budget only) or more")
	case u.Budget.Percent < 0 || u.Budget.Percent > 100:
		return fieldErr(f("retry_budget.percent"), u.Budget.Percent, "want 0 to 100")
	case u.Budget.MinConcurrent < 0:
		return fieldErr(f("retry_budget.min_concurrent"), u.Budget.MinConcurrent, "want a positive number")
	}
	if err := (lb.Config{Outlier: u.Outlier}).Validate(); err != nil {
		return fmt.Errorf("%s: %w", f("outlier"), err)
	}
	return nil
}

// Validate runs every check and joins their errors.
func (c *Config) Validate() error {
	var errs []error
	for _, ch := range checks {
		if err := ch.fn(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return errors.New("want a port number from 0 to 65535")
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// upstreamFlag collects repeated -upstream NAME=LOCAL_ADDR flags.
type upstreamFlag []Upstream

func (u *upstreamFlag) String() string {
	var parts []string
	for _, x := range *u {
		parts = append(parts, x.Name+"="+x.Listen)
	}
	return strings.Join(parts, ",")
}

func (u *upstreamFlag) Set(s string) error {
	name, addr, ok := strings.Cut(s, "=")
	if !ok || name == "" || addr == "" {
		return fmt.Errorf("%q: want NAME=LOCAL_ADDR", s)
	}
	*u = append(*u, Upstream{Name: name, Listen: addr})
	return nil
}

// durationFlag is a flag.Value for Duration.
type durationFlag struct{ d *Duration }

func (f durationFlag) String() string {
	if f.d == nil || *f.d == 0 {
		return ""
	}
	return f.d.String()
}

func (f durationFlag) Set(s string) error {
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*f.d = v
	return nil
}

// ErrHelp is returned by Parse when -h or -help was given; usage has been printed.
var ErrHelp = flag.ErrHelp

// Parse builds the configuration from command-line arguments (without the program
// name): a -config file first, then the flags given explicitly on top of it, then the
// defaults, then validation. getenv reads the environment (CONSUL_HTTP_ADDR). Usage and
// flag errors go to out.
func Parse(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	var (
		flags     Config
		ups       upstreamFlag
		cfgFile   string
		register  bool
		checkHTTP string
		tlsOn     bool
		sample    float64
	)
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&cfgFile, "config", "", "YAML `file` with the same fields plus per-upstream policy; flags override it")
	fs.StringVar(&flags.Service, "service", "", "the local service's registry `name`")
	fs.StringVar(&flags.ID, "id", "", "instance `ID` (default SERVICE-HOST-PORT)")
	fs.StringVar(&flags.Protocol, "protocol", "", "what the app speaks: tcp (default), http, http2, grpc")
	fs.StringVar(&flags.Inbound, "inbound", "", "`host:port` for peer sidecars")
	fs.StringVar(&flags.Advertise, "advertise", "", "`host` registered for the inbound listener (default its host)")
	fs.StringVar(&flags.App, "app", "", "the app's `host:port`")
	fs.Var(&ups, "upstream", "`NAME=LOCAL_ADDR`: a local listener for an upstream service (repeatable)")
	fs.StringVar(&flags.Admin, "admin", "", "admin `host:port` (default "+DefaultAdmin+")")
	fs.StringVar(&flags.Metrics, "metrics", "", "optional separate /metrics `host:port`, advertised as meta metrics_port")
	fs.StringVar(&flags.Registry, "registry", "", "registry `URL` (default $CONSUL_HTTP_ADDR, then "+DefaultRegistry+")")
	fs.BoolVar(&register, "register", true, "register the instance in the registry (false when the launcher does)")
	fs.StringVar(&checkHTTP, "check-http", "", "HTTP `path` to probe on the app (default: a TCP connect)")
	fs.Var(durationFlag{&flags.DrainTimeout}, "drain-timeout", "graceful drain deadline on SIGTERM (default 8s)")
	fs.BoolVar(&tlsOn, "tls", true, "mutual TLS between sidecars: certificates from the registry's Connect CA, callers\n"+
		"authorized by intentions, nothing plaintext between sidecars. -tls=false sends plaintext and\n"+
		"authorizes nobody: only where no sidecar of the mesh uses mTLS (YAML tls.enabled)")
	fs.StringVar(&flags.TraceEndpoint, "trace-endpoint", "", "OTLP/HTTP collector `URL` for spans (host:port or http://host:port; default\n"+
		"$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then $OTEL_EXPORTER_OTLP_ENDPOINT; none: tracing off)")
	fs.Float64Var(&sample, "trace-sample", tracing.DefaultSampleRatio, "`ratio` of requests without a sampling decision that start a trace")
	fs.TextVar(&flags.TracePropagation, "trace-propagation", tracing.PropagateW3C|tracing.PropagateB3Single|tracing.PropagateB3Multi,
		"trace header formats written, a `list` of w3c, b3, b3multi (all are read)")
	fs.BoolVar(&flags.AccessLog, "access-log", false, "write one JSON line per request (with trace_id and span_id) on stderr")
	fs.IntVar(&flags.ReadyFD, "ready-fd", 0, "inherited `descriptor` to write READY=1 to, then close, once ready (instead of polling /ready)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	var c Config
	if cfgFile != "" {
		data, err := os.ReadFile(cfgFile)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		if c, err = LoadYAML(data); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", cfgFile, err)
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "service":
			c.Service = flags.Service
		case "id":
			c.ID = flags.ID
		case "protocol":
			c.Protocol = flags.Protocol
		case "inbound":
			c.Inbound = flags.Inbound
		case "advertise":
			c.Advertise = flags.Advertise
		case "app":
			c.App = flags.App
		case "admin":
			c.Admin = flags.Admin
		case "metrics":
			c.Metrics = flags.Metrics
		case "registry":
			c.Registry = flags.Registry
		case "register":
			c.Register = &register
		case "check-http":
			c.Check.HTTP = checkHTTP
		case "drain-timeout":
			c.DrainTimeout = flags.DrainTimeout
		case "tls":
			c.TLS.Enabled = &tlsOn
		case "trace-endpoint":
			c.TraceEndpoint = flags.TraceEndpoint
		case "trace-sample":
			c.TraceSample = &sample
		case "trace-propagation":
			c.TracePropagation = flags.TracePropagation
		case "access-log":
			c.AccessLog = flags.AccessLog
		case "ready-fd":
			c.ReadyFD = flags.ReadyFD
		}
	})
	// -upstream NAME=ADDR replaces the listen address of a configured upstream of that
	// name, or adds one with the default policy.
	seen := map[string]bool{}
	for _, u := range ups {
		if seen[u.Name] {
			return Config{}, fmt.Errorf("config: -upstream %s: %q: duplicate upstream", u.Name, u.Name+"="+u.Listen)
		}
		seen[u.Name] = true
		found := false
		for i := range c.Upstreams {
			if c.Upstreams[i].Name == u.Name {
				c.Upstreams[i].Listen = u.Listen
				found = true
			}
		}
		if !found {
			c.Upstreams = append(c.Upstreams, u)
		}
	}
	c = c.withDefaults(getenv)
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// LoadYAML decodes a configuration file strictly: an unknown key is an error naming the
// key and its line. Defaults are not applied.
func LoadYAML(data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, nil // an empty file
		}
		return Config{}, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return Config{}, errors.New("more than one YAML document")
	}
	return c, nil
}
