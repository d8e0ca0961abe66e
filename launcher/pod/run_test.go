package pod

// Privileged tests of a running pod: a real network namespace, a real init (this test
// binary re-executed), fake cgroups and a fake registry, and this test binary playing the
// sidecar and the app (TestMain), so a pod starts in a fraction of a second and the tests
// control what its programs do.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/initproc"
	"github.com/podmesh/podmesh/launcher/internal/podtest"
	"github.com/podmesh/podmesh/launcher/netns"
)

// Names this test binary answers to (argv[0]'s base name), besides init and the exec shim.
const (
	fakeSidecar        = "fakesidecar"         // /ready and /drain answer 200 on the admin port
	fakeSidecarUnready = "fakesidecar-unready" // /ready answers 503 for ever
	fakeSidecarSlow    = "fakesidecar-slow"    // says READY=1 only after slowReady
	fakeSidecarCloses  = "fakesidecar-closes"  // closes its readiness pipe without a word, keeps running
	slowReady          = 400 * time.Millisecond
	fakeApp            = "fakeapp" // listens on 127.0.0.1:8080 until SIGTERM
)

func TestMain(m *testing.M) {
	if ok, code := initproc.Main(); ok {
		os.Exit(code)
	}
	switch filepath.Base(os.Args[0]) {
	case fakeSidecar, fakeSidecarUnready, fakeSidecarSlow, fakeSidecarCloses:
		os.Exit(runFakeSidecar(filepath.Base(os.Args[0])))
	case fakeApp:
		os.Exit(runFakeApp())
	}
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	os.Exit(m.Run())
}

