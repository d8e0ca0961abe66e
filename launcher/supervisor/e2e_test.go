package supervisor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/launcher/cgroups"
	"github.com/podmesh/podmesh/launcher/initproc"
	"github.com/podmesh/podmesh/launcher/internal/podtest"
	"github.com/podmesh/podmesh/launcher/netns"
	"github.com/podmesh/podmesh/launcher/pod"
	"github.com/podmesh/podmesh/launcher/supervisor"
	"github.com/vishvananda/netlink"
)

// TestMain lets this test binary be, depending on argv[0], the launcher itself (so tests can
// run it as a separate process and SIGKILL it) or a pod's init and exec shim; it builds the
// real programs the pods run: the sidecar (cmd/sidecar), the registry (cmd/registry),
// podmesh-init and the test app.
func TestMain(m *testing.M) {
	if ok, code := initproc.Main(); ok {
		os.Exit(code)
	}
	if filepath.Base(os.Args[0]) == "launcher" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		err := supervisor.CLI(ctx, os.Args[1:], os.Stdout)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "launcher:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	dir, err := os.MkdirTemp("", "podmesh-e2e-bin")
	if err == nil {
		// The pods' programs run as nobody (the app) and as the sidecar's own user.
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := 1
	if err := buildPrograms(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// The programs the pods and the registry run, built once without -race: each pod runs
// three of them, and the race-enabled test binary starts several times slower. The
// launcher itself is this test binary, so the supervisor's code runs under the race
// detector.
var smallInit, testApp, sidecarBin, registryBin string

func buildPrograms(dir string) error {
	smallInit = filepath.Join(dir, "podmesh-init")
	testApp = filepath.Join(dir, "testapp")
	sidecarBin = filepath.Join(dir, "sidecar")
	registryBin = filepath.Join(dir, "registry")
	progs := map[string]string{
		"github.com/podmesh/podmesh/launcher/initproc/podmesh-init": smallInit,
		"github.com/podmesh/podmesh/launcher/internal/testapp":      testApp,
		"github.com/podmesh/podmesh/cmd/sidecar":                    sidecarBin,
		"github.com/podmesh/podmesh/cmd/registry":                   registryBin,
	}
	if bin := os.Getenv("PODMESH_SIDECAR_BIN"); bin != "" {
		sidecarBin = bin // a sidecar built elsewhere
		delete(progs, "github.com/podmesh/podmesh/cmd/sidecar")
	}
	args := []string{"build", "-o", dir + "/"}
	for pkg := range progs {
		args = append(args, pkg)
	}
	cmd := exec.Command("go", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// registry is a real registry (cmd/registry) behind a recording proxy: launchers are given
// the proxy's URL, and the test reads what they registered and when they deregistered.
type registry struct {
	url  string // the proxy
	addr string // the registry itself
	mu   sync.Mutex
	log  []string

	deregistered map[string]time.Time
}

func startRegistry(t testing.TB) *registry {
	t.Helper()
	r := &registry{addr: testutil.FreePort(t), deregistered: map[string]time.Time{}}
	cmd := exec.Command(registryBin, "-http", r.addr, "-data", filepath.Join(t.TempDir(), "registry"),
		"-node", "e2e", "-log-level", "warn")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("registry output:\n%s", out.String())
		}
	})
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		resp, err := http.Get("http://" + r.addr + "/v1/status/leader")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	target := &url.URL{Scheme: "http", Host: r.addr}
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }, FlushInterval: -1,
		ErrorLog: log.New(io.Discard, "", 0)} // blocking queries cut by a stopping sidecar are no news
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.Method == http.MethodPut && req.URL.Path == "/v1/agent/service/register":
			body, _ := io.ReadAll(req.Body)
			req.Body = io.NopCloser(bytes.NewReader(body))
			var reg struct{ ID string }
			_ = json.Unmarshal(body, &reg)
			r.record("register "+reg.ID, "")
		case req.Method == http.MethodPut && strings.HasPrefix(req.URL.Path, "/v1/agent/service/deregister/"):
			id := strings.TrimPrefix(req.URL.Path, "/v1/agent/service/deregister/")
			r.record("deregister "+id, id)
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

func (r *registry) record(event, deregistered string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, event)
	if deregistered != "" {
		r.deregistered[deregistered] = time.Now()
	}
}

// intentions lists the registry's intentions, "SOURCE -> DESTINATION ACTION", one a line.
func (r *registry) intentions(t testing.TB) string {
	t.Helper()
	resp, err := http.Get("http://" + r.addr + "/v1/connect/intentions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var xs []struct{ SourceName, DestinationName, Action string }
	if err := json.NewDecoder(resp.Body).Decode(&xs); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, x := range xs {
		lines = append(lines, x.SourceName+" -> "+x.DestinationName+" "+x.Action)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// events is what the registry was told through the proxy, in order.
func (r *registry) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

// registered returns the agent's view of a service instance, or nil.
func (r *registry) registered(id string) map[string]any {
	resp, err := http.Get("http://" + r.addr + "/v1/agent/service/" + id)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	var out map[string]any
	if json.NewDecoder(resp.Body).Decode(&out) != nil {
		return nil
	}
	return out
}

// passing lists the IDs of the passing instances of a service.
func (r *registry) passing(service string) []string {
	resp, err := http.Get("http://" + r.addr + "/v1/health/service/" + service + "?passing=1")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var entries []struct{ Service struct{ ID string } }
	_ = json.NewDecoder(resp.Body).Decode(&entries)
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Service.ID)
	}
	sort.Strings(ids)
	return ids
}

type env struct {
	t        testing.TB
	dir      string
	bin      string // this test binary as "launcher"
	sidecar  string
	app      string
	stateDir string
	logDir   string
	reg      *registry
	launcher int // pid of the `up` process start ran, 0 before
	project  string
	bridge   string
	subnet   netip.Prefix
}

var projectSeq int

func newEnv(t testing.TB) *env {
	testutil.RequirePrivileged(t)
	dir := t.TempDir()
	// The apps run as nobody, in the compose file's directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, stateDir: filepath.Join(dir, "state"), logDir: filepath.Join(dir, "logs"),
		sidecar: sidecarBin, app: testApp, reg: startRegistry(t)}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e.bin = filepath.Join(dir, "launcher")
	if err := os.Symlink(exe, e.bin); err != nil {
		t.Fatal(err)
	}
	projectSeq++
	e.project = fmt.Sprintf("t%d%c", os.Getpid()%100000, 'a'+rune(projectSeq))
	e.bridge, e.subnet = podtest.Network(t)
	return e
}

func (e *env) args(args ...string) []string {
	return append([]string{"-state-dir", e.stateDir, "-log-dir", e.logDir, "-init-bin", smallInit, "-sidecar-bin", e.sidecar, "-registry", e.reg.url}, args...)
}

