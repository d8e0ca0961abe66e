package registry

import (
	"fmt"
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
}

func newMetrics(reg *prometheus.Registry, store *state.Store) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_registry_http_requests_total",
			Help: "HTTP API requests by route pattern and status code.",
		}, []string{"route", "code"}),
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
	}
	for _, c := range []prometheus.Collector{
		m.requests, m.latency, m.blocking, m.checkRuns, &instancesCollector{store: store},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registry: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observe(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
}

// instancesCollector counts service instances by aggregated health at scrape time, with
// consul/api's HealthChecks.AggregatedStatus rules (maintenance wins, then critical, then
// warning).
type instancesCollector struct {
	store *state.Store
}

var instancesDesc = prometheus.NewDesc("podmesh_registry_instances",
	"Service instances in the catalog by aggregated health state.", []string{"state"}, nil)

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
