package checks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/registry/state"
)

type env struct {
	store *state.Store
	mgr   *Manager
	runs  chan string // "type/result" per OnRun
}

// start runs a store and a Manager with test-sized minimums. Intervals are real but short.
func start(t *testing.T, mod ...func(*Config)) *env {
	t.Helper()
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	store, err := state.Open(ctx, state.Options{Dir: t.TempDir(), NodeName: "n1", CheckUpdateInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{store: store, runs: make(chan string, 1000)}
	cfg := Config{Store: store, MinInterval: time.Millisecond, ReapInterval: 10 * time.Millisecond,
		MinDeregisterAfter: time.Millisecond, OnRun: func(k, r string) {
			select {
			case e.runs <- k + "/" + r:
			default:
			}
		}}
	for _, m := range mod {
		m(&cfg)
	}
	e.mgr, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.mgr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		store.Close()
	})
	return e
}

func (e *env) register(t *testing.T, id string, c *state.Check) {
	t.Helper()
	var cs []*state.Check
	if c != nil {
		c.Managed = true
		if c.Name == "" {
			c.Name = c.CheckID
		}
		cs = append(cs, c)
	}
	if err := e.store.RegisterAgentService(testutil.Context(t, 5*time.Second), &state.Service{ID: id, Service: id}, cs, true); err != nil {
		t.Fatal(err)
	}
	e.mgr.Sync()
}

func (e *env) check(id string) (c *state.Check) {
	e.store.View(func(v *state.View) { c = v.Check("n1", id) })
	return c
}

func (e *env) waitStatus(t *testing.T, id, status, outputPrefix string) *state.Check {
	t.Helper()
	var last *state.Check
	testutil.Eventually(t, 5*time.Second, 2*time.Millisecond, func() error {
		last = e.check(id)
		if last == nil {
			return fmt.Errorf("check %s missing", id)
		}
		if last.Status != status || !strings.HasPrefix(last.Output, outputPrefix) {
			return fmt.Errorf("check %s = %s %q, want %s %q...", id, last.Status, last.Output, status, outputPrefix)
		}
		return nil
	})
	return last
}

// nextRun waits for the next OnRun report of kind.
func (e *env) nextRun(t *testing.T, kind string) string {
	t.Helper()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	for {
		select {
		case r := <-e.runs:
			if strings.HasPrefix(r, kind+"/") {
				return r
			}
		case <-timer.C:
			t.Fatalf("no %s check run", kind)
		}
	}
}

func TestTTLExpires(t *testing.T) {
	e := start(t)
	e.register(t, "a", &state.Check{CheckID: "a-ttl", Type: state.CheckTypeTTL, Status: state.HealthPassing,
		Definition: state.CheckDefinition{TTL: 80 * time.Millisecond}})
	e.waitStatus(t, "a-ttl", state.HealthCritical, "TTL expired")
	if got := e.check("a-ttl").Output; got != "TTL expired" {
		t.Fatalf("output %q", got)
	}
	// An update revives it and restarts the timer; the expiry then quotes the last output.
	ctx := testutil.Context(t, 5*time.Second)
	if err := e.mgr.SetTTL(ctx, "a-ttl", state.HealthPassing, "all good"); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(t, "a-ttl", state.HealthPassing, "all good")
	e.waitStatus(t, "a-ttl", state.HealthCritical, "TTL expired (last output before timeout follows): all good")
	if err := e.mgr.SetTTL(ctx, "nope", state.HealthPassing, ""); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("SetTTL unknown: %v", err)
	}
}

