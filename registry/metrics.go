package registry

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/podmesh/podmesh/registry/state"
)

type metrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	blocking  prometheus.Gauge
	checkRuns *prometheus.CounterVec
	leaves    prometheus.Counter
	rotations *prometheus.CounterVec
	authorize *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry, store *state.Store) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_registry_http_requests_total",
			Help: "HTTP API requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podmesh_registry_http_request_duration_seconds",
			Help:    "HTTP API request latency by route pattern; blocking queries include their wait.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30, 120, 600},
		}, []string{"route"}),
		blocking: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podmesh_registry_blocking_queries",
			Help: "Blocking queries currently waiting for a change.",
		}),
		checkRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_registry_check_runs_total",
			Help: "Health check runs by check type and result status.",
		}, []string{"type", "result"}),
		leaves: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podmesh_registry_connect_leaf_certs_issued_total",
			Help: "Leaf certificates issued by the mesh CA.",
		}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_registry_connect_root_rotations_total",
			Help: "Mesh CA root rotations by cause: config (a PrivateKey change) or rotation_period.",
		}, []string{"reason"}),
		authorize: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_registry_connect_authorize_total",
			Help: "Decisions of POST /v1/agent/connect/authorize, allow or deny.",
		}, []string{"decision"}),
	}
	for _, c := range []prometheus.Collector{
		m.requests, m.latency, m.blocking, m.checkRuns, m.leaves, m.rotations, m.authorize,
		&instancesCollector{store: store}, &connectCollector{store: store},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registry: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observe(route, method string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, metricMethod(method), strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
}

// metricMethod bounds the method label: the methods of HTTP, and "other" for anything else a
// client sends (a label value per invented method would grow without bound).
func metricMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodPatch, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// instancesCollector counts service instances by aggregated health at scrape time, with
// consul/api's HealthChecks.AggregatedStatus rules (maintenance wins, then critical, then
// warning).
type instancesCollector struct {
	store *state.Store
}

var instancesDesc = prometheus.NewDesc("podmesh_registry_instances",
	"Service instances in the catalog by aggregated health status.", []string{"status"}, nil)

func (c *instancesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- instancesDesc }

func (c *instancesCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{"passing": 0, "warning": 0, "critical": 0, "maintenance": 0}
	c.store.View(func(v *state.View) {
		for _, sv := range v.AllServices() {
			counts[aggregatedStatus(v.InstanceChecks(sv))]++
		}
	})
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(n), st)
	}
}

func aggregatedStatus(cs []*state.Check) string {
	var warning, critical bool
	for _, c := range cs {
		if c.CheckID == state.NodeMaintCheckID || strings.HasPrefix(c.CheckID, state.ServiceMaintPrefix) {
			return "maintenance"
		}
		switch c.Status {
		case state.HealthCritical:
			critical = true
		case state.HealthWarning:
			warning = true
		}
	}
	switch {
	case critical:
		return "critical"
	case warning:
		return "warning"
	default:
		return "passing"
	}
}

// connectCollector reports the intentions and trusted roots at scrape time.
type connectCollector struct {
	store *state.Store
}

var (
	intentionsDesc = prometheus.NewDesc("podmesh_registry_connect_intentions",
		"Intentions stored.", nil, nil)
	caRootsDesc = prometheus.NewDesc("podmesh_registry_connect_ca_roots",
		"Roots in the mesh CA's trust bundle (more than one during a rotation).", nil, nil)
)

func (c *connectCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- intentionsDesc
	ch <- caRootsDesc
}

func (c *connectCollector) Collect(ch chan<- prometheus.Metric) {
	var ixns, roots int
	c.store.View(func(v *state.View) {
		ixns = v.IntentionCount()
		if l := v.CARoots(); l != nil {
			roots = len(l.Roots)
		}
	})
	ch <- prometheus.MustNewConstMetric(intentionsDesc, prometheus.GaugeValue, float64(ixns))
	ch <- prometheus.MustNewConstMetric(caRootsDesc, prometheus.GaugeValue, float64(roots))
}
