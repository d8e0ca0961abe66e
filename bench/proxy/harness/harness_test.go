package harness

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

// TestMain lets the test binary serve as the Go backend when the harness re-executes it.
func TestMain(m *testing.M) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	if ok, err := RunChildIfRequested(ctx); ok {
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	stop()
	os.Exit(m.Run())
}

func TestFromEnv(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name    string
		getenv  func(string) string
		check   func(c Config) error
		wantErr string // from FromEnv or Validate
	}{
		{"defaults", env(), func(c Config) error {
			if c.Duration != 10*time.Second || c.Warmup != 2*time.Second || c.VegetaDuration != 10*time.Second ||
				c.Conns != 64 || c.Threads != 2 || c.H2Conns != 64 || c.H2Streams != 10 || c.Rate != 1000 ||
				c.LoadRate != 2000 || c.ProxyCores != 1 || c.Rounds != 1 || c.Backend != "auto" ||
				!slices.Equal(c.Scenarios, AllScenarios) || c.SidecarProtocol != "http" {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}, ""},
		{"no warm-up", env("BENCH_WARMUP", "0"), func(c Config) error {
			if c.Warmup != NoWarmup {
				return fmt.Errorf("warm-up %v", c.Warmup)
			}
			return nil
		}, ""},
		{"quick", env("QUICK", "1"), func(c Config) error {
			if c.Duration != 3*time.Second || c.Warmup != time.Second || c.VegetaDuration != 3*time.Second {
				return fmt.Errorf("durations %v %v %v", c.Duration, c.Warmup, c.VegetaDuration)
			}
			return nil
		}, ""},
		{"explicit", env("QUICK", "1", "BENCH_DURATION", "5", "BENCH_VEGETA_DURATION", "4s", "SCENARIOS", "direct, sidecar",
			"PROXY_CORES", "2", "BIN", "/x", "BACKEND", "go", "PIN_LOAD", "0", "PIN_SUT", "1"), func(c Config) error {
			if c.Duration != 5*time.Second || c.VegetaDuration != 4*time.Second || !slices.Equal(c.Scenarios, []string{"direct", "sidecar"}) ||
				c.ProxyCores != 2 || c.Sidecar != "/x/sidecar" || c.Registry != "/x/registry" || c.Backend != "go" || c.PinLoad != "0" {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}, ""},
		{"bad connections", env("BENCH_CONNS", "0"), nil, `BENCH_CONNS: "0"`},
		{"bad duration", env("BENCH_DURATION", "soon"), nil, `BENCH_DURATION: "soon"`},
		{"too short", env("BENCH_DURATION", "100ms"), nil, "want at least 1s"},
		{"unknown scenario", env("SCENARIOS", "direct,envoy"), nil, `SCENARIOS: "envoy"`},
		{"unknown backend", env("BACKEND", "apache"), nil, `BACKEND: "apache"`},
		{"bad pin", env("PIN_LOAD", "cpu0"), nil, `PIN_LOAD: "cpu0"`},
		{"fewer connections than threads", env("BENCH_CONNS", "1"), nil, "BENCH_CONNS: 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := FromEnv(tt.getenv)
			if err == nil {
				c = c.withDefaults()
				err = c.Validate()
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.check(c); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	got := expand("-tracing-endpoint {otlp}  -sampling 1 -name {side}-x", map[string]string{"otlp": "http://127.0.0.1:4318", "side": "a"})
	want := []string{"-tracing-endpoint", "http://127.0.0.1:4318", "-sampling", "1", "-name", "a-x"}
	if !slices.Equal(got, want) {
		t.Errorf("expand = %q, want %q", got, want)
	}
	if got := expand("  ", nil); len(got) != 0 {
		t.Errorf("expand(blank) = %q", got)
	}
}

func TestChildEnv(t *testing.T) {
	got := childEnv([]string{"PATH=/bin", "OTEL_X=1", "OTEL_Y=2", "CONSUL_HTTP_ADDR=x", "CONSUL=keep"},
		[]string{"GOMAXPROCS=1"}, []string{"OTEL_*", "CONSUL_HTTP_ADDR"})
	want := []string{"PATH=/bin", "CONSUL=keep", "GOMAXPROCS=1"}
	if !slices.Equal(got, want) {
		t.Errorf("childEnv = %q, want %q", got, want)
	}
}

// TestCerts checks the nginx-mtls certificates: ECDSA P-256 leaves that chain to the CA,
// with the names and key usages nginx's verification needs.
func TestCerts(t *testing.T) {
	openssl := testutil.Tool(t, "openssl")
	c, err := makeCerts(testutil.Context(t, 30*time.Second), openssl, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	parse := func(path string) *x509.Certificate {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatalf("%s: no PEM block", path)
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	ca := parse(c.CA)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, leaf := range []struct {
		cert, key string
		usage     x509.ExtKeyUsage
		name      string
	}{{c.ServerCert, c.ServerKey, x509.ExtKeyUsageServerAuth, c.ServerName}, {c.ClientCert, c.ClientKey, x509.ExtKeyUsageClientAuth, ""}} {
		cert := parse(leaf.cert)
		pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%s: key %T, want ECDSA P-256", leaf.cert, cert.PublicKey)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: leaf.name, KeyUsages: []x509.ExtKeyUsage{leaf.usage}}); err != nil {
			t.Errorf("%s: %v", leaf.cert, err)
		}
		if _, err := tls.LoadX509KeyPair(leaf.cert, leaf.key); err != nil {
			t.Errorf("%s: key pair: %v", leaf.cert, err)
		}
	}
}

// TestNginxConfigs has the real nginx check every configuration the harness writes.
func TestNginxConfigs(t *testing.T) {
	nginx := testutil.Tool(t, "nginx")
	openssl := testutil.Tool(t, "openssl")
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	crt, err := makeCerts(testutil.Context(t, 30*time.Second), openssl, dir)
	if err != nil {
		t.Fatal(err)
	}
	confs := []nginxConf{
		{Name: "backend", Dir: dir, Workers: 2, ListenH1: "127.0.0.1:1", ListenH2: "127.0.0.1:2", Body: string(Body)},
		{Name: "b", Dir: dir, Workers: 1, ListenH1: "127.0.0.1:3", Upstream: "127.0.0.1:1"},
		{Name: "a", Dir: dir, Workers: 1, ListenH1: "127.0.0.1:4", ListenH2: "127.0.0.1:5", Upstream: "127.0.0.1:3"},
		{Name: "b-mtls", Dir: dir, Workers: 1, ListenH1: "127.0.0.1:6", Upstream: "127.0.0.1:1", ServerTLS: true, Certs: crt, ConnLog: filepath.Join(dir, "conn.log")},
		{Name: "a-mtls", Dir: dir, Workers: 1, ListenH1: "127.0.0.1:7", ListenH2: "127.0.0.1:8", Upstream: "127.0.0.1:6", UpstreamTLS: true, Certs: crt},
	}
	for _, n := range confs {
		t.Run(n.Name, func(t *testing.T) {
			text, err := n.render()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(text, "/etc/nginx") || !strings.Contains(text, "pid "+dir) {
				t.Errorf("config escapes the temp dir:\n%s", text)
			}
			conf := filepath.Join(dir, n.Name+".conf")
			if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(nginx, "-t", "-p", dir, "-c", conf, "-g", "daemon off;").CombinedOutput()
			if err != nil {
				t.Fatalf("nginx -t: %v\n%s\n%s", err, out, text)
			}
		})
	}
}

func TestHaproxyConfigs(t *testing.T) {
	haproxy := testutil.Tool(t, "haproxy")
	dir := t.TempDir()
	for _, h := range []haproxyConf{
		{Name: "b", Dir: dir, Threads: 1, Listen: "127.0.0.1:1", BindH2: true, Upstream: "127.0.0.1:2"},
		{Name: "a", Dir: dir, Threads: 1, Listen: "127.0.0.1:3", Upstream: "127.0.0.1:1", UpH2: true},
	} {
		var b bytes.Buffer
		if err := haproxyTmpl.Execute(&b, h); err != nil {
			t.Fatal(err)
		}
		conf := filepath.Join(dir, h.Name+".cfg")
		if err := os.WriteFile(conf, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(haproxy, "-c", "-f", conf).CombinedOutput(); err != nil {
			t.Errorf("haproxy -c %s: %v\n%s\n%s", h.Name, err, out, b.String())
		}
	}
}

func TestCountConnLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "conn.log")
	if err := os.WriteFile(p, []byte("1 TLSv1.3 .\n2 TLSv1.3 r\n3 TLSv1.3 r\n\nbroken\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, r, err := countConnLog(p)
	if err != nil || n != 3 || r != 2 {
		t.Errorf("countConnLog = %d, %d, %v; want 3, 2", n, r, err)
	}
	if _, _, err := countConnLog(p + ".missing"); err == nil {
		t.Error("countConnLog of a missing file succeeded")
	}
}

// gone reports whether pid no longer exists (or is a zombie waiting for init).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && strings.HasPrefix(strings.TrimSpace(string(b[i+1:])), "Z")
}

// TestProcStopKillsGroup: stopping a Proc stops what it forked too (nginx workers), and
// Tree, CPU and RSS see the children.
func TestProcStopKillsGroup(t *testing.T) {
	p, err := startProc("sh", "", nil, nil, "sh", "-c", "trap '' TERM; sleep 60 & echo $!; wait")
	if err != nil {
		t.Fatal(err)
	}
	var child int
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
		child, err = strconv.Atoi(strings.TrimSpace(p.Output(100)))
		return err
	})
	if tree := p.Tree(); !slices.Contains(tree, child) {
		t.Errorf("Tree() = %v, want it to hold the child %d", tree, child)
	}
	if _, err := p.CPU(); err != nil {
		t.Error(err)
	}
	if n, err := p.RSS(); err != nil || n <= 0 {
		t.Errorf("RSS() = %d, %v", n, err)
	}
	if err := p.Exited(); err != nil {
		t.Fatalf("Exited() before Stop: %v", err)
	}
	start := time.Now()
	// sh ignores SIGTERM, so this also covers the SIGKILL after the grace period.
	p.Stop(300 * time.Millisecond)
	p.Stop(time.Second) // idempotent
	if time.Since(start) > 5*time.Second {
		t.Errorf("Stop took %v", time.Since(start))
	}
	if err := p.Exited(); err == nil {
		t.Error("Exited() after Stop = nil")
	}
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, pid := range []int{p.Pid(), child} {
			if !gone(pid) {
				return fmt.Errorf("pid %d still running", pid)
			}
		}
		return nil
	})
}

func load(rps, p50, p99 float64) *Load {
	return &Load{Tool: "wrk", Requests: int64(rps * 10), RPS: rps, P50: p50, P99: p99, Mean: p50}
}

func result(name string, wrk, fixed *Load, procs ...ProcStats) Result {
	return Result{Scenario: name, Status: StatusOK, Wrk: wrk, H2: &Load{Tool: "h2load", RPS: wrk.RPS, Mean: 1}, Fixed: fixed, Loaded: fixed, Procs: procs}
}

func sidecars(idle, loaded float64) []ProcStats {
	return []ProcStats{
		{Name: "sidecar B", Role: "proxy", RSSIdle: idle, RSSLoad: loaded, CPULoad: 0.02},
		{Name: "sidecar A", Role: "proxy", RSSIdle: idle, RSSLoad: loaded, CPULoad: 0.02},
	}
}

func TestTargets(t *testing.T) {
	c := Config{}.withDefaults()
	base := []Result{
		result(Direct, load(1000, 1, 2), load(1000, 0.20, 1)),
		result(Nginx, load(500, 2, 4), load(1000, 0.40, 2)),
	}
	status := func(rs []Result, target string) string {
		for _, tg := range targets(rs, c) {
			if strings.HasPrefix(tg.Target, target) {
				return tg.Status
			}
		}
		t.Fatalf("no target %q", target)
		return ""
	}
	tests := []struct {
		name    string
		sidecar Result
		target  string
		want    string
	}{
		{"faster than nginx", result(Sidecar, load(600, 1.5, 3), load(1000, 0.35, 1), sidecars(10, 20)...), "sidecar throughput (wrk)", Met},
		{"slower than nginx", result(Sidecar, load(400, 1.5, 3), load(1000, 0.35, 1), sidecars(10, 20)...), "sidecar throughput (wrk)", NotMet},
		{"fast but failing", func() Result {
			r := result(Sidecar, load(600, 1.5, 3), load(1000, 0.35, 1), sidecars(10, 20)...)
			r.Wrk.Failures = 3
			return r
		}(), "sidecar throughput (wrk)", NotMet},
		{"added p50 within 0.2ms", result(Sidecar, load(600, 1.5, 3), load(1000, 0.39, 1), sidecars(10, 20)...), "added p50", Met},
		{"added p50 over 0.2ms", result(Sidecar, load(600, 1.5, 3), load(1000, 0.41, 1), sidecars(10, 20)...), "added p50", NotMet},
		{"idle RSS within", result(Sidecar, load(600, 1, 3), load(1000, 0.3, 1), sidecars(14.9, 20)...), "idle RSS", Met},
		{"idle RSS over", result(Sidecar, load(600, 1, 3), load(1000, 0.3, 1), sidecars(15.1, 20)...), "idle RSS", NotMet},
		{"loaded RSS over", result(Sidecar, load(600, 1, 3), load(1000, 0.3, 1), sidecars(10, 31)...), "RSS of each sidecar", NotMet},
		{"sidecar unavailable", Result{Scenario: Sidecar, Status: StatusUnavailable, Reason: "no binary"}, "sidecar throughput (wrk)", NA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := append(slices.Clone(base), tt.sidecar)
			if got := status(rs, tt.target); got != tt.want {
				t.Errorf("%s: %s, want %s (%+v)", tt.target, got, tt.want, targets(rs, c))
			}
		})
	}
	// Scenarios not run are reported as such, never as met.
	if got := status(base, "sidecar-mtls throughput (wrk)"); got != NA {
		t.Errorf("mTLS target without the scenarios: %s", got)
	}
}

