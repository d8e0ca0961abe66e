package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/podmesh/podmesh/examples/shop/shop"
	"github.com/podmesh/podmesh/internal/testutil"
)

// jaegerConfig runs Jaeger v2 (the binary `make tools` builds from v1.76.0's cmd/jaeger, an
// OpenTelemetry Collector distribution) in memory with only an OTLP/HTTP receiver and the
// query API, on the loopback ports given (its built-in configuration binds a dozen fixed
// ports). The same configuration as tracing/jaeger_test.go.
const jaegerConfig = `
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
  jaeger_query:
    enable_tracing: false
    storage:
      traces: mem
    http:
      endpoint: %s
    grpc:
      endpoint: %s
receivers:
  otlp:
    protocols:
      http:
        endpoint: %s
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startJaeger runs the real Jaeger until the test ends and returns its OTLP/HTTP address
// and query API URL. A start that loses a port race is retried with new ports.
func startJaeger(t *testing.T) (otlpAddr, queryURL string) {
	t.Helper()
	bin := testutil.Tool(t, "jaeger")
	for try := 1; ; try++ {
		otlpAddr, queryAddr, grpcAddr := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
		cfg := filepath.Join(t.TempDir(), "jaeger.yaml")
		if err := os.WriteFile(cfg, fmt.Appendf(nil, jaegerConfig, queryAddr, grpcAddr, otlpAddr), 0o600); err != nil {
			t.Fatal(err)
		}
		logs := &lockedBuffer{}
		cmd := exec.Command(bin, "--config", cfg)
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatalf("start jaeger: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			timer := time.NewTimer(10 * time.Second)
			defer timer.Stop()
			select {
			case <-exited:
			case <-timer.C:
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		queryURL = "http://" + queryAddr
		// Startup takes a second or two: the collector starts every component.
		deadline := time.Now().Add(30 * time.Second)
		var err error
		for err == nil {
			select {
			case werr := <-exited:
				err = fmt.Errorf("jaeger exited during startup (%v):\n%s", werr, logs.String())
			default:
			}
			if err == nil && jaegerReady(queryURL, otlpAddr) {
				t.Cleanup(func() {
					stop()
					if t.Failed() {
						t.Logf("jaeger output:\n%s", logs.String())
					}
				})
				return otlpAddr, queryURL
			}
			if err == nil && time.Now().After(deadline) {
				stop()
				err = fmt.Errorf("jaeger not ready within 30s:\n%s", logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		if try == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("jaeger start %d: %v; retrying with other ports", try, err)
	}
}

func jaegerReady(queryURL, otlpAddr string) bool {
	res, err := http.Get(queryURL + "/api/services")
	if err != nil {
		return false
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		return false
	}
	c, err := net.Dial("tcp", otlpAddr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// jaegerTrace is the part of Jaeger's /api/traces/{id} answer the tests read.
type jaegerTrace struct {
	Data []struct {
		TraceID string `json:"traceID"`
		Spans   []struct {
			TraceID       string `json:"traceID"`
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
			ProcessID string `json:"processID"`
		} `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

// traceSpan is one span of a trace, flattened.
type traceSpan struct {
	id, parent, service, kind, direction, name string
}

func (s traceSpan) String() string {
	return fmt.Sprintf("%s %s/%s %q id=%s parent=%s", s.service, s.kind, s.direction, s.name, s.id, s.parent)
}

// fetchTrace returns the spans Jaeger holds for traceID.
func fetchTrace(queryURL, traceID string) ([]traceSpan, error) {
	res, err := http.Get(queryURL + "/api/traces/" + traceID)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		return nil, fmt.Errorf("GET trace %s: %s: %s", traceID, res.Status, bytes.TrimSpace(body))
	}
	var tr jaegerTrace
	if err := json.Unmarshal(body, &tr); err != nil {
		return nil, err
	}
	if len(tr.Data) != 1 {
		return nil, fmt.Errorf("trace %s: %d traces", traceID, len(tr.Data))
	}
	d := tr.Data[0]
	var out []traceSpan
	for _, s := range d.Spans {
		if s.TraceID != traceID {
			return nil, fmt.Errorf("span %s has trace ID %s", s.SpanID, s.TraceID)
		}
		ts := traceSpan{id: s.SpanID, service: d.Processes[s.ProcessID].ServiceName, name: s.OperationName}
		for _, r := range s.References {
			if r.RefType == "CHILD_OF" {
				ts.parent = r.SpanID
			}
		}
		for _, tag := range s.Tags {
			switch tag.Key {
			case "span.kind":
				ts.kind = fmt.Sprint(tag.Value)
			case "podmesh.direction":
				ts.direction = fmt.Sprint(tag.Value)
			}
		}
		out = append(out, ts)
	}
	return out, nil
}

// shopMesh is the demo's three services in-process, each behind its own sidecar: frontend
// (HTTP) → catalog (HTTP) → prices (gRPC), the apps forwarding trace headers as the demo
// does.
type shopMesh struct {
	frontend, catalog, prices *running
}