func runFakeSidecar(mode string) int {
	ready := mode != fakeSidecarUnready
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", AdminPort))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready {
			http.Error(w, "never ready", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/drain", func(http.ResponseWriter, *http.Request) {})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(l) }()
	// The real sidecar's -ready-fd: READY=1 on that descriptor once ready (the unready one
	// keeps it open and silent, as a sidecar waiting for its certificates does).
	for i, a := range os.Args {
		if a == "-ready-fd" && i+1 < len(os.Args) && ready {
			fd, err := strconv.Atoi(os.Args[i+1])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			f := os.NewFile(uintptr(fd), "ready-fd")
			switch mode {
			case fakeSidecarSlow:
				time.Sleep(slowReady)
			case fakeSidecarCloses:
				f.Close()
				continue
			}
			_, _ = f.WriteString("READY=1\n")
			f.Close()
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	return 0
}

func runFakeApp() int {
	l, err := net.Listen("tcp", "127.0.0.1:8080")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	return 0
}

// fakeCgroups hands out fakeCgroups: Add records pids, Kill signals the recorded ones,
// Stats returns what the test set.
type fakeCgroups struct {
	mu   sync.Mutex
	pods map[string]*fakeCgroup
}

func (f *fakeCgroups) Pod(name string, _ compose.Limits) (Cgroup, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pods == nil {
		f.pods = map[string]*fakeCgroup{}
	}
	cg := &fakeCgroup{pids: map[string][]int{}}
	f.pods[name] = cg
	return cg, nil
}

type fakeCgroup struct {
	mu    sync.Mutex
	pids  map[string][]int // by child, latest last
	stats Stats
}

func (c *fakeCgroup) Add(child string, pid int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pids[child] = append(c.pids[child], pid)
	return nil
}

// last is the latest pid placed in child, or 0.
func (c *fakeCgroup) last(child string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ps := c.pids[child]; len(ps) > 0 {
		return ps[len(ps)-1]
	}
	return 0
}

func (c *fakeCgroup) Kill(ctx context.Context, child string) error {
	c.mu.Lock()
	var pids []int
	for name, ps := range c.pids {
		if child == "" || name == child {
			pids = append(pids, ps...)
		}
	}
	c.mu.Unlock()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return nil
}

func (c *fakeCgroup) Stats() (Stats, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats, nil
}

func (c *fakeCgroup) setOOMKills(n uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.OOMKills = n
}

func (c *fakeCgroup) Delete(context.Context) error { return nil }

// fakeRegistry records what a pod tells the registry; failTTL makes the next SetHealth
// calls fail as a registry that lost the instance answers.
type fakeRegistry struct {
	mu      sync.Mutex
	events  []string
	failTTL int
}

func (r *fakeRegistry) record(e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *fakeRegistry) Register(_ context.Context, reg Registration) error {
	r.record("register " + reg.ID)
	return nil
}

func (r *fakeRegistry) SetHealth(_ context.Context, id, status, _ string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failTTL > 0 {
		r.failTTL--
		r.events = append(r.events, "ttl-failed "+id)
		return fmt.Errorf("pod: set %s %s: %w: Unexpected response code: 404 (Unknown check ID %q)", CheckID(id), status, ErrNotRegistered, CheckID(id))
	}
	r.events = append(r.events, "ttl "+id+" "+status)
	return nil
}

func (r *fakeRegistry) Deregister(_ context.Context, id string) error {
	r.record("deregister " + id)
	return nil
}

func (r *fakeRegistry) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

// podEnv is one test's pod network: a bridge and subnet of its own.
type podEnv struct {
	t       *testing.T
	network netns.Network
	dir     string
	cgroups *fakeCgroups
	reg     *fakeRegistry
	project string
	next    int // pods prepared so far
}

func newPodEnv(t *testing.T) *podEnv {
	t.Helper()
	testutil.RequirePrivileged(t)
	bridge, subnet := podtest.Network(t)
	n := netns.Network{Bridge: bridge, Subnet: subnet}
	st, err := netns.EnsureBridge(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.RemoveBridge(n, st) })
	dir := t.TempDir()
	// The fake programs run as other users than root: they must reach their directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &podEnv{t: t, network: n, dir: dir, cgroups: &fakeCgroups{}, reg: &fakeRegistry{},
		project: fmt.Sprintf("podt%d", os.Getpid()%100000)}
}

// program returns a path to this test binary under the given name.
func (e *podEnv) program(name string) string {
	e.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	path := filepath.Join(e.dir, name)
	if _, err := os.Lstat(path); err == nil {
		return path
	}
	if err := os.Symlink(exe, path); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// pod prepares a pod of svc with the given sidecar program ("" for none).
func (e *podEnv) pod(svc *compose.Service, sidecarName string, tweak func(*Config)) *Pod {
	e.t.Helper()
	e.next++
	addr := e.network.Subnet.Addr().Next().Next()
	for i := 1; i < e.next; i++ {
		addr = addr.Next()
	}
	name := fmt.Sprintf("%s-%d", svc.Name, 1)
	cfg := Config{
		Project:     e.project,
		Service:     svc,
		Dir:         "/",
		Replica:     1,
		Network:     e.network,
		Net:         netns.Plan(netns.PinName(e.project, svc.Name, 1), addr, e.network),
		StateDir:    filepath.Join(e.dir, "pods", name),
		LogDir:      filepath.Join(e.dir, "logs", name),
		RegistryURL: "http://" + e.network.Gateway().String() + ":8500",
		Cgroups:     e.cgroups,
		Registry:    e.reg,
		TTL:         300 * time.Millisecond,
	}
	if svc.Mesh.Port > 0 {
		cfg.Net.Open = []uint16{InboundPort, MetricsPort}
	}
	if sidecarName != "" {
		cfg.SidecarBin = e.program(sidecarName)
	}
	if tweak != nil {
		tweak(&cfg)
	}
	p := New(cfg)
	e.t.Cleanup(func() { _ = p.Remove(context.WithoutCancel(e.t.Context())) })
	return p
}

// run runs p until the test ends (or stop is called) and reports when Run returns.
func (e *podEnv) run(p *Pod) func() {
	ctx, cancel := context.WithCancel(context.WithoutCancel(e.t.Context()))
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	stop := func() {
		cancel()
		timer := time.NewTimer(30 * time.Second)
		defer timer.Stop()
		select {
		case err := <-done:
			if err != nil {
				e.t.Errorf("pod %s: %v", p.Name(), err)
			}
		case <-timer.C:
			e.t.Errorf("pod %s did not stop within 30s", p.Name())
		}
	}
	var once sync.Once
	e.t.Cleanup(func() { once.Do(stop) })
	return func() { once.Do(stop) }
}

// waitFor waits until cond holds for p's Info, at most d.
func waitFor(t *testing.T, p *Pod, d time.Duration, what string, cond func(Info) bool) Info {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	if err := p.WaitFor(ctx, cond); err != nil {
		t.Fatalf("pod %s not %s within %v: %+v; app log:\n%s", p.Name(), what, d, p.Info(), readLog(p, "app"))
	}
	return p.Info()
}

// meshedPod runs a pod of a meshed service called name, with the fake app, the given fake
// sidecar, and no restart of the app.
func (e *podEnv) meshedPod(name, sidecar string) *Pod {
	e.t.Helper()
	svc := &compose.Service{Name: name, StopGracePeriod: time.Second, Mesh: compose.Mesh{Port: 8080},
		Restart: compose.RestartPolicy{Condition: compose.RestartNone}}
	p := e.pod(svc, sidecar, nil)
	svc.Command = []string{e.program(fakeApp)}
	e.run(p)
	return p
}

func readLog(p *Pod, name string) string {
	b, _ := os.ReadFile(filepath.Join(p.cfg.LogDir, name+".log"))
	return string(b)
}

func isHealthy(i Info) bool { return i.Status == Running && i.Health == HealthHealthy }

// TestHealthcheckLeavesAProcess: a healthcheck that leaves a process running in the
// background (sh -c 'sleep 60 &') still completes: the pod becomes healthy at once instead
// of waiting for the leftover to close the check's output. And a healthcheck whose timeout
// runs out while init is still starting it (2ms) does not hang the pod: it stops on time.
func TestHealthcheckLeavesAProcess(t *testing.T) {
	e := newPodEnv(t)
	bg := &compose.Service{Name: "bg", Command: []string{"sleep", "600"}, StopGracePeriod: time.Second,
		Restart:     compose.RestartPolicy{Condition: compose.RestartNone},
		Healthcheck: &compose.Healthcheck{Test: []string{"CMD-SHELL", "sleep 60 & exit 0"}, Interval: time.Second, Timeout: 10 * time.Second, Retries: 3}}
	p := e.pod(bg, "", nil)
	stop := e.run(p)
	waitFor(t, p, 10*time.Second, "healthy", isHealthy)
	stop()

	tiny := &compose.Service{Name: "tiny", Command: []string{"sleep", "600"}, StopGracePeriod: time.Second,
		Restart:     compose.RestartPolicy{Condition: compose.RestartNone},
		Healthcheck: &compose.Healthcheck{Test: []string{"CMD", "true"}, Interval: 50 * time.Millisecond, Timeout: 2 * time.Millisecond, Retries: 1000}}
	p = e.pod(tiny, "", nil)
	stop = e.run(p)
	waitFor(t, p, 10*time.Second, "running", func(i Info) bool { return i.Status == Running })
	time.Sleep(time.Second) // a few dozen checks, each timed out
	began := time.Now()
	stop()
	if d := time.Since(began); d > 10*time.Second {
		t.Errorf("the pod took %v to stop", d)
	}
}

// cgroupOf is the fake cgroup of the pod p.
func (e *podEnv) cgroupOf(p *Pod) *fakeCgroup {
	e.cgroups.mu.Lock()
	defer e.cgroups.mu.Unlock()
	return e.cgroups.pods[netns.PinName(e.project, p.cfg.Service.Name, p.cfg.Replica)]
}

// TestOOMOfAnotherProcess: an OOM kill in the pod that the app survives (a worker it
// forked) is counted as it happens; a later SIGKILL of the app by someone else is then
// reported as that, not as the app being OOM-killed.
func TestOOMOfAnotherProcess(t *testing.T) {
	e := newPodEnv(t)
	svc := &compose.Service{Name: "oom", StopGracePeriod: time.Second,
		Restart: compose.RestartPolicy{Condition: compose.RestartNone}}
	p := e.pod(svc, "", nil)
	svc.Command = []string{e.program(fakeApp)}
	e.run(p)
	info := waitFor(t, p, 10*time.Second, "running", func(i Info) bool { return i.Status == Running && i.Pid > 0 })
	e.cgroupOf(p).setOOMKills(1) // a worker of the app was OOM-killed
	waitFor(t, p, 5*time.Second, "counting the worker's OOM kill", func(i Info) bool { return i.OOMKills == 1 })
	if err := syscall.Kill(info.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	got := waitFor(t, p, 10*time.Second, "exited", func(i Info) bool { return i.Status == Exited })
	if got.LastExit != "app killed by SIGKILL" || got.OOMKills != 1 {
		t.Errorf("after a worker's OOM kill and a SIGKILL of the app: last exit %q, OOM kills %d; want the SIGKILL, 1", got.LastExit, got.OOMKills)
	}
}

// TestBackoffFromAppExec: a start that fails (a sidecar never ready, after ReadyTimeout)
// did not run, however long it took: the backoff keeps growing instead of starting over
// because the failed attempt lasted longer than the restart window.
func TestBackoffFromAppExec(t *testing.T) {
	e := newPodEnv(t)
	svc := &compose.Service{Name: "unready", StopGracePeriod: time.Second, Mesh: compose.Mesh{Port: 8080},
		Restart: compose.RestartPolicy{Condition: compose.RestartAny, Delay: 20 * time.Millisecond, Window: 50 * time.Millisecond}}
	p := e.pod(svc, fakeSidecarUnready, func(c *Config) { c.ReadyTimeout = 150 * time.Millisecond })
	svc.Command = []string{e.program(fakeApp)}
	e.run(p)
	waitFor(t, p, 20*time.Second, "restarted 4 times", func(i Info) bool { return i.Restarts >= 4 })
	var waits []string
	for _, line := range strings.Split(readLog(p, "app"), "\n") {
		if _, w, ok := strings.Cut(line, "restarting in "); ok {
			waits = append(waits, w)
		}
	}
	if len(waits) < 3 || waits[0] != "20ms" || waits[1] != "40ms" || waits[2] != "80ms" {
		t.Errorf("waits between failed starts %v; want 20ms, 40ms, 80ms", waits)
	}
}

// TestReregisterAfterRegistryLoss: when the registry no longer knows a healthy instance's
// check (it was restarted without it: 404 Unknown check ID), the pod registers it again
// instead of failing every TTL update from then on.
func TestReregisterAfterRegistryLoss(t *testing.T) {
	e := newPodEnv(t)
	svc := &compose.Service{Name: "reg", StopGracePeriod: time.Second, Mesh: compose.Mesh{Port: 8080},
		Restart: compose.RestartPolicy{Condition: compose.RestartNone}}
	p := e.pod(svc, fakeSidecar, nil)
	svc.Command = []string{e.program(fakeApp)}
	e.run(p)
	waitFor(t, p, 10*time.Second, "healthy", isHealthy)
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e.reg.count("register "); n != 1 {
			return fmt.Errorf("%d registrations", n)
		}
		return nil
	})
	e.reg.mu.Lock()
	e.reg.failTTL = 1
	e.reg.mu.Unlock()
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e.reg.count("register "); n != 2 {
			return fmt.Errorf("%d registrations after the registry lost the instance", n)
		}
		return nil
	})
}

