package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
	"github.com/podmesh/podmesh/tracing"
)

func TestLabelIndexes(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string
	}{
		{"", ""}, {"0", "OK"}, {"1", "CANCELLED"}, {"2", "UNKNOWN"}, {"3", "INVALID_ARGUMENT"},
		{"9", "FAILED_PRECONDITION"}, {"10", "ABORTED"}, {"14", "UNAVAILABLE"}, {"16", "UNAUTHENTICATED"},
		{"17", "UNKNOWN"}, {"99", "UNKNOWN"}, {"-1", "UNKNOWN"}, {"x", "UNKNOWN"}, {"007", "UNKNOWN"},
	} {
		if got := GRPCStatusName(c.in); got != c.want {
			t.Errorf("GRPCStatusName(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	for code, want := range map[int]string{100: "1xx", 204: "2xx", 304: "3xx", 404: "4xx",
		StatusClientClosed: "4xx", 503: "5xx", 0: "5xx", 600: "5xx", 99: "5xx"} {
		if got := classLabels[classIndex(code)]; got != want {
			t.Errorf("class of %d = %s, want %s", code, got, want)
		}
	}
	for m, want := range map[string]string{"GET": "GET", "PATCH": "PATCH", "TRACE": "TRACE",
		"get": "other", "PROPFIND": "other", "": "other"} {
		if got := methodLabels[methodIndex(m)]; got != want {
			t.Errorf("method %q = %s, want %s", m, got, want)
		}
	}
}

// gather returns the label values of name's series, keyed by label name.
func gather(t *testing.T, reg *prometheus.Registry, name string) []map[string]string {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]string
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			out = append(out, labelMap(m))
		}
	}
	return out
}

func labelMap(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	if m.Counter != nil {
		l["="] = fmt.Sprint(m.Counter.GetValue())
	}
	return l
}

// More than MaxSourceLabels callers: the first 256 keep their names, the rest are "other".
func TestSourceLabelCap(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		m.pair(DirInbound, fmt.Sprintf("svc%03d", i), "db").request("GET", 200, "", 0, 0, time.Millisecond)
	}
	// A known source stays known after the cap.
	m.pair(DirInbound, "svc000", "db").request("GET", 200, "", 0, 0, time.Millisecond)
	sources := map[string]string{}
	for _, l := range gather(t, reg, "podmesh_requests_total") {
		sources[l["source"]] = l["="]
	}
	if len(sources) != MaxSourceLabels+1 {
		t.Errorf("%d source values, want %d", len(sources), MaxSourceLabels+1)
	}
	if sources[OtherSource] != "44" || sources["svc000"] != "2" || sources["svc255"] != "1" || sources["svc256"] != "" {
		t.Errorf("other=%s svc000=%s svc255=%s svc256=%q", sources[OtherSource], sources["svc000"], sources["svc255"], sources["svc256"])
	}
	if n := len(*m.pairs.Load()); n > MaxSourceLabels+1 {
		t.Errorf("%d pairs cached", n)
	}
}

