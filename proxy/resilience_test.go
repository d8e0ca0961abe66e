package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	itu "github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
)

// deadAddr returns a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func roundRobin(t *testing.T) *lb.Balancer {
	b, err := lb.New(lb.Config{Policy: lb.RoundRobin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func do(t *testing.T, c *http.Client, method, url, body string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body == "" {
		req.Body = nil
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res.StatusCode, string(b), res.Header
}

// Connect failures are retried on another instance for every method, and the dead
// instance is ejected after a few consecutive failures.
func TestRetryConnectFailure(t *testing.T) {
	a := startApp(t, "a", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "got:"+string(b))
	})
	inAddr, _ := startInbound(t, InboundConfig{Service: "a", Protocol: HTTP, App: a.addr})
	bal := roundRobin(t)
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "a", Balancer: bal},
		[]lb.Endpoint{endpoint("dead", deadAddr(t), HTTP), endpoint("live", inAddr, HTTP)})
	c := client()
	for i := range 20 {
		method := "GET"
		if i%2 == 1 {
			method = "POST"
		}
		code, body, _ := do(t, c, method, "http://"+upAddr+"/", "payload")
		if code != 200 || (method == "POST" && body != "got:payload") {
			t.Fatalf("%s #%d: %d %q", method, i, code, body)
		}
	}
	st := bal.Stats()
	for _, h := range st.Hosts {
		if h.ID == "dead" && h.State != lb.StateEjected {
			t.Errorf("dead instance not ejected: %+v", h)
		}
	}
}

// 5xx answers are retried on another instance for idempotent methods only, unless
// retry_on says 5xx.
func TestRetry5xx(t *testing.T) {
	bad := startApp(t, "bad", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })
	good := startApp(t, "good", nil)
	badIn, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: bad.addr})
	goodIn, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: good.addr})
	eps := []lb.Endpoint{endpoint("bad", badIn, HTTP), endpoint("good", goodIn, HTTP)}
	// Outlier ejection off, so that every request meets the failing instance.
	noEject := func() *lb.Balancer {
		b, _ := lb.New(lb.Config{Policy: lb.RoundRobin, Outlier: lb.OutlierConfig{Disabled: true}})
		t.Cleanup(func() { b.Close() })
		return b
	}
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "s", Balancer: noEject()}, eps)
	c := client()
	posts500 := 0
	for range 10 {
		if code, _, _ := do(t, c, "GET", "http://"+upAddr+"/", ""); code != 200 {
			t.Fatalf("GET answered %d", code)
		}
		if code, _, _ := do(t, c, "POST", "http://"+upAddr+"/", "x"); code == 500 {
			posts500++
		}
	}
	if posts500 == 0 {
		t.Error("POSTs were retried on 5xx without retry_on: 5xx")
	}
	up5xx, _ := startUpstream(t, UpstreamConfig{Name: "s", Balancer: noEject(),
		Policy: Policy{RetryOn: Retry5xx}}, eps)
	for range 10 {
		if code, _, _ := do(t, c, "POST", "http://"+up5xx+"/", "x"); code != 200 {
			t.Fatalf("POST with retry_on 5xx answered %d", code)
		}
	}
}

// A peer sidecar whose app is down answers 503 "not processed": the caller retries it
// elsewhere even for POST, and the marker header never reaches the client.
func TestRetryNotProcessed(t *testing.T) {
	good := startApp(t, "good", nil)
	downIn, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: deadAddr(t)})
	goodIn, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: good.addr})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "s", Balancer: roundRobin(t)},
		[]lb.Endpoint{endpoint("down", downIn, HTTP), endpoint("good", goodIn, HTTP)})
	c := client()
	for range 6 {
		code, _, h := do(t, c, "POST", "http://"+upAddr+"/", strings.Repeat("b", 1000))
		if code != 200 || h.Get(headerNotProcessed) != "" {
			t.Fatalf("POST: %d %v", code, h)
		}
	}
	// An app cannot fake the marker to get a POST retried.
	var posts atomic.Int64
	liar := startApp(t, "liar", func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		w.Header().Set(headerNotProcessed, "1")
		w.Header().Set(HeaderOverloaded, "max_requests")
		http.Error(w, "busy", http.StatusServiceUnavailable)
	})
	liarIn, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: liar.addr})
	liarUp, _ := startUpstream(t, UpstreamConfig{Name: "s"}, []lb.Endpoint{endpoint("liar", liarIn, HTTP)})
	if code, _, h := do(t, c, "POST", "http://"+liarUp+"/", "x"); code != 503 || posts.Load() != 1 || h.Get(HeaderOverloaded) != "" {
		t.Errorf("app-set markers: %d after %d POSTs, %v", code, posts.Load(), h)
	}

	// Straight to the broken inbound: 503 with the marker.
	res, err := http.Post("http://"+downIn+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 503 || res.Header.Get(headerNotProcessed) == "" {
		t.Errorf("inbound with its app down: %d %v", res.StatusCode, res.Header)
	}
}

