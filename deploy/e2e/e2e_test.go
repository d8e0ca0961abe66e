package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"

	"github.com/podmesh/podmesh/deploy/grafana"
	"github.com/podmesh/podmesh/deploy/internal/promtest"
	"github.com/podmesh/podmesh/discovery/consultest"
	"github.com/podmesh/podmesh/internal/testutil"
)

var sidecarBin string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	defer consultest.RemoveBuilt()
	dir, err := os.MkdirTemp("", "deploy-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	sidecarBin = filepath.Join(dir, "sidecar")
	if out, err := exec.Command("go", "build", "-o", sidecarBin, "../../cmd/sidecar").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sidecar: %v\n%s", err, out)
		return 1
	}
	if err := buildLauncher(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// shippedConfig is deploy/prometheus/prometheus.yml pointed at the test's registry, scraping
// and discovering every second; the relabelling is left as shipped.
func shippedConfig(t *testing.T, registry string) string {
	t.Helper()
	b, err := os.ReadFile("../prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("deploy/prometheus/prometheus.yml: %v", err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"}
	jobs, _ := cfg["scrape_configs"].([]any)
	if len(jobs) == 0 {
		t.Fatal("deploy/prometheus/prometheus.yml has no scrape_configs")
	}
	sds := 0
	for _, j := range jobs {
		job := j.(map[string]any)
		job["scrape_interval"], job["scrape_timeout"] = "1s", "900ms"
		list, _ := job["consul_sd_configs"].([]any)
		for _, s := range list {
			sd := s.(map[string]any)
			sd["server"], sd["refresh_interval"] = registry, "1s"
			sds++
		}
	}
	if sds == 0 {
		t.Fatal("deploy/prometheus/prometheus.yml has no consul_sd_configs")
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// app is an HTTP app on loopback.
func app(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// sidecar runs the sidecar binary with cfg (its YAML configuration; registry, admin and
// metrics listeners are added) and waits until it is ready. It is stopped when the test ends.
func sidecar(t *testing.T, registry string, cfg map[string]any) {
	t.Helper()
	admin := testutil.FreePort(t)
	cfg["registry"], cfg["admin"], cfg["metrics"] = "http://"+registry, admin, "127.0.0.1:0"
	cfg["check"] = map[string]any{"interval": "300ms", "timeout": "200ms", "ttl": "3s"}
	cfg["drain_timeout"] = "1s"
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "sidecar.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(sidecarBin, "-config", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		timer := time.NewTimer(5 * time.Second)
		defer timer.Stop()
		select {
		case <-done:
		case <-timer.C:
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("sidecar %s %s output:\n%s", cfg["service"], cfg["id"], out.String())
		}
	})
	testutil.Eventually(t, 20*time.Second, 20*time.Millisecond, func() error {
		select {
		case <-done:
			return fmt.Errorf("sidecar %s exited: %s", cfg["id"], out.String())
		default:
		}
		resp, err := http.Get("http://" + admin + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("sidecar %s not ready: %s", cfg["id"], resp.Status)
		}
		return nil
	})
}

var client = &http.Client{Timeout: 10 * time.Second}

func get(url string) (int, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestDashboardsHaveData is issue 6's acceptance 2. Podmesh's registry (registering itself)
// and a small mesh of sidecar processes run on loopback: client → frontend → backend ×2,
// plus an intruder the intentions deny. Prometheus runs with the shipped
// deploy/prometheus/prometheus.yml (only the registry address and the intervals changed)
// and must discover the registry and every sidecar through consul_sd_configs. After
// traffic that also makes the events the detail panels show (5xx, retries, an ejection,
// circuit breaker trips, a denied caller, a plaintext TLS failure), every query of every
// panel of the mesh, service and registry dashboards must return at least one series
// through Prometheus' HTTP API. Queries of rare events fall back to zero (`or (0 * traffic)`,
// `or vector(0)`), so their data is a zero until the event happens; the events above are
// also checked by themselves, without the fallback. For the launcher dashboard (privileged),
// `launcher up` runs a project with this registry (checkLauncherDashboard): Prometheus
// discovers the launcher and the pods' sidecars there and scrapes them through the bridge.
//
// It takes about 20 s, 35 s with the launcher: the sidecars' discovery and Prometheus' 1 s
// scrapes need a few rounds.
func TestDashboardsHaveData(t *testing.T) {
	reg := consultest.StartRegistry(t)
	rc := reg.Client()
	if _, err := rc.Connect().IntentionUpsert(&api.Intention{SourceName: "intruder", DestinationName: "frontend",
		Action: api.IntentionActionDeny}, nil); err != nil {
		t.Fatal(err)
	}

	// backend-1 answers 200 (503 on /fail), backend-2 always 503: the frontend's sidecar
	// retries 5xx and ejects backend-2.
	var slowBackend sync.WaitGroup
	good := app(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/slow":
			slowBackend.Add(1)
			defer slowBackend.Done()
			time.Sleep(150 * time.Millisecond)
		}
		io.WriteString(w, "ok")
	})
	bad := app(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	upBackend := testutil.FreePort(t)
	frontend := app(t, func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get("http://" + upBackend + r.URL.Path)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
	})
	idle := app(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "idle") })

	addr := reg.Addr
	for i, a := range []string{good, bad} {
		sidecar(t, addr, map[string]any{"service": "backend", "id": fmt.Sprintf("backend-%d", i+1), "protocol": "http",
			"inbound": "127.0.0.1:0", "app": a})
	}
	sidecar(t, addr, map[string]any{"service": "frontend", "id": "frontend-1", "protocol": "http", "inbound": "127.0.0.1:0", "app": frontend,
		"upstreams": []any{map[string]any{"name": "backend", "listen": upBackend, "lb": "round_robin",
			"retries": 2, "retry_on": []string{"5xx"},
			"breakers": map[string]any{"max_requests": 2},
			"outlier":  map[string]any{"consecutive_5xx": 3, "base_ejection_time": "30s"}}}})
	upFrontend, upIntruder := testutil.FreePort(t), testutil.FreePort(t)
	sidecar(t, addr, map[string]any{"service": "client", "id": "client-1", "protocol": "http", "inbound": "127.0.0.1:0", "app": idle,
		"upstreams": []any{map[string]any{"name": "frontend", "listen": upFrontend, "retries": 0}}})
	sidecar(t, addr, map[string]any{"service": "intruder", "id": "intruder-1", "protocol": "http", "inbound": "127.0.0.1:0", "app": idle,
		"upstreams": []any{map[string]any{"name": "frontend", "listen": upIntruder, "retries": 0}}})

	// An instance without metrics_port is not a target.
	reg.Register(t, "plain", "plain-1", "127.0.0.1:9", nil)

	prom := promtest.Start(t, shippedConfig(t, addr))

	// Discovery: the registry itself and the five sidecars, each scraped at its metrics_port
	// with the labels service and instance_id.
	ids := []string{"podmesh-registry-podmesh-test", "backend-1", "backend-2", "frontend-1", "client-1", "intruder-1"}
	testutil.Eventually(t, 30*time.Second, 200*time.Millisecond, func() error {
		tgs, err := prom.ActiveTargets()
		if err != nil {
			return err
		}
		byID := map[string]promtest.Target{}
		for _, tg := range tgs {
			byID[tg.Labels["instance_id"]] = tg
		}
		for _, id := range ids {
			tg, ok := byID[id]
			if !ok {
				return fmt.Errorf("no target with instance_id %s among %d", id, len(tgs))
			}
			if tg.Health != "up" {
				return fmt.Errorf("target %s (%s): health %q %s", id, tg.ScrapeURL, tg.Health, tg.LastError)
			}
			if svc := tg.Labels["service"]; svc == "" || !strings.HasPrefix(id, svc) {
				return fmt.Errorf("target %s: service label %q", id, svc)
			}
		}
		if got := byID["podmesh-registry-podmesh-test"].ScrapeURL; got != "http://"+reg.Addr+"/metrics" {
			return fmt.Errorf("registry scraped at %s, want http://%s/metrics", got, reg.Addr)
		}
		if len(tgs) != len(ids) {
			return fmt.Errorf("%d targets, want %d: only the instances with metrics_port", len(tgs), len(ids))
		}
		return nil
	})

	// Traffic, bounded in count and time: client → frontend → backend, some of it failing.
	deadline := time.Now().Add(20 * time.Second)
	var ok, failed int
	for i := 0; i < 300 && time.Now().Before(deadline); i++ {
		path := "/ok"
		if i%10 == 0 {
			path = "/fail"
		}
		code, err := get("http://" + upFrontend + path)
		switch {
		case err != nil:
			t.Fatalf("client → frontend %s: %v", path, err)
		case code == 200:
			ok++
		default:
			failed++
		}
	}
	t.Logf("traffic: %d ok, %d failed", ok, failed)
	// A burst above the frontend's max_requests 2 towards backend trips its breaker.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			get("http://" + upFrontend + "/slow")
		}()
	}
	wg.Wait()
	slowBackend.Wait()
	// The intruder is denied; a plaintext peer fails the TLS handshake.
	if code, err := get("http://" + upIntruder + "/ok"); err == nil && code == 200 {
		t.Fatalf("intruder got %d through a deny intention", code)
	}
	entries, _, err := rc.Health().Service("frontend", "", false, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("frontend in the catalog: %v %v", entries, err)
	}
	inbound := net.JoinHostPort(entries[0].Service.Address, strconv.Itoa(entries[0].Service.Port))
	if c, err := net.DialTimeout("tcp", inbound, 2*time.Second); err == nil {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: frontend\r\n\r\n")
		io.Copy(io.Discard, c)
		c.Close()
	}

	// The events happened (checked without the panels' zero fallback), with the labels the
	// scrape configuration promises.
	for _, q := range []string{
		`sum(podmesh_requests_total{service="frontend", direction="inbound", code_class="5xx"})`,
		`sum(podmesh_retries_total{service="frontend"})`,
		`sum(podmesh_ejections_total{service="frontend"})`,
		`sum(podmesh_breaker_trips_total{service="frontend"})`,
		`sum(podmesh_authz_denied_total{service="frontend", source="intruder"})`,
		`sum(podmesh_tls_handshake_failures_total{service="frontend"})`,
		`sum(podmesh_registry_check_runs_total{type="ttl"})`,
		// The scrape labels: the registry's own series carry its service and instance ID, and
		// a metric's own service label is kept (honor_labels), not renamed exported_service.
		`count(podmesh_registry_blocking_queries{service="podmesh-registry", instance_id="podmesh-registry-podmesh-test"})`,
		`count(podmesh_tls_cert_expiry_timestamp_seconds{service="frontend", instance_id="frontend-1", exported_service=""})`,
	} {
		testutil.Eventually(t, 15*time.Second, 250*time.Millisecond, func() error {
			s, err := prom.Query(q + " > 0")
			if err != nil {
				return err
			}
			if len(s) == 0 {
				return fmt.Errorf("%s: no data (no event, or not these labels)", q)
			}
			return nil
		})
	}

	// The service variable lists the services, and every panel query has data.
	vals, err := prom.LabelValues("service", "podmesh_requests_total")
	if err != nil || !contains(vals, "frontend") {
		t.Fatalf("label_values(podmesh_requests_total, service) = %v, %v; want frontend among them", vals, err)
	}
	for _, d := range grafana.Dashboards() {
		t.Run(d.UID, func(t *testing.T) {
			if d.UID == "podmesh-launcher" {
				checkLauncherDashboard(t, prom, addr)
			}
			for _, e := range grafana.Expressions(d) {
				q := grafana.ForPrometheus(e.Expr, "1m", map[string]string{"service": "frontend"})
				testutil.Eventually(t, 15*time.Second, 250*time.Millisecond, func() error {
					s, err := prom.Query(q)
					if err != nil {
						return fmt.Errorf("%v: %w", e, err)
					}
					if len(s) == 0 {
						return fmt.Errorf("%v: no data for %s", e, q)
					}
					return nil
				})
			}
			t.Logf("%d queries with data", len(grafana.Expressions(d)))
		})
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