func (e *env) cfg() supervisor.Config {
	return supervisor.Config{StateDir: e.stateDir, LogDir: e.logDir}
}

// compose writes a compose file for the test's project with the test's own bridge and subnet.
func (e *env) compose(services string) string {
	e.t.Helper()
	body := fmt.Sprintf("name: %s\nx-podmesh:\n  subnet: %s\n  bridge: %s\nservices:\n%s", e.project, e.subnet, e.bridge, services)
	body = strings.ReplaceAll(body, "APP", e.app)
	p := filepath.Join(e.dir, "compose.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// start runs `launcher up -f file` as a separate process and returns it.
func (e *env) start(file string) *exec.Cmd {
	e.t.Helper()
	return e.startArgs(file)
}

// startArgs is start with more arguments of `up`.
func (e *env) startArgs(file string, up ...string) *exec.Cmd {
	e.t.Helper()
	cmd := exec.Command(e.bin, e.args(append([]string{"up", "-f", file}, up...)...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.launcher = cmd.Process.Pid
	e.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
		_ = exec.Command(e.bin, e.args("down", "-p", e.project)...).Run()
		if e.t.Failed() {
			e.t.Logf("launcher output:\n%s", out.String())
		}
	})
	return cmd
}

// runInOtherCgroup runs a launcher command to completion from a new cgroup of its own (in
// the memory hierarchy on v1, the launcher's primary one; in the unified one on v2).
func (e *env) runInOtherCgroup(args ...string) (string, error) {
	e.t.Helper()
	root := "/sys/fs/cgroup/memory"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		root = "/sys/fs/cgroup"
	}
	dir := filepath.Join(root, "elsewhere-"+e.project)
	if err := os.Mkdir(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	defer os.Remove(dir)
	cmd := exec.Command("sh", append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir, e.bin}, e.args(args...)...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// run runs a launcher command to completion.
func (e *env) run(args ...string) (string, error) {
	cmd := exec.Command(e.bin, e.args(args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *env) ps() []supervisor.Row {
	ctx := testutil.Context(e.t, 10*time.Second)
	rows, err := supervisor.PS(ctx, e.cfg(), e.project)
	if err != nil {
		return nil
	}
	return rows
}

// waitFor polls ps until cond holds for the named pod.
func (e *env) waitFor(name string, timeout time.Duration, cond func(supervisor.Row) bool) supervisor.Row {
	e.t.Helper()
	var last supervisor.Row
	testutil.Eventually(e.t, timeout, 20*time.Millisecond, func() error {
		// A launcher that has exited (a zombie until the test reaps it) will not get there:
		// say so now rather than after the whole timeout.
		if e.launcher > 0 && exited(e.launcher) {
			e.t.Fatalf("waiting for pod %s: the launcher (pid %d) has exited; last seen %+v", name, e.launcher, last)
		}
		for _, r := range e.ps() {
			if r.Name == name {
				last = r
				if cond(r) {
					return nil
				}
				return fmt.Errorf("pod %s: %+v", name, r)
			}
		}
		return fmt.Errorf("pod %s not listed", name)
	})
	return last
}

// exited reports whether process pid is gone or a zombie.
func exited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && strings.HasPrefix(string(b[i:]), ") Z")
}

func healthy(r supervisor.Row) bool { return r.State == "running" && r.Health == pod.HealthHealthy }

// statusLine returns the value of a field of /proc/PID/status.
func statusLine(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return ""
}

func nsOf(t *testing.T, pid int, kind string) string {
	t.Helper()
	s, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	if err != nil {
		t.Fatalf("namespace %s of %d: %v", kind, pid, err)
	}
	return s
}

// getBody GETs url and returns the body of a 200 answer.
func getBody(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b), err
}

// throughIngress waits until requests to the ingress at expose have reached every one of
// wants (answer bodies), within 200 requests each try.
func throughIngress(t *testing.T, expose string, wants ...string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		seen := map[string]bool{}
		for i := 0; i < 200 && len(seen) < len(wants); i++ {
			body, err := getBody(c, "http://"+expose+"/")
			if err != nil {
				return err
			}
			for _, w := range wants {
				if body == w {
					seen[w] = true
				}
			}
		}
		if len(seen) < len(wants) {
			return fmt.Errorf("200 requests through the ingress reached only %v of %q", seen, wants)
		}
		return nil
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestUpIsolationLimitsDown covers acceptance 1 and the first half of 3: a running
// replica's namespaces, the sidecar sharing the app's network, the cgroup limits from the
// file, traffic through the sidecar, registration, and `launcher down` leaving nothing.
func TestUpIsolationLimitsDown(t *testing.T) {
	e := newEnv(t)
	before := podtest.Leftovers(t, e.project, e.bridge)
	expose := testutil.FreePort(t)
	file := e.compose(fmt.Sprintf(`  web:
    command: [APP, -listen, "0.0.0.0:8080"]
    deploy:
      replicas: 2
      resources:
        limits: {cpus: '0.5', memory: 512M, pids: 100}
    x-podmesh: {port: 8080, tags: [v1], meta: {team: shop}, expose: "%s"}
`, expose))
	launcher := e.start(file)
	var rows [2]supervisor.Row
	for i := range rows {
		rows[i] = e.waitFor(fmt.Sprintf("web-%d", i+1), 60*time.Second, healthy)
	}
	r := rows[0]

	// 1. Namespaces of the app differ from the test's (and the launcher's, which shares them).
	for _, kind := range []string{"pid", "mnt", "uts", "ipc", "net"} {
		if a, b := nsOf(t, r.Pid, kind), nsOf(t, os.Getpid(), kind); a == b {
			t.Errorf("app shares the %s namespace %s with the launcher's side", kind, a)
		}
		if a, b := nsOf(t, r.Pid, kind), nsOf(t, launcher.Process.Pid, kind); a == b {
			t.Errorf("app shares the %s namespace %s with the launcher", kind, a)
		}
	}
	if nsOf(t, rows[0].Pid, "net") == nsOf(t, rows[1].Pid, "net") {
		t.Error("two replicas share a network namespace")
	}
	// Without `user:` in the file the app runs as nobody, not root.
	if ids := statusLine(t, r.Pid, "Uid"); ids != "65534\t65534\t65534\t65534" {
		t.Errorf("app uids %q; want nobody's", ids)
	}
	// From the app's network namespace, as the app's user (or root), neither the registry
	// relay nor the sidecar's admin listener (/drain) answers; the app's own port does. The
	// sidecar, its own user, reaches both (the pods got healthy, registered and served).
	relay := netip.AddrPortFrom(e.subnet.Addr().Next(), supervisor.DefaultRelayPort)
	for _, tc := range []struct {
		url, user string
		ok        bool
	}{
		{"http://" + relay.String() + "/v1/status/leader", "65534", false},
		{"http://" + relay.String() + "/v1/status/leader", "0", false},
		{"http://127.0.0.1:15000/ready", "65534", false},
		{"http://127.0.0.1:15000/ready", "0", false},
		{"http://127.0.0.1:8080/", "65534", true},
	} {
		out, err := exec.Command("nsenter", "-t", fmt.Sprint(r.Pid), "-n", "setpriv", "--reuid="+tc.user, "--regid="+tc.user,
			"--clear-groups", testApp, "-probe", tc.url).CombinedOutput()
		if tc.ok && err != nil {
			t.Errorf("uid %s in the pod: GET %s: %v %s", tc.user, tc.url, err, out)
		}
		if !tc.ok && (err == nil || !strings.Contains(string(out), "connection refused")) {
			t.Errorf("uid %s in the pod: GET %s: %v %s; want the connection refused", tc.user, tc.url, err, out)
		}
	}
	// The sidecar, found through its cgroup, shares the app's network namespace.
	m, err := cgroups.New(cgroups.Config{Name: supervisor.CgroupName(e.project)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cg, err := m.Open(netns.PinName(e.project, "web", 1))
	if err != nil {
		t.Fatal(err)
	}
	sidecars, err := cg.MemberPids(cgroups.Sidecar)
	if err != nil || len(sidecars) != 1 {
		t.Fatalf("sidecar cgroup holds %v, %v; want one process", sidecars, err)
	}
	if a, s := nsOf(t, r.Pid, "net"), nsOf(t, sidecars[0], "net"); a != s {
		t.Errorf("sidecar network namespace %s differs from the app's %s", s, a)
	}
	apps, _ := cg.MemberPids(cgroups.App)
	if len(apps) != 1 || apps[0] != r.Pid {
		t.Errorf("app cgroup holds %v; want the app %d", apps, r.Pid)
	}
	// The cgroup files hold the file's limits (v1 paths on this host; v2 names otherwise).
	if m.Mode() == cgroups.Unified {
		dir := cg.Path("memory")
		if got := readFile(t, filepath.Join(dir, "memory.max")); got != "536870912" {
			t.Errorf("memory.max = %s", got)
		}
		if got := readFile(t, filepath.Join(dir, "cpu.max")); got != "50000 100000" {
			t.Errorf("cpu.max = %s", got)
		}
		if got := readFile(t, filepath.Join(dir, "pids.max")); got != "100" {
			t.Errorf("pids.max = %s", got)
		}
	} else {
		if got := readFile(t, filepath.Join(cg.Path("memory"), "memory.limit_in_bytes")); got != "536870912" {
			t.Errorf("memory.limit_in_bytes = %s; want 512M", got)
		}
		if got := readFile(t, filepath.Join(cg.Path("cpu"), "cpu.cfs_quota_us")); got != "50000" {
			t.Errorf("cpu.cfs_quota_us = %s; want 50000 (0.5 CPU)", got)
		}
		if got := readFile(t, filepath.Join(cg.Path("cpu"), "cpu.cfs_period_us")); got != "100000" {
			t.Errorf("cpu.cfs_period_us = %s", got)
		}
		if got := readFile(t, filepath.Join(cg.Path("pids"), "pids.max")); got != "100" {
			t.Errorf("pids.max = %s; want 100", got)
		}
	}

	// Traffic from the host reaches both replicas through the ingress, the mesh and each
	// pod's sidecar (the pods' inbound listeners are for sidecars, with mutual TLS once on).
	throughIngress(t, expose, "hello from web-1\n", "hello from web-2\n")
	// The app listens on 0.0.0.0:8080, yet from outside the pod only the sidecar answers.
	short := &http.Client{Timeout: 500 * time.Millisecond}
	if resp, err := short.Get(fmt.Sprintf("http://%s:8080/", r.Addr)); err == nil {
		resp.Body.Close()
		t.Errorf("the app's port answered on the pod address")
	}
	// Registration: pod address, sidecar inbound port, compose tags and meta plus ours.
	reg := e.reg.registered("web-1")
	if reg == nil {
		t.Fatalf("web-1 not registered; registry log %v", e.reg.events())
	}
	meta, _ := reg["Meta"].(map[string]any)
	if reg["Service"] != "web" || reg["Address"] != r.Addr.String() || reg["Port"] != float64(pod.InboundPort) ||
		meta["team"] != "shop" || meta["protocol"] != "http" || meta["pod"] != "web-1" || meta["metrics_port"] != "15090" {
		t.Errorf("registration %v", reg)
	}

	// ps as a user sees it.
	out, err := e.run("ps", "-p", e.project)
	if err != nil || !strings.Contains(out, "SERVICE") || !strings.Contains(out, r.Addr.String()) || !strings.Contains(out, "healthy") {
		t.Errorf("launcher ps: %v\n%s", err, out)
	}
	if out, err := e.run("logs", "-p", e.project, "web/1"); err != nil || !strings.Contains(out, "web-1 | ") || !strings.Contains(out, "registered web-1") {
		t.Errorf("launcher logs web/1: %v\n%s", err, out)
	}

	// 3. down stops the running launcher in order and leaves nothing behind.
	// The ingress's call to web is declared: the launcher created its intention.
	if got := e.reg.intentions(t); got != pod.IngressService(e.project)+" -> web allow" {
		t.Errorf("intentions in the registry: %q; want the ingress to web", got)
	}
	if out, err := e.run("down", "-p", e.project); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	waitExit(t, launcher)
	if e.reg.registered("web-1") != nil || e.reg.registered("web-2") != nil {
		t.Errorf("still registered after down: %v", e.reg.events())
	}
	if got := e.reg.intentions(t); got != "" {
		t.Errorf("intentions left in the registry after down: %q", got)
	}
	after := podtest.Leftovers(t, e.project, e.bridge)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("left behind after down:\n%s", strings.Join(after, "\n"))
	}
	// The stop ran in order: deregistered, sidecar drained, app stopped, sidecar exited.
	e.reg.mu.Lock()
	dereg := e.reg.deregistered["web-1"]
	e.reg.mu.Unlock()
	// The drain by the sidecar's own clock: a line's capture time can lag behind the app's
	// (each stream is copied by its own goroutine), and the app is signalled only once the
	// sidecar has answered the drain.
	drain := sidecarLogTime(t, filepath.Join(e.logDir, e.project, "web-1", "sidecar.log"), "drain requested")
	appStop := logTime(t, filepath.Join(e.logDir, e.project, "web-1", "app.log"), "stopping on signal")
	exit := logTime(t, filepath.Join(e.logDir, e.project, "web-1", "sidecar.log"), "sidecar stopped")
	if dereg.IsZero() || !dereg.Before(drain) || !drain.Before(appStop) || !appStop.Before(exit) {
		t.Errorf("stop order: deregistered %v, drain %v, app stop %v, sidecar exit %v; want that order",
			dereg.Format(time.StampMicro), drain.Format(time.StampMicro), appStop.Format(time.StampMicro), exit.Format(time.StampMicro))
	}
}

// logTime returns the timestamp of the first line of a pod log containing s.
func logTime(t *testing.T, path, s string) time.Time {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, s) {
			ts, _, _ := strings.Cut(line, " ")
			tm, err := time.Parse("2006-01-02T15:04:05.000000Z", ts)
			if err != nil {
				t.Fatalf("timestamp of %q: %v", line, err)
			}
			return tm
		}
	}
	t.Fatalf("%s has no line with %q:\n%s", path, s, b)
	return time.Time{}
}

// sidecarLogTime is logTime for a line of the sidecar's JSON log, by the time the sidecar
// wrote into it rather than the time the launcher captured it.
func sidecarLogTime(t *testing.T, path, s string) time.Time {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, s) {
			continue
		}
		var rec struct {
			Time time.Time `json:"time"`
		}
		if i := strings.IndexByte(line, '{'); i < 0 || json.Unmarshal([]byte(line[i:]), &rec) != nil || rec.Time.IsZero() {
			t.Fatalf("%s: no JSON time in %q", path, line)
		}
		return rec.Time
	}
	t.Fatalf("%s has no line with %q:\n%s", path, s, b)
	return time.Time{}
}

func waitExit(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(60 * time.Second)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.Fatal("launcher did not exit")
	}
}

