package sidecar

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/discovery/consultest"
	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
)

// The end-to-end tests run real sidecars (in-process, or the built binary as a subprocess
// where a signal or a kill is the point) against Podmesh's own registry
// (consultest.StartMainRegistry), with HTTP apps on loopback: they are about the sidecar's
// behaviour. One registry serves the whole package, except for the tests that kill it or
// change its CA. The test whose point is that the sidecar works unchanged against Consul
// (TestMTLSWithAgent) starts a real Consul v1.14.0 dev agent of its own
// (consultest.StartConsul).
var (
	agent      *consultest.Agent
	sidecarBin string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return m.Run() // fuzzing the config loader needs no registry
	}
	defer consultest.RemoveBuilt()
	dir, err := os.MkdirTemp("", "sidecar-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	a, err := consultest.StartMainRegistry(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer a.Stop()
	agent = a
	// The binary, for the tests that signal or kill a sidecar process.
	sidecarBin = filepath.Join(dir, "sidecar")
	out, err := exec.Command("go", "build", "-o", sidecarBin, "../cmd/sidecar").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build sidecar: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// needAgent is where a test starts using the package's shared registry.
func needAgent(t *testing.T) {
	t.Helper()
	if agent == nil {
		t.Fatal("the shared registry is not running (TestMain did not start it)")
	}
}

// testApp is an HTTP app that names itself in X-App and counts requests.
type testApp struct {
	name string
	addr string
	hits atomic.Int64
	srv  *http.Server
}

func startTestApp(t *testing.T, name string, h http.HandlerFunc) *testApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &testApp{name: name, addr: ln.Addr().String()}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		w.Header().Set("X-App", name)
		if h != nil {
			h(w, r)
			return
		}
		io.WriteString(w, "hello from "+name)
	})}
	go a.srv.Serve(ln)
	t.Cleanup(func() { a.srv.Close() })
	return a
}

// running is an in-process sidecar.
type running struct {
	sc     *Sidecar
	addrs  Addrs
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop drains the sidecar as SIGTERM would and waits for Run to return.
func (r *running) stop(t *testing.T) {
	r.once.Do(func() {
		r.cancel()
		if err := <-r.done; err != nil {
			t.Errorf("sidecar run: %v", err)
		}
	})
}

// plainUnlessTLS adds -tls=false to args that do not set -tls: the tests of discovery,
// balancing and resilience run plaintext between the sidecars, so that they also run against
// a registry without a Connect CA; the mutual TLS tests (mtls_test.go) say -tls=true.
func plainUnlessTLS(args []string) []string {
	for _, a := range args {
		if a == "-tls" || strings.HasPrefix(a, "-tls=") {
			return args
		}
	}
	return append(args, "-tls=false")
}

// runSidecar parses args (the registry is added), lets edit adjust the configuration,
// runs the sidecar and waits until it is ready.
func runSidecar(t *testing.T, registry string, edit func(*Config), args ...string) *running {
	t.Helper()
	return runSidecarWith(t, registry, edit, nil, args...)
}

// runSidecarWith is runSidecar with Options.
func runSidecarWith(t *testing.T, registry string, edit func(*Config), opts []Option, args ...string) *running {
	t.Helper()
	args = append(plainUnlessTLS(args), "-registry", registry)
	if !strings.Contains(strings.Join(args, " "), "-admin") {
		args = append(args, "-admin", "127.0.0.1:0")
	}
	cfg, err := Parse(args, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Check.Interval = Duration(300 * time.Millisecond)
	cfg.Check.Timeout = Duration(200 * time.Millisecond)
	cfg.Check.TTL = Duration(2 * time.Second)
	cfg.DrainTimeout = Duration(3 * time.Second)
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	sc, err := New(cfg, slog.New(slog.DiscardHandler), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{sc: sc, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- sc.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if ok, why := sc.Ready(); !ok {
			return fmt.Errorf("not ready: %s", why)
		}
		return nil
	})
	r.addrs = sc.Addrs()
	return r
}

// backend is an app with its own sidecar, registered as an instance of service.
type backend struct {
	app *testApp
	sc  *running
	id  string
}

func startBackend(t *testing.T, registry, service, id, protocol string, h http.HandlerFunc) *backend {
	t.Helper()
	app := startTestApp(t, id, h)
	sc := runSidecar(t, registry, nil, "-service", service, "-id", id, "-protocol", protocol,
		"-inbound", "127.0.0.1:0", "-app", app.addr)
	return &backend{app: app, sc: sc, id: id}
}

// waitEndpoints waits until the client sidecar's upstream has n ready endpoints.
func waitEndpoints(t *testing.T, client *running, upstream string, n int) {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		for _, u := range client.sc.Snapshot().Upstreams {
			if u.Name == upstream {
				if u.Balancer.Ready != n || len(u.Balancer.Hosts) != n {
					return fmt.Errorf("%s: %d ready of %d hosts, want %d", upstream, u.Balancer.Ready, len(u.Balancer.Hosts), n)
				}
				return nil
			}
		}
		return fmt.Errorf("no upstream %s", upstream)
	})
}