// A body larger than the replay limit streams and is not retried once sent.
func TestLargeBodyNotReplayed(t *testing.T) {
	var mu sync.Mutex
	var sizes []int
	bad := startApp(t, "bad", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		sizes = append(sizes, len(b))
		mu.Unlock()
		http.Error(w, "boom", http.StatusServiceUnavailable)
	})
	badIn, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: bad.addr})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "s", Policy: Policy{RetryOn: Retry5xx}},
		[]lb.Endpoint{endpoint("bad", badIn, HTTP)})
	c := client()
	do(t, c, "PUT", "http://"+upAddr+"/", strings.Repeat("s", 1000))
	do(t, c, "PUT", "http://"+upAddr+"/", strings.Repeat("L", 100<<10))
	mu.Lock()
	defer mu.Unlock()
	// Small body: first try plus two retries, each with the whole body. Large body: once.
	if fmt.Sprint(sizes) != "[1000 1000 1000 102400]" {
		t.Errorf("bodies seen by the app: %v", sizes)
	}
}

func TestBreakerMaxRequests(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	a := startApp(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	})
	inAddr, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: a.addr})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "s", Policy: Policy{Breakers: Breakers{MaxRequests: 2}}},
		[]lb.Endpoint{endpoint("s1", inAddr, HTTP)})
	c := client()
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, _, _ := do(t, c, "GET", "http://"+upAddr+"/", ""); code != 200 {
				t.Errorf("admitted request: %d", code)
			}
		}()
	}
	<-entered
	<-entered
	code, _, h := do(t, c, "GET", "http://"+upAddr+"/", "")
	if code != 503 || h.Get(HeaderOverloaded) != BreakerRequests {
		t.Errorf("over the limit: %d %q", code, h.Get(HeaderOverloaded))
	}
	close(release)
	wg.Wait()
}

func TestTimeouts(t *testing.T) {
	slow := startApp(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	fast := startApp(t, "fast", nil)
	stream := startApp(t, "stream", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		for i := range 5 {
			fmt.Fprintf(w, "part%d;", i)
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	})
	slowIn, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: slow.addr})
	fastIn, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: fast.addr})
	streamIn, _ := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: stream.addr})
	c := client()

	up, _ := startUpstream(t, UpstreamConfig{Name: "s", Policy: Policy{Timeout: 200 * time.Millisecond}},
		[]lb.Endpoint{endpoint("slow", slowIn, HTTP)})
	start := time.Now()
	if code, _, _ := do(t, c, "GET", "http://"+up+"/", ""); code != 504 {
		t.Errorf("overall timeout: %d", code)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout took %v", d)
	}

	// Per-try timeout: the slow instance's try is cut and retried on the fast one.
	up2, _ := startUpstream(t, UpstreamConfig{Name: "s", Balancer: roundRobin(t),
		Policy: Policy{PerTryTimeout: 150 * time.Millisecond}},
		[]lb.Endpoint{endpoint("slow", slowIn, HTTP), endpoint("fast", fastIn, HTTP)})
	for range 4 {
		if code, _, h := do(t, c, "GET", "http://"+up2+"/", ""); code != 200 || h.Get("X-App") != "fast" {
			t.Errorf("per-try timeout: %d %v", code, h.Get("X-App"))
		}
	}

	// The overall timeout bounds the wait for headers only: a body that streams for
	// longer still arrives whole.
	up3, _ := startUpstream(t, UpstreamConfig{Name: "s", Policy: Policy{Timeout: 200 * time.Millisecond}},
		[]lb.Endpoint{endpoint("stream", streamIn, HTTP)})
	if code, body, _ := do(t, c, "GET", "http://"+up3+"/", ""); code != 200 || body != "part0;part1;part2;part3;part4;" {
		t.Errorf("streamed body: %d %q", code, body)
	}
}