// TestKilledLauncherThenDown: a SIGKILLed launcher leaves pods, pins, veths and its ingress
// behind; `launcher down` removes all of it.
func TestKilledLauncherThenDown(t *testing.T) {
	e := newEnv(t)
	before := podtest.Leftovers(t, e.project, e.bridge)
	expose := testutil.FreePort(t)
	file := e.compose(fmt.Sprintf(`  web:
    command: [APP, -listen, "127.0.0.1:8080"]
    deploy: {replicas: 2}
    x-podmesh: {port: 8080, expose: "%s"}
  worker:
    command: [sleep, "600"]
`, expose))
	launcher := e.start(file)
	e.waitFor("web-2", 60*time.Second, healthy)
	e.waitFor("worker-1", 60*time.Second, healthy)
	e.waitFor("ingress-0", 60*time.Second, healthy)
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		if e.reg.registered("web-1") == nil || e.reg.registered("web-2") == nil || e.reg.registered(supervisor.LauncherID(e.project)) == nil {
			return fmt.Errorf("not registered yet: %v", e.reg.events())
		}
		return nil
	})
	if err := launcher.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, launcher)
	left := podtest.Leftovers(t, e.project, e.bridge)
	if len(left) <= len(before) {
		t.Fatalf("a killed launcher left nothing to clean up; the test proves nothing: %v", left)
	}
	// `down` from a shell in another cgroup than the launcher's: it finds the pods through
	// the absolute cgroup directories recorded in the state.
	if out, err := e.runInOtherCgroup("down", "-p", e.project); err != nil {
		t.Fatalf("down after kill: %v\n%s", err, out)
	}
	if e.reg.registered("web-1") != nil || e.reg.registered("web-2") != nil || e.reg.registered(supervisor.LauncherID(e.project)) != nil {
		t.Errorf("a killed launcher's instances (or its own) are still registered after down: %v", e.reg.events())
	}
	after := podtest.Leftovers(t, e.project, e.bridge)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("left behind after kill and down:\nbefore %v\nafter:\n%s", before, strings.Join(after, "\n"))
	}
	if conn, err := net.DialTimeout("tcp", expose, time.Second); err == nil {
		conn.Close()
		t.Errorf("the ingress on %s survived the killed launcher and down", expose)
	}
}

