package proxy

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the sidecar's traffic metrics, kept in one place so that observability
// (issue 6) extends them here. Every series is resolved once per service at setup, so the
// request path only increments atomics: no label lookups, no allocation.
//
// Series (label direction is "outbound" for the app's calls to an upstream, "inbound" for
// calls into the local app; service is the upstream or the local service):
//
//	podmesh_proxy_requests_total{direction,service,code}        code is 1xx..5xx, or 499
//	podmesh_proxy_request_duration_seconds{direction,service}   until the response ends
//	podmesh_proxy_retries_total{service}
//	podmesh_proxy_retry_budget_exhausted_total{service}
//	podmesh_proxy_overloaded_total{direction,service,breaker}   breaker rejections (trips)
//	podmesh_proxy_rejected_requests_total{direction,service,reason}  400/431 from the guard
//	podmesh_proxy_connections_total{direction,service}          accepted connections
//	podmesh_proxy_connections_active{direction,service}
//	podmesh_lb_endpoints{service,state}                         state is ready or ejected
//	podmesh_lb_ejections_total{service}
type Metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	retries    *prometheus.CounterVec
	exhausted  *prometheus.CounterVec
	overloaded *prometheus.CounterVec
	rejected   *prometheus.CounterVec
	conns      *prometheus.CounterVec
	active     *prometheus.GaugeVec

	mu        sync.Mutex
	balancers map[string]Balancer
}

// NewMetrics registers the proxy's metrics with reg. Components given no Metrics make a
// private set on a registry nobody scrapes.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_proxy_requests_total",
			Help: "HTTP requests proxied, by direction, service and status class.",
		}, []string{"direction", "service", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podmesh_proxy_request_duration_seconds",
			Help:    "Time from request head to the end of the response, as the proxy saw it.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"direction", "service"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_proxy_retries_total",
			Help: "Retries sent to an upstream.",
		}, []string{"service"}),
		exhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_proxy_retry_budget_exhausted_total",
			Help: "Retries not sent because the retry budget or max_retries breaker was full.",
		}, []string{"service"}),
		overloaded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_proxy_overloaded_total",
			Help: "Requests or connections refused by a circuit breaker.",
		}, []string{"direction", "service", "breaker"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_proxy_rejected_requests_total",
			Help: "Requests rejected by the request-head guard (400 or 431) and never forwarded.",
		}, []string{"direction", "service", "reason"}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_proxy_connections_total",
			Help: "Connections accepted by a listener.",
		}, []string{"direction", "service"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podmesh_proxy_connections_active",
			Help: "Connections open on a listener.",
		}, []string{"direction", "service"}),
		balancers: map[string]Balancer{},
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.retries, m.exhausted,
		m.overloaded, m.rejected, m.conns, m.active, (*lbCollector)(m)} {
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

// serviceMetrics are one (direction, service)'s resolved series.
type serviceMetrics struct {
	codes      [6]prometheus.Counter // 1xx..5xx at [1..5], 499 at [0]
	duration   prometheus.Observer
	retries    prometheus.Counter
	exhausted  prometheus.Counter
	overloaded map[string]prometheus.Counter
	conns      prometheus.Counter
	active     prometheus.Gauge
	m          *Metrics
	dir, svc   string
}

func (m *Metrics) service(dir, svc string) *serviceMetrics {
	s := &serviceMetrics{m: m, dir: dir, svc: svc, overloaded: map[string]prometheus.Counter{}}
	s.codes[0] = m.requests.WithLabelValues(dir, svc, "499")
	for i := 1; i <= 5; i++ {
		s.codes[i] = m.requests.WithLabelValues(dir, svc, strconv.Itoa(i)+"xx")
	}
	s.duration = m.duration.WithLabelValues(dir, svc)
	s.retries = m.retries.WithLabelValues(svc)
	s.exhausted = m.exhausted.WithLabelValues(svc)
	for _, b := range []string{BreakerConnections, BreakerPending, BreakerRequests, BreakerRetries} {
		s.overloaded[b] = m.overloaded.WithLabelValues(dir, svc, b)
	}
	s.conns = m.conns.WithLabelValues(dir, svc)
	s.active = m.active.WithLabelValues(dir, svc)
	return s
}

// request records one finished request.
func (s *serviceMetrics) request(code int, start time.Time) {
	i := code / 100
	if code == StatusClientClosed || i < 1 || i > 5 {
		i = 0
	}
	s.codes[i].Inc()
	s.duration.Observe(time.Since(start).Seconds())
}

func (s *serviceMetrics) reject(reason string) {
	s.m.rejected.WithLabelValues(s.dir, s.svc, reason).Inc()
}

// watchBalancer makes the balancer's endpoints visible as podmesh_lb_* series.
func (m *Metrics) watchBalancer(service string, b Balancer) {
	m.mu.Lock()
	m.balancers[service] = b
	m.mu.Unlock()
}

// lbCollector reads the balancers' hosts at scrape time.
type lbCollector Metrics

var (
	lbEndpointsDesc = prometheus.NewDesc("podmesh_lb_endpoints",
		"Endpoints of an upstream by state (ready, ejected).", []string{"service", "state"}, nil)
	lbEjectionsDesc = prometheus.NewDesc("podmesh_lb_ejections_total",
		"Outlier ejections of an upstream's endpoints.", []string{"service"}, nil)
)

func (c *lbCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lbEndpointsDesc
	ch <- lbEjectionsDesc
}

func (c *lbCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for svc, b := range c.balancers {
		st, ok := b.(statser)
		if !ok {
			continue
		}
		s := st.Stats()
		ch <- prometheus.MustNewConstMetric(lbEndpointsDesc, prometheus.GaugeValue, float64(s.Ready), svc, "ready")
		ch <- prometheus.MustNewConstMetric(lbEndpointsDesc, prometheus.GaugeValue, float64(s.Ejected), svc, "ejected")
		ch <- prometheus.MustNewConstMetric(lbEjectionsDesc, prometheus.CounterValue, float64(s.EjectionsTotal), svc)
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