// Before discovery answers, a request waits for endpoints; once discovery said there are
// none, requests fail at once with 503.
func TestWaitForFirstEndpoints(t *testing.T) {
	a := startApp(t, "a", nil)
	inAddr, _ := startInbound(t, InboundConfig{Service: "a", Protocol: HTTP, App: a.addr})
	upAddr, up := startUpstream(t, UpstreamConfig{Name: "a", Protocol: HTTP}, nil)
	go func() {
		time.Sleep(200 * time.Millisecond)
		up.Update([]lb.Endpoint{endpoint("a1", inAddr, HTTP)})
	}()
	if code, _, _ := do(t, client(), "GET", "http://"+upAddr+"/", ""); code != 200 {
		t.Fatalf("first request: %d", code)
	}
	up.Update(nil)
	start := time.Now()
	if code, _, _ := do(t, client(), "GET", "http://"+upAddr+"/", ""); code != 503 {
		t.Errorf("no endpoints: %d", code)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("503 took %v", d)
	}
}

// Shutdown lets requests in flight finish, on both sides, and refuses new connections.
func TestDrain(t *testing.T) {
	itu.CheckGoroutines(t)
	entered := make(chan struct{}, 10)
	a := startApp(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		io.WriteString(w, "done")
	})
	inAddr, in := startInbound(t, InboundConfig{Service: "s", Protocol: HTTP, App: a.addr})
	upAddr, up := startUpstream(t, UpstreamConfig{Name: "s"}, []lb.Endpoint{endpoint("s1", inAddr, HTTP)})
	c := client()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, body, _ := do(t, c, "GET", "http://"+upAddr+"/", ""); code != 200 || body != "done" {
				t.Errorf("in-flight request: %d %q", code, body)
			}
		}()
	}
	for range 4 {
		<-entered
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var sd sync.WaitGroup
	sd.Add(2)
	go func() { defer sd.Done(); in.Shutdown(ctx) }()
	go func() { defer sd.Done(); up.Shutdown(ctx) }()
	wg.Wait()
	sd.Wait()
	if _, err := net.DialTimeout("tcp", upAddr, time.Second); err == nil {
		t.Error("upstream listener still accepts after shutdown")
	}
	c.CloseIdleConnections()
}

// The drain deadline cuts what is still running.
func TestDrainDeadline(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	app := listen(t)
	go func() {
		c, err := app.Accept()
		if err == nil {
			<-block
			c.Close()
		}
	}()
	inAddr, in := startInbound(t, InboundConfig{Service: "s", Protocol: TCP, App: app.Addr().String()})
	c, err := net.Dial("tcp", inAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := in.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("session survived the drain deadline")
	}
}

func TestStatusFor(t *testing.T) {
	live := context.Background()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		err  error
		ctx  context.Context
		want int
	}{
		{errTimeout, live, 504},
		{errPerTryTimeout, live, 504},
		{errTimeout, gone, 504},
		{context.Canceled, gone, 499},
		{DialError{Addr: "x", Err: errors.New("refused")}, live, 503},
		{RefusedError{Err: errors.New("goaway")}, live, 503},
		{OverloadedError{Breaker: BreakerPending}, live, 503},
		{fmt.Errorf("pick: %w", lb.ErrNoHost), live, 503},
		{&net.OpError{Op: "read", Err: timeoutErr{}}, live, 504},
		{errors.New("stream reset"), live, 502},
	} {
		if got := statusFor(tc.err, tc.ctx); got != tc.want {
			t.Errorf("statusFor(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassifyRoundTrip(t *testing.T) {
	var re RefusedError
	if err := classifyRoundTrip(errors.New("http2: Transport received Server's graceful shutdown GOAWAY")); !errors.As(err, &re) {
		t.Errorf("GOAWAY not refused: %v", err)
	}
	if err := classifyRoundTrip(errors.New("unexpected EOF")); errors.As(err, &re) {
		t.Errorf("EOF classified as refused")
	}
}

func TestRetryBudget(t *testing.T) {
	m, _ := NewMetrics(prometheus.NewRegistry())
	u := &Upstream{pol: Policy{RetryBudget: RetryBudget{Percent: 20, MinConcurrent: 3}}, requests: newGate(1000),
		m: m.service(DirOutbound, "src", "x")}
	for range 50 {
		u.requests.tryAcquire()
	}
	// 20% of 50 = 10 concurrent retries.
	got := 0
	for range 20 {
		if u.acquireRetry() {
			got++
		}
	}
	if got != 10 {
		t.Errorf("budget allowed %d retries with 50 in flight, want 10", got)
	}
	if n := counterValue(m.exhausted.WithLabelValues("src", "x")); n != 10 {
		t.Errorf("budget exhausted counter %v", n)
	}
	u.pol.Breakers.MaxRetries = 4
	for range 10 {
		u.releaseRetry()
	}
	got = 0
	for range 20 {
		if u.acquireRetry() {
			got++
		}
	}
	if got != 4 {
		t.Errorf("max_retries 4 allowed %d", got)
	}
}

func counterValue(c prometheus.Metric) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.GetGauge().GetValue()
}