// TestRestarts covers acceptance 2: a killed app and an exiting app are restarted with
// backoff at the same address, an app whose healthcheck fails is restarted, and an app over
// its memory limit is OOM-killed, reported as such, and restarted.
func TestRestarts(t *testing.T) {
	e := newEnv(t)
	file := e.compose(`  web:
    command: [APP, -listen, "127.0.0.1:8080"]
    deploy: {restart_policy: {condition: any, delay: 50ms}}
    x-podmesh: {port: 8080}
  flaky:
    command: [APP, -listen, "127.0.0.1:8080", -exit-after, 300ms]
    deploy: {restart_policy: {condition: on-failure, delay: 50ms, window: 1m}}
  sick:
    command: [APP, -listen, "127.0.0.1:8080", -fail-after, 1s]
    healthcheck: {test: [CMD, APP, -probe, "http://127.0.0.1:8080/"], interval: 300ms, timeout: 2s, retries: 2}
    deploy: {restart_policy: {condition: on-failure, delay: 50ms}}
  hog:
    command: [APP, -alloc-mib, "1024"]
    deploy:
      resources: {limits: {memory: 200M}}
      restart_policy: {condition: any, delay: 50ms}
`)
	e.start(file)
	first := e.waitFor("web-1", 60*time.Second, healthy)
	if err := syscall.Kill(first.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	again := e.waitFor("web-1", 60*time.Second, func(r supervisor.Row) bool { return healthy(r) && r.Restarts >= 1 && r.Pid != first.Pid })
	if again.Addr != first.Addr {
		t.Errorf("restarted web-1 moved from %v to %v", first.Addr, again.Addr)
	}
	if !strings.Contains(again.LastExit, "killed by SIGKILL") {
		t.Errorf("web-1 last exit %q; want the SIGKILL", again.LastExit)
	}

	// flaky exits with status 3 every 300ms: restarted again and again, with growing waits.
	e.waitFor("flaky-1", 60*time.Second, func(r supervisor.Row) bool { return r.Restarts >= 3 })
	out, _ := e.run("logs", "-p", e.project, "flaky")
	var waits []time.Duration
	for _, line := range strings.Split(out, "\n") {
		if _, after, ok := strings.Cut(line, "restarting in "); ok {
			d, err := time.ParseDuration(strings.TrimSpace(after))
			if err == nil {
				waits = append(waits, d)
			}
		}
	}
	if len(waits) < 3 || waits[0] != 50*time.Millisecond || waits[1] != 100*time.Millisecond || waits[2] != 200*time.Millisecond {
		t.Errorf("restart waits %v; want 50ms, 100ms, 200ms, …\n%s", waits, out)
	}

	// sick turns unhealthy after a second: two failed checks restart it.
	sick := e.waitFor("sick-1", 60*time.Second, func(r supervisor.Row) bool { return r.Restarts >= 1 })
	if !strings.Contains(sick.LastExit, "unhealthy") {
		t.Errorf("sick last exit %q; want unhealthy", sick.LastExit)
	}

	// hog allocates 1 GiB under a 200 MiB limit (room for init and the shim, which are
	// race-enabled test binaries here).
	hog := e.waitFor("hog-1", 60*time.Second, func(r supervisor.Row) bool { return r.OOMKills >= 1 && r.Restarts >= 1 })
	if !strings.Contains(hog.LastExit, "OOMKilled") {
		t.Errorf("hog last exit %q; want OOMKilled", hog.LastExit)
	}
	out, _ = e.run("logs", "-p", e.project, "hog")
	if !strings.Contains(out, "OOM-killed") {
		t.Errorf("hog logs do not mention the OOM kill:\n%s", out)
	}
	ps, _ := e.run("ps", "-p", e.project)
	if !strings.Contains(ps, "OOMKilled") {
		t.Errorf("ps does not show the OOM kill:\n%s", ps)
	}
}

// TestInvalidFileStartsNothing: acceptance 4's end-to-end case.
func TestInvalidFileStartsNothing(t *testing.T) {
	e := newEnv(t)
	before := podtest.Leftovers(t, e.project, e.bridge)
	file := e.compose(`  web:
    image: nginx
    command: [APP]
`)
	out, err := e.run("up", "-f", file)
	if err == nil || !strings.Contains(out, "image") || !strings.Contains(out, "not supported") {
		t.Fatalf("up with an image key: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, e.project)); err == nil {
		t.Error("state directory created for an invalid file")
	}
	after := podtest.Leftovers(t, e.project, e.bridge)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("an invalid file left %v", after)
	}
}

// TestTrafficDuringRestart sends requests from the host to frontend (through its sidecar),
// which calls http://catalog/ (its /etc/hosts entry, the sidecar's outbound listener, a
// passing catalog instance from the registry reached through the launcher's relay), while a
// catalog replica is SIGKILLed and restarted.
//
// Acceptance 2: no request may fail. The frontend's sidecar retries a request whose
// catalog instance died under it on the other replica, and the launcher deregisters the
// dead replica before draining and restarting it.
func TestTrafficDuringRestart(t *testing.T) {
	e := newEnv(t)
	expose := testutil.FreePort(t)
	file := e.compose(strings.ReplaceAll(`  catalog:
    command: [APP, -listen, "127.0.0.1:8080"]
    deploy: {replicas: 2, restart_policy: {condition: any, delay: 50ms}}
    healthcheck: {test: [CMD, APP, -probe, "http://127.0.0.1:8080/"], interval: 1s, timeout: 2s, retries: 3}
    x-podmesh: {port: 8080}
  frontend:
    command: [APP, -listen, "127.0.0.1:8080", -upstream, "http://catalog/"]
    depends_on: {catalog: {condition: service_healthy}}
    x-podmesh: {port: 8080, upstreams: [catalog], expose: "EXPOSE"}
`, "EXPOSE", expose))
	e.start(file)
	e.waitFor("frontend-1", 60*time.Second, healthy)
	victim := e.waitFor("catalog-1", 60*time.Second, healthy)
	// depends_on service_healthy: frontend started only once both catalog replicas were healthy.
	frontStart := logTime(t, filepath.Join(e.logDir, e.project, "frontend-1", "app.log"), "started pid")
	for _, c := range []string{"catalog-1", "catalog-2"} {
		if h := logTime(t, filepath.Join(e.logDir, e.project, c, "app.log"), "podmesh healthy"); !h.Before(frontStart) {
			t.Errorf("frontend started at %v, before %s was healthy at %v", frontStart, c, h)
		}
	}
	// From the host through the ingress to the frontend, which calls the catalog.
	url := "http://" + expose + "/"
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func() (string, error) { return getBody(client, url) }
	throughIngress(t, expose, "hello from catalog-1\n via frontend-1", "hello from catalog-2\n via frontend-1")
	// Bounded load, one request at a time with a short pause between them, until the
	// restarted replica and the other one have each served a few requests, for at most 90 s
	// (and 20000 requests). The bound is in time, not in requests: the restart (kill, 50ms
	// delay, a new sidecar ready, health check, registration, the frontend's watch) and
	// the least_request balancer sending traffic back to the returning replica (its
	// latency estimate must decay below the busy one's) each take seconds, more on a loaded
	// machine, while a fast run used to spend 2000 requests in ten seconds. The loop ends
	// as soon as both replicas have served after the restart.
	var failures []string
	seen := map[string]int{}
	killed, restarted := false, false
	deadline := time.Now().Add(90 * time.Second)
	for n := 0; n < 20000 && time.Now().Before(deadline); n++ {
		if n > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		body, err := get()
		if err != nil {
			failures = append(failures, err.Error())
		} else if restarted {
			for _, c := range []string{"catalog-1", "catalog-2"} {
				if strings.Contains(body, c) {
					seen[c]++
				}
			}
		}
		if n == 50 {
			if err := syscall.Kill(victim.Pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
		if killed && !restarted && n%10 == 0 {
			for _, r := range e.ps() {
				if r.Name == "catalog-1" && healthy(r) && r.Restarts >= 1 {
					restarted = true
				}
			}
		}
		if restarted && seen["catalog-1"] >= 5 && seen["catalog-2"] >= 5 {
			break
		}
	}
	t.Logf("%d failed requests around the restart", len(failures))
	if !restarted || seen["catalog-1"] < 5 || seen["catalog-2"] < 5 {
		if m, err := cgroups.New(cgroups.Config{Name: supervisor.CgroupName(e.project)}); err == nil {
			if cg, err := m.Open(netns.PinName(e.project, "catalog", 1)); err == nil {
				pids, _ := cg.MemberPids(cgroups.Sidecar)
				for _, pid := range pids {
					_ = syscall.Kill(pid, syscall.SIGQUIT)
				}
				t.Logf("SIGQUIT to catalog-1's sidecar %v (goroutine dump in its log below)", pids)
				time.Sleep(time.Second)
			}
		}
		app, _ := os.ReadFile(filepath.Join(e.logDir, e.project, "catalog-1", "app.log"))
		side, _ := os.ReadFile(filepath.Join(e.logDir, e.project, "catalog-1", "sidecar.log"))
		t.Fatalf("after the restart: restarted %v, served by %v; failures %v\ncatalog-1 app.log:\n%s\nsidecar.log:\n%s", restarted, seen, failures, app, side)
	}
	if after := e.waitFor("catalog-1", time.Second, healthy); after.Addr != victim.Addr {
		t.Errorf("catalog-1 moved from %v to %v", victim.Addr, after.Addr)
	}
	if len(failures) > 0 {
		t.Errorf("%d requests failed through the real sidecar: %v", len(failures), failures)
	}
}

// TestOwnRegistry: without -registry the launcher starts the registry program itself
// (cmd/registry, with its default arguments -http ADDR -data DIR), pods reach it through the
// relay on the bridge's gateway, instances show up passing with their meta, a request
// crosses two sidecars; a registry that dies is restarted and the instances are passing
// there again; a SIGKILLed launcher's registry ends with it, and `down` removes what is
// left.
func TestOwnRegistry(t *testing.T) {
	e := newEnv(t)
	before := podtest.Leftovers(t, e.project, e.bridge)
	expose := testutil.FreePort(t)
	file := e.compose(fmt.Sprintf(`  catalog:
    command: [APP, -listen, "127.0.0.1:8080"]
    x-podmesh: {port: 8080, meta: {version: "2"}}
  frontend:
    command: [APP, -listen, "127.0.0.1:8080", -upstream, "http://catalog/"]
    x-podmesh: {port: 8080, upstreams: [catalog], expose: "%s"}
`, expose))
	cmd := exec.Command(e.bin, "-state-dir", e.stateDir, "-log-dir", e.logDir, "-init-bin", smallInit, "-sidecar-bin", e.sidecar,
		"-registry-bin", registryBin, "up", "-f", file)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		_ = exec.Command(e.bin, "-state-dir", e.stateDir, "-log-dir", e.logDir, "down", "-p", e.project).Run()
		if t.Failed() {
			t.Logf("launcher output:\n%s", out.String())
		}
	})
	e.waitFor("frontend-1", 60*time.Second, healthy)
	e.waitFor("catalog-1", 60*time.Second, healthy)

	b, err := os.ReadFile(filepath.Join(e.stateDir, e.project, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st supervisor.State
	if err := json.Unmarshal(b, &st); err != nil || st.Registry == nil {
		t.Fatalf("state %s: %v", b, err)
	}
	var entries []struct {
		Service struct {
			ID, Address string
			Port        int
			Meta        map[string]string
		}
		Checks []struct{ CheckID, Status string }
	}
	testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get("http://" + st.Registry.Addr + "/v1/health/service/catalog?passing=1")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&entries); err != nil {
			return err
		}
		if len(entries) != 1 {
			return fmt.Errorf("passing catalog instances: %+v", entries)
		}
		return nil
	})
	if s := entries[0].Service; s.ID != "catalog-1" || s.Port != pod.InboundPort || s.Meta["version"] != "2" || s.Meta["pod"] != "catalog-1" {
		t.Errorf("catalog instance in Consul: %+v", s)
	}
	// A request crosses the ingress and two sidecars.
	throughIngress(t, expose, "hello from catalog-1\n via frontend-1")

	// The registry's output goes through the pods' log files (size-rotated), line by line.
	regLog := readFile(t, filepath.Join(e.logDir, e.project, "registry.log"))
	if first, _, _ := strings.Cut(regLog, "\n"); !strings.Contains(first, " stderr ") && !strings.Contains(first, " stdout ") {
		t.Errorf("registry.log does not hold timestamped stream lines: %q", first)
	}

	// The registry dies: the launcher restarts it on the same address, the instances are
	// passing there again, and requests go on crossing the mesh.
	if err := syscall.Kill(st.Registry.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		b, err := os.ReadFile(filepath.Join(e.stateDir, e.project, "state.json"))
		if err != nil {
			return err
		}
		var now supervisor.State
		if err := json.Unmarshal(b, &now); err != nil || now.Registry == nil || now.Registry.Pid == st.Registry.Pid || now.Registry.Pid == 0 {
			return fmt.Errorf("registry in the state: %+v, %v", now.Registry, err)
		}
		if now.Registry.Addr != st.Registry.Addr {
			t.Fatalf("the registry moved from %s to %s", st.Registry.Addr, now.Registry.Addr)
		}
		resp, err := http.Get("http://" + now.Registry.Addr + "/v1/health/service/catalog?passing=1")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var es []json.RawMessage
		if err := json.NewDecoder(resp.Body).Decode(&es); err != nil || len(es) != 1 {
			return fmt.Errorf("passing catalog instances after the registry's restart: %d, %v", len(es), err)
		}
		st = now
		return nil
	})
	throughIngress(t, expose, "hello from catalog-1\n via frontend-1")

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd)
	// The registry ends with its launcher (its parent-death signal), even a SIGKILLed one.
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if err := syscall.Kill(st.Registry.Pid, 0); err == nil {
			return fmt.Errorf("the registry %d outlives its SIGKILLed launcher", st.Registry.Pid)
		}
		return nil
	})
	if left := podtest.Leftovers(t, e.project, e.bridge); len(left) == 0 {
		t.Fatalf("the killed launcher left nothing; nothing to prove")
	}
	if out, err := exec.Command(e.bin, "-state-dir", e.stateDir, "-log-dir", e.logDir, "down", "-p", e.project).CombinedOutput(); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	after := podtest.Leftovers(t, e.project, e.bridge)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("left behind:\n%s", strings.Join(after, "\n"))
	}
}