func hostState(client *running, upstream, id string) (lb.HostStats, bool) {
	for _, u := range client.sc.Snapshot().Upstreams {
		if u.Name != upstream {
			continue
		}
		for _, h := range u.Balancer.Hosts {
			if h.ID == id {
				return h, true
			}
		}
	}
	return lb.HostStats{}, false
}

func httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
}

func get(c *http.Client, url string, header ...string) (int, string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, res.Header.Get("X-App"), nil
}

// load runs workers sending GETs to url until stop is closed, at most max requests each;
// it returns the number of requests and every failure.
func load(url string, workers, max int, stop <-chan struct{}) (func() (int64, []string), *sync.WaitGroup) {
	var n atomic.Int64
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	c := httpClient()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < max; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code, _, err := get(c, url)
				n.Add(1)
				if err != nil || code != 200 {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("worker %d #%d: %d %v", w, i, code, err))
					mu.Unlock()
				}
			}
		}()
	}
	return func() (int64, []string) {
		mu.Lock()
		defer mu.Unlock()
		return n.Load(), append([]string(nil), failures...)
	}, &wg
}

// Acceptance 1: each algorithm spreads requests as documented, through real sidecars.
func TestAlgorithms(t *testing.T) {
	needAgent(t)
	const n = 300
	spread := func(t *testing.T, policy, hashOn string, requests int, header func(i int) []string) (map[string]int, *running, []*backend) {
		t.Helper()
		svc := "algo-" + strings.ReplaceAll(policy, "_", "-")
		var backends []*backend
		for i := range 3 {
			backends = append(backends, startBackend(t, agent.URL(), svc, fmt.Sprintf("%s-%d", svc, i), "http", nil))
		}
		client := runSidecar(t, agent.URL(), func(c *Config) {
			c.Upstreams[0].LB = policy
			c.Upstreams[0].HashOn = hashOn
		}, "-upstream", svc+"=127.0.0.1:0")
		waitEndpoints(t, client, svc, 3)
		url := "http://" + client.addrs.Upstreams[svc] + "/"
		counts := map[string]int{}
		c := httpClient()
		for i := range requests {
			code, app, err := get(c, url, header(i)...)
			if err != nil || code != 200 {
				t.Fatalf("request %d: %d %v", i, code, err)
			}
			counts[app]++
		}
		return counts, client, backends
	}
	noHeader := func(int) []string { return nil }

	t.Run("round_robin", func(t *testing.T) {
		counts, _, _ := spread(t, "round_robin", "", n, noHeader)
		for app, c := range counts {
			if c != n/3 {
				t.Errorf("%s got %d of %d, want exactly %d: %v", app, c, n, n/3, counts)
			}
		}
	})
	t.Run("random", func(t *testing.T) {
		counts, _, _ := spread(t, "random", "", n, noHeader)
		// Binomial(300, 1/3): mean 100, sd 8.2; ±40 is about 5 sd.
		for app, c := range counts {
			if c < 60 || c > 140 || len(counts) != 3 {
				t.Errorf("%s got %d of %d: %v", app, c, n, counts)
			}
		}
	})
	t.Run("least_request", func(t *testing.T) {
		svc := "algo-least-request"
		var backends []*backend
		for i := range 3 {
			var h http.HandlerFunc
			if i == 0 {
				// One slow instance, slower than lb's initial estimate (30ms) so that its
				// peak-EWMA rises at its first answer and steers traffic away.
				h = func(w http.ResponseWriter, r *http.Request) { time.Sleep(60 * time.Millisecond) }
			}
			backends = append(backends, startBackend(t, agent.URL(), svc, fmt.Sprintf("%s-%d", svc, i), "http", h))
		}
		client := runSidecar(t, agent.URL(), nil, "-upstream", svc+"=127.0.0.1:0")
		waitEndpoints(t, client, svc, 3)
		url := "http://" + client.addrs.Upstreams[svc] + "/"
		c := httpClient()
		counts := map[string]int{}
		for i := range 200 {
			code, app, err := get(c, url)
			if err != nil || code != 200 {
				t.Fatalf("request %d: %d %v", i, code, err)
			}
			counts[app]++
		}
		slow, fast1, fast2 := counts[backends[0].id], counts[backends[1].id], counts[backends[2].id]
		t.Logf("least_request: slow %d, fast %d and %d", slow, fast1, fast2)
		// Power of two choices over latency × load: the slow instance is picked only in its
		// first rounds; between the two fast ones the lower estimate wins, so their split
		// need not be even.
		if slow > 20 || fast1+fast2 < 180 || fast1 == 0 || fast2 == 0 {
			t.Errorf("least_request should favour the fast instances: slow %d, fast %d and %d", slow, fast1, fast2)
		}
	})
	for _, policy := range []string{"ring_hash", "maglev"} {
		t.Run(policy, func(t *testing.T) {
			const keys = 60
			key := func(i int) []string { return []string{"X-User", fmt.Sprint("user-", i%keys)} }
			_, client, backends := spread(t, policy, "header:x-user", keys, key)
			svc := "algo-" + strings.ReplaceAll(policy, "_", "-")
			url := "http://" + client.addrs.Upstreams[svc] + "/"
			c := httpClient()
			owner := func() map[int]string {
				m := map[int]string{}
				for i := range keys {
					for range 3 { // every request of a key goes to one instance
						_, app, err := get(c, url, key(i)...)
						if err != nil {
							t.Fatal(err)
						}
						if m[i] != "" && m[i] != app {
							t.Fatalf("key %d went to %s and %s", i, m[i], app)
						}
						m[i] = app
					}
				}
				return m
			}
			before := owner()
			perInstance := map[string]int{}
			for _, app := range before {
				perInstance[app]++
			}
			if len(perInstance) != 3 {
				t.Errorf("keys should spread over the 3 instances: %v", perInstance)
			}
			// One instance leaves (its sidecar drains and deregisters).
			gone := backends[1]
			gone.sc.stop(t)
			waitEndpoints(t, client, svc, 2)
			after := owner()
			moved, movedOthers := 0, 0
			for i := range keys {
				if before[i] != after[i] {
					moved++
					if before[i] != gone.id {
						movedOthers++
					}
				}
			}
			// Only the leaving instance's keys (about 1/3) move; the others stay put.
			if moved != perInstance[gone.id] || movedOthers != 0 {
				t.Errorf("%d of %d keys moved (%d not from the leaving instance, which had %d)",
					moved, keys, movedOthers, perInstance[gone.id])
			}
			t.Logf("%s: %d of %d keys moved when 1 of 3 instances left", policy, moved, keys)
		})
	}
}

