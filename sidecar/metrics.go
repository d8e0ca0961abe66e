package sidecar

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podmesh/podmesh/proxy"
	"github.com/podmesh/podmesh/tls/identity"
	"github.com/podmesh/podmesh/tls/spiffe"
)

// securityMetrics are the mutual TLS and authorization metrics, beside the traffic metrics
// of proxy.Metrics. Handshake series are resolved at setup; authorization series once per
// calling service, so counting a decision is a map read and an atomic add.
//
// Series (direction is "inbound" or "outbound"; destination is the local service; source
// is the calling service, from its verified certificate: the service name, or
// partition/namespace/name outside the defaults; at most maxSourceLabels distinct values,
// then "other"):
//
//	podmesh_tls_handshakes_total{direction}                      completed handshakes (resumed ones too)
//	podmesh_tls_handshake_failures_total{direction,reason}       reason: see failureReasons
//	podmesh_authz_allowed_total{source,destination}              per HTTP request or TCP connection
//	podmesh_authz_denied_total{source,destination}               403s and closed TCP connections
//	podmesh_tls_cert_expiry_timestamp_seconds{service}           the current leaf's NotAfter (0 before one)
//	podmesh_tls_rotations_total{kind}                            kind leaf or roots: changes after the first load
//	podmesh_tls_fetch_errors_total{kind}                         kind leaf, roots or intentions: failed queries
//	podmesh_authz_intentions{destination}                        intentions that apply to the local service
//	podmesh_tls_ready                                            1 once leaf, bundle and intentions are loaded
type securityMetrics struct {
	service    string
	handshakes map[string]prometheus.Counter            // by direction
	failures   map[string]map[string]prometheus.Counter // by direction, reason
	allowedVec *prometheus.CounterVec
	deniedVec  *prometheus.CounterVec

	mu      sync.Mutex // serializes additions to sources
	sources atomic.Pointer[map[sourceKey]*sourceCounters]
	other   *sourceCounters
}

type sourceKey struct{ partition, namespace, service string }

type sourceCounters struct {
	allowed, denied prometheus.Counter
	label           string // the source label value
}

// maxSourceLabels caps the source label's values. Sources come from certificates the
// mesh's CA issued, so there are at most as many as services in the mesh; the cap guards
// the metrics against a misbehaving CA or a very large mesh.
const maxSourceLabels = 256

// unknownSource labels decisions about peers without a verified identity.
const unknownSource = "unknown"