// TestDetached: `up -d` returns once the project is started, leaving a launcher in the
// background with its pid file; `ps` and `down` find it through the state directory.
func TestDetached(t *testing.T) {
	e := newEnv(t)
	before := podtest.Leftovers(t, e.project, e.bridge)
	file := e.compose(`  web:
    command: [APP, -listen, "127.0.0.1:8080"]
    x-podmesh: {port: 8080}
`)
	t.Cleanup(func() { _, _ = e.run("down", "-p", e.project) })
	// Small log files, so that the background launcher's own log rotates too.
	out, err := e.run("-log-max-size", "50", "-log-max-files", "2", "up", "-d", "-f", file)
	if err != nil || !strings.Contains(out, "started in the background") {
		t.Fatalf("up -d: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(e.stateDir, e.project, "launcher.pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil || syscall.Kill(pid, 0) != nil {
		t.Fatalf("pid file %q: no running launcher (%v)", b, err)
	}
	// "started" means the pods have started, not that they are about to.
	if rows := e.ps(); len(rows) != 1 || rows[0].State != "running" {
		t.Errorf("right after up -d: %+v; want web-1 running", rows)
	}
	e.waitFor("web-1", 60*time.Second, healthy)
	if out, err := e.run("ps", "-f", file); err != nil || !strings.Contains(out, "healthy") {
		t.Errorf("ps -f: %v\n%s", err, out)
	}
	if out, err := e.run("up", "-f", file); err == nil || !strings.Contains(out, "already running") {
		t.Errorf("a second up: %v\n%s", err, out)
	}
	if out, err := e.run("down", "-f", file); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	// Gone, or a zombie waiting for whoever inherited it (its parent, `up -d`, has exited).
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(b), ") Z ") {
		t.Errorf("launcher %d still running after down: %s", pid, b)
	}
	// launcher.log rotated (its two lines, "metrics on …" and "stopping …", are each longer
	// than 50 bytes: one per file), two files kept, the stop in the current one.
	logPath := filepath.Join(e.stateDir, e.project, "launcher.log")
	older, err1 := os.ReadFile(logPath + ".1")
	current, err2 := os.ReadFile(logPath)
	if err1 != nil || err2 != nil || strings.Count(string(older), "\n") != 1 || !strings.Contains(string(current), "stopping") {
		t.Errorf("launcher log not rotated: .1 (%v):\n%s\ncurrent (%v):\n%s", err1, older, err2, current)
	}
	if _, err := os.Stat(logPath + ".2"); err == nil {
		t.Errorf("%s.2 exists; -log-max-files 2", logPath)
	}
	after := podtest.Leftovers(t, e.project, e.bridge)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("left behind:\n%s", strings.Join(after, "\n"))
	}
}

