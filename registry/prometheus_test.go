package registry_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
)

// startPrometheus runs real Prometheus with consul_sd_configs pointed at server, discovering
// and scraping every second, and returns its base URL once it is ready.
func startPrometheus(t *testing.T, server string) string {
	t.Helper()
	bin := testutil.Tool(t, "prometheus")
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: podmesh
    scrape_interval: 1s
    scrape_timeout: 500ms
    consul_sd_configs:
      - server: %s
        refresh_interval: 1s
`, server)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testutil.FreePort(t)
	var out bytes.Buffer
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", out.String())
		}
	})
	base := "http://" + addr
	testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("ready: %s", resp.Status)
		}
		return nil
	})
	return base
}

// activeTargets returns Prometheus' discovered labels of each active target, by service ID.
func activeTargets(base string) (map[string]map[string]string, error) {
	resp, err := http.Get(base + "/api/v1/targets?state=active")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			ActiveTargets []struct {
				DiscoveredLabels map[string]string `json:"discoveredLabels"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decode /api/v1/targets: %w", err)
	}
	out := map[string]map[string]string{}
	for _, tg := range body.Data.ActiveTargets {
		out[tg.DiscoveredLabels["__meta_consul_service_id"]] = tg.DiscoveredLabels
	}
	return out, nil
}

// TestPrometheusDiscovery is acceptance 2: real Prometheus discovers every instance with its
// tags, meta and health as labels, and drops a deregistered one within 10 s.
func TestPrometheusDiscovery(t *testing.T) {
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web-1", Name: "web", Port: 18081, Address: "127.0.0.1",
		Tags: []string{"v1", "canary"}, Meta: map[string]string{"version": "1", "team": "shop"},
		Check: &api.AgentServiceCheck{CheckID: "web-1-ttl", TTL: "10m", Status: "passing"}}))
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web-2", Name: "web", Port: 18082,
		Tags: []string{"v1"}, Meta: map[string]string{"version": "2"},
		Check: &api.AgentServiceCheck{CheckID: "web-2-ttl", TTL: "10m"}})) // critical until passed
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "api-1", Name: "api", Port: 18083}))

	prom := startPrometheus(t, r.Addr)
	want := map[string]map[string]string{
		"web-1": {"__meta_consul_service": "web", "__meta_consul_tags": ",v1,canary,", "__meta_consul_health": "passing",
			"__meta_consul_service_metadata_version": "1", "__meta_consul_service_metadata_team": "shop",
			"__meta_consul_node": "node1", "__meta_consul_dc": "dc1", "__address__": "127.0.0.1:18081"},
		"web-2": {"__meta_consul_service": "web", "__meta_consul_tags": ",v1,", "__meta_consul_health": "critical",
			"__meta_consul_service_metadata_version": "2", "__address__": "127.0.0.1:18082"},
		"api-1": {"__meta_consul_service": "api", "__meta_consul_tags": ",,", "__meta_consul_health": "passing",
			"__address__": "127.0.0.1:18083"},
	}
	testutil.Eventually(t, 30*time.Second, 100*time.Millisecond, func() error {
		got, err := activeTargets(prom)
		if err != nil {
			return err
		}
		for id, labels := range want {
			tg, ok := got[id]
			if !ok {
				return fmt.Errorf("target %s not discovered; have %v", id, keys(got))
			}
			for k, v := range labels {
				if tg[k] != v {
					return fmt.Errorf("target %s: %s = %q, want %q", id, k, tg[k], v)
				}
			}
		}
		return nil
	})

	must(t, a.ServiceDeregister("web-2"))
	start := time.Now()
	testutil.Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		got, err := activeTargets(prom)
		if err != nil {
			return err
		}
		if _, ok := got["web-2"]; ok {
			return fmt.Errorf("web-2 still a target %v after deregistration", time.Since(start).Round(time.Millisecond))
		}
		if _, ok := got["web-1"]; !ok {
			return fmt.Errorf("web-1 dropped too")
		}
		return nil
	})
	t.Logf("Prometheus dropped the deregistered target after %v", time.Since(start).Round(time.Millisecond))
}

func keys[V any](m map[string]V) string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