func TestRatios(t *testing.T) {
	rs := []Result{
		result(Direct, load(1000, 1, 2), load(1000, 0.20, 1)),
		result(Nginx, load(500, 2, 4), load(1000, 0.40, 2)),
		result(Sidecar, load(600, 1.5, 3), load(1000, 0.35, 1)),
		{Scenario: SidecarMTLS, Status: StatusSkipped},
	}
	r := ratios(rs)
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	if v := r["sidecar/nginx"]["wrk_rps"]; !near(v, 1.2) {
		t.Errorf("sidecar/nginx wrk_rps = %v, want 1.2", v)
	}
	if v := r["sidecar/direct"]["fixed_p50_added_ms"]; !near(v, 0.15) {
		t.Errorf("sidecar/direct added p50 = %v, want 0.15", v)
	}
	if v := r["nginx/direct"]["wrk_p99"]; !near(v, 2) {
		t.Errorf("nginx/direct wrk_p99 = %v, want 2", v)
	}
	if _, ok := r["sidecar-mtls/nginx-mtls"]; ok {
		t.Error("ratio computed for a skipped scenario")
	}
}

func TestMergeRounds(t *testing.T) {
	rounds := []Result{
		result(Sidecar, load(100, 1, 5), load(1000, 0.3, 1), sidecars(10, 20)...),
		{Scenario: Sidecar, Status: StatusFailed, Reason: "sidecar A exited"},
		result(Sidecar, load(300, 3, 9), load(1000, 0.5, 1), sidecars(12, 22)...),
		result(Sidecar, load(200, 2, 7), load(1000, 0.4, 1), sidecars(11, 30)...),
	}
	rounds[2].Wrk.Failures = 2
	rounds[0].Notes = []string{"x", "y"}
	rounds[3].Notes = []string{"y", "z"}
	m := mergeRounds(rounds)
	if !slices.Equal(m.Notes, []string{"x", "y", "z"}) {
		t.Errorf("notes %q, want x y z once each", m.Notes)
	}
	if m.Status != StatusOK || m.Rounds != 3 || m.Wrk.RPS != 200 || m.Wrk.P50 != 2 || m.Wrk.P99 != 7 ||
		m.Fixed.P50 != 0.4 || m.Procs[0].RSSIdle != 11 || m.Procs[0].RSSLoad != 22 || m.Wrk.Failures != 2 {
		t.Errorf("mergeRounds = %+v, wrk %+v, procs %+v", m, m.Wrk, m.Procs)
	}
	if rounds[0].Wrk.RPS != 100 {
		t.Error("mergeRounds changed its input")
	}
	failed := mergeRounds(rounds[1:2])
	if failed.Status != StatusFailed {
		t.Errorf("all rounds failed: status %s", failed.Status)
	}
}

