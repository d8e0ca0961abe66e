// Package promtest runs the real Prometheus (testutil.Tool(t, "prometheus")) for the tests of
// deploy/: it parses PromQL through /api/v1/parse_query, evaluates it through /api/v1/query,
// and lists the scrape targets it discovered.
package promtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

// Server is a running Prometheus.
type Server struct {
	URL    string // http://127.0.0.1:port
	client *http.Client
}

// Start runs Prometheus with config (prometheus.yml's content) and waits until it is ready.
// It is stopped when the test ends.
func Start(t testing.TB, config string) *Server {
	t.Helper()
	bin := testutil.Tool(t, "prometheus")
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
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
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", out.String())
		}
	})
	s := &Server{URL: "http://" + addr, client: &http.Client{Timeout: 10 * time.Second}}
	testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		resp, err := s.client.Get(s.URL + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("prometheus not ready: %s", resp.Status)
		}
		return nil
	})
	return s
}

// api calls a Prometheus HTTP API endpoint with form values and decodes its data into v.
func (s *Server) api(path string, form url.Values, v any) error {
	resp, err := s.client.PostForm(s.URL+path, form)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return fmt.Errorf("%s: decode %.200s: %w", path, b, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s %v: %s", path, form, body.Error)
	}
	return json.Unmarshal(body.Data, v)
}

// MetricNames parses expr with Prometheus' own parser and returns the metric names its
// selectors use, sorted and without duplicates.
func (s *Server) MetricNames(expr string) ([]string, error) {
	var ast any
	if err := s.api("/api/v1/parse_query", url.Values{"query": {expr}}, &ast); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var walk func(n any)
	walk = func(n any) {
		switch n := n.(type) {
		case map[string]any:
			if typ, _ := n["type"].(string); typ == "vectorSelector" || typ == "matrixSelector" {
				if name, _ := n["name"].(string); name != "" {
					seen[name] = true
				}
			}
			for _, v := range n {
				walk(v)
			}
		case []any:
			for _, v := range n {
				walk(v)
			}
		}
	}
	walk(ast)
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// Sample is one series of an instant query's result.
type Sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// Query evaluates expr now and returns its series (a scalar result is one series without
// labels).
func (s *Server) Query(expr string) ([]Sample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := s.api("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	switch data.ResultType {
	case "vector":
		var out []Sample
		err := json.Unmarshal(data.Result, &out)
		return out, err
	case "scalar":
		var v [2]any
		err := json.Unmarshal(data.Result, &v)
		return []Sample{{Value: v}}, err
	default:
		return nil, fmt.Errorf("query %s: result type %s", expr, data.ResultType)
	}
}

// LabelValues returns the values of label in the series that match selector.
func (s *Server) LabelValues(label, selector string) ([]string, error) {
	resp, err := s.client.Get(s.URL + "/api/v1/label/" + url.PathEscape(label) + "/values?" + url.Values{"match[]": {selector}}.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string   `json:"status"`
		Error  string   `json:"error"`
		Data   []string `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("label values of %s: %s", label, body.Error)
	}
	return body.Data, nil
}

// Target is an active scrape target: its labels after relabelling and its last scrape.
type Target struct {
	Labels           map[string]string `json:"labels"`
	DiscoveredLabels map[string]string `json:"discoveredLabels"`
	ScrapeURL        string            `json:"scrapeUrl"`
	Health           string            `json:"health"`
	LastError        string            `json:"lastError"`
}

// ActiveTargets lists the targets Prometheus scrapes.
func (s *Server) ActiveTargets() ([]Target, error) {
	resp, err := s.client.Get(s.URL + "/api/v1/targets?state=active")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			ActiveTargets []Target `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decode /api/v1/targets: %w", err)
	}
	return body.Data.ActiveTargets, nil
}
