package registry_test

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
)

// startConsul runs a real Consul v1.14.0 dev agent on free loopback ports and returns a
// client for it once it has elected itself and registered its node. It takes a few seconds.
// A port taken between choosing it and Consul binding it (other tests run in parallel) makes
// Consul exit; then it is retried on new ports.
func startConsul(t *testing.T) *api.Client {
	t.Helper()
	for attempt := 1; ; attempt++ {
		client, retry := tryStartConsul(t)
		if client != nil {
			return client
		}
		if !retry || attempt == 3 {
			t.Fatal("consul did not start")
		}
	}
}

func tryStartConsul(t *testing.T) (client *api.Client, retry bool) {
	t.Helper()
	bin := testutil.Tool(t, "consul")
	port := func() string {
		_, p, _ := net.SplitHostPort(testutil.FreePort(t))
		return p
	}
	httpPort := port()
	out := &syncBuffer{}
	cmd := exec.Command(bin, "agent", "-dev", "-node", "consul-test", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", httpPort, "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-serf-lan-port", port(), "-serf-wan-port", port(), "-server-port", port(), "-data-dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start consul: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}
	cfg := api.DefaultConfig()
	cfg.Address = "127.0.0.1:" + httpPort
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			if strings.Contains(out.String(), "address already in use") {
				t.Logf("consul lost a port race; retrying")
				return nil, true
			}
			t.Fatalf("consul exited:\n%s", out.String())
		default:
		}
		leader, err := client.Status().Leader()
		if err == nil && leader != "" {
			if n, _, err := client.Catalog().Node("consul-test", nil); err == nil && n != nil {
				break
			}
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("consul not ready within 30s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("consul output:\n%s", out.String())
		}
	})
	return client, false
}

// syncBuffer is a bytes.Buffer safe for a process's output and the test reading it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestConsulAPICompat is acceptance 1 (and, for Connect, issue 4's): the same client-only
// tests pass against the registry and against a real Consul dev agent.
func TestConsulAPICompat(t *testing.T) {
	t.Run("registry", func(t *testing.T) {
		c := startRegistry(t).Client
		t.Run("catalog", func(t *testing.T) { exerciseConsulAPI(t, c) })
		t.Run("rename", func(t *testing.T) { exerciseRename(t, c) })
		t.Run("connect", func(t *testing.T) { exerciseConnect(t, c) })
	})
	t.Run("consul-v1.14.0", func(t *testing.T) {
		c := startConsul(t)
		t.Run("catalog", func(t *testing.T) { exerciseConsulAPI(t, c) })
		t.Run("rename", func(t *testing.T) { exerciseRename(t, c) })
		t.Run("connect", func(t *testing.T) { exerciseConnect(t, c) })
	})
}

type watchResult struct {
	entries []*api.ServiceEntry
	meta    *api.QueryMeta
	err     error
	at      time.Time
}

