package tracing

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/podmesh/podmesh/internal/testutil"
)

// fakeExporter records what it is given. It fails with fail when set, and when block is
// non-nil it waits for block to close (or ctx to end) before answering.
type fakeExporter struct {
	mu       sync.Mutex
	spans    tracetest.SpanStubs
	calls    int
	fail     error
	block    chan struct{}
	shutdown bool
}

func (e *fakeExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	e.calls++
	block, fail := e.block, e.fail
	e.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail != nil {
		return fail
	}
	e.mu.Lock()
	e.spans = append(e.spans, tracetest.SpanStubsFromReadOnlySpans(spans)...)
	e.mu.Unlock()
	return nil
}

func (e *fakeExporter) Shutdown(context.Context) error {
	e.mu.Lock()
	e.shutdown = true
	e.mu.Unlock()
	return nil
}

func (e *fakeExporter) Spans() tracetest.SpanStubs {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append(tracetest.SpanStubs(nil), e.spans...)
}

// newTestTracer builds a Tracer exporting to a fakeExporter; the service name defaults to
// "frontend" and the tracer is shut down when the test ends.
func newTestTracer(t testing.TB, cfg Config) (*Tracer, *fakeExporter) {
	t.Helper()
	exp := &fakeExporter{}
	cfg.Exporter = exp
	if cfg.ServiceName == "" {
		cfg.ServiceName = "frontend"
	}
	tr, err := New(testutil.Context(t, 5*time.Second), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr, exp
}

// flushed flushes tr and returns what exp received.
func flushed(t testing.TB, tr *Tracer, exp *fakeExporter) tracetest.SpanStubs {
	t.Helper()
	if err := tr.Flush(testutil.Context(t, 5*time.Second)); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	return exp.Spans()
}

// attrs turns a span's attributes into a map of their emitted values.
func attrs(kvs []attribute.KeyValue) map[string]any {
	m := map[string]any{}
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}

func mustTraceID(t testing.TB, s string) trace.TraceID {
	t.Helper()
	id, err := trace.TraceIDFromHex(s)
	if err != nil {
		t.Fatalf("trace ID %q: %v", s, err)
	}
	return id
}

func mustSpanID(t testing.TB, s string) trace.SpanID {
	t.Helper()
	id, err := trace.SpanIDFromHex(s)
	if err != nil {
		t.Fatalf("span ID %q: %v", s, err)
	}
	return id
}

// header builds an http.Header from key/value pairs, canonicalising keys as net/http does.
func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// clearOTELEnv unsets the variables that would turn a zero Config on, for the test.
func clearOTELEnv(t testing.TB) {
	for _, k := range []string{EnvEndpoint, EnvTracesEndpoint, EnvSDKDisabled} {
		t.Setenv(k, "")
	}
}