// TestIngress: x-podmesh.expose makes the launcher run an ingress sidecar in the host's
// network namespace, listening on the exposed address and reaching the service's replicas
// through the mesh; it shows in ps, is restarted when killed, stops before the services on
// `down`, and leaves nothing behind. A service without a port calls its upstream through a
// sidecar of its own (outbound only, like the ingress).
func TestIngress(t *testing.T) {
	e := newEnv(t)
	before := podtest.Leftovers(t, e.project, e.bridge)
	expose := testutil.FreePort(t)
	file := e.compose(fmt.Sprintf(`  web:
    command: [APP, -listen, "127.0.0.1:8080"]
    deploy: {replicas: 2}
    x-podmesh: {port: 8080, expose: "%s"}
  client:
    command: [sleep, "600"]
    healthcheck: {test: [CMD, APP, -probe, "http://web/"], interval: 200ms, timeout: 2s, start_period: 30s}
    x-podmesh: {upstreams: [web]}
`, expose))
	launcher := e.start(file)
	e.waitFor("web-1", 60*time.Second, healthy)
	e.waitFor("web-2", 60*time.Second, healthy)
	// A service without a port still gets a sidecar for its upstreams: its healthcheck
	// reaches web by name through it.
	e.waitFor("client-1", 60*time.Second, healthy)
	ing := e.waitFor("ingress-0", 30*time.Second, healthy)
	if ing.Service != "ingress" || ing.Replica != 0 || ing.Pid == 0 || len(ing.Exposes) != 1 || ing.Exposes[0] != expose+" → web" {
		t.Errorf("ingress row %+v", ing)
	}
	// The ingress runs in the host's network namespace, in a cgroup of the project.
	if a, b := nsOf(t, ing.Pid, "net"), nsOf(t, os.Getpid(), "net"); a != b {
		t.Errorf("ingress network namespace %s; want the host's %s", a, b)
	}
	m, err := cgroups.New(cgroups.Config{Name: supervisor.CgroupName(e.project)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cg, err := m.Open(netns.PinName(e.project, "ingress", 0))
	if err != nil {
		t.Fatal(err)
	}
	if pids, err := cg.MemberPids(cgroups.Sidecar); err != nil || len(pids) != 1 || pids[0] != ing.Pid {
		t.Errorf("ingress cgroup holds %v (%v); want %d", pids, err, ing.Pid)
	}

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + expose + "/"
	served := func(n int) (map[string]int, error) {
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			resp, err := client.Get(url)
			if err != nil {
				return seen, err
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return seen, fmt.Errorf("GET %s: %s %q", url, resp.Status, b)
			}
			seen[strings.TrimSpace(string(b))]++
		}
		return seen, nil
	}
	// Both replicas are registered once healthy; the ingress learns them from the registry.
	testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		if ids := e.reg.passing("web"); len(ids) != 2 {
			return fmt.Errorf("passing web instances %v", ids)
		}
		return nil
	})
	testutil.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		seen, err := served(20)
		if err == nil && (seen["hello from web-1"] == 0 || seen["hello from web-2"] == 0) {
			err = fmt.Errorf("20 requests through the ingress reached %v", seen)
		}
		return err
	})
	if out, err := e.run("ps", "-p", e.project); err != nil || !strings.Contains(out, "exposed on the host: "+expose+" → web (through ingress-0)") {
		t.Errorf("ps: %v\n%s", err, out)
	}

	// Killed, it is restarted and serves again.
	if err := syscall.Kill(ing.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	again := e.waitFor("ingress-0", 30*time.Second, func(r supervisor.Row) bool { return healthy(r) && r.Restarts >= 1 && r.Pid != ing.Pid })
	if !strings.Contains(again.LastExit, "killed") {
		t.Errorf("ingress last exit %q; want the SIGKILL", again.LastExit)
	}
	testutil.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, err := served(10)
		return err
	})

	if out, err := e.run("down", "-p", e.project); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	waitExit(t, launcher)
	// The way in closed before the services stopped.
	closed := logTime(t, filepath.Join(e.logDir, e.project, "ingress-0", "sidecar.log"), "ingress sidecar exited")
	for _, p := range []string{"web-1", "web-2"} {
		if drain := logTime(t, filepath.Join(e.logDir, e.project, p, "sidecar.log"), "drain requested"); !closed.Before(drain) {
			t.Errorf("ingress stopped at %v, after %s began draining at %v", closed, p, drain)
		}
	}
	if conn, err := net.DialTimeout("tcp", expose, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after down", expose)
	}
	after := podtest.Leftovers(t, e.project, e.bridge)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("left behind after down:\n%s", strings.Join(after, "\n"))
	}
}