// Acceptance 2: killing one instance under a steady load of GETs fails no request, and
// the instance is out of rotation within a second. Deregistering has the same effect.
func TestKillInstanceUnderLoad(t *testing.T) {
	needAgent(t)
	svc := "kill"
	var procs []*sidecarProc
	var apps []*testApp
	for i := range 3 {
		app := startTestApp(t, fmt.Sprintf("kill-%d", i), nil)
		apps = append(apps, app)
		args := []string{"-service", svc, "-id", app.name, "-protocol", "http", "-app", app.addr, "-registry", agent.URL()}
		if i == 1 {
			// Registered by the test, as a launcher would: the test deregisters it below.
			args = append(args, "-register=false")
		}
		procs = append(procs, startSidecarProc(t, args...))
		if i == 1 {
			agent.Register(t, svc, app.name, procs[1].inbound, map[string]string{"protocol": "http"})
		}
	}
	client := runSidecar(t, agent.URL(), nil, "-upstream", svc+"=127.0.0.1:0")
	waitEndpoints(t, client, svc, 3)
	url := "http://" + client.addrs.Upstreams[svc] + "/"

	stop := make(chan struct{})
	result, wg := load(url, 4, 100000, stop)
	time.Sleep(300 * time.Millisecond)

	// Kill instance 0: SIGKILL its sidecar (no deregistration, connections reset) and
	// stop its app.
	procs[0].kill(t)
	apps[0].srv.Close()
	killedAt := time.Now()
	outAt := waitOutOfRotation(t, client, svc, apps[0].name, killedAt)
	t.Logf("killed instance out of rotation after %v", outAt.Sub(killedAt))

	// Deregister instance 1 through the registry; it keeps running.
	before := apps[1].hits.Load()
	agent.Deregister(t, apps[1].name)
	deregAt := time.Now()
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, ok := hostState(client, svc, apps[1].name); ok {
			return fmt.Errorf("still present")
		}
		return nil
	})
	t.Logf("deregistered instance removed after %v", time.Since(deregAt))
	if d := time.Since(deregAt); d > time.Second {
		t.Errorf("deregistered instance removed after %v, want < 1s", d)
	}
	time.Sleep(100 * time.Millisecond) // requests already picked for it land
	mid := apps[1].hits.Load()
	time.Sleep(300 * time.Millisecond)
	if got := apps[1].hits.Load(); got != mid || mid == before {
		t.Errorf("deregistered instance: %d requests before, %d at removal, %d after", before, mid, got)
	}
	close(stop)
	wg.Wait()
	total, failures := result()
	t.Logf("%d requests, %d failed", total, len(failures))
	if len(failures) > 0 {
		t.Errorf("%d of %d requests failed, first: %s", len(failures), total, failures[0])
	}
	if apps[2].hits.Load() == 0 {
		t.Error("the surviving instance got no traffic")
	}
}