// descendants returns this process's live descendants.
func descendants() []int {
	var out []int
	for _, pid := range processTree(os.Getpid())[1:] {
		if !gone(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// smokeConfig runs the direct scenario with the shortest durations the tools accept.
func smokeConfig(t *testing.T) Config {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Scenarios: []string{Direct}, Backend: "go", Self: []string{exe},
		Warmup: NoWarmup, Duration: time.Second, VegetaDuration: time.Second,
		Conns: 8, Threads: 1, H2Conns: 4, H2Streams: 4,
		Wrk: testutil.Tool(t, "wrk"), H2load: lookTool("h2load"), Vegeta: existing(os.Getenv("PODMESH_VEGETA_BIN")),
		OutDir: t.TempDir(),
	}
}

// TestRunDirect is the smoke test of the harness's process management: it runs the direct
// scenario (Go backend re-executed from this test binary) with 1s loads, and checks the
// report's shape, the JSON file, and that no process or temp dir is left behind. It takes
// about 5-8 s: one second per load plus h2load's warm-up.
func TestRunDirect(t *testing.T) {
	testutil.CheckGoroutines(t)
	c := smokeConfig(t)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	var out, progress bytes.Buffer
	rep, err := Run(testutil.Context(t, time.Minute), c, &out, &progress)
	if err != nil {
		t.Fatalf("Run: %v\n%s\n%s", err, out.String(), progress.String())
	}
	if len(rep.Scenarios) != 1 {
		t.Fatalf("scenarios: %+v", rep.Scenarios)
	}
	res := rep.Scenarios[0]
	if res.Status != StatusOK || !res.Wrk.ok() || res.Wrk.RPS <= 0 || res.Wrk.Requests <= 0 || res.Wrk.Failures != 0 || res.Wrk.P50 <= 0 {
		t.Errorf("direct: %+v wrk %+v\n%s", res, res.Wrk, out.String())
	}
	if c.H2load != "" && (!res.H2.ok() || res.H2.RPS <= 0 || res.H2.Failures != 0) {
		t.Errorf("h2load: %+v", res.H2)
	}
	if c.Vegeta != "" {
		// vegeta may fall short of the rate on a busy machine (and the backend here is
		// this race-instrumented test binary); the numbers must be there.
		for _, l := range []*Load{res.Fixed, res.Loaded} {
			if !l.ok() || l.Requests <= 0 || l.Sent <= 0 || l.Failures != 0 || l.P50 <= 0 {
				t.Errorf("vegeta: %+v", l)
			}
		}
	}
	if len(res.Procs) != 1 || res.Procs[0].Role != "backend" || res.Procs[0].Pid <= 0 || res.Procs[0].RSSIdle <= 0 || res.Procs[0].RSSPeak <= 0 || res.Procs[0].CPUWrk <= 0 {
		t.Errorf("processes: %+v", res.Procs)
	}
	if rep.Meta.Backend == "" || !strings.HasPrefix(rep.Meta.Backend, "go") {
		t.Errorf("backend %q, want the Go backend", rep.Meta.Backend)
	}
	for _, want := range []string{"== direct: client → backend", "wrk HTTP/1.1, 8 conns", "== summary", "== targets", "sidecar not run"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	b, err := os.ReadFile(filepath.Join(c.OutDir, "proxy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || len(back.Scenarios) != 1 || back.Scenarios[0].Wrk.RPS != res.Wrk.RPS {
		t.Errorf("proxy.json: %v %+v", err, back.Scenarios)
	}
	if !gone(res.Procs[0].Pid) {
		t.Errorf("backend pid %d still running after Run", res.Procs[0].Pid)
	}
	if d := descendants(); len(d) > 0 {
		t.Errorf("processes left behind: %v", d)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("temp files left behind: %v", ents)
	}
}

// TestRunCancelled: cancelling the run mid-load (as SIGINT does through main) stops every
// process and removes the temp dir. About 2 s.
func TestRunCancelled(t *testing.T) {
	c := smokeConfig(t)
	c.Duration = 30 * time.Second
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	var out bytes.Buffer
	_, err := Run(ctx, c, &out, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want the context's error\n%s", err, out.String())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Run took %v to return after cancellation", d)
	}
	if d := descendants(); len(d) > 0 {
		t.Errorf("processes left behind: %v", d)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("temp files left behind: %v", ents)
	}
}