func newSecurityMetrics(reg prometheus.Registerer, service string, src *identity.Source) (*securityMetrics, error) {
	m := &securityMetrics{service: service, handshakes: map[string]prometheus.Counter{},
		failures: map[string]map[string]prometheus.Counter{}}
	handshakes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podmesh_tls_handshakes_total",
		Help: "Completed TLS handshakes with peer sidecars, by direction (resumed sessions included).",
	}, []string{"direction"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podmesh_tls_handshake_failures_total",
		Help: "Failed TLS handshakes with peers, by direction and reason (no_certificate, unknown_ca, expired, trust_domain, wrong_service, bad_certificate, peer_rejected, protocol, not_ready, closed, timeout, other).",
	}, []string{"direction", "reason"})
	m.allowedVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podmesh_authz_allowed_total",
		Help: "Callers authorized by intentions: HTTP requests and raw TCP connections, by calling and called service.",
	}, []string{"source", "destination"})
	m.deniedVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podmesh_authz_denied_total",
		Help: "Callers denied by intentions or the default policy: HTTP requests answered 403 and raw TCP connections closed, by calling and called service.",
	}, []string{"source", "destination"})
	for _, dir := range []string{proxy.DirInbound, proxy.DirOutbound} {
		m.handshakes[dir] = handshakes.WithLabelValues(dir)
		m.failures[dir] = map[string]prometheus.Counter{}
		for _, r := range failureReasons {
			m.failures[dir][r] = failures.WithLabelValues(dir, r)
		}
	}
	empty := map[sourceKey]*sourceCounters{}
	m.sources.Store(&empty)
	m.other = &sourceCounters{allowed: m.allowedVec.WithLabelValues("other", service),
		denied: m.deniedVec.WithLabelValues("other", service), label: proxy.OtherSource}

	stats := func(f func(identity.Stats) float64) func() float64 {
		return func() float64 { return f(src.Stats()) }
	}
	collectors := []prometheus.Collector{handshakes, failures, m.allowedVec, m.deniedVec,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "podmesh_tls_cert_expiry_timestamp_seconds",
			Help:        "When the sidecar's current leaf certificate expires (Unix seconds; 0 before the first leaf).",
			ConstLabels: prometheus.Labels{"service": service},
		}, func() float64 {
			t := src.LeafExpiry()
			if t.IsZero() {
				return 0
			}
			return float64(t.UnixNano()) / 1e9
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "podmesh_tls_ready",
			Help: "1 once the leaf, the trust bundle and the intentions have been loaded from the registry.",
		}, func() float64 {
			select {
			case <-src.Ready():
				return 1
			default:
				return 0
			}
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "podmesh_authz_intentions",
			Help:        "Intentions that apply to the local service as a destination.",
			ConstLabels: prometheus.Labels{"destination": service},
		}, stats(func(s identity.Stats) float64 { return float64(s.Intentions) })),
	}
	for kind, f := range map[string]func(identity.Stats) float64{
		"leaf":  func(s identity.Stats) float64 { return float64(max(s.LeafUpdates, 1) - 1) },
		"roots": func(s identity.Stats) float64 { return float64(max(s.RootUpdates, 1) - 1) },
	} {
		collectors = append(collectors, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "podmesh_tls_rotations_total",
			Help:        "New leaf certificates or trust bundles installed after the first one.",
			ConstLabels: prometheus.Labels{"kind": kind},
		}, stats(f)))
	}
	for kind, f := range map[string]func(identity.Stats) float64{
		"leaf":       func(s identity.Stats) float64 { return float64(s.LeafErrors) },
		"roots":      func(s identity.Stats) float64 { return float64(s.RootErrors) },
		"intentions": func(s identity.Stats) float64 { return float64(s.IntentionErrors) },
	} {
		collectors = append(collectors, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "podmesh_tls_fetch_errors_total",
			Help:        "Failed queries for the leaf, the trust bundle or the intentions (the last good value stays in use).",
			ConstLabels: prometheus.Labels{"kind": kind},
		}, stats(f)))
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *securityMetrics) handshake(dir string) prometheus.Counter { return m.handshakes[dir] }

func (m *securityMetrics) handshakeFailed(dir, reason string) prometheus.Counter {
	return m.failures[dir][reason]
}

func (m *securityMetrics) allowed(id spiffe.ServiceID) prometheus.Counter {
	return m.source(id).allowed
}
func (m *securityMetrics) denied(id spiffe.ServiceID) prometheus.Counter { return m.source(id).denied }

// source returns the counters of a calling service, adding them on its first call.
func (m *securityMetrics) source(id spiffe.ServiceID) *sourceCounters {
	k := sourceKey{id.Partition, id.Namespace, id.Service}
	if k.namespace == spiffe.DefaultNamespace {
		k.namespace = ""
	}
	if c, ok := (*m.sources.Load())[k]; ok {
		return c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := *m.sources.Load()
	if c, ok := cur[k]; ok {
		return c
	}
	if len(cur) >= maxSourceLabels {
		return m.other
	}
	label := k.service
	if k.partition != "" || k.namespace != "" {
		ns := k.namespace
		if ns == "" {
			ns = spiffe.DefaultNamespace
		}
		label = id.PartitionOrDefault() + "/" + ns + "/" + k.service
	}
	c := &sourceCounters{allowed: m.allowedVec.WithLabelValues(label, m.service),
		denied: m.deniedVec.WithLabelValues(label, m.service), label: label}
	next := make(map[sourceKey]*sourceCounters, len(cur)+1)
	for kk, v := range cur {
		next[kk] = v
	}
	next[k] = c
	m.sources.Store(&next)
	return c
}
