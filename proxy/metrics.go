package proxy

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the sidecar's traffic metrics, the sidecar table of docs/metrics.md (the
// contract with the scrape configuration and the dashboards). Series are resolved per
// (direction, source, destination) once, when the pair is first seen, and kept in an
// immutable map swapped under a lock, so the request path does a map read and atomic adds:
// no label lookups, no allocation.
//
// Labels: direction is "outbound" (the app's calls to an upstream) or "inbound" (a peer's
// calls into the local app); source and destination are service names: inbound, source is
// the caller's verified identity ("unknown" for plaintext peers) and destination the local
// service; outbound, source is the local service and destination the upstream. At most
// MaxSourceLabels distinct sources, then "other".
//
//	podmesh_requests_total{direction,source,destination,method,code_class,grpc_status}
//	podmesh_request_duration_seconds{direction,source,destination}  until the response ends
//	podmesh_request_bytes_total, podmesh_response_bytes_total{direction,source,destination}  body bytes
//	podmesh_requests_active{direction,source,destination}
//	podmesh_tcp_connections_opened_total, _closed_total{direction,source,destination}
//	podmesh_tcp_sent_bytes_total, podmesh_tcp_received_bytes_total{direction,source,destination}
//	podmesh_retries_total, podmesh_retry_budget_exhausted_total{source,destination}
//	podmesh_breaker_trips_total{direction,source,destination,breaker}
//	podmesh_endpoints{source,destination,state}   state is ready or ejected
//	podmesh_ejections_total{source,destination}
//
// and, per listener (service is the listener's: the local service inbound, the upstream
// outbound):
//
//	podmesh_proxy_rejected_requests_total{direction,service,reason}  400/431 from the guard
//	podmesh_proxy_connections_total{direction,service}               accepted connections
//	podmesh_proxy_connections_active{direction,service}
type Metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	reqBytes  *prometheus.CounterVec
	respBytes *prometheus.CounterVec
	active    *prometheus.GaugeVec
	tcpOpened *prometheus.CounterVec
	tcpClosed *prometheus.CounterVec
	tcpSent   *prometheus.CounterVec
	tcpRecv   *prometheus.CounterVec
	retries   *prometheus.CounterVec
	exhausted *prometheus.CounterVec
	breakers  *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	conns     *prometheus.CounterVec
	connsOpen *prometheus.GaugeVec

	pairs atomic.Pointer[map[pairKey]*pairMetrics]

	mu        sync.Mutex // serializes additions to pairs and sources, and balancers
	sources   map[string]struct{}
	balancers map[string]watchedBalancer
}

// MaxSourceLabels caps the distinct values of the source label; later sources are
// counted as OtherSource.
const MaxSourceLabels = 256

// Label values for callers that cannot be named.
const (
	UnknownSource = "unknown" // a plaintext peer, or one without a verified identity
	OtherSource   = "other"   // beyond MaxSourceLabels
)