// An outbound request retried once after a 500: one outbound SERVER span with a retry
// event, two attempt CLIENT spans under it (the first with the ejection its 500 caused),
// each parent of the peer sidecar's inbound span; metrics count the retry, the ejection and
// the request with its method, class and bytes.
func TestTracingRetryAndEjection(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tr, err := tracing.New(t.Context(), tracing.Config{ServiceName: "web", Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	inExp := tracetest.NewInMemoryExporter()
	inTr, err := tracing.New(t.Context(), tracing.Config{ServiceName: "db", Exporter: inExp})
	if err != nil {
		t.Fatal(err)
	}
	defer inTr.Shutdown(context.Background())

	var mu sync.Mutex
	var seen []string // traceparent the apps saw
	saw := func(r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Traceparent"))
		mu.Unlock()
	}
	bad := startApp(t, "bad", func(w http.ResponseWriter, r *http.Request) {
		saw(r)
		http.Error(w, "boom", 500)
	})
	good := startApp(t, "good", func(w http.ResponseWriter, r *http.Request) {
		saw(r)
		io.WriteString(w, "fine")
	})
	badIn, _ := startInbound(t, InboundConfig{Service: "db", Protocol: HTTP, App: bad.addr, Tracer: inTr})
	goodIn, _ := startInbound(t, InboundConfig{Service: "db", Protocol: HTTP, App: good.addr, Tracer: inTr})
	reg := prometheus.NewRegistry()
	m, _ := NewMetrics(reg)
	bal, err := lb.New(lb.Config{Policy: lb.RoundRobin, Outlier: lb.OutlierConfig{Consecutive5xx: 1}})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startUpstream(t, UpstreamConfig{Name: "db", Source: "web", Protocol: HTTP, Balancer: bal,
		Metrics: m, Tracer: tr, Policy: Policy{RetryOn: Retry5xx}},
		[]lb.Endpoint{endpoint("bad", badIn, HTTP), endpoint("good", goodIn, HTTP)})

	// Round robin starts at either host: send until a request met the bad one first.
	// Each request in a trace of its own; the last one is the retried one.
	sent, traceID := 0, ""
	for i := 0; i < 4 && bad.hits.Load() == 0; i++ {
		sent++
		traceID = fmt.Sprintf("0af7651916cd43dd8448eb211c8031%02x", i)
		req, _ := http.NewRequest("POST", "http://"+addr+"/x", strings.NewReader("hello"))
		req.Header.Set("Traceparent", "00-"+traceID+"-b7ad6b7169203331-01")
		res, err := client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(body) != "fine" {
			t.Fatalf("%d %q", res.StatusCode, body)
		}
	}
	if bad.hits.Load() != 1 {
		t.Fatalf("bad instance hit %d times", bad.hits.Load())
	}
	// Spans end when the handlers return, which can be just after the client got its answer.
	count := func(e *tracetest.InMemoryExporter) (n int) {
		for _, s := range e.GetSpans() {
			if s.SpanContext.TraceID().String() == traceID {
				n++
			}
		}
		return n
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		tr.Flush(t.Context())
		inTr.Flush(t.Context())
		if a, b := count(exp), count(inExp); a != 3 || b != 2 {
			return fmt.Errorf("%d outbound and %d inbound spans in the trace", a, b)
		}
		return nil
	})

	spans := exp.GetSpans()
	var outbound tracetest.SpanStub
	var attempts []tracetest.SpanStub
	for _, s := range spans {
		if s.SpanContext.TraceID().String() != traceID {
			continue
		}
		switch s.SpanKind {
		case trace.SpanKindServer:
			outbound = s
		case trace.SpanKindClient:
			attempts = append(attempts, s)
		}
	}
	if outbound.Parent.SpanID().String() != "b7ad6b7169203331" {
		t.Fatalf("outbound span parent %s, spans %d", outbound.Parent.SpanID(), len(spans))
	}
	retried := false
	for _, e := range outbound.Events {
		retried = retried || e.Name == tracing.EventRetry
	}
	if !retried {
		t.Errorf("no retry event on the outbound span: %+v", outbound.Events)
	}
	if len(attempts) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(attempts))
	}
	ejected := false
	for _, a := range attempts {
		if a.Parent.SpanID() != outbound.SpanContext.SpanID() {
			t.Errorf("attempt parent %s, want the outbound span %s", a.Parent.SpanID(), outbound.SpanContext.SpanID())
		}
		for _, e := range a.Events {
			ejected = ejected || e.Name == tracing.EventEjection
		}
	}
	if !ejected {
		t.Error("no ejection event on an attempt span")
	}
	// The peers' inbound spans are children of the attempts, and the apps got their context.
	var in []tracetest.SpanStub
	for _, s := range inExp.GetSpans() {
		if s.SpanContext.TraceID().String() == traceID {
			in = append(in, s)
		}
	}
	mu.Lock()
	seen = seen[len(seen)-2:]
	mu.Unlock()
	if len(in) != 2 {
		t.Fatalf("%d inbound spans, apps saw %q", len(in), seen)
	}
	for i, s := range in {
		if s.Parent.SpanID() != attempts[0].SpanContext.SpanID() && s.Parent.SpanID() != attempts[1].SpanContext.SpanID() {
			t.Errorf("inbound span %d parent %s is no attempt", i, s.Parent.SpanID())
		}
		if want := "00-" + traceID + "-" + s.SpanContext.SpanID().String() + "-01"; seen[i] != want {
			t.Errorf("app saw traceparent %q, want %q", seen[i], want)
		}
	}

	want := map[string]string{
		"podmesh_retries_total":   "1",
		"podmesh_ejections_total": "1",
	}
	for name, v := range want {
		if l := gather(t, reg, name); len(l) != 1 || l[0]["="] != v || l[0]["source"] != "web" || l[0]["destination"] != "db" {
			t.Errorf("%s: %v", name, l)
		}
	}
	okPost := false
	for _, l := range gather(t, reg, "podmesh_requests_total") {
		if l["direction"] == DirOutbound && l["method"] == "POST" && l["code_class"] == "2xx" && l["grpc_status"] == "" {
			okPost = true
		}
	}
	if !okPost {
		t.Errorf("no outbound POST 2xx: %v", gather(t, reg, "podmesh_requests_total"))
	}
	if l := gather(t, reg, "podmesh_request_bytes_total"); len(l) != 1 || l[0]["="] != fmt.Sprint(5*sent) {
		t.Errorf("request bytes %v, want %d", l, 5*sent)
	}
	if l := gather(t, reg, "podmesh_response_bytes_total"); len(l) != 1 || l[0]["="] != fmt.Sprint(4*sent) {
		t.Errorf("response bytes %v, want %d", l, 4*sent)
	}
}

// BenchmarkRequestMetrics is the metrics work of one finished request (resolved series).
func BenchmarkRequestMetrics(b *testing.B) {
	m, _ := NewMetrics(prometheus.NewRegistry())
	s := m.service(DirInbound, "db", "db")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p := s.from("web")
			p.active.Inc()
			p.active.Dec()
			p.request("GET", 200, "", 100, 1000, time.Millisecond)
		}
	})
}

// FuzzGRPCStatusName: a grpc-status from the network always maps to a label of the
// documented set, the canonical numbers to their own code.
func FuzzGRPCStatusName(f *testing.F) {
	for _, s := range []string{"", "0", "14", "16", "17", "-1", "01", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name := GRPCStatusName(s)
		i := slices.Index(grpcLabels[:], name)
		if i < 0 {
			t.Fatalf("%q → %q, not a label", s, name)
		}
		if n, err := strconv.Atoi(s); err == nil && n >= 0 && n <= 16 && strconv.Itoa(n) == s && i != n+1 {
			t.Fatalf("%q → %q", s, name)
		}
		if (s == "") != (name == "") {
			t.Fatalf("%q → %q", s, name)
		}
	})
}