// waitOutOfRotation waits until the client sidecar sends no more attempts to the host:
// ejected, removed, or its failure count frozen (least_request stops picking a host whose
// latency estimate carries the failure penalty). It fails the test after a second.
func waitOutOfRotation(t *testing.T, client *running, svc, id string, since time.Time) time.Time {
	t.Helper()
	var last int64 = -1
	var stableSince time.Time
	for time.Since(since) < 3*time.Second {
		h, ok := hostState(client, svc, id)
		if !ok || h.State == lb.StateEjected {
			if time.Since(since) > time.Second {
				t.Errorf("out of rotation only after %v", time.Since(since))
			}
			return time.Now()
		}
		f := h.ConsecutiveGatewayFailures + h.Consecutive5xx
		if f != last {
			last, stableSince = f, time.Now()
		} else if f > 0 && time.Since(stableSince) > 500*time.Millisecond {
			if stableSince.Sub(since) > time.Second {
				t.Errorf("attempts to the killed instance went on for %v", stableSince.Sub(since))
			}
			return stableSince
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("killed instance still in rotation after 3s")
	return time.Time{}
}

// sidecarProc is the sidecar binary running as a subprocess.
type sidecarProc struct {
	cmd     *exec.Cmd
	admin   string
	inbound string
	done    chan error
	log     *strings.Builder
}

func startSidecarProc(t *testing.T, args ...string) *sidecarProc {
	t.Helper()
	admin, inbound := testutil.FreePort(t), ""
	args = append(plainUnlessTLS(args), "-admin", admin, "-drain-timeout", "5s")
	if strings.Contains(strings.Join(args, " "), "-service") {
		inbound = testutil.FreePort(t)
		args = append(args, "-inbound", inbound)
	}
	cmd := exec.Command(sidecarBin, args...)
	var log strings.Builder
	cmd.Stderr = &syncWriter{w: &log}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &sidecarProc{cmd: cmd, admin: admin, inbound: inbound, done: make(chan error, 1), log: &log}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("sidecar %v log:\n%s", args, p.logText())
		}
	})
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		res, err := http.Get("http://" + admin + "/ready")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("ready: %d", res.StatusCode)
		}
		return nil
	})
	return p
}

var logMu sync.Mutex

type syncWriter struct{ w io.Writer }

func (s *syncWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	return s.w.Write(p)
}

func (p *sidecarProc) logText() string {
	logMu.Lock()
	defer logMu.Unlock()
	return p.log.String()
}

func (p *sidecarProc) kill(t *testing.T) {
	t.Helper()
	p.cmd.Process.Kill()
}

func (p *sidecarProc) signal(t *testing.T, s os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(s); err != nil {
		t.Fatal(err)
	}
}

// wait waits for the process to exit and returns its error (nil: exit status 0).
func (p *sidecarProc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-timer.C:
		t.Fatalf("sidecar did not exit within %v", d)
		return nil
	}
}