// NewMetrics registers the proxy's metrics with reg. Components given no Metrics make a
// private set on a registry nobody scrapes.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	pair := []string{"direction", "source", "destination"}
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &Metrics{
		requests: counter("podmesh_requests_total",
			"HTTP and gRPC requests proxied, by direction, calling and called service, method, status class and gRPC status (empty for non-gRPC).",
			[]string{"direction", "source", "destination", "method", "code_class", "grpc_status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podmesh_request_duration_seconds",
			Help:    "Time from request head to the end of the response, as the proxy saw it.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, pair),
		reqBytes:  counter("podmesh_request_bytes_total", "Request body bytes received from the caller.", pair),
		respBytes: counter("podmesh_response_bytes_total", "Response body bytes sent to the caller.", pair),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podmesh_requests_active",
			Help: "HTTP and gRPC requests in flight.",
		}, pair),
		tcpOpened: counter("podmesh_tcp_connections_opened_total", "Raw TCP sessions proxied (started).", pair),
		tcpClosed: counter("podmesh_tcp_connections_closed_total", "Raw TCP sessions proxied (ended).", pair),
		tcpSent: counter("podmesh_tcp_sent_bytes_total",
			"Raw TCP bytes carried from source to destination, counted when the session ends.", pair),
		tcpRecv: counter("podmesh_tcp_received_bytes_total",
			"Raw TCP bytes carried from destination back to source, counted when the session ends.", pair),
		retries: counter("podmesh_retries_total", "Retries sent to an upstream.", []string{"source", "destination"}),
		exhausted: counter("podmesh_retry_budget_exhausted_total",
			"Retries not sent because the retry budget or the max_retries breaker was full.", []string{"source", "destination"}),
		breakers: counter("podmesh_breaker_trips_total",
			"Requests or connections refused by a circuit breaker (max_connections, max_pending_requests, max_requests, max_retries).",
			[]string{"direction", "source", "destination", "breaker"}),
		rejected: counter("podmesh_proxy_rejected_requests_total",
			"Requests rejected by the request-head guard (400 or 431) and never forwarded.", []string{"direction", "service", "reason"}),
		conns: counter("podmesh_proxy_connections_total", "Connections accepted by a listener.", []string{"direction", "service"}),
		connsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podmesh_proxy_connections_active",
			Help: "Connections open on a listener.",
		}, []string{"direction", "service"}),
		sources:   map[string]struct{}{},
		balancers: map[string]watchedBalancer{},
	}
	empty := map[pairKey]*pairMetrics{}
	m.pairs.Store(&empty)
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.reqBytes, m.respBytes, m.active,
		m.tcpOpened, m.tcpClosed, m.tcpSent, m.tcpRecv, m.retries, m.exhausted, m.breakers,
		m.rejected, m.conns, m.connsOpen, (*lbCollector)(m)} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Directions.
const (
	DirOutbound = "outbound"
	DirInbound  = "inbound"
)

type pairKey struct{ dir, source, dest string }

// The label sets of podmesh_requests_total, as indexes.
var (
	methodLabels = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other"}
	classLabels  = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}
	// grpcLabels[0] is a non-gRPC request; [1+code] the gRPC code names.
	grpcLabels = [...]string{"", "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
		"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}
	breakerNames = [...]string{BreakerConnections, BreakerPending, BreakerRequests, BreakerRetries}
)

const nRequestSeries = len(methodLabels) * len(classLabels) * len(grpcLabels)

func methodIndex(m string) int {
	switch m {
	case "GET":
		return 0
	case "HEAD":
		return 1
	case "POST":
		return 2
	case "PUT":
		return 3
	case "DELETE":
		return 4
	case "PATCH":
		return 5
	case "OPTIONS":
		return 6
	case "CONNECT":
		return 7
	case "TRACE":
		return 8
	}
	return 9
}

// classIndex maps a status to 1xx..5xx; anything out of range is counted as 5xx (the
// proxy answered something it should not have).
func classIndex(code int) int {
	if code < 100 || code >= 600 {
		return 4
	}
	return code/100 - 1
}

// grpcIndex maps a grpc-status value ("0".."16") to its label index; "" is not gRPC, and
// a value that is not a known code counts as UNKNOWN, as gRPC clients read it.
func grpcIndex(s string) int {
	switch len(s) {
	case 0:
		return 0
	case 1:
		if s[0] >= '0' && s[0] <= '9' {
			return 1 + int(s[0]-'0')
		}
	case 2:
		if s[0] == '1' && s[1] >= '0' && s[1] <= '6' {
			return 11 + int(s[1]-'0')
		}
	}
	return 1 + 2 // UNKNOWN
}

// GRPCStatusName returns the code name of a grpc-status value ("14" → "UNAVAILABLE"), ""
// for "".
func GRPCStatusName(s string) string { return grpcLabels[grpcIndex(s)] }