// TestSidecarRestartsAlone: a SIGKILLed sidecar is restarted on its own, the app keeps
// running (same pid, no restart counted), even with restart_policy none; the instance is
// passing again once the new sidecar is ready.
func TestSidecarRestartsAlone(t *testing.T) {
	e := newPodEnv(t)
	p := e.meshedPod("side", fakeSidecar)
	before := waitFor(t, p, 10*time.Second, "healthy", isHealthy)
	cg := e.cgroupOf(p)
	old := cg.last("sidecar")
	if old == 0 {
		t.Fatal("no sidecar placed in the pod's cgroup")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := cg.last("sidecar"); n == old {
			return fmt.Errorf("no new sidecar yet")
		}
		if !strings.Contains(readLog(p, "sidecar"), "restarted, pid") {
			return fmt.Errorf("the new sidecar is not ready yet")
		}
		return nil
	})
	after := p.Info()
	if after.Status != Running || after.Pid != before.Pid || after.Restarts != 0 {
		t.Errorf("after the sidecar's restart: %+v; want the app still running as pid %d, no restart", after, before.Pid)
	}
	if syscall.Kill(before.Pid, 0) != nil {
		t.Errorf("the app %d died with its sidecar", before.Pid)
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		e.reg.mu.Lock()
		defer e.reg.mu.Unlock()
		if n := len(e.reg.events); n == 0 || e.reg.events[n-1] != "ttl side-1 passing" {
			return fmt.Errorf("the instance is not passing again")
		}
		return nil
	})
}

