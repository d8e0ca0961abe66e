package supervisor_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/launcher/netns"
	"github.com/podmesh/podmesh/launcher/supervisor"
)

// scrape GETs a Prometheus text endpoint and parses it.
func scrape(url string) (map[string]*dto.MetricFamily, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// sampleOf is the value of the series of name with exactly labels (name=value pairs).
func sampleOf(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel())*2 != len(labels) {
			continue
		}
		for i := 0; i < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

// podMemoryLimit reads the memory limit file of the pod cgroup that holds pid (an app).
func podMemoryLimit(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ",memory,") {
			return readUint(t, filepath.Join("/sys/fs/cgroup/memory", filepath.Dir(parts[2]), "memory.limit_in_bytes"))
		}
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return readUint(t, filepath.Join("/sys/fs/cgroup", filepath.Dir(p), "memory.max"))
		}
	}
	t.Fatalf("no memory cgroup for %d in\n%s", pid, b)
	return 0
}

func readUint(t *testing.T, path string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(readFile(t, path), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

// otlpCollector records the spans posted to /v1/traces (OTLP/HTTP, protobuf): the service
// names of their resources and the span names.
type otlpCollector struct {
	mu       sync.Mutex
	services map[string]int // service.name → spans
	names    map[string]int
}

func startCollector(t *testing.T) (*otlpCollector, string) {
	c := &otlpCollector{services: map[string]int{}, names: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		b, _ := io.ReadAll(r.Body)
		var req coltrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			svc := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.GetKey() == "service.name" {
					svc = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				c.services[svc] += len(ss.GetSpans())
				for _, s := range ss.GetSpans() {
					c.names[s.GetName()]++
				}
			}
		}
		c.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ = proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return c, srv.URL
}

func (c *otlpCollector) spans(service string) (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.services[service], fmt.Sprint(c.names)
}

// TestLauncherMetrics is issue 6's launcher part, end to end with real cgroups: `launcher up`
// serves its metrics on the bridge's gateway (the default -metrics) and registers itself as
// podmesh-launcher with meta metrics_port; the values come from the pods' cgroup files
// (memory above zero for the pod, app and sidecar, the limit equal to the cgroup file's,
// the CPU limit from the compose file, CPU seconds rising); a SIGKILLed app counts a restart,
// an app over its memory limit an OOM kill. The pods' sidecars serve /metrics on
// POD_IP:15090 through the bridge, registered with metrics_port 15090, and send their spans
// through the launcher's trace relay to -trace-endpoint. `down` deregisters the launcher
// and closes its listener.
func TestLauncherMetrics(t *testing.T) {
	e := newEnv(t)
	col, colURL := startCollector(t)
	expose := testutil.FreePort(t)
	file := e.compose(fmt.Sprintf(`  web:
    command: [APP, -listen, "127.0.0.1:8080"]
    deploy:
      resources: {limits: {memory: 256M, cpus: "0.5"}}
      restart_policy: {condition: any, delay: 50ms}
    x-podmesh: {port: 8080, expose: %q}
  hog:
    command: [APP, -alloc-mib, "1024"]
    deploy:
      resources: {limits: {memory: 200M}}
      restart_policy: {condition: any, delay: 1s}
`, expose))
	cmd := e.startArgs(file, "-trace-endpoint", colURL)
	web := e.waitFor("web-1", 60*time.Second, healthy)

	// The launcher's own instance, at the gateway's port 15091.
	gw := netns.Network{Subnet: e.subnet}.Gateway()
	var self map[string]any
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if self = e.reg.registered(supervisor.LauncherID(e.project)); self == nil {
			return fmt.Errorf("%s not registered", supervisor.LauncherID(e.project))
		}
		return nil
	})
	meta, _ := self["Meta"].(map[string]any)
	if self["Service"] != supervisor.LauncherService || self["Address"] != gw.String() || meta["metrics_port"] != "15091" {
		t.Fatalf("launcher registered as %v; want service %s at %s with meta metrics_port 15091", self, supervisor.LauncherService, gw)
	}
	metricsURL := fmt.Sprintf("http://%s:%s/metrics", self["Address"], meta["metrics_port"])

	mfs, err := scrape(metricsURL)
	if err != nil {
		t.Fatal(err)
	}
	for _, member := range []string{"pod", "app", "sidecar"} {
		if v, ok := sampleOf(mfs, "podmesh_launcher_memory_bytes", "service", "web", "replica", "1", "member", member); !ok || v <= 0 {
			t.Errorf("web-1 %s memory %v (listed %v); want > 0", member, v, ok)
		}
	}
	limit := podMemoryLimit(t, web.Pid)
	if v, _ := sampleOf(mfs, "podmesh_launcher_memory_limit_bytes", "service", "web", "replica", "1"); v != float64(limit) || limit != 256<<20 {
		t.Errorf("web-1 memory limit %v; the cgroup file says %d (compose: %d)", v, limit, 256<<20)
	}
	if v, _ := sampleOf(mfs, "podmesh_launcher_cpu_limit_cores", "service", "web", "replica", "1"); v != 0.5 {
		t.Errorf("web-1 CPU limit %v cores; want 0.5", v)
	}
	if v, _ := sampleOf(mfs, "podmesh_launcher_memory_limit_bytes", "service", "hog", "replica", "1"); v != 200<<20 {
		t.Errorf("hog-1 memory limit %v; want %d", v, 200<<20)
	}
	if v, ok := sampleOf(mfs, "podmesh_launcher_pod_state", "service", "web", "replica", "1", "state", "running"); v != 1 || !ok {
		t.Errorf("web-1 state running = %v (listed %v); want 1", v, ok)
	}
	if v, _ := sampleOf(mfs, "podmesh_launcher_pods", "service", "web"); v != 1 {
		t.Errorf("running web pods %v; want 1", v)
	}
	cpu0, _ := sampleOf(mfs, "podmesh_launcher_cpu_seconds_total", "service", "web", "replica", "1", "member", "pod")
	if cpu0 <= 0 {
		t.Errorf("web-1 CPU seconds %v; want > 0", cpu0)
	}
	// Traffic through the ingress uses CPU in the pod, and makes spans.
	throughIngress(t, expose, "hello from web-1\n")
	testutil.Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		mfs, err := scrape(metricsURL)
		if err != nil {
			return err
		}
		if v, _ := sampleOf(mfs, "podmesh_launcher_cpu_seconds_total", "service", "web", "replica", "1", "member", "pod"); v <= cpu0 {
			return fmt.Errorf("web-1 CPU seconds %v, still %v", v, cpu0)
		}
		return nil
	})

	// The sidecar's metrics, from the host through the bridge, and its registration.
	sc, err := scrape(fmt.Sprintf("http://%s:15090/metrics", web.Addr))
	if err != nil {
		t.Fatalf("sidecar metrics through the bridge: %v", err)
	}
	if _, ok := sc["podmesh_requests_total"]; !ok {
		t.Errorf("the sidecar's /metrics has no podmesh_requests_total")
	}
	if m, _ := e.reg.registered("web-1")["Meta"].(map[string]any); m["metrics_port"] != "15090" {
		t.Errorf("web-1 registered with meta %v; want metrics_port 15090", m)
	}

	// The sidecar's spans reach the collector through the relay.
	testutil.Eventually(t, 20*time.Second, 100*time.Millisecond, func() error {
		if n, names := col.spans("web"); n == 0 {
			return fmt.Errorf("no span of service web at the collector (span names seen: %s)", names)
		}
		return nil
	})

	// Both listeners on the gateway are for the host and the sidecars, not the apps.
	for _, url := range []string{metricsURL, fmt.Sprintf("http://%s:%d/v1/traces", gw, supervisor.DefaultTracePort)} {
		out, err := exec.Command("nsenter", "-t", fmt.Sprint(web.Pid), "-n", "setpriv", "--reuid=65534", "--regid=65534",
			"--clear-groups", testApp, "-probe", url).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "connection refused") {
			t.Errorf("web-1's app: GET %s: %v %s; want the connection refused", url, err, out)
		}
	}

	// A killed app is a restart; the hog's allocations beyond its limit an OOM kill.
	if err := syscall.Kill(web.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, 100*time.Millisecond, func() error {
		mfs, err := scrape(metricsURL)
		if err != nil {
			return err
		}
		r, _ := sampleOf(mfs, "podmesh_launcher_restarts_total", "service", "web", "replica", "1")
		o, _ := sampleOf(mfs, "podmesh_launcher_oom_kills_total", "service", "hog", "replica", "1")
		if r < 1 || o < 1 {
			return fmt.Errorf("web-1 restarts %v, hog-1 OOM kills %v; want both ≥ 1", r, o)
		}
		return nil
	})

	out, err := e.run("down", "-p", e.project)
	if err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	waitExit(t, cmd)
	if r := e.reg.registered(supervisor.LauncherID(e.project)); r != nil {
		t.Errorf("still registered after down: %v", r)
	}
	if _, err := scrape(metricsURL); err == nil {
		t.Errorf("metrics still served after down")
	}
}