// Acceptance 5: SIGTERM to a sidecar under load fails no request in flight — neither on
// the instance's side (it deregisters, drains, peers retry elsewhere) nor on the caller's
// side (requests already sent through it finish).
func TestSIGTERMUnderLoad(t *testing.T) {
	needAgent(t)
	svc := "term"
	slow := func(w http.ResponseWriter, r *http.Request) { time.Sleep(50 * time.Millisecond) }
	var procs []*sidecarProc
	for i := range 2 {
		app := startTestApp(t, fmt.Sprintf("term-%d", i), slow)
		procs = append(procs, startSidecarProc(t, "-service", svc, "-id", app.name, "-protocol", "http",
			"-app", app.addr, "-registry", agent.URL()))
	}
	// The calling side is a subprocess too: it gets a SIGTERM of its own at the end.
	upstreamAddr := testutil.FreePort(t)
	caller := startSidecarProc(t, "-upstream", svc+"="+upstreamAddr, "-registry", agent.URL())
	url := "http://" + upstreamAddr + "/"
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		var cfg struct {
			Upstreams []UpstreamState `json:"upstreams"`
		}
		res, err := http.Get("http://" + caller.admin + "/config")
		if err != nil {
			return err
		}
		defer res.Body.Close()
		json.NewDecoder(res.Body).Decode(&cfg)
		if len(cfg.Upstreams) != 1 || cfg.Upstreams[0].Balancer.Ready != 2 {
			return fmt.Errorf("caller sees %+v", cfg.Upstreams)
		}
		return nil
	})

	stop := make(chan struct{})
	result, wg := load(url, 8, 100000, stop)
	time.Sleep(400 * time.Millisecond)
	procs[0].signal(t, syscall.SIGTERM)
	if err := procs[0].wait(t, 10*time.Second); err != nil {
		t.Errorf("instance sidecar exit: %v\n%s", err, procs[0].logText())
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	total, failures := result()
	t.Logf("instance SIGTERM: %d requests, %d failed", total, len(failures))
	if len(failures) > 0 {
		t.Errorf("%d of %d requests failed, first: %s", len(failures), total, failures[0])
	}

	// The caller's own sidecar: requests in flight when it gets SIGTERM still complete.
	c := httpClient()
	var inflight sync.WaitGroup
	var bad atomic.Int64
	for range 8 {
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			if code, _, err := get(c, url); err != nil || code != 200 {
				bad.Add(1)
			}
		}()
	}
	time.Sleep(20 * time.Millisecond) // all 8 are in the app's 50ms sleep now
	caller.signal(t, syscall.SIGTERM)
	inflight.Wait()
	if err := caller.wait(t, 10*time.Second); err != nil {
		t.Errorf("caller sidecar exit: %v", err)
	}
	if bad.Load() > 0 {
		t.Errorf("%d in-flight requests failed when the caller's sidecar got SIGTERM", bad.Load())
	}
}

// Acceptance 4: with the registry killed, traffic keeps flowing to the known instances;
// when it is back (with its data: Podmesh's registry keeps what it acknowledged; a Consul dev
// agent would come back empty and the sidecars register again), a new instance gets traffic
// and every instance is passing.
func TestRegistryDownAndBack(t *testing.T) {
	reg := consultest.StartRegistry(t) // its own registry: this test kills it
	svc := "regdown"
	var backends []*backend
	for i := range 2 {
		backends = append(backends, startBackend(t, reg.URL(), svc, fmt.Sprintf("%s-%d", svc, i), "http", nil))
	}
	client := runSidecar(t, reg.URL(), nil, "-upstream", svc+"=127.0.0.1:0")
	waitEndpoints(t, client, svc, 2)
	url := "http://" + client.addrs.Upstreams[svc] + "/"

	stop := make(chan struct{})
	result, wg := load(url, 2, 100000, stop)
	reg.Kill()
	time.Sleep(1500 * time.Millisecond)
	n1, failures := result()
	if len(failures) > 0 {
		t.Fatalf("with the registry down, %d of %d requests failed: %s", len(failures), n1, failures[0])
	}
	if err := reg.Restart(); err != nil {
		t.Fatal(err)
	}
	fresh := startBackend(t, reg.URL(), svc, svc+"-new", "http", nil)
	testutil.Eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		if fresh.app.hits.Load() == 0 {
			return fmt.Errorf("the new instance got no traffic yet")
		}
		return nil
	})
	close(stop)
	wg.Wait()
	total, failures := result()
	t.Logf("%d requests across the registry outage, %d failed; old instances served %d and %d",
		total, len(failures), backends[0].app.hits.Load(), backends[1].app.hits.Load())
	if len(failures) > 0 {
		t.Errorf("%d of %d requests failed: %s", len(failures), total, failures[0])
	}
	// The old instances are listed and passing again (kept by the registry, or registered
	// again by their sidecars).
	testutil.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		entries, _, err := reg.Client().Health().Service(svc, "", true, nil)
		if err != nil || len(entries) != 3 {
			return fmt.Errorf("%d passing instances (%v)", len(entries), err)
		}
		return nil
	})
}