// TestAppWaitsForSidecarReady: the app starts only once its sidecar has said READY=1 on
// its readiness pipe, not as soon as the sidecar runs (nothing polls /ready any more; the
// slow fake sidecar's /ready answers 200 from its start, so a poll would not wait).
func TestAppWaitsForSidecarReady(t *testing.T) {
	e := newPodEnv(t)
	p := e.meshedPod("slow", fakeSidecarSlow)
	waitFor(t, p, 10*time.Second, "healthy", isHealthy)
	m := regexp.MustCompile(`sidecar exec (\S+), sidecar ready (\S+), app exec (\S+)`).FindStringSubmatch(readLog(p, "app"))
	if m == nil {
		t.Fatalf("no start timings in the app log:\n%s", readLog(p, "app"))
	}
	exec, _ := time.ParseDuration(m[1])
	ready, _ := time.ParseDuration(m[2])
	app, _ := time.ParseDuration(m[3])
	if ready-exec < slowReady || app < ready {
		t.Errorf("sidecar exec %v, ready %v, app exec %v: want ready at least %v after the exec, the app after it", exec, ready, app, slowReady)
	}
}

// TestSidecarClosesReadyPipe: a sidecar that closes its readiness pipe without saying
// READY=1 fails the start at once, with a message saying so (not after ReadyTimeout).
func TestSidecarClosesReadyPipe(t *testing.T) {
	e := newPodEnv(t)
	p := e.meshedPod("closes", fakeSidecarCloses)
	got := waitFor(t, p, 10*time.Second, "exited", func(i Info) bool { return i.Status == Exited })
	if !strings.Contains(got.LastExit, "closed its readiness pipe without saying it was ready") {
		t.Errorf("last exit %q; want the closed readiness pipe named", got.LastExit)
	}
	if got.Pid != 0 {
		t.Errorf("the app ran (pid %d) beside a sidecar that never got ready", got.Pid)
	}
}
