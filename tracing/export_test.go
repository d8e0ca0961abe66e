package tracing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/podmesh/podmesh/internal/testutil"
)

// endSpans starts and ends n sampled spans through the outbound helper.
func endSpans(tr *Tracer, n int) {
	r := httptest.NewRequest(http.MethodGet, "http://catalog/", nil)
	for range n {
		_, s := tr.StartOutbound(context.Background(), r, "catalog")
		s.End(Result{Status: 200})
	}
}

// TestShutdownFlushes: spans waiting for a batch that would not be sent for an hour are
// exported by Shutdown, the exporter is shut down, nothing is left running, and a second
// Shutdown says so.
func TestShutdownFlushes(t *testing.T) {
	testutil.CheckGoroutines(t)
	exp := &fakeExporter{}
	tr, err := New(context.Background(), Config{ServiceName: "s", Exporter: exp, BatchDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	endSpans(tr, 10)
	if got := len(exp.Spans()); got != 0 {
		t.Fatalf("%d spans exported before the batch was due", got)
	}
	if err := tr.Shutdown(testutil.Context(t, 5*time.Second)); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := len(exp.Spans()); got != 10 {
		t.Errorf("Shutdown exported %d spans, want 10", got)
	}
	if !exp.shutdown {
		t.Error("exporter not shut down")
	}
	st := tr.Stats()
	if st.Started != 10 || st.Exported != 10 || st.Dropped() != 0 {
		t.Errorf("stats %+v, want 10 started and exported", st)
	}
	if err := tr.Shutdown(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Shutdown: %v, want net.ErrClosed", err)
	}
	endSpans(tr, 1) // after Shutdown: harmless, not exported
	if got := len(exp.Spans()); got != 10 {
		t.Errorf("%d spans exported after Shutdown, want still 10", got)
	}
}

// TestBatching: a full batch goes at once; a partial one after BatchDelay.
func TestBatching(t *testing.T) {
	exp := &fakeExporter{}
	tr, err := New(context.Background(), Config{ServiceName: "s", Exporter: exp, BatchSize: 3, BatchDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	endSpans(tr, 3)
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := len(exp.Spans()); n != 3 {
			return fmt.Errorf("%d spans exported, want the full batch of 3", n)
		}
		return nil
	})
	endSpans(tr, 1)
	time.Sleep(50 * time.Millisecond)
	if n := len(exp.Spans()); n != 3 {
		t.Fatalf("%d spans exported; a partial batch went before its delay", n)
	}

	exp2 := &fakeExporter{}
	tr2, err := New(context.Background(), Config{ServiceName: "s", Exporter: exp2, BatchSize: 100, BatchDelay: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Shutdown(context.Background())
	endSpans(tr2, 1)
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := len(exp2.Spans()); n != 1 {
			return fmt.Errorf("%d spans exported, want the partial batch after its delay", n)
		}
		return nil
	})
}

// TestQueueFullDropsAndCounts: while the exporter hangs, ending spans never blocks; what
// does not fit in the queue is dropped and counted.
func TestQueueFullDropsAndCounts(t *testing.T) {
	testutil.CheckGoroutines(t)
	exp := &fakeExporter{block: make(chan struct{})}
	tr, err := New(context.Background(), Config{ServiceName: "s", Exporter: exp, QueueSize: 4, BatchSize: 1, ExportTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { endSpans(tr, 100); close(done) }()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.Fatal("ending spans blocked on a hung exporter")
	}
	st := tr.Stats()
	if st.Started != 100 || st.DroppedQueueFull < 90 || st.Exported != 0 {
		t.Errorf("stats %+v: want 100 started, >= 90 dropped for a full queue (4 queued, 1 in export)", st)
	}
	close(exp.block)
	if err := tr.Shutdown(testutil.Context(t, 5*time.Second)); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	st = tr.Stats()
	if st.Exported+st.Dropped() != st.Started {
		t.Errorf("stats %+v: exported + dropped != started", st)
	}
}

// TestExportFailuresCounted: a failing exporter costs the batch, counted as an export error
// and dropped spans, logged once; when it recovers, that is logged once too.
func TestExportFailuresCounted(t *testing.T) {
	exp := &fakeExporter{fail: errors.New("collector down")}
	var logs syncBuffer
	tr, err := New(context.Background(), Config{ServiceName: "s", Exporter: exp,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	for range 3 {
		endSpans(tr, 5)
		if err := tr.Flush(testutil.Context(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	st := tr.Stats()
	if st.ExportErrors != 3 || st.DroppedExportFailed != 15 || st.Exported != 0 {
		t.Errorf("stats %+v, want 3 export errors and 15 spans dropped", st)
	}
	exp.mu.Lock()
	exp.fail = nil
	exp.mu.Unlock()
	endSpans(tr, 2)
	if err := tr.Flush(testutil.Context(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if st := tr.Stats(); st.Exported != 2 {
		t.Errorf("exported %d after recovery, want 2", st.Exported)
	}
	out := logs.String()
	if strings.Count(out, "export failing") != 1 || strings.Count(out, "recovered") != 1 || !strings.Contains(out, "collector down") {
		t.Errorf("log:\n%s\nwant one failure line with the error and one recovery line", out)
	}
}

// TestShutdownDeadlineAbortsHungExport: when the collector hangs, Shutdown returns at its
// deadline, abandons the export, and leaves no goroutine behind.
func TestShutdownDeadlineAbortsHungExport(t *testing.T) {
	testutil.CheckGoroutines(t)
	exp := &fakeExporter{block: make(chan struct{})}
	tr, err := New(context.Background(), Config{ServiceName: "s", Exporter: exp, BatchSize: 2, ExportTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	endSpans(tr, 6)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = tr.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want the deadline error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown took %v despite a 100ms deadline", d)
	}
	if st := tr.Stats(); st.Exported+st.Dropped() != 6 || st.DroppedExportFailed == 0 {
		t.Errorf("stats %+v: want every span accounted for, the abandoned ones as export failures", st)
	}
}

// TestCollectorRefusing: the OTLP endpoint is a closed port. Requests through an
// instrumented handler all succeed; export errors and dropped spans are counted.
func TestCollectorRefusing(t *testing.T) {
	testutil.CheckGoroutines(t)
	tr, err := New(context.Background(), Config{ServiceName: "catalog", Endpoint: testutil.FreePort(t),
		BatchDelay: 5 * time.Millisecond, BatchSize: 10, ExportTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv, client := instrumentedServer(t, tr)
	sendRequests(t, srv.URL, client, 100, 4, 10*time.Second)
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st := tr.Stats(); st.ExportErrors == 0 || st.DroppedExportFailed == 0 {
			return fmt.Errorf("stats %+v: no export errors counted yet", st)
		}
		return nil
	})
	if err := tr.Shutdown(testutil.Context(t, 5*time.Second)); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if st := tr.Stats(); st.Started != 100 || st.Exported != 0 || st.Dropped() != 100 {
		t.Errorf("stats %+v: want all 100 spans dropped", st)
	}
}

// TestCollectorHung: the collector accepts connections and never answers. With a tiny
// queue, 300 requests still complete within 5 s in total: a generous bound, not a speed
// assertion; a request path that waited for the export would take the 30 s export timeout
// for the first request that found the queue full. The queue-full drops are counted, in
// Stats and in the podmesh_tracing_spans_dropped_total metric, and Shutdown at its deadline
// leaves nothing running.
func TestCollectorHung(t *testing.T) {
	testutil.CheckGoroutines(t)
	hung := hungListener(t)
	tr, err := New(context.Background(), Config{ServiceName: "catalog", Endpoint: hung,
		QueueSize: 8, BatchSize: 4, BatchDelay: time.Millisecond, ExportTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := tr.Register(reg); err != nil {
		t.Fatal(err)
	}
	srv, client := instrumentedServer(t, tr)
	sendRequests(t, srv.URL, client, 300, 4, 5*time.Second)

	st := tr.Stats()
	if st.Started != 300 || st.DroppedQueueFull == 0 || st.Exported != 0 {
		t.Errorf("stats %+v: want 300 started and queue-full drops", st)
	}
	if got := metricValue(t, reg, "podmesh_tracing_spans_dropped_total", "queue_full"); got != float64(st.DroppedQueueFull) || got == 0 {
		t.Errorf("podmesh_tracing_spans_dropped_total{reason=queue_full} = %v, want %d", got, st.DroppedQueueFull)
	}
	if got := metricValue(t, reg, "podmesh_tracing_spans_started_total", ""); got != 300 {
		t.Errorf("podmesh_tracing_spans_started_total = %v, want 300", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := tr.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a hung collector: %v, want the deadline error", err)
	}
}

// TestRegisterOff: an off Tracer still registers every series, at zero.
func TestRegisterOff(t *testing.T) {
	var tr *Tracer
	reg := prometheus.NewRegistry()
	if err := tr.Register(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	want := "podmesh_tracing_export_errors_total podmesh_tracing_queue_capacity_spans podmesh_tracing_queue_spans " +
		"podmesh_tracing_spans_dropped_total podmesh_tracing_spans_exported_total podmesh_tracing_spans_started_total"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("metrics:\n %s\nwant\n %s", got, want)
	}
}

// instrumentedServer is a loopback server whose handler does what the sidecar's inbound
// path does: a server span around the request.
func instrumentedServer(t *testing.T, tr *Tracer) (*httptest.Server, *http.Client) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, span := tr.StartInbound(r.Context(), r, "frontend")
		n, _ := io.WriteString(w, "ok")
		span.End(Result{Status: 200, ResponseBytes: int64(n)})
	}))
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(func() {
		client.CloseIdleConnections()
		srv.Close()
	})
	return srv, client
}

// sendRequests sends n GETs from workers goroutines and fails the test unless all succeed
// within bound.
func sendRequests(t *testing.T, url string, client *http.Client, n, workers int, bound time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	jobs := make(chan int, n)
	for i := range n {
		jobs <- i
	}
	close(jobs)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for range jobs {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				res, err := client.Do(req)
				if err != nil {
					errs <- err
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					errs <- fmt.Errorf("status %d", res.StatusCode)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	failed := 0
	var first error
	for err := range errs {
		if first == nil {
			first = err
		}
		failed++
	}
	if failed > 0 {
		t.Fatalf("%d of %d requests failed within %v (took %v); first: %v", failed, n, bound, time.Since(start), first)
	}
}

// hungListener accepts connections on loopback, reads nothing and never answers, until the
// test ends.
func hungListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// metricValue returns the value of the named counter or gauge (with reason label value, if
// not empty) gathered from reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason != "" && !hasLabel(m, "reason", reason) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s{reason=%q} not found", name, reason)
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// syncBuffer is a bytes.Buffer safe for the export goroutine and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
