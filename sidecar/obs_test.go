package sidecar

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/podmesh/podmesh/examples/shop/shop"
	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/proxy"
)

// The observability tests (issue 6): the metrics of docs/metrics.md after real traffic
// through mTLS sidecars, traces in a real Jaeger through the demo's three services, spans
// dropped (and counted) when the collector is down, and the access log.

// series is one sample of a scrape.
type series struct {
	name   string
	labels map[string]string
	value  float64
}

// parseScrape reads the text exposition format: the samples, and each family's type.
func parseScrape(t *testing.T, text string) ([]series, map[string]string) {
	t.Helper()
	var out []series
	types := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			types[name] = typ
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		s := series{labels: map[string]string{}}
		head, val, ok := cutLast(line, ' ')
		if !ok {
			t.Fatalf("scrape line %q", line)
		}
		s.value, _ = strconv.ParseFloat(val, 64)
		name, labels, hasLabels := strings.Cut(head, "{")
		s.name = name
		if hasLabels {
			labels = strings.TrimSuffix(labels, "}")
			for labels != "" {
				k, rest, _ := strings.Cut(labels, `="`)
				v, rest2, _ := strings.Cut(rest, `"`)
				s.labels[k] = v
				labels = strings.TrimPrefix(rest2, ",")
			}
		}
		out = append(out, s)
	}
	return out, types
}

func cutLast(s string, sep byte) (string, string, bool) {
	i := strings.LastIndexByte(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

// docMetric is one row of the sidecar table of docs/metrics.md.
type docMetric struct {
	name, typ string
	labels    []string // nil: not documented here (the tracing row)
}

// sidecarDocMetrics reads the sidecar table of docs/metrics.md: the contract.
func sidecarDocMetrics(t *testing.T) []docMetric {
	t.Helper()
	data, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(data), "\n## Sidecar\n")
	section, _, _ = strings.Cut(section, "\n## ")
	var out []docMetric
	ticked := regexp.MustCompile("`([^`]+)`")
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `podmesh_") {
			continue
		}
		cols := strings.Split(strings.Trim(line, "| "), "|")
		for i := range cols {
			cols[i] = strings.TrimSpace(cols[i])
		}
		if len(cols) != 3 {
			t.Fatalf("docs/metrics.md row %q", line)
		}
		if strings.HasPrefix(cols[2], "see ") {
			for _, m := range ticked.FindAllStringSubmatch(cols[0], -1) {
				name, _, _ := strings.Cut(m[1], "{")
				if strings.HasPrefix(name, "_") {
					name = "podmesh_tracing_spans" + name
				}
				out = append(out, docMetric{name: name})
			}
			continue
		}
		d := docMetric{name: strings.Trim(cols[0], "`"), typ: cols[1]}
		depth, start := 0, 0
		field := func(s string) {
			s = strings.TrimSpace(s)
			if i := strings.IndexAny(s, " ("); i >= 0 {
				s = s[:i]
			}
			d.labels = append(d.labels, s)
		}
		for i, c := range cols[2] {
			switch c {
			case '(':
				depth++
			case ')':
				depth--
			case ',':
				if depth == 0 {
					field(cols[2][start:i])
					start = i + 1
				}
			}
		}
		field(cols[2][start:])
		slices.Sort(d.labels)
		out = append(out, d)
	}
	if len(out) < 20 {
		t.Fatalf("read %d sidecar metrics from docs/metrics.md", len(out))
	}
	return out
}

// allowIntention sets an intention on the shared registry for the test's duration.
func setIntention(t *testing.T, src, dst string, action api.IntentionAction) {
	t.Helper()
	connect := agent.Client().Connect()
	if _, err := connect.IntentionUpsert(&api.Intention{SourceName: src, DestinationName: dst, Action: action}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = connect.IntentionDeleteExact(src, dst, nil) })
}

