package tracing

import "github.com/prometheus/client_golang/prometheus"

// The metrics Register exports; each reads the Tracer's counters at scrape time.
var (
	descStarted = prometheus.NewDesc("podmesh_tracing_spans_started_total",
		"Sampled spans started.", nil, nil)
	descExported = prometheus.NewDesc("podmesh_tracing_spans_exported_total",
		"Spans the trace collector accepted.", nil, nil)
	descDropped = prometheus.NewDesc("podmesh_tracing_spans_dropped_total",
		"Spans dropped instead of exported, by reason: queue_full (the export queue was full "+
			"when the span ended), export_failed (its batch could not be delivered), shutdown "+
			"(it ended after shutdown began).", []string{"reason"}, nil)
	descExportErrors = prometheus.NewDesc("podmesh_tracing_export_errors_total",
		"Export requests that failed (one per batch).", nil, nil)
	descQueued = prometheus.NewDesc("podmesh_tracing_queue_spans",
		"Ended spans waiting for export.", nil, nil)
	descCapacity = prometheus.NewDesc("podmesh_tracing_queue_capacity_spans",
		"Size of the export queue.", nil, nil)
)

// Register adds the podmesh_tracing_* metrics to reg. It works on an off or nil Tracer too
// (every value is then zero), so dashboards find the series either way.
func (t *Tracer) Register(reg prometheus.Registerer) error {
	return reg.Register(collector{t})
}

// collector is a prometheus.Collector over Tracer.Stats.
type collector struct{ t *Tracer }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStarted, descExported, descDropped, descExportErrors, descQueued, descCapacity} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.t.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descStarted, s.Started)
	counter(descExported, s.Exported)
	counter(descDropped, s.DroppedQueueFull, "queue_full")
	counter(descDropped, s.DroppedExportFailed, "export_failed")
	counter(descDropped, s.DroppedShutdown, "shutdown")
	counter(descExportErrors, s.ExportErrors)
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(s.Queued))
	ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(s.QueueCapacity))
}

var _ prometheus.Collector = collector{}