// startShop starts the three services with names prefix+service and extra sidecar flags
// per service.
func startShop(t *testing.T, prefix string, flags map[string][]string) *shopMesh {
	t.Helper()
	m := &shopMesh{}
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	serve := func(ln net.Listener, h http.Handler) {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	side := func(svc, proto, app string, args ...string) *running {
		base := []string{"-service", prefix + svc, "-id", prefix + svc + "-1", "-protocol", proto,
			"-inbound", "127.0.0.1:0", "-app", app}
		return runSidecar(t, agent.URL(), nil, append(append(base, args...), flags[svc]...)...)
	}

	m.prices = side("prices", "grpc", startPrices(t))

	catLn := listen()
	m.catalog = side("catalog", "http", catLn.Addr().String(), "-upstream", prefix+"prices=127.0.0.1:0")
	cc, err := grpc.NewClient("passthrough:///"+m.catalog.addrs.Upstreams[prefix+"prices"],
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	serve(catLn, (&shop.Catalog{Prices: shop.NewPricesClient(cc), Name: prefix + "catalog-1"}).Handler())

	frontLn := listen()
	m.frontend = side("frontend", "http", frontLn.Addr().String(), "-upstream", prefix+"catalog=127.0.0.1:0")
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	serve(frontLn, (&shop.Frontend{CatalogURL: "http://" + m.frontend.addrs.Upstreams[prefix+"catalog"],
		Client: &http.Client{Timeout: 10 * time.Second, Transport: tr}, Name: prefix + "frontend-1"}).Handler())

	waitEndpoints(t, m.frontend, prefix+"catalog", 1)
	waitEndpoints(t, m.catalog, prefix+"prices", 1)
	return m
}

// checkShopTrace sends one request with the trace headers hdr into the frontend's sidecar
// and checks that Jaeger gets one trace with the seven spans of the path, each the child of
// the one before: frontend inbound (child of the caller's span), frontend outbound, its
// attempt, catalog inbound, catalog outbound, its attempt, prices inbound.
func checkShopTrace(t *testing.T, prefix string, m *shopMesh, queryURL, traceID, parentID string, hdr http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+m.frontend.addrs.Inbound+"/", nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, err := httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var page shop.Page
	err = json.NewDecoder(res.Body).Decode(&page)
	res.Body.Close()
	if err != nil || res.StatusCode != 200 || page.Items != 4 || page.Catalog != prefix+"catalog-1" {
		t.Fatalf("frontend answered %d %+v %v", res.StatusCode, page, err)
	}

	want := []struct{ service, kind, direction string }{
		{"frontend", "server", "inbound"},
		{"frontend", "server", "outbound"},
		{"frontend", "client", "outbound"},
		{"catalog", "server", "inbound"},
		{"catalog", "server", "outbound"},
		{"catalog", "client", "outbound"},
		{"prices", "server", "inbound"},
	}
	var spans []traceSpan
	testutil.Eventually(t, 15*time.Second, 100*time.Millisecond, func() error {
		for _, sc := range []*running{m.frontend, m.catalog, m.prices} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := sc.sc.Tracer().Flush(ctx)
			cancel()
			if err != nil {
				return err
			}
		}
		spans, err = fetchTrace(queryURL, traceID)
		if err != nil {
			return err
		}
		if len(spans) < len(want) {
			return fmt.Errorf("%d spans of %d: %v", len(spans), len(want), spans)
		}
		return nil
	})
	if len(spans) != len(want) {
		t.Fatalf("%d spans, want %d: %v", len(spans), len(want), spans)
	}
	parent := parentID
	for i, w := range want {
		var found []traceSpan
		for _, s := range spans {
			if s.service == prefix+w.service && s.kind == w.kind && s.direction == w.direction {
				found = append(found, s)
			}
		}
		if len(found) != 1 {
			t.Fatalf("span %d (%s %s %s): found %v in %v", i, w.service, w.kind, w.direction, found, spans)
		}
		if found[0].parent != parent {
			t.Errorf("span %d (%v): parent %s, want %s", i, found[0], found[0].parent, parent)
		}
		parent = found[0].id
	}
	if t.Failed() {
		t.Logf("trace %s: %v", traceID, spans)
	}
}

// TestShopTraceW3C is acceptance 1 with W3C Trace Context from the client: one request
// through the frontend's sidecar is one trace in a real Jaeger, with the spans of every
// sidecar on the path, correctly parented.
func TestShopTraceW3C(t *testing.T) {
	needAgent(t)
	testutil.CheckGoroutines(t)
	otlp, query := startJaeger(t)
	const prefix = "obtw-"
	ep := []string{"-trace-endpoint", otlp}
	m := startShop(t, prefix, map[string][]string{"frontend": ep, "catalog": ep, "prices": ep})
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	checkShopTrace(t, prefix, m, query, traceID, parentID,
		http.Header{"Traceparent": {"00-" + traceID + "-" + parentID + "-01"}})
}

// TestShopTraceB3 is acceptance 1 with B3 headers from the client (multi-header), and B3
// between the hops: the frontend's sidecar writes only X-B3-* (b3multi), the catalog's only
// the single b3 header, so each hop reads what the one before wrote.
func TestShopTraceB3(t *testing.T) {
	needAgent(t)
	testutil.CheckGoroutines(t)
	otlp, query := startJaeger(t)
	const prefix = "obtb-"
	m := startShop(t, prefix, map[string][]string{
		"frontend": {"-trace-endpoint", otlp, "-trace-propagation", "b3multi"},
		"catalog":  {"-trace-endpoint", "http://" + otlp, "-trace-propagation", "b3"},
		"prices":   {"-trace-endpoint", otlp},
	})
	const traceID, parentID = "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1"
	checkShopTrace(t, prefix, m, query, traceID, parentID, http.Header{
		"X-B3-Traceid": {traceID}, "X-B3-Spanid": {parentID}, "X-B3-Sampled": {"1"},
	})
}