// TestDefaultPolicyDeny: with `x-podmesh: {default_policy: deny}` the launcher starts its
// registry denying by default and allows exactly the declared edges (frontend → catalog,
// the ingress → frontend), which work; a call along an undeclared edge (frontend → admin,
// made by a sidecar holding frontend's identity) is answered 403.
func TestDefaultPolicyDeny(t *testing.T) {
	e := newEnv(t)
	expose := testutil.FreePort(t)
	file := e.compose(fmt.Sprintf(`  catalog:
    command: [APP, -listen, "127.0.0.1:8080"]
    x-podmesh: {port: 8080}
  admin:
    command: [APP, -listen, "127.0.0.1:8080"]
    x-podmesh: {port: 8080}
  frontend:
    command: [APP, -listen, "127.0.0.1:8080", -upstream, "http://catalog/"]
    x-podmesh: {port: 8080, upstreams: [catalog], expose: "%s"}
`, expose))
	if err := os.WriteFile(file, bytes.Replace(must(os.ReadFile(file)), []byte("x-podmesh:\n"), []byte("x-podmesh:\n  default_policy: deny\n"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e.bin, "-state-dir", e.stateDir, "-log-dir", e.logDir, "-init-bin", smallInit, "-sidecar-bin", e.sidecar,
		"-registry-bin", registryBin, "up", "-f", file)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
		_ = exec.Command(e.bin, "-state-dir", e.stateDir, "-log-dir", e.logDir, "down", "-p", e.project).Run()
		if t.Failed() {
			t.Logf("launcher output:\n%s", out.String())
		}
	})
	for _, name := range []string{"catalog-1", "admin-1", "frontend-1"} {
		e.waitFor(name, 60*time.Second, healthy)
	}
	var st supervisor.State
	if err := json.Unmarshal(must(os.ReadFile(filepath.Join(e.stateDir, e.project, "state.json"))), &st); err != nil || st.Registry == nil {
		t.Fatalf("state: %v %+v", err, st)
	}
	want := []supervisor.Edge{{Source: "frontend", Destination: "catalog"}, {Source: pod.IngressService(e.project), Destination: "frontend"}}
	if fmt.Sprint(st.Intentions) != fmt.Sprint(want) {
		t.Errorf("intentions created %v; want %v", st.Intentions, want)
	}
	// The declared edges: the ingress to frontend, frontend to catalog.
	throughIngress(t, expose, "hello from catalog-1\n via frontend-1")

	// A sidecar with frontend's identity, on the host, calling catalog (declared) and admin
	// (not declared anywhere).
	toCatalog, toAdmin, admin := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	c := pod.SidecarConfig{Service: "frontend", ID: "frontend-rogue", Admin: admin, Registry: "http://" + st.Registry.Addr,
		Upstreams: []pod.SidecarUpstream{
			{Name: "catalog", Listen: toCatalog, Policy: map[string]any{"protocol": "http"}},
			{Name: "admin", Listen: toAdmin, Policy: map[string]any{"protocol": "http"}},
		}}
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(e.dir, "rogue.yaml")
	if err := os.WriteFile(conf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	rogue := exec.Command(e.sidecar, "-config", conf)
	var rout bytes.Buffer
	rogue.Stdout, rogue.Stderr = &rout, &rout
	if err := rogue.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = rogue.Process.Kill()
		_ = rogue.Wait()
		if t.Failed() {
			t.Logf("rogue sidecar output:\n%s", rout.String())
		}
	})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		_, err := getBody(client, "http://"+toCatalog+"/")
		return err
	})
	resp, err := client.Get("http://" + toAdmin + "/")
	if err != nil {
		t.Fatalf("frontend's identity to admin: %v; want a 403", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("frontend's identity to admin, an undeclared edge: %s %s; want 403", resp.Status, body)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// TestSharedBridgeRefused: a second project on a bridge a running launcher uses is refused
// (it would hand out the same pod addresses and, on down, take the gateway address away
// from the first), and the first project's pod keeps its address and network.
func TestSharedBridgeRefused(t *testing.T) {
	e := newEnv(t)
	file := e.compose(`  web:
    command: [APP, -listen, "127.0.0.1:8080"]
`)
	e.start(file)
	first := e.waitFor("web-1", 60*time.Second, func(r supervisor.Row) bool { return r.State == "running" })
	// Another project, in another directory, on the same bridge and subnet.
	other := *e
	other.dir = t.TempDir()
	other.project = e.project + "x"
	if err := os.Chmod(other.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := other.run("up", "-f", other.compose(`  web:
    command: [APP, -listen, "127.0.0.1:8080"]
`))
	if err == nil || !strings.Contains(out, "used by the launcher of project \""+e.project+"\"") {
		t.Fatalf("a second project on bridge %s: %v\n%s", e.bridge, err, out)
	}
	if r := e.waitFor("web-1", time.Second, func(r supervisor.Row) bool { return r.State == "running" }); r.Pid != first.Pid || r.Addr != first.Addr {
		t.Errorf("the first project's pod changed: %+v, was %+v", r, first)
	}
	link, err := netlink.LinkByName(e.bridge)
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IP.String() != e.subnet.Addr().Next().String() {
		t.Errorf("bridge %s addresses after the refused project: %v", e.bridge, addrs)
	}
}

// TestDownDuringSlowStop: `down` waiting for a launcher that is still stopping (an app
// that ignores SIGTERM, 30s stop_grace_period) gives up at once on SIGTERM; and when that
// launcher dies before it has finished, the `down` waiting for it removes what is left and
// succeeds, instead of returning with the pods still there.
func TestDownDuringSlowStop(t *testing.T) {
	e := newEnv(t)
	before := podtest.Leftovers(t, e.project, e.bridge)
	file := e.compose(`  slow:
    command: [APP, -listen, "127.0.0.1:8080", -ignore-term]
    stop_grace_period: 30s
`)
	launcher := e.start(file)
	e.waitFor("slow-1", 60*time.Second, func(r supervisor.Row) bool { return r.State == "running" })
	var out1 bytes.Buffer
	down1 := exec.Command(e.bin, e.args("down", "-p", e.project)...)
	down1.Stdout, down1.Stderr = &out1, &out1
	if err := down1.Start(); err != nil {
		t.Fatal(err)
	}
	e.waitFor("slow-1", 10*time.Second, func(r supervisor.Row) bool { return r.State == "stopping" })
	if err := down1.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- down1.Wait() }()
	select {
	case err := <-exited:
		if err == nil {
			t.Errorf("down cut short by SIGTERM succeeded:\n%s", out1.String())
		}
	case <-time.After(5 * time.Second):
		_ = down1.Process.Kill()
		<-exited
		t.Fatalf("down ignored SIGTERM for 5s:\n%s", out1.String())
	}

	var out2 bytes.Buffer
	down2 := exec.Command(e.bin, e.args("down", "-p", e.project)...)
	down2.Stdout, down2.Stderr = &out2, &out2
	if err := down2.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // down2 has asked, and waits
	if err := launcher.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, launcher)
	done := make(chan error, 1)
	go func() { done <- down2.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("down after its launcher died mid-stop: %v\n%s", err, out2.String())
		}
	case <-time.After(30 * time.Second):
		_ = down2.Process.Kill()
		<-done
		t.Fatalf("down did not return within 30s of its launcher's death:\n%s", out2.String())
	}
	after := podtest.Leftovers(t, e.project, e.bridge)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("left behind when the launcher died while stopping:\n%s\ndown said:\n%s", strings.Join(after, "\n"), out2.String())
	}
}
