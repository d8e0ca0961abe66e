// Package lb chooses which instance of an upstream service gets the next request or
// connection.
//
// Data flows one way: discovery hands a Balancer the current []Endpoint; the Balancer keeps a
// long-lived *Host per endpoint (so passive health and load survive endpoint updates), builds
// an immutable Picker over the hosts that are ready, and publishes it through an
// atomic.Pointer. Pick never locks and never allocates. The proxy reports each attempt's
// outcome back to the Host (Begin/Done), which drives the EWMA, least-request counts and
// outlier ejection; when ejection changes which hosts are ready, the Balancer rebuilds the
// picker, and a timer rebuilds it again when the ejection ends. Changed wakes callers waiting
// for a new picker, Stats and OnEvent feed the admin view and metrics, and Close stops the
// timers.
//
// Policies: round_robin (smooth weighted), random (weighted), least_request (power of two
// choices on latency EWMA × in-flight, the default), ring_hash and maglev (consistent hashing
// on PickInfo.Hash, computed with Hash). See Config for the defaults.
package lb

import (
	"errors"
	"time"
)

// Endpoint is one instance of an upstream service, as discovery reports it. It is immutable
// once handed to the Balancer.
type Endpoint struct {
	ID      string            // registry service ID, unique within the service
	Address string            // host:port to dial: the instance's sidecar inbound listener
	Weight  uint32            // relative weight from the registry (Weights.Passing); 0 means 1
	Node    string            // registry node name, for display
	Meta    map[string]string // service meta from the registry (protocol, metrics_port...)
}

// Key identifies an endpoint across updates: same key, same Host and health state.
func (e Endpoint) Key() string { return e.ID + "@" + e.Address }

// PickInfo is what a picker may use about the request being placed. It is passed by value
// so that picking allocates nothing.
type PickInfo struct {
	// Hash is the request's consistent-hash key (from a header, a cookie or the source
	// address, computed by the proxy). Only ring hash and maglev read it, and only when
	// HasHash is set; without a key they fall back to a random host.
	Hash    uint64
	HasHash bool

	// Avoid, if set, is a host to pass over unless it is the only one in rotation: the host a
	// failed attempt went to, so that the retry goes elsewhere (Envoy's previous_hosts retry
	// predicate). Hash policies walk on to the next distinct host, as for an ejected one.
	Avoid *Host
}

// Picker is an immutable snapshot that chooses a host. Implementations must be safe for
// concurrent use, must not block, and must not allocate.
type Picker interface {
	Pick(info PickInfo) (*Host, error)
}

// ErrNoHost is returned by Pick when no endpoint is available. Outlier ejection always leaves
// at least one host in rotation, so for a Balancer this means it has no endpoints.
var ErrNoHost = errors.New("lb: no healthy endpoint")

// Policy names a load-balancing algorithm.
type Policy string

// The policies. LeastRequest (power of two choices weighted by latency EWMA) is the default.
const (
	RoundRobin   Policy = "round_robin"
	Random       Policy = "random"
	LeastRequest Policy = "least_request"
	RingHash     Policy = "ring_hash"
	Maglev       Policy = "maglev"
)

// Outcome classifies one finished attempt against a host, for passive health.
type Outcome uint8

// Outcomes. ServerError (a 5xx other than 502/503/504) counts towards the consecutive-5xx
// rule; GatewayFailure (502/503/504, a reset) and ConnectFailure count towards both it and
// the consecutive-gateway-failure rule. Success and ClientError (a 4xx: the host answered)
// reset both counts.
const (
	Success Outcome = iota
	ClientError
	ServerError
	GatewayFailure
	ConnectFailure
)

// Clock returns the current time; tests substitute a fake.
type Clock func() time.Time