// The admin listener, the registration and the TTL check.
func TestAdminAndRegistration(t *testing.T) {
	testutil.CheckGoroutines(t)
	needAgent(t)
	healthy := atomic.Bool{}
	healthy.Store(true)
	app := startTestApp(t, "adm", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && !healthy.Load() {
			http.Error(w, "sick", 500)
		}
	})
	metricsAddr := testutil.FreePort(t)
	sc := runSidecar(t, agent.URL(), nil, "-service", "adm", "-id", "adm-1", "-protocol", "http",
		"-inbound", "127.0.0.1:0", "-app", app.addr, "-check-http", "/healthz", "-metrics", metricsAddr,
		"-upstream", "adm=127.0.0.1:0")
	admin := "http://" + sc.addrs.Admin
	for path, want := range map[string]int{"/live": 200, "/ready": 200, "/nope": 404} {
		res, err := http.Get(admin + path)
		if err != nil || res.StatusCode != want {
			t.Errorf("%s: %v %v", path, res, err)
		}
		if res != nil {
			res.Body.Close()
		}
	}

	// Registered with the inbound address, meta and a passing TTL check.
	var entry struct {
		addr, proto, metricsPort, status string
	}
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
		entries, _, err := agent.Client().Health().Service("adm", "", false, nil)
		if err != nil || len(entries) != 1 {
			return fmt.Errorf("entries %d %v", len(entries), err)
		}
		e := entries[0]
		entry.addr = net.JoinHostPort(e.Service.Address, fmt.Sprint(e.Service.Port))
		entry.proto, entry.metricsPort = e.Service.Meta["protocol"], e.Service.Meta["metrics_port"]
		entry.status = e.Checks.AggregatedStatus()
		if entry.status != "passing" {
			return fmt.Errorf("status %s", entry.status)
		}
		return nil
	})
	_, mport, _ := net.SplitHostPort(metricsAddr)
	if entry.addr != sc.addrs.Inbound || entry.proto != "http" || entry.metricsPort != mport {
		t.Errorf("registration %+v, inbound %s", entry, sc.addrs.Inbound)
	}

	// Traffic through the sidecar's own upstream (itself), then /config and /metrics.
	waitEndpoints(t, sc, "adm", 1)
	if code, _, err := get(httpClient(), "http://"+sc.addrs.Upstreams["adm"]+"/x"); err != nil || code != 200 {
		t.Fatalf("request: %d %v", code, err)
	}
	res, err := http.Get(admin + "/config")
	if err != nil {
		t.Fatal(err)
	}
	var snap Snapshot
	json.NewDecoder(res.Body).Decode(&snap)
	res.Body.Close()
	if len(snap.Upstreams) != 1 || snap.Upstreams[0].Protocol != "http" || len(snap.Upstreams[0].Balancer.Hosts) != 1 ||
		snap.Config.Service != "adm" || snap.Registration == nil || !snap.Registration.Registered {
		t.Errorf("config: %+v", snap)
	}
	for _, addr := range []string{admin, "http://" + metricsAddr} {
		res, err := http.Get(addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, want := range []string{
			`podmesh_requests_total{code_class="2xx",destination="adm",direction="outbound",grpc_status="",method="GET",source="adm"} 1`,
			`podmesh_requests_total{code_class="2xx",destination="adm",direction="inbound",grpc_status="",method="GET",source="unknown"} 1`,
			`podmesh_endpoints{destination="adm",source="adm",state="ready"} 1`,
			"process_resident_memory_bytes",
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("%s/metrics lacks %s", addr, want)
			}
		}
	}
	// The separate metrics listener serves /metrics only.
	for _, path := range []string{"/config", "/ready", "/debug/pprof/"} {
		res, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("metrics listener %s: %d, want 404", path, res.StatusCode)
		}
	}

	// The app turns sick: the check goes critical and the instance leaves discovery.
	healthy.Store(false)
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
		entries, _, err := agent.Client().Health().Service("adm", "", true, nil)
		if err != nil || len(entries) != 0 {
			return fmt.Errorf("passing entries %d %v", len(entries), err)
		}
		return nil
	})
	// Stopping deregisters it.
	sc.stop(t)
	entries, _, _ := agent.Client().Health().Service("adm", "", false, nil)
	if len(entries) != 0 {
		t.Errorf("still registered after stop: %d", len(entries))
	}
}
