package discovery

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/discovery/consultest"
	"github.com/podmesh/podmesh/internal/backoff"
	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
)

// The watch's behaviour is tested against Podmesh's registry (consultest.StartRegistry): one
// serves every test of the package that does not kill it. Compatibility with Consul itself
// is the registry's compat tests' business (registry/compat_test.go).
var agent *consultest.Agent

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	defer consultest.RemoveBuilt()
	dir, err := os.MkdirTemp("", "discovery-registry")
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
	return m.Run()
}

func needAgent(t *testing.T) *consultest.Agent {
	t.Helper()
	return agent
}

// recorder is a Listener that keeps every update and signals each one.
type recorder struct {
	mu      sync.Mutex
	updates [][]lb.Endpoint
	ch      chan []lb.Endpoint
}

func newRecorder() *recorder { return &recorder{ch: make(chan []lb.Endpoint, 100)} }

func (r *recorder) Update(eps []lb.Endpoint) {
	r.mu.Lock()
	r.updates = append(r.updates, eps)
	r.mu.Unlock()
	r.ch <- eps
}

// next waits for an update satisfying ok and returns it.
func (r *recorder) next(t *testing.T, what string, ok func([]lb.Endpoint) bool) []lb.Endpoint {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	for {
		select {
		case eps := <-r.ch:
			if ok(eps) {
				return eps
			}
		case <-timer.C:
			t.Fatalf("no update with %s", what)
		}
	}
}

func ids(eps []lb.Endpoint) string {
	var s []string
	for _, e := range eps {
		s = append(s, e.ID+"="+e.Address)
	}
	return strings.Join(s, ",")
}

func startWatch(t *testing.T, cfg Config) (*Watcher, *recorder) {
	t.Helper()
	rec := newRecorder()
	cfg.Listener = rec
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return w, rec
}

func TestWatchFollowsRegistrations(t *testing.T) {
	testutil.CheckGoroutines(t)
	a := needAgent(t)
	w, rec := startWatch(t, Config{Client: a.Client(), Service: "web"})
	rec.next(t, "the empty first answer", func(eps []lb.Endpoint) bool { return len(eps) == 0 })
	// Ready is closed right after the listener has the first answer.
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case <-w.Ready():
	case <-timer.C:
		t.Fatal("not ready after the first answer")
	}

	a.Register(t, "web", "web-1", "127.0.0.1:7001", map[string]string{"protocol": "http"})
	a.Register(t, "web", "web-2", "127.0.0.2:7002", nil)
	eps := rec.next(t, "two instances", func(eps []lb.Endpoint) bool { return len(eps) == 2 })
	if got := ids(eps); got != "web-1=127.0.0.1:7001,web-2=127.0.0.2:7002" {
		t.Errorf("endpoints %s", got)
	}
	if eps[0].Meta["protocol"] != "http" || eps[0].Node != "podmesh-test" || eps[0].Weight != 1 {
		t.Errorf("endpoint fields: %+v", eps[0])
	}

	// A failing check takes an instance out: only passing instances are watched.
	err := a.Client().Agent().CheckRegister(&api.AgentCheckRegistration{
		ID: "web-2-ttl", Name: "ttl", ServiceID: "web-2",
		AgentServiceCheck: api.AgentServiceCheck{TTL: "30s", Status: api.HealthCritical},
	})
	if err != nil {
		t.Fatal(err)
	}
	rec.next(t, "web-2 critical", func(eps []lb.Endpoint) bool { return ids(eps) == "web-1=127.0.0.1:7001" })
	if err := a.Client().Agent().UpdateTTL("web-2-ttl", "ok", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "web-2 passing again", func(eps []lb.Endpoint) bool { return len(eps) == 2 })

	a.Deregister(t, "web-1")
	a.Deregister(t, "web-2")
	rec.next(t, "none left", func(eps []lb.Endpoint) bool { return len(eps) == 0 })
	if s := w.State(); !s.Answered || s.Index < 1 || s.Failures != 0 {
		t.Errorf("state %+v", s)
	}
}

// An instance without its own address is reached at its node's address.
func TestToEndpointsNodeAddress(t *testing.T) {
	eps := toEndpoints([]*api.ServiceEntry{
		{Node: &api.Node{Node: "n1", Address: "10.0.0.9"}, Service: &api.AgentService{ID: "b", Port: 80, Weights: api.AgentWeights{Passing: 3}}},
		{Node: &api.Node{Node: "n1", Address: "10.0.0.9"}, Service: &api.AgentService{ID: "a", Address: "::1", Port: 81}},
		{Node: &api.Node{Node: "n1"}, Service: &api.AgentService{ID: "no-address", Port: 82}},
		{Node: &api.Node{Node: "n1", Address: "10.0.0.9"}, Service: &api.AgentService{ID: "no-port"}},
	})
	if got := ids(eps); got != "a=[::1]:81,b=10.0.0.9:80" {
		t.Errorf("got %s", got)
	}
	if eps[1].Weight != 3 {
		t.Errorf("weight %d", eps[1].Weight)
	}
}