func startPrices(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	shop.RegisterPrices(s, shop.PricesServer{})
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

func upstreamEdit(edits map[string]func(*Upstream)) func(*Config) {
	return func(c *Config) {
		for i := range c.Upstreams {
			if f := edits[c.Upstreams[i].Name]; f != nil {
				f(&c.Upstreams[i])
			}
		}
	}
}

// TestMetricsAfterTraffic sends HTTP, gRPC (one call ending INVALID_ARGUMENT), TCP, a
// retried request that gets an instance ejected, a request refused by a breaker and one
// denied by an intention through mTLS sidecars, then checks every series of the sidecar
// table of docs/metrics.md: the documented label names on every series, label values from
// the documented sets, and the counts the traffic must have produced.
func TestMetricsAfterTraffic(t *testing.T) {
	needAgent(t)
	testutil.CheckGoroutines(t)
	const (
		web, api1, rpc, tcpSvc, flaky, evil = "obsm-web", "obsm-api", "obsm-rpc", "obsm-tcp", "obsm-flaky", "obsm-evil"
	)
	for _, dst := range []string{api1, rpc, tcpSvc, flaky} {
		setIntention(t, web, dst, api.IntentionActionAllow)
	}
	setIntention(t, evil, api1, api.IntentionActionDeny)

	entered, release := make(chan struct{}, 1), make(chan struct{})
	apiApp := startTestApp(t, api1, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		fmt.Fprintf(w, "hello from %s", api1)
	})
	defer close(release)
	apiSC := runMTLS(t, agent.URL(), "-service", api1, "-id", api1+"-1", "-protocol", "http",
		"-inbound", "127.0.0.1:0", "-app", apiApp.addr)
	rpcSC := runMTLS(t, agent.URL(), "-service", rpc, "-id", rpc+"-1", "-protocol", "grpc",
		"-inbound", "127.0.0.1:0", "-app", startPrices(t))
	var echoConns atomic.Int64
	tcpSC := runMTLS(t, agent.URL(), "-service", tcpSvc, "-id", tcpSvc+"-1", "-protocol", "tcp",
		"-inbound", "127.0.0.1:0", "-app", startEchoApp(t, &echoConns))
	bad := startTestApp(t, "bad", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", 500) })
	good := startTestApp(t, "good", nil)
	badSC := runMTLS(t, agent.URL(), "-service", flaky, "-id", flaky+"-bad", "-protocol", "http",
		"-inbound", "127.0.0.1:0", "-app", bad.addr)
	_ = badSC
	runMTLS(t, agent.URL(), "-service", flaky, "-id", flaky+"-good", "-protocol", "http",
		"-inbound", "127.0.0.1:0", "-app", good.addr)
	webSC := runSidecar(t, agent.URL(), upstreamEdit(map[string]func(*Upstream){
		api1:  func(u *Upstream) { u.Breakers.MaxRequests = 1 },
		flaky: func(u *Upstream) { u.Outlier.Consecutive5xx = 1 },
	}), "-tls=true", "-service", web, "-inbound", "127.0.0.1:0", "-app", "127.0.0.1:9", "-register=false",
		"-upstream", api1+"=127.0.0.1:0", "-upstream", rpc+"=127.0.0.1:0", "-upstream", tcpSvc+"=127.0.0.1:0",
		"-upstream", flaky+"=127.0.0.1:0")
	evilSC := runMTLS(t, agent.URL(), "-service", evil, "-inbound", "127.0.0.1:0", "-app", "127.0.0.1:9",
		"-register=false", "-upstream", api1+"=127.0.0.1:0")
	for up, n := range map[string]int{api1: 1, rpc: 1, tcpSvc: 1, flaky: 2} {
		waitEndpoints(t, webSC, up, n)
	}
	waitEndpoints(t, evilSC, api1, 1)
	c := httpClient()

	// HTTP: 3 GETs and a POST with a 100-byte body.
	apiURL := "http://" + webSC.addrs.Upstreams[api1]
	for range 3 {
		if code, body, err := get(c, apiURL+"/x"); err != nil || code != 200 || body != api1 {
			t.Fatalf("GET: %d %q %v", code, body, err)
		}
	}
	res, err := c.Post(apiURL+"/post", "text/plain", strings.NewReader(strings.Repeat("b", 100)))
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("POST: %v %v", res, err)
	}
	res.Body.Close()

	// gRPC: one OK, one INVALID_ARGUMENT.
	cc, err := grpc.NewClient("passthrough:///"+webSC.addrs.Upstreams[rpc], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	prices := shop.NewPricesClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p, err := prices.Price(ctx, "tea-01"); err != nil || p != shop.PriceOf("tea-01") {
		t.Fatalf("price: %d %v", p, err)
	}
	if _, err := prices.Price(ctx, ""); status.Code(errors.Unwrap(err)) != codes.InvalidArgument {
		t.Fatalf("empty sku: %v", err)
	}

	// TCP: one session, one line each way.
	if err := tcpEcho(webSC.addrs.Upstreams[tcpSvc], "ping"); err != nil {
		t.Fatal(err)
	}

	// A retry and an ejection: the bad instance's 500 is retried on the good one, and one
	// consecutive 5xx ejects it.
	flakyURL := "http://" + webSC.addrs.Upstreams[flaky] + "/f"
	for i := 0; i < 6 && bad.hits.Load() == 0; i++ {
		if code, _, err := get(c, flakyURL); err != nil || code != 200 {
			t.Fatalf("flaky: %d %v", code, err)
		}
	}
	if bad.hits.Load() == 0 {
		t.Fatal("the bad instance was never picked")
	}

	// A breaker trip: max_requests 1 to the api, one request held in the app.
	slowDone := make(chan int, 1)
	go func() {
		code, _, _ := get(httpClient(), apiURL+"/slow")
		slowDone <- code
	}()
	<-entered
	res, err = c.Get(apiURL + "/x")
	if err != nil || res.StatusCode != http.StatusServiceUnavailable || res.Header.Get(proxy.HeaderOverloaded) != "max_requests" {
		t.Fatalf("over max_requests: %v %v", res, err)
	}
	res.Body.Close()
	release <- struct{}{}
	if code := <-slowDone; code != 200 {
		t.Fatalf("slow request: %d", code)
	}

	// An authorization denial.
	if code, _, err := get(c, "http://"+evilSC.addrs.Upstreams[api1]+"/x"); err != nil || code != http.StatusForbidden {
		t.Fatalf("evil: %d %v", code, err)
	}

	// Counters settle once the handlers have returned.
	scrapes := map[string]string{}
	all := func() {
		for name, sc := range map[string]*running{web: webSC, api1: apiSC, rpc: rpcSC, tcpSvc: tcpSC, evil: evilSC, flaky: badSC} {
			scrapes[name] = scrape(t, sc.addrs.Admin)
		}
	}
	type want struct {
		sidecar, series string
		min, max        float64
	}
	in := func(dir, src, dst string) string {
		return `destination="` + dst + `",direction="` + dir + `",source="` + src + `"`
	}
	req := func(sidecar, dir, src, dst, method, class, grpcStatus string, min, max float64) want {
		return want{sidecar, `podmesh_requests_total{code_class="` + class + `",destination="` + dst + `",direction="` + dir +
			`",grpc_status="` + grpcStatus + `",method="` + method + `",source="` + src + `"}`, min, max}
	}
	wants := []want{
		req(web, "outbound", web, api1, "GET", "2xx", "", 4, 4), // 3 + the slow one
		req(web, "outbound", web, api1, "POST", "2xx", "", 1, 1),
		req(web, "outbound", web, api1, "GET", "5xx", "", 1, 1), // the breaker's 503
		req(api1, "inbound", web, api1, "GET", "2xx", "", 4, 4),
		req(api1, "inbound", evil, api1, "GET", "4xx", "", 1, 1),
		req(evil, "outbound", evil, api1, "GET", "4xx", "", 1, 1),
		req(web, "outbound", web, rpc, "POST", "2xx", "OK", 1, 1),
		req(web, "outbound", web, rpc, "POST", "2xx", "INVALID_ARGUMENT", 1, 1),
		req(rpc, "inbound", web, rpc, "POST", "2xx", "INVALID_ARGUMENT", 1, 1),
		{web, `podmesh_request_duration_seconds_count{` + in("outbound", web, api1) + `}`, 6, 6},
		{web, `podmesh_request_bytes_total{` + in("outbound", web, api1) + `}`, 100, 100},
		{api1, `podmesh_request_bytes_total{` + in("inbound", web, api1) + `}`, 100, 100},
		{web, `podmesh_response_bytes_total{` + in("outbound", web, api1) + `}`, 5 * 18, 1e9},
		{web, `podmesh_requests_active{` + in("outbound", web, api1) + `}`, 0, 0},
		{web, `podmesh_tcp_connections_opened_total{` + in("outbound", web, tcpSvc) + `}`, 1, 1},
		{web, `podmesh_tcp_connections_closed_total{` + in("outbound", web, tcpSvc) + `}`, 1, 1},
		{web, `podmesh_tcp_sent_bytes_total{` + in("outbound", web, tcpSvc) + `}`, 5, 5},
		{web, `podmesh_tcp_received_bytes_total{` + in("outbound", web, tcpSvc) + `}`, 10, 10},
		{tcpSvc, `podmesh_tcp_connections_opened_total{` + in("inbound", web, tcpSvc) + `}`, 1, 1},
		{tcpSvc, `podmesh_tcp_sent_bytes_total{` + in("inbound", web, tcpSvc) + `}`, 5, 5},
		{web, `podmesh_retries_total{destination="` + flaky + `",source="` + web + `"}`, 1, 1},
		{web, `podmesh_retry_budget_exhausted_total{destination="` + flaky + `",source="` + web + `"}`, 0, 0},
		{web, `podmesh_ejections_total{destination="` + flaky + `",source="` + web + `"}`, 1, 1},
		{web, `podmesh_endpoints{destination="` + flaky + `",source="` + web + `",state="ejected"}`, 1, 1},
		{web, `podmesh_endpoints{destination="` + flaky + `",source="` + web + `",state="ready"}`, 1, 1},
		{web, `podmesh_breaker_trips_total{breaker="max_requests",` + in("outbound", web, api1) + `}`, 1, 1},
		{web, `podmesh_tls_handshakes_total{direction="outbound"}`, 4, 1e9},
		{api1, `podmesh_tls_handshakes_total{direction="inbound"}`, 1, 1e9},
		{api1, `podmesh_authz_allowed_total{destination="` + api1 + `",source="` + web + `"}`, 5, 5},
		{api1, `podmesh_authz_denied_total{destination="` + api1 + `",source="` + evil + `"}`, 1, 1},
		{api1, `podmesh_tls_cert_expiry_timestamp_seconds{service="` + api1 + `"}`, float64(time.Now().Unix()), 1e12},
		{web, `podmesh_tracing_spans_dropped_total{reason="queue_full"}`, 0, 0},
	}
	testutil.Eventually(t, 5*time.Second, 50*time.Millisecond, func() error {
		all()
		var errs []error
		for _, w := range wants {
			text := scrapes[w.sidecar]
			if !strings.Contains(text, "\n"+w.series+" ") {
				errs = append(errs, fmt.Errorf("%s: no %s", w.sidecar, w.series))
				continue
			}
			if v := metricValue(text, w.series); v < w.min || v > w.max {
				errs = append(errs, fmt.Errorf("%s: %s = %v, want %v..%v", w.sidecar, w.series, v, w.min, w.max))
			}
		}
		return errors.Join(errs...)
	})

	// Every documented metric is there, of its type, with exactly its labels, with values
	// from the documented sets.
	services := []string{web, api1, rpc, tcpSvc, flaky, evil, proxy.UnknownSource, proxy.OtherSource}
	allowed := map[string][]string{
		"direction":   {"inbound", "outbound"},
		"source":      services,
		"destination": services,
		"service":     services,
		"method":      {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other"},
		"code_class":  {"1xx", "2xx", "3xx", "4xx", "5xx"},
		"grpc_status": {"", "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
			"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
			"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"},
		"breaker": {"max_connections", "max_pending_requests", "max_requests", "max_retries"},
		"state":   {"ready", "ejected"},
		"kind":    {"leaf", "roots"},
		"reason": {"no_certificate", "unknown_ca", "expired", "trust_domain", "wrong_service", "bad_certificate",
			"peer_rejected", "protocol", "not_ready", "closed", "timeout", "other"},
	}
	var samples []series
	types := map[string]string{}
	for _, text := range scrapes {
		s, ty := parseScrape(t, text)
		samples = append(samples, s...)
		for k, v := range ty {
			types[k] = v
		}
	}
	for _, d := range sidecarDocMetrics(t) {
		t.Run(d.name, func(t *testing.T) {
			n := 0
			for _, s := range samples {
				base := s.name
				if d.typ == "histogram" {
					base = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(base, "_bucket"), "_sum"), "_count")
				}
				if base != d.name {
					continue
				}
				n++
				if d.labels == nil {
					continue
				}
				var names []string
				for k, v := range s.labels {
					if k == "le" && d.typ == "histogram" {
						continue
					}
					names = append(names, k)
					if vals, ok := allowed[k]; ok && !slices.Contains(vals, v) {
						t.Errorf("%s: label %s=%q not in %v", s.name, k, v, vals)
					}
				}
				slices.Sort(names)
				if !slices.Equal(names, d.labels) {
					t.Errorf("%s: labels %v, documented %v", s.name, names, d.labels)
				}
			}
			if n == 0 {
				t.Errorf("no series of %s", d.name)
			}
			if d.typ != "" && types[d.name] != d.typ {
				t.Errorf("type %q, documented %q", types[d.name], d.typ)
			}
		})
	}
}

