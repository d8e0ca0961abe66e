package tracing

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// benchTracers are the three costs to compare: off, on but not sampled, sampled (exporting
// to a no-op exporter, so the numbers are this package and the SDK, not the network).
func benchTracers(b *testing.B) map[string]*Tracer {
	clearOTELEnv(b)
	off, err := New(context.Background(), Config{})
	if err != nil {
		b.Fatal(err)
	}
	m := map[string]*Tracer{"off": off}
	for name, ratio := range map[string]float64{"unsampled": -1, "sampled": 1} {
		tr, err := New(context.Background(), Config{ServiceName: "frontend", SampleRatio: ratio,
			Exporter: tracetest.NewNoopExporter()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
		m[name] = tr
	}
	return m
}

// BenchmarkInbound is the inbound path: a request arrives with a traceparent (sampled, or
// not for the unsampled case), the server span starts, its context goes to the app, it ends.
func BenchmarkInbound(b *testing.B) {
	for _, name := range []string{"off", "unsampled", "sampled"} {
		tr := benchTracers(b)[name]
		b.Run(name, func(b *testing.B) {
			flags := "-01"
			if name == "unsampled" {
				flags = "-00"
			}
			r := httptest.NewRequest(http.MethodGet, "http://catalog/items", nil)
			r.Header.Set("traceparent", "00-"+w3cTrace+"-"+w3cSpan+flags)
			toApp := http.Header{"Accept": {"*/*"}}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				c, s := tr.StartInbound(ctx, r, "frontend")
				tr.Inject(c, toApp)
				s.End(Result{Status: 200, ResponseBytes: 512})
			}
		})
	}
}

// BenchmarkOutbound is the outbound path of an app that sends no trace headers: the
// outbound span (a new trace at ratio) and one attempt, injected into the request sent on.
func BenchmarkOutbound(b *testing.B) {
	for _, name := range []string{"off", "unsampled", "sampled"} {
		tr := benchTracers(b)[name]
		b.Run(name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, "http://catalog/items", nil)
			out := r.Clone(context.Background())
			out.URL.Host = "10.0.0.2:21000"
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				c, s := tr.StartOutbound(ctx, r, "catalog")
				_, a := tr.StartAttempt(c, out, "catalog", 1)
				a.End(Result{Status: 200, ResponseBytes: 512})
				s.End(Result{Status: 200, ResponseBytes: 512})
			}
		})
	}
}

// BenchmarkExtract measures header parsing alone, per format.
func BenchmarkExtract(b *testing.B) {
	for name, h := range map[string]http.Header{
		"w3c":     header("traceparent", "00-"+w3cTrace+"-"+w3cSpan+"-01"),
		"b3":      header("b3", b3Trace+"-"+b3Span+"-1"),
		"b3multi": header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Sampled", "1"),
		"none":    header("Accept", "*/*"),
	} {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				_ = Extract(ctx, h)
			}
		})
	}
}