// exerciseConsulAPI talks to a Consul-compatible server only through consul/api. Where Consul
// does work in the background (HTTP checks run on their own schedule), it polls.
func exerciseConsulAPI(t *testing.T, c *api.Client) {
	agent, health, kv := c.Agent(), c.Health(), c.KV()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	defer up.Close()

	// Registration with a TTL and an HTTP check.
	must(t, agent.ServiceRegister(&api.AgentServiceRegistration{
		ID: "web-1", Name: "web", Port: 8080, Tags: []string{"v1"}, Meta: map[string]string{"version": "1"},
		Checks: api.AgentServiceChecks{
			{CheckID: "web-1-ttl", Name: "heartbeat", TTL: "30s"},
			{CheckID: "web-1-http", Name: "http", HTTP: up.URL, Interval: "1s", Timeout: "1s"},
		},
	}))
	must(t, agent.ServiceRegister(&api.AgentServiceRegistration{
		ID: "other-1", Name: "other", Port: 9090,
		Check: &api.AgentServiceCheck{CheckID: "other-1-ttl", TTL: "30s"},
	}))
	defer agent.ServiceDeregister("other-1")
	must(t, agent.PassTTL("web-1-ttl", "alive"))
	must(t, agent.PassTTL("other-1-ttl", "alive"))

	// The HTTP check passes on its own schedule; poll until the instance is passing.
	var idx uint64
	testutil.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		es, meta, err := health.Service("web", "", true, nil)
		if err != nil {
			return err
		}
		if len(es) != 1 {
			return fmt.Errorf("%d passing web instances, want 1", len(es))
		}
		e := es[0]
		if e.Service.ID != "web-1" || e.Service.Port != 8080 || e.Service.Tags[0] != "v1" || e.Service.Meta["version"] != "1" ||
			e.Checks.AggregatedStatus() != api.HealthPassing || len(e.Checks) != 3 {
			return fmt.Errorf("entry %+v with checks %+v", e.Service, e.Checks)
		}
		idx = meta.LastIndex
		return nil
	})
	if idx < 1 {
		t.Fatalf("X-Consul-Index %d", idx)
	}

	// A blocking query on web.
	results := make(chan watchResult, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		es, meta, err := health.Service("web", "", true, &api.QueryOptions{WaitIndex: idx, WaitTime: 15 * time.Second})
		results <- watchResult{es, meta, err, time.Now()}
	}()

	// Changes to another service must not wake it. Consul's per-service index does the same.
	must(t, agent.FailTTL("other-1-ttl", "down"))
	must(t, agent.ServiceRegister(&api.AgentServiceRegistration{ID: "other-2", Name: "other", Port: 9091}))
	defer agent.ServiceDeregister("other-2")
	_, err := kv.Put(&api.KVPair{Key: "compat/unrelated", Value: []byte("x")}, nil)
	must(t, err)
	timer := time.NewTimer(time.Second)
	select {
	case res := <-results:
		t.Fatalf("blocking query on web returned after changes to other services: index %d -> %v, err %v", idx, res.meta, res.err)
	case <-timer.C:
	}

	// A relevant change wakes it within 100 ms of being acknowledged.
	must(t, agent.FailTTL("web-1-ttl", "down"))
	ack := time.Now()
	timer.Reset(5 * time.Second)
	select {
	case res := <-results:
		must(t, res.err)
		if lat := res.at.Sub(ack); lat > 100*time.Millisecond {
			t.Errorf("blocking query returned %v after the change, want within 100ms", lat)
		}
		if len(res.entries) != 0 || res.meta.LastIndex <= idx {
			t.Fatalf("after FailTTL: %d passing entries, index %d (was %d)", len(res.entries), res.meta.LastIndex, idx)
		}
	case <-timer.C:
		t.Fatal("blocking query on web did not return after web's check failed")
	}

	// KV check-and-set.
	_, err = kv.Put(&api.KVPair{Key: "compat/cas", Value: []byte("v1")}, nil)
	must(t, err)
	p, _, err := kv.Get("compat/cas", nil)
	must(t, err)
	ok, _, err := kv.CAS(&api.KVPair{Key: "compat/cas", Value: []byte("stale"), ModifyIndex: p.ModifyIndex - 1}, nil)
	must(t, err)
	if ok {
		t.Fatal("CAS with a stale index succeeded")
	}
	ok, _, err = kv.CAS(&api.KVPair{Key: "compat/cas", Value: []byte("v2"), ModifyIndex: p.ModifyIndex}, nil)
	must(t, err)
	if !ok {
		t.Fatal("CAS with the current index failed")
	}
	ok, _, err = kv.CAS(&api.KVPair{Key: "compat/cas", Value: []byte("again"), ModifyIndex: 0}, nil)
	must(t, err)
	if ok {
		t.Fatal("create-only CAS on an existing key succeeded")
	}
	p, _, err = kv.Get("compat/cas", nil)
	must(t, err)
	if string(p.Value) != "v2" {
		t.Fatalf("value %q, want v2", p.Value)
	}
	_, err = kv.DeleteTree("compat/", nil)
	must(t, err)

	// Deregistration.
	must(t, agent.ServiceDeregister("web-1"))
	es, _, err := health.Service("web", "", false, nil)
	must(t, err)
	if len(es) != 0 {
		t.Fatalf("%d web instances after deregistration", len(es))
	}
	svcs, err := agent.Services()
	must(t, err)
	if _, ok := svcs["web-1"]; ok {
		t.Fatal("agent still lists web-1")
	}
	cs, _, err := c.Catalog().Service("web", "", nil)
	must(t, err)
	if len(cs) != 0 {
		t.Fatalf("catalog still lists %d web instances", len(cs))
	}
	if err := agent.ServiceDeregister("web-1"); err == nil {
		t.Fatal("deregistering an unknown service ID succeeded")
	}
}

// exerciseRename renames a catalog service under the same ID and then changes and removes the
// check it had before: the health results of the new name, and their index, follow (Consul
// keeps the old ServiceName on a check nobody rewrote, and so does the registry).
func exerciseRename(t *testing.T, c *api.Client) {
	catalog, health := c.Catalog(), c.Health()
	reg := func(name string, checks api.HealthChecks) {
		t.Helper()
		_, err := catalog.Register(&api.CatalogRegistration{Node: "rn1", Address: "10.0.0.1",
			Service: &api.AgentService{ID: "s1", Service: name, Port: 80}, Checks: checks}, nil)
		must(t, err)
	}
	defer catalog.Deregister(&api.CatalogDeregistration{Node: "rn1"}, nil)
	reg("rename-a", api.HealthChecks{{CheckID: "c1", ServiceID: "s1", Status: api.HealthPassing}})
	reg("rename-b", nil)
	es, meta, err := health.Service("rename-b", "", false, nil)
	must(t, err)
	if len(es) != 1 || len(es[0].Checks) != 1 || es[0].Checks[0].CheckID != "c1" || es[0].Checks[0].ServiceName != "rename-a" {
		t.Fatalf("after the rename: %+v", es)
	}
	idx := meta.LastIndex

	// Removing the old check is seen by a blocked watcher of the new name.
	results := make(chan watchResult, 1)
	go func() {
		es, meta, err := health.Service("rename-b", "", false, &api.QueryOptions{WaitIndex: idx, WaitTime: 10 * time.Second})
		results <- watchResult{es, meta, err, time.Now()}
	}()
	time.Sleep(100 * time.Millisecond)
	_, err = catalog.Deregister(&api.CatalogDeregistration{Node: "rn1", CheckID: "c1"}, nil)
	must(t, err)
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case res := <-results:
		must(t, res.err)
		if res.meta.LastIndex <= idx || len(res.entries) != 1 || len(res.entries[0].Checks) != 0 {
			t.Fatalf("after removing c1: index %d (was %d), %+v", res.meta.LastIndex, idx, res.entries)
		}
	case <-timer.C:
		t.Fatal("removing the renamed service's check did not wake a watcher of its new name")
	}
}