// readLines reads JSON lines from a buffer as they come.
func readLines(text string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// TestCollectorDown is acceptance 3: with the collector's address a closed loopback port,
// requests through two tracing sidecars keep succeeding, and the spans are dropped and
// counted (podmesh_tracing_spans_dropped_total{reason="export_failed"}), none exported.
func TestCollectorDown(t *testing.T) {
	needAgent(t)
	testutil.CheckGoroutines(t)
	// One export (its retries included) gives up after 300ms instead of 10s.
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300")
	closed := testutil.FreePort(t)
	app := startTestApp(t, "obsc-api", nil)
	api := runSidecar(t, agent.URL(), nil, "-service", "obsc-api", "-id", "obsc-api-1", "-protocol", "http",
		"-inbound", "127.0.0.1:0", "-app", app.addr, "-trace-endpoint", closed)
	web := runSidecar(t, agent.URL(), nil, "-upstream", "obsc-api=127.0.0.1:0", "-trace-endpoint", "http://"+closed)
	waitEndpoints(t, web, "obsc-api", 1)
	if !web.sc.Tracer().Enabled() || !api.sc.Tracer().Enabled() {
		t.Fatal("tracing is off")
	}
	c := httpClient()
	url := "http://" + web.addrs.Upstreams["obsc-api"] + "/x"
	const n = 50
	for i := range n {
		if code, from, err := get(c, url); err != nil || code != 200 || from != "obsc-api" {
			t.Fatalf("request %d: %d %q %v", i, code, from, err)
		}
	}
	for _, sc := range []*running{web, api} {
		// Flush sends what is queued now, and fails: the export failed.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = sc.sc.Tracer().Flush(ctx)
		cancel()
		admin := sc.addrs.Admin
		// web: an outbound and an attempt span per request; api: an inbound one.
		waitMetric(t, admin, `podmesh_tracing_spans_dropped_total{reason="export_failed"}`, n)
		text := scrape(t, admin)
		if v := metricValue(text, "podmesh_tracing_export_errors_total"); v < 1 {
			t.Errorf("%s: export errors %v", admin, v)
		}
		if v := metricValue(text, "podmesh_tracing_spans_exported_total"); v != 0 {
			t.Errorf("%s: %v spans exported to a closed port", admin, v)
		}
		if v := metricValue(text, "podmesh_tracing_spans_started_total"); v < n {
			t.Errorf("%s: %v spans started", admin, v)
		}
	}
	if st := web.sc.Snapshot().Tracing; st == nil || st.Endpoint != "http://"+closed+"/v1/traces" || st.DroppedExportFailed < n {
		t.Errorf("/config tracing: %+v", st)
	}
	// Still serving.
	if code, _, err := get(c, url); err != nil || code != 200 {
		t.Fatalf("after the failed exports: %d %v", code, err)
	}
}

// TestAccessLog checks the access log's line for each side of a request (JSON, with the
// request's trace and span IDs: the client's trace ID, and on the inbound side the span
// ID of the context the app received), and that a sidecar without -access-log writes none.
func TestAccessLog(t *testing.T) {
	needAgent(t)
	testutil.CheckGoroutines(t)
	closed := testutil.FreePort(t)
	var appSaw atomic.Value
	app := startTestApp(t, "obsl-api", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/traced" {
			appSaw.Store(r.Header.Get("Traceparent"))
		}
		fmt.Fprint(w, "hello")
	})
	var apiLog, webLog, quietLog lockedBuffer
	runSidecarWith(t, agent.URL(), nil, []Option{WithAccessLogWriter(&apiLog)}, "-service", "obsl-api",
		"-id", "obsl-api-1", "-protocol", "http", "-inbound", "127.0.0.1:0", "-app", app.addr,
		"-trace-endpoint", closed, "-access-log")
	web := runSidecarWith(t, agent.URL(), nil, []Option{WithAccessLogWriter(&webLog)}, "-service", "obsl-web",
		"-inbound", "127.0.0.1:0", "-app", "127.0.0.1:9", "-register=false",
		"-upstream", "obsl-api=127.0.0.1:0", "-trace-endpoint", closed, "-access-log")
	quiet := runSidecarWith(t, agent.URL(), nil, []Option{WithAccessLogWriter(&quietLog)},
		"-upstream", "obsl-api=127.0.0.1:0", "-trace-endpoint", closed)
	waitEndpoints(t, web, "obsl-api", 1)
	waitEndpoints(t, quiet, "obsl-api", 1)

	const traceID = "0af7651916cd43dd8448eb211c80319c"
	res, err := httpClient().Post("http://"+web.addrs.Upstreams["obsl-api"]+"/items?secret=1", "text/plain",
		strings.NewReader("0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	req, _ := http.NewRequest("GET", "http://"+web.addrs.Upstreams["obsl-api"]+"/traced", nil)
	req.Header.Set("Traceparent", "00-"+traceID+"-b7ad6b7169203331-01")
	res, err = httpClient().Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("%v %v", res, err)
	}
	res.Body.Close()
	if code, _, err := get(httpClient(), "http://"+quiet.addrs.Upstreams["obsl-api"]+"/q"); err != nil || code != 200 {
		t.Fatalf("quiet: %d %v", code, err)
	}

	type line = map[string]any
	lines := func(b *lockedBuffer) []line {
		var out []line
		for _, l := range readLines(b.String()) {
			var m line
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("not JSON: %q: %v", l, err)
			}
			out = append(out, m)
		}
		return out
	}
	var wl, al []line
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
		wl, al = lines(&webLog), lines(&apiLog)
		if len(wl) != 2 || len(al) != 3 {
			return fmt.Errorf("%d web lines, %d api lines", len(wl), len(al))
		}
		return nil
	})
	hexID := regexp.MustCompile(`^[0-9a-f]{16}$`)
	check := func(side string, l line, want map[string]any) {
		t.Helper()
		for k, v := range want {
			if fmt.Sprint(l[k]) != fmt.Sprint(v) {
				t.Errorf("%s line %s = %v, want %v (%v)", side, k, l[k], v, l)
			}
		}
		for _, k := range []string{"time", "duration_ms", "protocol", "trace_id"} {
			if _, ok := l[k]; !ok {
				t.Errorf("%s line lacks %s: %v", side, k, l)
			}
		}
		if id, _ := l["span_id"].(string); !hexID.MatchString(id) {
			t.Errorf("%s line span_id %v", side, l["span_id"])
		}
	}
	check("web", wl[0], map[string]any{"msg": "request", "level": "INFO", "direction": "outbound", "method": "POST",
		"path": "/items", "status": 200, "request_bytes": 10, "response_bytes": 5, "attempts": 1,
		"source": "obsl-web", "destination": "obsl-api"})
	check("web", wl[1], map[string]any{"direction": "outbound", "method": "GET", "path": "/traced", "status": 200,
		"trace_id": traceID})
	check("api", al[0], map[string]any{"direction": "inbound", "method": "POST", "path": "/items", "status": 200,
		"request_bytes": 10, "response_bytes": 5, "upstream": app.addr, "source": "unknown", "destination": "obsl-api"})
	check("api", al[1], map[string]any{"direction": "inbound", "path": "/traced", "trace_id": traceID})
	// The inbound line's span is the one whose context the app received.
	if tp, _ := appSaw.Load().(string); tp != "00-"+traceID+"-"+fmt.Sprint(al[1]["span_id"])+"-01" {
		t.Errorf("app saw traceparent %q, access log span_id %v", tp, al[1]["span_id"])
	}
	if wl[0]["trace_id"] == wl[1]["trace_id"] {
		t.Error("two requests without a common context share a trace")
	}
	if q := quietLog.String(); q != "" {
		t.Errorf("access log without -access-log: %q", q)
	}
}