// The registry going away keeps the endpoints; when it comes back without the old instances
// (a Consul dev agent loses its state; here they deregister, as they would after the
// outage), the last known set is merged in for the grace period, new instances are added at
// once, and after the grace only what the registry says is left.
func TestWatchRegistryDownAndBack(t *testing.T) {
	testutil.CheckGoroutines(t)
	a := consultest.StartRegistry(t) // its own registry: this test kills it
	a.Register(t, "api", "api-1", "127.0.0.1:7101", nil)
	a.Register(t, "api", "api-2", "127.0.0.1:7102", nil)
	grace := 2 * time.Second
	w, rec := startWatch(t, Config{Client: a.Client(), Service: "api", RecoveryGrace: grace,
		Backoff: backoffFast()})
	rec.next(t, "two instances", func(eps []lb.Endpoint) bool { return len(eps) == 2 })

	a.Kill()
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if s := w.State(); s.Failures < 2 {
			return fmt.Errorf("failures %d", s.Failures)
		}
		return nil
	})
	rec.mu.Lock()
	n := len(rec.updates)
	last := rec.updates[n-1]
	rec.mu.Unlock()
	if len(last) != 2 {
		t.Fatalf("registry down changed the endpoints to %s", ids(last))
	}

	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	a.Register(t, "api", "api-3", "127.0.0.1:7103", nil)
	// A Consul dev agent comes back empty; a registry that keeps its state (Podmesh's)
	// still lists the old instances: they leave now, as they would after the outage.
	for _, id := range []string{"api-1", "api-2"} {
		_ = a.Client().Agent().ServiceDeregister(id)
	}
	start := time.Now()
	eps := rec.next(t, "the new instance merged with the old ones", func(eps []lb.Endpoint) bool { return len(eps) == 3 })
	if got := ids(eps); got != "api-1=127.0.0.1:7101,api-2=127.0.0.1:7102,api-3=127.0.0.1:7103" {
		t.Errorf("merged set %s", got)
	}
	if !w.State().Recovering {
		t.Error("state should say recovering")
	}
	eps = rec.next(t, "only the registered instance after the grace", func(eps []lb.Endpoint) bool { return len(eps) == 1 })
	if ids(eps) != "api-3=127.0.0.1:7103" {
		t.Errorf("after grace: %s", ids(eps))
	}
	if d := time.Since(start); d < grace/2 || d > grace+5*time.Second {
		t.Errorf("grace took %v, want about %v", d, grace)
	}
}

func backoffFast() backoff.Waiter {
	return backoff.Waiter{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}
}

// fakeRegistry serves /v1/health/service/NAME with scripted indexes and bodies, to drive
// the index rules deterministically.
type fakeRegistry struct {
	mu      sync.Mutex
	steps   []fakeStep
	queries atomic.Int64
	indexes []string
}

type fakeStep struct {
	index uint64
	ids   []string
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.queries.Add(1)
	f.mu.Lock()
	f.indexes = append(f.indexes, r.URL.Query().Get("index"))
	var step fakeStep
	if len(f.steps) > 0 {
		step = f.steps[0]
		if len(f.steps) > 1 {
			f.steps = f.steps[1:]
		}
	}
	last := len(f.steps) == 1 && f.steps[0].index == step.index
	f.mu.Unlock()
	if last && r.URL.Query().Get("index") == fmt.Sprint(step.index) {
		time.Sleep(50 * time.Millisecond) // "blocking" on the final state
	}
	var out []map[string]any
	for i, id := range step.ids {
		out = append(out, map[string]any{
			"Node":    map[string]any{"Node": "n", "Address": "127.0.0.1"},
			"Service": map[string]any{"ID": id, "Service": "s", "Port": 9000 + i},
			"Checks":  []any{},
		})
	}
	if out == nil {
		out = []map[string]any{}
	}
	w.Header().Set("X-Consul-Index", fmt.Sprint(step.index))
	w.Header().Set("X-Consul-LastContact", "0")
	w.Header().Set("X-Consul-KnownLeader", "true")
	json.NewEncoder(w).Encode(out)
}

func TestWatchIndexGoesBackwards(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := &fakeRegistry{steps: []fakeStep{
		{100, []string{"a", "b"}},
		{7, []string{"c"}}, // restored: index backwards, only c registered so far
		{7, []string{"c"}},
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := api.DefaultConfig()
	cfg.Address = strings.TrimPrefix(srv.URL, "http://")
	client, _ := api.NewClient(cfg)
	_, rec := startWatch(t, Config{Client: client, Service: "s", RecoveryGrace: 300 * time.Millisecond,
		MinInterval: time.Millisecond})
	rec.next(t, "a and b", func(eps []lb.Endpoint) bool { return len(eps) == 2 })
	eps := rec.next(t, "merged after the index went back", func(eps []lb.Endpoint) bool { return len(eps) == 3 })
	if ids(eps) != "a=127.0.0.1:9000,b=127.0.0.1:9001,c=127.0.0.1:9000" {
		t.Errorf("merged %s", ids(eps))
	}
	rec.next(t, "c alone after the grace", func(eps []lb.Endpoint) bool { return len(eps) == 1 })
	f.mu.Lock()
	defer f.mu.Unlock()
	// The first query is non-blocking (index 0), the second blocks on 100, and after the
	// answer with index 7 the watcher blocks on 7, not on 100.
	if len(f.indexes) < 3 || f.indexes[0] != "" || f.indexes[1] != "100" || f.indexes[2] != "7" {
		t.Errorf("indexes sent: %v", f.indexes)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{Service: "x"}); err == nil {
		t.Error("want an error without client and listener")
	}
}
