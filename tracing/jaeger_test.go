package tracing

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/jaegertest"
	"github.com/podmesh/podmesh/internal/testutil"
)

// The parts of Jaeger's /api/traces answer the test reads.
type jaegerTraces struct {
	Data []struct {
		TraceID string `json:"traceID"`
		Spans   []struct {
			SpanID        string `json:"spanID"`
			OperationName string `json:"operationName"`
			References    []struct {
				RefType string `json:"refType"`
				SpanID  string `json:"spanID"`
			} `json:"references"`
			Tags []struct {
				Key   string `json:"key"`
				Value any    `json:"value"`
			} `json:"tags"`
			Logs []struct {
				Fields []struct {
					Key   string `json:"key"`
					Value any    `json:"value"`
				} `json:"fields"`
			} `json:"logs"`
			ProcessID string `json:"processID"`
		} `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

func getJSON(url string, v any) error {
	res, err := http.Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s: %s", url, res.Status, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, v)
}

// TestJaeger: a request crosses two sidecars ("frontend" and "catalog", each its own
// Tracer exporting to a real Jaeger over OTLP/HTTP) through real HTTP servers on loopback:
//
//	client → frontend inbound → frontend app → frontend outbound ─attempt 1→ (refused)
//	                                                             ─attempt 2→ catalog inbound → catalog app
//
// Jaeger's API must show one trace with the client's trace ID, five spans from the two
// services, each parented as drawn. Once with W3C headers from the client (sidecars
// propagating every format), once with B3 (sidecars propagating B3 only, as a
// Zipkin-style mesh would).
func TestJaeger(t *testing.T) {
	otlp, query := jaegertest.Start(t)
	for _, tc := range []struct {
		name        string
		traceID     string
		client      http.Header
		propagation Propagation
	}{
		{name: "w3c", traceID: w3cTrace, client: header("traceparent", "00-"+w3cTrace+"-"+w3cSpan+"-01")},
		{name: "b3", traceID: b3Trace, client: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Sampled", "1"),
			propagation: PropagateB3Single | PropagateB3Multi},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runTwoHops(t, otlp, query, tc.traceID, tc.client, tc.propagation)
		})
	}
}

func runTwoHops(t *testing.T, otlp, query, traceID string, clientHeaders http.Header, prop Propagation) {
	newTracer := func(service string) *Tracer {
		tr, err := New(testutil.Context(t, 5*time.Second), Config{ServiceName: service, InstanceID: service + "-1",
			Endpoint: otlp, Propagation: prop, BatchDelay: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
		return tr
	}
	fe, cat := newTracer("frontend"), newTracer("catalog")
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)

	// The catalog app records the trace headers it gets.
	var (
		mu       sync.Mutex
		appSaw   http.Header
		closedEP = testutil.FreePort(t) // nothing listens: attempt 1 is refused
	)
	catApp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		appSaw = r.Header.Clone()
		mu.Unlock()
		io.WriteString(w, "items")
	}))
	defer catApp.Close()
	// An inbound sidecar: server span, its context to the app, response back.
	inbound := func(tr *Tracer, source, app string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, span := tr.StartInbound(r.Context(), r, source)
			req, _ := http.NewRequestWithContext(ctx, r.Method, app+r.URL.Path, nil)
			tr.Inject(ctx, req.Header)
			res, err := client.Do(req)
			if err != nil {
				span.End(Result{Err: err})
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer res.Body.Close()
			w.WriteHeader(res.StatusCode)
			n, _ := io.Copy(w, res.Body)
			span.End(Result{Status: res.StatusCode, ResponseBytes: n})
		})
	}
	catIn := httptest.NewServer(inbound(cat, "frontend", catApp.URL))
	defer catIn.Close()

	// The frontend's outbound sidecar: outbound span, attempts with a retry.
	feOut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, span := fe.StartOutbound(r.Context(), r, "catalog")
		for i, ep := range []string{closedEP, catIn.Listener.Addr().String()} {
			out := r.Clone(ctx)
			out.RequestURI, out.URL.Scheme, out.URL.Host, out.Host = "", "http", ep, "catalog"
			actx, a := fe.StartAttempt(ctx, out, "catalog", i+1)
			res, err := client.Do(out.WithContext(actx))
			if err != nil {
				a.Ejected(ep, "connect-failure")
				a.End(Result{Err: err})
				span.Retry(i+2, "connect-failure")
				continue
			}
			w.WriteHeader(res.StatusCode)
			n, _ := io.Copy(w, res.Body)
			res.Body.Close()
			a.End(Result{Status: res.StatusCode, ResponseBytes: n})
			span.End(Result{Status: res.StatusCode, ResponseBytes: n})
			return
		}
		span.End(Result{Status: http.StatusBadGateway})
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer feOut.Close()
	// The frontend app forwards the trace headers it received, as instrumented apps do.
	feApp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, feOut.URL+"/items", nil)
		for _, k := range traceHeaders {
			if v, ok := r.Header[k]; ok {
				req.Header[k] = v
			}
		}
		res, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer res.Body.Close()
		w.WriteHeader(res.StatusCode)
		io.Copy(w, res.Body)
	}))
	defer feApp.Close()
	feIn := httptest.NewServer(inbound(fe, "", feApp.URL))
	defer feIn.Close()

	req, _ := http.NewRequest(http.MethodGet, feIn.URL+"/items", nil)
	for k, v := range clientHeaders {
		req.Header[k] = v
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(body) != "items" {
		t.Fatalf("request: %s %q", res.Status, body)
	}
	for _, tr := range []*Tracer{fe, cat} {
		if err := tr.Flush(testutil.Context(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		if st := tr.Stats(); st.Exported != st.Started || st.Dropped() != 0 {
			t.Errorf("stats %+v: want every span exported", st)
		}
	}
	if prop == PropagateB3Single|PropagateB3Multi {
		mu.Lock()
		if appSaw.Get("traceparent") != "" || appSaw.Get("b3") == "" || appSaw.Get("X-B3-TraceId") != traceID {
			t.Errorf("with B3-only propagation the catalog app got %v", appSaw)
		}
		mu.Unlock()
	}

	// Jaeger: one trace, five spans, two services, parented as drawn.
	var tr jaegerTraces
	testutil.Eventually(t, 20*time.Second, 100*time.Millisecond, func() error {
		tr = jaegerTraces{}
		if err := getJSON(query+"/api/traces/"+traceID, &tr); err != nil {
			return err
		}
		if len(tr.Data) != 1 || len(tr.Data[0].Spans) != 5 {
			n := 0
			if len(tr.Data) > 0 {
				n = len(tr.Data[0].Spans)
			}
			return fmt.Errorf("%d traces, %d spans; want 1 trace of 5 spans", len(tr.Data), n)
		}
		return nil
	})
	d := tr.Data[0]
	if d.TraceID != traceID {
		t.Errorf("trace ID %s, want %s", d.TraceID, traceID)
	}
	type span struct{ id, parent, service, kind, direction, op string }
	var spans []span
	retryEvents, ejections := 0, 0
	for _, s := range d.Spans {
		sp := span{id: s.SpanID, service: d.Processes[s.ProcessID].ServiceName, op: s.OperationName}
		for _, r := range s.References {
			if r.RefType == "CHILD_OF" {
				sp.parent = r.SpanID
			}
		}
		for _, tag := range s.Tags {
			switch tag.Key {
			case "span.kind":
				sp.kind = fmt.Sprint(tag.Value)
			case "podmesh.direction":
				sp.direction = fmt.Sprint(tag.Value)
			}
		}
		for _, l := range s.Logs {
			for _, f := range l.Fields {
				if f.Key == "event" && f.Value == EventRetry {
					retryEvents++
				}
				if f.Key == "event" && f.Value == EventEjection {
					ejections++
				}
			}
		}
		spans = append(spans, sp)
	}
	find := func(service, kind, direction string) []span {
		var out []span
		for _, s := range spans {
			if s.service == service && s.kind == kind && s.direction == direction {
				out = append(out, s)
			}
		}
		return out
	}
	feIns, feOuts := find("frontend", "server", "inbound"), find("frontend", "server", "outbound")
	attempts, catIns := find("frontend", "client", "outbound"), find("catalog", "server", "inbound")
	if len(feIns) != 1 || len(feOuts) != 1 || len(attempts) != 2 || len(catIns) != 1 {
		t.Fatalf("spans %+v: want frontend inbound, frontend outbound, 2 frontend attempts, catalog inbound", spans)
	}
	client0 := w3cSpan
	if prop != 0 {
		client0 = b3Span
	}
	if feIns[0].parent != client0 {
		t.Errorf("frontend inbound parent %s, want the client's span %s", feIns[0].parent, client0)
	}
	if feOuts[0].parent != feIns[0].id {
		t.Errorf("frontend outbound parent %s, want frontend inbound %s (through the app's forwarded headers)", feOuts[0].parent, feIns[0].id)
	}
	for _, a := range attempts {
		if a.parent != feOuts[0].id {
			t.Errorf("attempt %s parent %s, want frontend outbound %s", a.id, a.parent, feOuts[0].id)
		}
	}
	if p := catIns[0].parent; p != attempts[0].id && p != attempts[1].id {
		t.Errorf("catalog inbound parent %s, want one of the attempts %s %s", p, attempts[0].id, attempts[1].id)
	}
	if retryEvents != 1 || ejections != 1 {
		t.Errorf("%d retry and %d ejection events, want 1 and 1", retryEvents, ejections)
	}
	mu.Lock()
	if saw := appSaw.Get("X-B3-SpanId"); saw != catIns[0].id {
		t.Errorf("catalog app got parent span %q, want catalog inbound %s", saw, catIns[0].id)
	}
	mu.Unlock()

	// Search by service finds the trace for both services.
	for _, svc := range []string{"frontend", "catalog"} {
		var found jaegerTraces
		if err := getJSON(query+"/api/traces?limit=50&lookback=1h&service="+svc, &found); err != nil {
			t.Fatal(err)
		}
		ok := false
		for _, d := range found.Data {
			ok = ok || strings.EqualFold(d.TraceID, traceID)
		}
		if !ok {
			t.Errorf("/api/traces?service=%s does not list trace %s", svc, traceID)
		}
	}
}