// pairMetrics are one (direction, source, destination)'s series.
type pairMetrics struct {
	m                 *Metrics
	dir, source, dest string

	requests  [nRequestSeries]atomic.Pointer[counterRef] // resolved on first use
	duration  prometheus.Observer
	reqBytes  prometheus.Counter
	respBytes prometheus.Counter
	active    prometheus.Gauge
	tcpOpened prometheus.Counter
	tcpClosed prometheus.Counter
	tcpSent   prometheus.Counter
	tcpRecv   prometheus.Counter
	breakers  map[string]prometheus.Counter // by breaker name; read-only after setup
	retries   prometheus.Counter            // outbound only
	exhausted prometheus.Counter            // outbound only
}

type counterRef struct{ prometheus.Counter }

// pair returns the series of (dir, source, dest), adding them on first use. Beyond
// MaxSourceLabels distinct sources, a new source is counted as OtherSource.
func (m *Metrics) pair(dir, source, dest string) *pairMetrics {
	k := pairKey{dir, source, dest}
	if p, ok := (*m.pairs.Load())[k]; ok {
		return p
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := *m.pairs.Load()
	if p, ok := cur[k]; ok {
		return p
	}
	if _, known := m.sources[source]; !known {
		if len(m.sources) >= MaxSourceLabels {
			// Not cached under its own name: the map stays bounded.
			k.source = OtherSource
			if p, ok := cur[k]; ok {
				return p
			}
		}
		m.sources[k.source] = struct{}{}
	}
	p := m.newPair(k)
	next := make(map[pairKey]*pairMetrics, len(cur)+1)
	for kk, v := range cur {
		next[kk] = v
	}
	next[k] = p
	m.pairs.Store(&next)
	return p
}

func (m *Metrics) newPair(k pairKey) *pairMetrics {
	p := &pairMetrics{m: m, dir: k.dir, source: k.source, dest: k.dest,
		duration:  m.duration.WithLabelValues(k.dir, k.source, k.dest),
		reqBytes:  m.reqBytes.WithLabelValues(k.dir, k.source, k.dest),
		respBytes: m.respBytes.WithLabelValues(k.dir, k.source, k.dest),
		active:    m.active.WithLabelValues(k.dir, k.source, k.dest),
		tcpOpened: m.tcpOpened.WithLabelValues(k.dir, k.source, k.dest),
		tcpClosed: m.tcpClosed.WithLabelValues(k.dir, k.source, k.dest),
		tcpSent:   m.tcpSent.WithLabelValues(k.dir, k.source, k.dest),
		tcpRecv:   m.tcpRecv.WithLabelValues(k.dir, k.source, k.dest),
		breakers:  make(map[string]prometheus.Counter, len(breakerNames)),
	}
	for _, b := range breakerNames {
		p.breakers[b] = m.breakers.WithLabelValues(k.dir, k.source, k.dest, b)
	}
	if k.dir == DirOutbound {
		p.retries = m.retries.WithLabelValues(k.source, k.dest)
		p.exhausted = m.exhausted.WithLabelValues(k.source, k.dest)
	}
	return p
}

// request counts one finished request.
func (p *pairMetrics) request(method string, code int, grpcStatus string, reqBytes, respBytes int64, d time.Duration) {
	i := (methodIndex(method)*len(classLabels)+classIndex(code))*len(grpcLabels) + grpcIndex(grpcStatus)
	c := p.requests[i].Load()
	if c == nil {
		c = &counterRef{p.m.requests.WithLabelValues(p.dir, p.source, p.dest,
			methodLabels[i/(len(classLabels)*len(grpcLabels))],
			classLabels[i/len(grpcLabels)%len(classLabels)],
			grpcLabels[i%len(grpcLabels)])}
		p.requests[i].Store(c) // a race stores the same child twice: harmless
	}
	c.Inc()
	p.duration.Observe(d.Seconds())
	if reqBytes > 0 {
		p.reqBytes.Add(float64(reqBytes))
	}
	if respBytes > 0 {
		p.respBytes.Add(float64(respBytes))
	}
}

// tcpDone counts a finished TCP session's bytes: sent from source to destination, and
// received back.
func (p *pairMetrics) tcpDone(sent, received int64) {
	p.tcpClosed.Inc()
	if sent > 0 {
		p.tcpSent.Add(float64(sent))
	}
	if received > 0 {
		p.tcpRecv.Add(float64(received))
	}
}

// serviceMetrics are one listener's series: its (direction, source, destination) pair
// when the source is fixed (outbound: the local service; inbound: the series of callers
// are looked up per request, this one is for callers not yet known, such as a connection
// refused before its handshake), and the listener's own connection series.
type serviceMetrics struct {
	m          *Metrics
	dir, svc   string
	local      string // the local service
	base       *pairMetrics
	overloaded map[string]prometheus.Counter // base's breakers, for the listener
	conns      prometheus.Counter
	active     prometheus.Gauge
	retries    prometheus.Counter // outbound only
	exhausted  prometheus.Counter // outbound only
}

// service resolves a listener's series: dir and svc (the local service inbound, the
// upstream outbound), local the local service ("" is UnknownSource).
func (m *Metrics) service(dir, local, svc string) *serviceMetrics {
	if local == "" {
		local = UnknownSource
	}
	s := &serviceMetrics{m: m, dir: dir, svc: svc, local: local}
	if dir == DirOutbound {
		s.base = m.pair(dir, local, svc)
	} else {
		s.base = m.pair(dir, UnknownSource, svc)
	}
	s.overloaded = s.base.breakers
	s.retries, s.exhausted = s.base.retries, s.base.exhausted
	s.conns = m.conns.WithLabelValues(dir, svc)
	s.active = m.connsOpen.WithLabelValues(dir, svc)
	return s
}

// from returns the series of an inbound caller.
func (s *serviceMetrics) from(source string) *pairMetrics {
	if source == "" || source == s.base.source {
		return s.base
	}
	return s.m.pair(s.dir, source, s.svc)
}

func (s *serviceMetrics) reject(reason string) {
	s.m.rejected.WithLabelValues(s.dir, s.svc, reason).Inc()
}

type watchedBalancer struct {
	source string
	b      Balancer
}

// watchBalancer makes the balancer's endpoints visible as podmesh_endpoints and
// podmesh_ejections_total series.
func (m *Metrics) watchBalancer(source, service string, b Balancer) {
	if source == "" {
		source = UnknownSource
	}
	m.mu.Lock()
	m.balancers[service] = watchedBalancer{source: source, b: b}
	m.mu.Unlock()
}

// lbCollector reads the balancers' hosts at scrape time.
type lbCollector Metrics

var (
	lbEndpointsDesc = prometheus.NewDesc("podmesh_endpoints",
		"Endpoints of an upstream by state (ready, ejected).", []string{"source", "destination", "state"}, nil)
	lbEjectionsDesc = prometheus.NewDesc("podmesh_ejections_total",
		"Outlier ejections of an upstream's endpoints.", []string{"source", "destination"}, nil)
)

func (c *lbCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lbEndpointsDesc
	ch <- lbEjectionsDesc
}

func (c *lbCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for svc, wb := range c.balancers {
		st, ok := wb.b.(statser)
		if !ok {
			continue
		}
		s := st.Stats()
		ch <- prometheus.MustNewConstMetric(lbEndpointsDesc, prometheus.GaugeValue, float64(s.Ready), wb.source, svc, "ready")
		ch <- prometheus.MustNewConstMetric(lbEndpointsDesc, prometheus.GaugeValue, float64(s.Ejected), wb.source, svc, "ejected")
		ch <- prometheus.MustNewConstMetric(lbEjectionsDesc, prometheus.CounterValue, float64(s.EjectionsTotal), wb.source, svc)
	}
}

var _ prometheus.Collector = (*lbCollector)(nil)

// orPrivate returns m, or a private Metrics when m is nil.
func (m *Metrics) orPrivate() *Metrics {
	if m != nil {
		return m
	}
	p, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		panic(err) // a fresh registry cannot hold duplicates
	}
	return p
}