func TestTTLUpdatesKeepItAlive(t *testing.T) {
	e := start(t)
	e.register(t, "a", &state.Check{CheckID: "a-ttl", Type: state.CheckTypeTTL, Definition: state.CheckDefinition{TTL: 150 * time.Millisecond}})
	ctx := testutil.Context(t, 5*time.Second)
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if err := e.mgr.SetTTL(ctx, "a-ttl", state.HealthPassing, "beat"); err != nil {
			t.Fatal(err)
		}
		if st := e.check("a-ttl").Status; st != state.HealthPassing {
			t.Fatalf("status %s despite heartbeats every 30ms with a 150ms TTL", st)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// probeServer answers each probe with the next status code from codes, recording requests.
type probeServer struct {
	*httptest.Server
	codes chan int
	mu    sync.Mutex
	reqs  []*http.Request
	body  []string
}

func newProbeServer(t *testing.T, tls bool, respBody string) *probeServer {
	p := &probeServer{codes: make(chan int, 100)}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.reqs = append(p.reqs, r)
		p.body = append(p.body, string(b))
		p.mu.Unlock()
		code := 200
		select {
		case code = <-p.codes:
		default:
		}
		w.WriteHeader(code)
		io.WriteString(w, respBody)
	})
	if tls {
		p.Server = httptest.NewTLSServer(h)
	} else {
		p.Server = httptest.NewServer(h)
	}
	t.Cleanup(p.Close)
	return p
}

func TestHTTPStatuses(t *testing.T) {
	e := start(t)
	p := newProbeServer(t, false, "hello")
	e.register(t, "a", &state.Check{CheckID: "a-http", Type: state.CheckTypeHTTP, Definition: state.CheckDefinition{
		HTTP: p.URL + "/health", Method: "POST", Body: "ping", Interval: 20 * time.Millisecond,
		Header: map[string][]string{"X-Probe": {"1"}, "Host": {"svc.internal"}}}})
	for _, tc := range []struct {
		code   int
		status string
		output string
	}{
		{200, state.HealthPassing, "200 OK"},
		{429, state.HealthWarning, "429 Too Many Requests"},
		{500, state.HealthCritical, "500 Internal Server Error"},
		{202, state.HealthPassing, "202 Accepted"},
	} {
		p.codes <- tc.code
		e.waitStatus(t, "a-http", tc.status, fmt.Sprintf("HTTP POST %s/health: %s Output: ", p.URL, tc.output))
	}
	p.mu.Lock()
	r, body := p.reqs[0], p.body[0]
	p.mu.Unlock()
	if r.Method != "POST" || body != "ping" || r.Header.Get("X-Probe") != "1" || r.Host != "svc.internal" ||
		r.Header.Get("User-Agent") != UserAgent || r.Header.Get("Accept") != "text/plain, text/*, */*" || !r.Close {
		t.Fatalf("probe request: method %s body %q headers %v host %q close %v", r.Method, body, r.Header, r.Host, r.Close)
	}
	if !strings.HasSuffix(e.check("a-http").Output, "Output: hello") {
		t.Fatalf("output %q", e.check("a-http").Output)
	}
}

func TestHTTPOutputCapAndTimeoutAndTLS(t *testing.T) {
	e := start(t)
	big := newProbeServer(t, false, strings.Repeat("x", 10000))
	e.register(t, "big", &state.Check{CheckID: "big", Type: state.CheckTypeHTTP, Definition: state.CheckDefinition{HTTP: big.URL, Interval: 20 * time.Millisecond}})
	c := e.waitStatus(t, "big", state.HealthPassing, "HTTP GET")
	if _, out, _ := strings.Cut(c.Output, "Output: "); len(out) != DefaultOutputMaxSize {
		t.Fatalf("body in output is %d bytes, want %d", len(out), DefaultOutputMaxSize)
	}

	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	}))
	defer slow.Close()
	e.register(t, "slow", &state.Check{CheckID: "slow", Type: state.CheckTypeHTTP, Definition: state.CheckDefinition{HTTP: slow.URL, Interval: 20 * time.Millisecond, Timeout: 50 * time.Millisecond}})
	c = e.waitStatus(t, "slow", state.HealthCritical, `Get "`+slow.URL)
	if !strings.Contains(c.Output, "Timeout") {
		t.Fatalf("timeout output %q", c.Output)
	}

	secure := newProbeServer(t, true, "tls")
	e.register(t, "tls-skip", &state.Check{CheckID: "tls-skip", Type: state.CheckTypeHTTP, Definition: state.CheckDefinition{HTTP: secure.URL, Interval: 20 * time.Millisecond, TLSSkipVerify: true}})
	e.register(t, "tls-verify", &state.Check{CheckID: "tls-verify", Type: state.CheckTypeHTTP, Definition: state.CheckDefinition{HTTP: secure.URL, Interval: 20 * time.Millisecond}})
	e.waitStatus(t, "tls-skip", state.HealthPassing, "HTTP GET")
	c = e.waitStatus(t, "tls-verify", state.HealthCritical, `Get "`+secure.URL)
	if !strings.Contains(c.Output, "certificate") {
		t.Fatalf("verify failure output %q", c.Output)
	}
}