// TestTraceSampleZero: with -trace-sample 0 the sidecars start no trace of their own, but
// follow a caller's sampled one (parent-based), across both hops.
func TestTraceSampleZero(t *testing.T) {
	needAgent(t)
	testutil.CheckGoroutines(t)
	closed := testutil.FreePort(t)
	app := startTestApp(t, "obsz-api", nil)
	api := runSidecar(t, agent.URL(), nil, "-service", "obsz-api", "-id", "obsz-api-1", "-protocol", "http",
		"-inbound", "127.0.0.1:0", "-app", app.addr, "-trace-endpoint", closed, "-trace-sample", "0")
	web := runSidecar(t, agent.URL(), nil, "-upstream", "obsz-api=127.0.0.1:0", "-trace-endpoint", closed,
		"-trace-sample", "0")
	waitEndpoints(t, web, "obsz-api", 1)
	url := "http://" + web.addrs.Upstreams["obsz-api"] + "/"
	started := `podmesh_tracing_spans_started_total`
	for range 10 {
		if code, _, err := get(httpClient(), url); err != nil || code != 200 {
			t.Fatalf("%d %v", code, err)
		}
	}
	if a, w := metricValue(scrape(t, api.addrs.Admin), started), metricValue(scrape(t, web.addrs.Admin), started); a != 0 || w != 0 {
		t.Fatalf("spans started without a sampled caller: api %v, web %v", a, w)
	}
	code, _, err := get(httpClient(), url, "Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if err != nil || code != 200 {
		t.Fatalf("%d %v", code, err)
	}
	// web: the outbound span and its attempt; api: the inbound span.
	waitMetric(t, web.addrs.Admin, started, 2)
	waitMetric(t, api.addrs.Admin, started, 1)
}