func TestTCP(t *testing.T) {
	e := start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	e.register(t, "up", &state.Check{CheckID: "up", Type: state.CheckTypeTCP, Definition: state.CheckDefinition{TCP: addr, Interval: 20 * time.Millisecond}})
	e.waitStatus(t, "up", state.HealthPassing, "TCP connect "+addr+": Success")
	ln.Close()
	e.waitStatus(t, "up", state.HealthCritical, "dial tcp "+addr)
}

// TestThresholds steps an HTTP check one probe at a time through Consul's counters.
func TestThresholds(t *testing.T) {
	e := start(t)
	p := newProbeServer(t, false, "")
	gate := make(chan struct{})
	gated := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-gate // one probe per step
		p.Config.Handler.ServeHTTP(w, r)
	}))
	defer gated.Close()
	defer close(gate)
	e.register(t, "a", &state.Check{CheckID: "a", Type: state.CheckTypeHTTP, Status: state.HealthCritical, Definition: state.CheckDefinition{
		HTTP: gated.URL, Interval: time.Millisecond, SuccessBeforePassing: 2, FailuresBeforeWarning: 1, FailuresBeforeCritical: 3}})
	step := func(code int, want string) {
		t.Helper()
		p.codes <- code
		gate <- struct{}{}
		e.nextRun(t, "http")
		if got := e.check("a").Status; got != want {
			t.Fatalf("after a %d: status %s, want %s", code, got, want)
		}
	}
	// Consul starts the counters at their thresholds: the first result applies at once.
	step(200, state.HealthPassing)
	step(500, state.HealthWarning) // 1 failure: FailuresBeforeWarning
	step(500, state.HealthWarning) // 2
	step(500, state.HealthCritical)
	step(200, state.HealthCritical) // 1 success of 2
	step(200, state.HealthPassing)
}

func TestMinimumInterval(t *testing.T) {
	e := start(t, func(c *Config) { c.MinInterval = 100 * time.Millisecond })
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	e.register(t, "a", &state.Check{CheckID: "a", Type: state.CheckTypeHTTP, Definition: state.CheckDefinition{HTTP: srv.URL, Interval: time.Millisecond}})
	time.Sleep(450 * time.Millisecond)
	if n := hits.Load(); n > 5 || n < 2 {
		t.Fatalf("%d probes in 450ms with a 100ms minimum interval, want 2-5", n)
	}
}

func TestReapsLongCriticalServices(t *testing.T) {
	e := start(t)
	e.register(t, "doomed", &state.Check{CheckID: "doomed-ttl", Type: state.CheckTypeTTL,
		Definition: state.CheckDefinition{TTL: time.Hour, DeregisterCriticalServiceAfter: 50 * time.Millisecond}})
	e.register(t, "healthy", &state.Check{CheckID: "healthy-ttl", Type: state.CheckTypeTTL, Status: state.HealthPassing,
		Definition: state.CheckDefinition{TTL: time.Hour, DeregisterCriticalServiceAfter: 50 * time.Millisecond}})
	e.register(t, "keep", &state.Check{CheckID: "keep-ttl", Type: state.CheckTypeTTL, Definition: state.CheckDefinition{TTL: time.Hour}})
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		var gone bool
		e.store.View(func(v *state.View) { gone = v.Service("n1", "doomed") == nil })
		if !gone {
			return errors.New("critical service not reaped")
		}
		return nil
	})
	e.store.View(func(v *state.View) {
		if v.Service("n1", "healthy") == nil || v.Service("n1", "keep") == nil {
			t.Fatal("reaped a passing service or one without DeregisterCriticalServiceAfter")
		}
		if v.Check("n1", "doomed-ttl") != nil {
			t.Fatal("reaped service's check kept")
		}
	})
	testutil.Eventually(t, time.Second, 5*time.Millisecond, func() error {
		for _, id := range e.mgr.Running() {
			if id == "doomed-ttl" {
				return errors.New("reaped check still running")
			}
		}
		return nil
	})
}

func TestMinDeregisterAfterHonoured(t *testing.T) {
	e := start(t, func(c *Config) { c.MinDeregisterAfter = time.Hour })
	e.register(t, "a", &state.Check{CheckID: "a-ttl", Type: state.CheckTypeTTL,
		Definition: state.CheckDefinition{TTL: time.Hour, DeregisterCriticalServiceAfter: time.Millisecond}})
	time.Sleep(100 * time.Millisecond) // ten reaper passes
	e.store.View(func(v *state.View) {
		if v.Service("n1", "a") == nil {
			t.Fatal("reaped before the minimum DeregisterCriticalServiceAfter")
		}
	})
}

func TestSyncStopsAndRestarts(t *testing.T) {
	e := start(t)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	e.register(t, "a", &state.Check{CheckID: "a", Type: state.CheckTypeHTTP, Definition: state.CheckDefinition{HTTP: srv.URL, Interval: 5 * time.Millisecond}})
	e.waitStatus(t, "a", state.HealthPassing, "HTTP GET")
	// Changing the definition restarts the runner with it.
	e.register(t, "a", &state.Check{CheckID: "a", Type: state.CheckTypeHTTP, Definition: state.CheckDefinition{HTTP: srv.URL + "/v2", Interval: 5 * time.Millisecond}})
	e.waitStatus(t, "a", state.HealthPassing, "HTTP GET "+srv.URL+"/v2")
	if err := e.store.DeregisterAgentService(testutil.Context(t, time.Second), "a"); err != nil {
		t.Fatal(err)
	}
	e.mgr.Sync()
	if len(e.mgr.Running()) != 0 {
		t.Fatalf("running after deregistration: %v", e.mgr.Running())
	}
	n := hits.Load()
	time.Sleep(50 * time.Millisecond)
	if hits.Load() != n {
		t.Fatal("probes continued after the check was removed")
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate("abc", 5); got != "abc" {
		t.Fatal(got)
	}
	if got := truncate("abcdefgh", 3); got != "abc ... (captured 3 of 8 bytes)" {
		t.Fatal(got)
	}
}

// An acknowledged TTL update is never undone by the expiry it was meant to prevent: not when
// it arrives while the expiry is writing "critical" (it is written after it), and not when
// it arrives just as the timer fires (the expiry then writes nothing).
func TestTTLPassNotUndoneByExpiry(t *testing.T) {
	const ttl = 300 * time.Millisecond
	check := func() *state.Check {
		return &state.Check{CheckID: "t", Type: state.CheckTypeTTL, Definition: state.CheckDefinition{TTL: ttl}}
	}
	t.Run("while the expiry writes", func(t *testing.T) {
		var once sync.Once
		var e *env
		passed := make(chan error, 1)
		expired := make(chan struct{})
		var endOnce sync.Once
		e = start(t, func(c *Config) {
			c.hook = func(point string) {
				if point == "expire-end" {
					endOnce.Do(func() { close(expired) })
				}
				if point != "expire-write" {
					return
				}
				once.Do(func() {
					go func() { passed <- e.mgr.SetTTL(context.Background(), "t", state.HealthPassing, "alive") }()
					timer := time.NewTimer(100 * time.Millisecond)
					defer timer.Stop()
					select { // the pass may not be answered before the expiry is written
					case err := <-passed:
						passed <- err
					case <-timer.C:
					}
				})
			}
		})
		e.register(t, "a", check())
		if err := <-passed; err != nil {
			t.Fatal(err)
		}
		<-expired
		if c := e.check("t"); c.Status != state.HealthPassing {
			t.Fatalf("after an acknowledged pass the check is %s %q", c.Status, c.Output)
		}
	})
	t.Run("as the timer fires", func(t *testing.T) {
		var once sync.Once
		var e *env
		after := make(chan *state.Check, 1)
		e = start(t, func(c *Config) {
			c.hook = func(point string) {
				switch point {
				case "expire": // the timer fired; the pass comes first
					once.Do(func() {
						if err := e.mgr.SetTTL(context.Background(), "t", state.HealthPassing, "alive"); err != nil {
							t.Error(err)
						}
					})
				case "expire-end":
					select {
					case after <- e.check("t"):
					default:
					}
				}
			}
		})
		e.register(t, "a", check())
		if c := <-after; c.Status != state.HealthPassing {
			t.Fatalf("after an acknowledged pass the check is %s %q", c.Status, c.Output)
		}
	})
}

// A store closed under the Manager ends Run with state.ErrClosed (and stops the checks)
// instead of leaving it spinning on the closed store's watch, which fires at once.
func TestRunEndsWhenStoreCloses(t *testing.T) {
	testutil.CheckGoroutines(t)
	store, err := state.Open(testutil.Context(t, 5*time.Second), state.Options{Dir: t.TempDir(), NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := New(Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		if store.Watchers() != 1 {
			return errors.New("manager not watching yet")
		}
		return nil
	})
	store.Close()
	timer := time.NewTimer(2 * time.Second)
	defer timer.Stop()
	select {
	case err := <-done:
		if !errors.Is(err, state.ErrClosed) {
			t.Fatalf("Run: %v, want ErrClosed", err)
		}
	case <-timer.C:
		t.Fatal("Run still running 2s after the store closed")
	}
}

// The reaper decides from a view, then deregisters: a check that turns passing in between
// saves its service. The decision is taken again inside the write.
func TestReaperRechecksInsideTheWrite(t *testing.T) {
	var decided atomic.Bool
	var e *env
	done := make(chan struct{})
	var doneOnce sync.Once
	e = start(t, func(c *Config) {
		c.hook = func(point string) {
			switch point {
			case "reap-decided": // the service looked reapable; now it recovers
				if decided.CompareAndSwap(false, true) {
					if err := e.mgr.SetTTL(context.Background(), "doomed-ttl", state.HealthPassing, "back"); err != nil {
						t.Error(err)
					}
				}
			case "reap-done":
				if decided.Load() {
					doneOnce.Do(func() { close(done) })
				}
			}
		}
	})
	e.register(t, "doomed", &state.Check{CheckID: "doomed-ttl", Type: state.CheckTypeTTL,
		Definition: state.CheckDefinition{TTL: time.Hour, DeregisterCriticalServiceAfter: 20 * time.Millisecond}})
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.Fatal("the reaper never chose the critical service")
	}
	e.store.View(func(v *state.View) {
		if v.Service("n1", "doomed") == nil {
			t.Fatal("the reaper removed a service whose check had turned passing before the removal")
		}
	})
}

// TestSetTTLBeforeRun: an update for a registered TTL check that arrives before Run has
// started (the HTTP server and the manager start side by side) waits for Run instead of
// answering that the check does not exist.
func TestSetTTLBeforeRun(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store, err := state.Open(ctx, state.Options{Dir: t.TempDir(), NodeName: "n1", CheckUpdateInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	mgr, err := New(Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{store: store, mgr: mgr}
	e.register(t, "a", &state.Check{CheckID: "a-ttl", Type: state.CheckTypeTTL,
		Definition: state.CheckDefinition{TTL: time.Minute}})
	set := make(chan error, 1)
	go func() { set <- mgr.SetTTL(testutil.Context(t, 5*time.Second), "a-ttl", state.HealthPassing, "early") }()
	time.Sleep(50 * time.Millisecond) // SetTTL is waiting now: Run has not started
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()
	if err := <-set; err != nil {
		t.Fatalf("SetTTL before Run: %v", err)
	}
	if c := e.check("a-ttl"); c.Status != state.HealthPassing || c.Output != "early" {
		t.Fatalf("check after the early update: %s %q", c.Status, c.Output)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
