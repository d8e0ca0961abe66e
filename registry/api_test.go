package registry_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/registry/checks"
)

// fixture registers a small catalog through the Go client: two agent services on the local
// node (web1 with a TTL and an HTTP check, web2 bare), an external node with a db service and a
// passing check, and three KV keys.
func fixture(t *testing.T, r *testRegistry) {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	t.Cleanup(up.Close)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{
		ID: "web1", Name: "web", Tags: []string{"v1", "prod"}, Port: 8080, Address: "10.0.0.5",
		Meta:            map[string]string{"version": "1"},
		TaggedAddresses: map[string]api.ServiceAddress{"lan": {Address: "10.0.0.5", Port: 8080}},
		Weights:         &api.AgentWeights{Passing: 3, Warning: 1},
		Checks: api.AgentServiceChecks{
			{CheckID: "web1-ttl", TTL: "30s", Status: "passing", DeregisterCriticalServiceAfter: "90s"},
			{CheckID: "web1-http", HTTP: up.URL, Interval: "1s", Timeout: "2s"},
		},
	}))
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web2", Name: "web", Port: 8081}))
	_, err := r.Client.Catalog().Register(&api.CatalogRegistration{
		Node: "ext1", Address: "10.0.0.9", TaggedAddresses: map[string]string{"lan": "10.0.0.9"},
		NodeMeta: map[string]string{"rack": "a"},
		Service:  &api.AgentService{ID: "db1", Service: "db", Port: 5432, Tags: []string{"primary"}},
		Check:    &api.AgentCheck{CheckID: "db1-up", Name: "db up", ServiceID: "db1", Status: "passing"},
	}, nil)
	must(t, err)
	kv := r.Client.KV()
	_, err = kv.Put(&api.KVPair{Key: "a/b", Value: []byte("1")}, nil)
	must(t, err)
	_, err = kv.Put(&api.KVPair{Key: "a/c/d", Value: []byte("2"), Flags: 7}, nil)
	must(t, err)
	_, err = kv.Put(&api.KVPair{Key: "z", Value: []byte("3")}, nil)
	must(t, err)
}

func checkMeta(t *testing.T, m *api.QueryMeta) {
	t.Helper()
	if m == nil {
		t.Fatal("no QueryMeta")
	}
	if m.LastIndex < 1 {
		t.Errorf("LastIndex = %d, want >= 1", m.LastIndex)
	}
	// The client parses KnownLeader only after a valid LastContact (reference §0 rule 3).
	if !m.KnownLeader {
		t.Error("KnownLeader = false")
	}
}

func findCheck(cs api.HealthChecks, id string) *api.HealthCheck {
	for _, c := range cs {
		if c.CheckID == id {
			return c
		}
	}
	return nil
}

// TestEndpointShapes calls every read endpoint through consul/api and checks what its structs
// decode, so the wire shapes are exactly what the client expects.
func TestEndpointShapes(t *testing.T) {
	r := startRegistry(t)
	fixture(t, r)
	c := r.Client
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"agent/self", func(t *testing.T) {
			self, err := c.Agent().Self()
			must(t, err)
			if self["Config"]["Datacenter"] != "dc1" || self["Config"]["NodeName"] != "node1" {
				t.Fatalf("Config = %v", self["Config"])
			}
			name, err := c.Agent().NodeName()
			must(t, err)
			if name != "node1" {
				t.Fatalf("NodeName = %q", name)
			}
		}},
		{"agent/services", func(t *testing.T) {
			svcs, err := c.Agent().Services()
			must(t, err)
			w := svcs["web1"]
			if len(svcs) != 2 || w == nil || w.Service != "web" || w.Port != 8080 || w.Address != "10.0.0.5" ||
				!slices.Equal(w.Tags, []string{"v1", "prod"}) || w.Meta["version"] != "1" ||
				w.Weights != (api.AgentWeights{Passing: 3, Warning: 1}) || w.TaggedAddresses["lan"].Port != 8080 || w.Datacenter != "dc1" {
				t.Fatalf("services = %+v", svcs)
			}
			if svcs["web2"].Tags == nil || svcs["web2"].Weights.Passing != 1 {
				t.Fatalf("web2 = %+v, want empty tags and default weights", svcs["web2"])
			}
			filtered, err := c.Agent().ServicesWithFilter(`Port == 8081`)
			must(t, err)
			if len(filtered) != 1 || filtered["web2"] == nil {
				t.Fatalf("filtered = %v", filtered)
			}
		}},
		{"agent/service/ID", func(t *testing.T) {
			s, _, err := c.Agent().Service("web1", nil)
			must(t, err)
			if s.ID != "web1" || s.ContentHash == "" {
				t.Fatalf("service = %+v", s)
			}
		}},
		{"agent/checks", func(t *testing.T) {
			cs, err := c.Agent().Checks()
			must(t, err)
			ttl := cs["web1-ttl"]
			if ttl == nil || ttl.Status != "passing" || ttl.ServiceID != "web1" || ttl.ServiceName != "web" || ttl.Type != "ttl" ||
				ttl.Definition.DeregisterCriticalServiceAfterDuration != 90*time.Second {
				t.Fatalf("web1-ttl = %+v", ttl)
			}
			h := cs["web1-http"]
			if h == nil || h.Type != "http" || h.Definition.IntervalDuration != time.Second || h.Definition.TimeoutDuration != 2*time.Second || h.Definition.HTTP == "" {
				t.Fatalf("web1-http = %+v", h)
			}
			if _, ok := cs["serfHealth"]; ok {
				t.Fatal("agent/checks lists serfHealth")
			}
		}},
		{"catalog/datacenters", func(t *testing.T) {
			dcs, err := c.Catalog().Datacenters()
			must(t, err)
			if !slices.Equal(dcs, []string{"dc1"}) {
				t.Fatalf("datacenters = %v", dcs)
			}
		}},
		{"catalog/nodes", func(t *testing.T) {
			nodes, meta, err := c.Catalog().Nodes(nil)
			must(t, err)
			checkMeta(t, meta)
			if len(nodes) != 2 || nodes[0].Node != "ext1" || nodes[0].Meta["rack"] != "a" || nodes[0].TaggedAddresses["lan"] != "10.0.0.9" ||
				nodes[1].Node != "node1" || nodes[1].Datacenter != "dc1" || nodes[1].ID == "" {
				t.Fatalf("nodes = %+v", nodes)
			}
			nodes, _, err = c.Catalog().Nodes(&api.QueryOptions{NodeMeta: map[string]string{"rack": "a"}})
			must(t, err)
			if len(nodes) != 1 || nodes[0].Node != "ext1" {
				t.Fatalf("node-meta nodes = %+v", nodes)
			}
		}},
		{"catalog/services", func(t *testing.T) {
			svcs, meta, err := c.Catalog().Services(nil)
			must(t, err)
			checkMeta(t, meta)
			if len(svcs) != 2 || !slices.Equal(svcs["web"], []string{"prod", "v1"}) || !slices.Equal(svcs["db"], []string{"primary"}) {
				t.Fatalf("services = %v", svcs)
			}
			svcs, _, err = c.Catalog().Services(&api.QueryOptions{Filter: `NodeMeta.rack == "a"`})
			must(t, err)
			if len(svcs) != 1 || svcs["db"] == nil {
				t.Fatalf("filtered services = %v", svcs)
			}
		}},
		{"catalog/service/NAME", func(t *testing.T) {
			cs, meta, err := c.Catalog().Service("web", "prod", nil)
			must(t, err)
			checkMeta(t, meta)
			if len(cs) != 1 || cs[0].ServiceID != "web1" || cs[0].Node != "node1" || cs[0].Address != "127.0.0.1" ||
				cs[0].ServiceAddress != "10.0.0.5" || cs[0].ServicePort != 8080 || cs[0].ServiceWeights.Passing != 3 ||
				cs[0].ServiceMeta["version"] != "1" || cs[0].Datacenter != "dc1" || cs[0].ServiceTaggedAddresses["lan"].Address != "10.0.0.5" {
				t.Fatalf("catalog service = %+v", cs)
			}
			cs, _, err = c.Catalog().ServiceMultipleTags("web", []string{"prod", "v1"}, nil)
			must(t, err)
			if len(cs) != 1 {
				t.Fatalf("multiple tags: %d entries", len(cs))
			}
		}},
		{"catalog/node/NAME", func(t *testing.T) {
			n, meta, err := c.Catalog().Node("ext1", nil)
			must(t, err)
			checkMeta(t, meta)
			if n.Node.Address != "10.0.0.9" || n.Services["db1"] == nil || n.Services["db1"].Port != 5432 {
				t.Fatalf("node = %+v", n)
			}
			n, _, err = c.Catalog().Node("nope", nil)
			must(t, err)
			if n != nil {
				t.Fatalf("unknown node = %+v, want nil", n)
			}
		}},
		{"health/service/NAME", func(t *testing.T) {
			testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
				// web2 has no checks of its own, so only the node's serfHealth: always passing.
				es, _, err := c.Health().Service("web", "", true, nil)
				if err != nil || len(es) != 2 {
					return fmt.Errorf("passing web entries = %d, err %v; want 2 once web1's HTTP check passed", len(es), err)
				}
				return nil
			})
			es, meta, err := c.Health().Service("web", "v1", true, nil)
			must(t, err)
			checkMeta(t, meta)
			if len(es) != 1 {
				t.Fatalf("tag v1: %d entries, want 1", len(es))
			}
			e := es[0]
			if e.Node.Node != "node1" || e.Service.ID != "web1" || e.Service.Port != 8080 || len(e.Checks) != 3 ||
				e.Checks[0].CheckID != "serfHealth" || e.Checks.AggregatedStatus() != api.HealthPassing {
				t.Fatalf("entry = %+v checks %+v", e, e.Checks)
			}
			if hc := findCheck(e.Checks, "web1-http"); hc == nil || !strings.HasPrefix(hc.Output, "HTTP GET ") || !slices.Equal(hc.ServiceTags, []string{"v1", "prod"}) {
				t.Fatalf("http check = %+v", hc)
			}
			all, _, err := c.Health().Service("web", "", false, nil)
			must(t, err)
			if len(all) != 2 || len(all[1].Service.Tags) != 0 || len(all[1].Checks) != 1 {
				t.Fatalf("all web entries = %+v", all)
			}
			es, _, err = c.Health().Service("web", "", false, &api.QueryOptions{Filter: `Service.Meta.version == "1" and Checks.CheckID == "web1-ttl"`})
			must(t, err)
			if len(es) != 1 || es[0].Service.ID != "web1" {
				t.Fatalf("filtered entries = %d", len(es))
			}
			es, _, err = c.Health().Service("db", "", false, &api.QueryOptions{NodeMeta: map[string]string{"rack": "b"}})
			must(t, err)
			if len(es) != 0 {
				t.Fatalf("node-meta rack=b: %d entries", len(es))
			}
		}},
		{"health/checks/NAME", func(t *testing.T) {
			cs, meta, err := c.Health().Checks("db", nil)
			must(t, err)
			checkMeta(t, meta)
			if len(cs) != 1 || cs[0].CheckID != "db1-up" || cs[0].Node != "ext1" || cs[0].ServiceName != "db" {
				t.Fatalf("checks = %+v", cs)
			}
		}},
		{"health/state/STATE", func(t *testing.T) {
			cs, meta, err := c.Health().State("passing", nil)
			must(t, err)
			checkMeta(t, meta)
			if findCheck(cs, "serfHealth") == nil || findCheck(cs, "db1-up") == nil || findCheck(cs, "web1-ttl") == nil {
				t.Fatalf("passing checks = %v", cs)
			}
			cs, _, err = c.Health().State("any", &api.QueryOptions{Filter: `CheckID == "db1-up"`})
			must(t, err)
			if len(cs) != 1 {
				t.Fatalf("filtered any = %d", len(cs))
			}
		}},
		{"health/node/NAME", func(t *testing.T) {
			cs, meta, err := c.Health().Node("node1", nil)
			must(t, err)
			checkMeta(t, meta)
			if findCheck(cs, "serfHealth") == nil || findCheck(cs, "web1-http") == nil {
				t.Fatalf("node checks = %v", cs)
			}
		}},
		{"kv get/list/keys", func(t *testing.T) {
			p, meta, err := c.KV().Get("a/c/d", nil)
			must(t, err)
			checkMeta(t, meta)
			if p == nil || string(p.Value) != "2" || p.Flags != 7 || p.CreateIndex == 0 || p.ModifyIndex < p.CreateIndex {
				t.Fatalf("pair = %+v", p)
			}
			ps, _, err := c.KV().List("a/", nil)
			must(t, err)
			if len(ps) != 2 || ps[0].Key != "a/b" || ps[1].Key != "a/c/d" {
				t.Fatalf("list = %+v", ps)
			}
			keys, _, err := c.KV().Keys("a/", "/", nil)
			must(t, err)
			if !slices.Equal(keys, []string{"a/b", "a/c/"}) {
				t.Fatalf("keys = %v", keys)
			}
			keys, _, err = c.KV().Keys("", "", nil)
			must(t, err)
			if !slices.Equal(keys, []string{"a/b", "a/c/d", "z"}) {
				t.Fatalf("all keys = %v", keys)
			}
			p, meta, err = c.KV().Get("missing", nil)
			must(t, err)
			if p != nil || meta.LastIndex < 1 {
				t.Fatalf("missing key: %+v, index %d", p, meta.LastIndex)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}

// TestRawWireRules checks the rules of reference §0 on the raw responses: the headers on every
// GET, [] rather than null, and exactly 200 on success.
func TestRawWireRules(t *testing.T) {
	r := startRegistry(t)
	fixture(t, r)
	gets := []struct {
		path string
		want string // a substring the body must contain, or the exact body if it starts with "="
	}{
		{"/v1/health/service/none", "=[]\n"},
		{"/v1/catalog/service/none", "=[]\n"},
		{"/v1/health/state/warning", "=[]\n"},
		{"/v1/health/checks/none", "=[]\n"},
		{"/v1/health/node/none", "=[]\n"},
		{"/v1/catalog/node/none", "=null\n"},
		{"/v1/catalog/services?filter=ServiceName+%3D%3D+%22x%22", "={}\n"},
		{"/v1/health/service/web?passing=1", `"Checks":[`},
		{"/v1/catalog/service/web", `"ServiceTags":[]`}, // web2 has no tags
		{"/v1/health/state/any", `"ServiceTags":[]`},
		{"/v1/agent/self", `"Config":{`},
		{"/v1/agent/services", `"Tags":[]`},
		{"/v1/agent/checks", `"web1-ttl"`},
		{"/v1/catalog/datacenters", `["dc1"]`},
		{"/v1/catalog/nodes", `"TaggedAddresses":{`},
		{"/v1/kv/a/b?raw", "=1"},
		{"/v1/health/service/web?pretty", "\n    {\n"},
		{"/v1/status/leader", ":8300"},
	}
	for _, g := range gets {
		t.Run(g.path, func(t *testing.T) {
			code, h, body := r.do(t, "GET", g.path, "", "Content-Type", "application/json; charset=utf-8")
			if code != 200 {
				t.Fatalf("status %d: %s", code, body)
			}
			if exact, ok := strings.CutPrefix(g.want, "="); ok {
				if body != exact {
					t.Fatalf("body = %q, want %q", body, exact)
				}
			} else if !strings.Contains(body, g.want) {
				t.Fatalf("body lacks %q: %s", g.want, body)
			}
			if idx, err := strconv.ParseUint(h.Get("X-Consul-Index"), 10, 64); err != nil || idx < 1 {
				t.Errorf("X-Consul-Index = %q", h.Get("X-Consul-Index"))
			}
			for k, v := range map[string]string{"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0",
				"X-Consul-Effective-Consistency": "leader", "X-Consul-Default-ACL-Policy": "allow"} {
				if h.Get(k) != v {
					t.Errorf("%s = %q, want %q", k, h.Get(k), v)
				}
			}
		})
	}
	// A missing key is a 404 that still carries the index.
	code, h, _ := r.do(t, "GET", "/v1/kv/missing", "")
	if code != 404 || h.Get("X-Consul-Index") == "" {
		t.Fatalf("missing key: %d, index %q", code, h.Get("X-Consul-Index"))
	}
	code, h, _ = r.do(t, "GET", "/v1/health/service/web?stale", "")
	if code != 200 || h.Get("X-Consul-Effective-Consistency") != "stale" {
		t.Fatalf("stale: %d %q", code, h.Get("X-Consul-Effective-Consistency"))
	}
	// Writes answer exactly 200: empty for the agent, true for catalog and KV.
	for _, w := range []struct{ method, path, body, want string }{
		{"PUT", "/v1/agent/service/register", `{"Name":"x"}`, ""},
		{"PUT", "/v1/agent/service/maintenance/x?enable=true&reason=r", "", ""},
		{"PUT", "/v1/agent/maintenance?enable=false", "", ""},
		{"PUT", "/v1/catalog/register", `{"Node":"n9","Address":"10.9.9.9"}`, "true\n"},
		{"PUT", "/v1/catalog/deregister", `{"Node":"n9"}`, "true\n"},
		{"PUT", "/v1/kv/k?flags=3", "v", "true\n"},
		{"DELETE", "/v1/kv/k", "", "true\n"},
		{"PUT", "/v1/agent/service/deregister/x", "", ""},
	} {
		code, _, body := r.do(t, w.method, w.path, w.body)
		if code != 200 || body != w.want {
			t.Errorf("%s %s = %d %q, want 200 %q", w.method, w.path, code, body, w.want)
		}
	}
	// The consul/api JSON must round-trip into its structs: decode a health entry strictly.
	_, _, body := r.do(t, "GET", "/v1/health/service/db", "")
	var entries []*api.ServiceEntry
	must(t, json.Unmarshal([]byte(body), &entries))
	if len(entries) != 1 || entries[0].Node.TaggedAddresses["lan"] != "10.0.0.9" {
		t.Fatalf("db entries = %+v", entries)
	}
}

func TestMaintenance(t *testing.T) {
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "m1", Name: "m"}))
	must(t, a.EnableServiceMaintenance("m1", "upgrading"))
	es, _, err := r.Client.Health().Service("m", "", false, nil)
	must(t, err)
	if len(es) != 1 || es[0].Checks.AggregatedStatus() != api.HealthMaint {
		t.Fatalf("service maintenance: %+v", es)
	}
	if c := findCheck(es[0].Checks, "_service_maintenance:m1"); c == nil || c.Notes != "upgrading" || c.Status != "critical" {
		t.Fatalf("maintenance check = %+v", c)
	}
	must(t, a.DisableServiceMaintenance("m1"))
	must(t, a.EnableNodeMaintenance(""))
	es, _, err = r.Client.Health().Service("m", "", true, nil)
	must(t, err)
	if len(es) != 0 {
		t.Fatal("instance on a node in maintenance still passing")
	}
	must(t, a.DisableNodeMaintenance())
	es, _, err = r.Client.Health().Service("m", "", false, nil)
	must(t, err)
	if st := es[0].Checks.AggregatedStatus(); st != api.HealthPassing {
		t.Fatalf("after maintenance: %s", st)
	}
	if err := a.EnableServiceMaintenance("nope", ""); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("maintenance of unknown service: %v", err)
	}
}

func TestTTLEndpointsAndReplaceChecks(t *testing.T) {
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "s1", Name: "s", Checks: api.AgentServiceChecks{
		{CheckID: "t1", TTL: "1m"}, {CheckID: "t2", TTL: "1m"}}}))
	status := func(id string) string {
		cs, err := a.Checks()
		must(t, err)
		if cs[id] == nil {
			return ""
		}
		return cs[id].Status + "|" + cs[id].Output
	}
	if got := status("t1"); got != "critical|" {
		t.Fatalf("initial = %q, want critical (Consul's default)", got)
	}
	must(t, a.PassTTL("t1", "fine"))
	if got := status("t1"); got != "passing|fine" {
		t.Fatalf("after PassTTL = %q", got)
	}
	must(t, a.WarnTTL("t1", "hmm"))
	if got := status("t1"); got != "warning|hmm" {
		t.Fatalf("after WarnTTL = %q", got)
	}
	must(t, a.UpdateTTL("t1", "bad", "fail"))
	if got := status("t1"); got != "critical|bad" {
		t.Fatalf("after UpdateTTL fail = %q", got)
	}
	must(t, a.UpdateTTL("t1", "ok", api.HealthPassing))
	if err := a.PassTTL("nope", ""); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("PassTTL unknown: %v", err)
	}
	// Re-register with replace-existing-checks and only t1: t2 goes, t1 keeps its status.
	must(t, a.ServiceRegisterOpts(&api.AgentServiceRegistration{ID: "s1", Name: "s", Checks: api.AgentServiceChecks{{CheckID: "t1", TTL: "1m"}}},
		api.ServiceRegisterOpts{ReplaceExistingChecks: true}))
	if status("t2") != "" {
		t.Fatal("t2 survived replace-existing-checks")
	}
	if got := status("t1"); got != "passing|ok" {
		t.Fatalf("t1 after re-registration = %q", got)
	}
	// Node-level check registration and deregistration.
	must(t, a.CheckRegister(&api.AgentCheckRegistration{Name: "node-ttl", AgentServiceCheck: api.AgentServiceCheck{TTL: "1m", Status: "passing"}}))
	if got := status("node-ttl"); got != "passing|" {
		t.Fatalf("node check = %q", got)
	}
	must(t, a.CheckDeregister("node-ttl"))
	if status("node-ttl") != "" {
		t.Fatal("node check not deregistered")
	}
	if err := a.CheckDeregister("node-ttl"); err == nil {
		t.Fatal("deregistering a missing check succeeded")
	}
	if err := a.ServiceDeregister("nope"); err == nil || !strings.Contains(err.Error(), "Unknown service ID") {
		t.Fatalf("deregister unknown service: %v", err)
	}
}

func TestTTLOutputTruncated(t *testing.T) {
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "s1", Name: "s", Check: &api.AgentServiceCheck{CheckID: "t", TTL: "1m"}}))
	long := strings.Repeat("x", checks.DefaultOutputMaxSize+100)
	must(t, a.UpdateTTL("t", long, api.HealthPassing))
	cs, err := a.Checks()
	must(t, err)
	want := long[:checks.DefaultOutputMaxSize] + fmt.Sprintf(" ... (captured %d of %d bytes)", checks.DefaultOutputMaxSize, len(long))
	if cs["t"].Output != want {
		t.Fatalf("output has %d bytes, want Consul's truncation to %d", len(cs["t"].Output), len(want))
	}
}

func TestKVCASAndDelete(t *testing.T) {
	r := startRegistry(t)
	kv := r.Client.KV()
	ok, _, err := kv.CAS(&api.KVPair{Key: "lock", Value: []byte("a"), ModifyIndex: 0}, nil)
	must(t, err)
	if !ok {
		t.Fatal("create-only CAS on a missing key failed")
	}
	ok, _, err = kv.CAS(&api.KVPair{Key: "lock", Value: []byte("b"), ModifyIndex: 0}, nil)
	must(t, err)
	if ok {
		t.Fatal("create-only CAS on an existing key succeeded")
	}
	p, _, err := kv.Get("lock", nil)
	must(t, err)
	ok, _, err = kv.CAS(&api.KVPair{Key: "lock", Value: []byte("c"), ModifyIndex: p.ModifyIndex}, nil)
	must(t, err)
	if !ok {
		t.Fatal("CAS with the current index failed")
	}
	ok, _, err = kv.DeleteCAS(&api.KVPair{Key: "lock", ModifyIndex: p.ModifyIndex}, nil)
	must(t, err)
	if ok {
		t.Fatal("delete-CAS with a stale index succeeded")
	}
	for _, k := range []string{"t/a", "t/b", "t/c/d", "u"} {
		_, err := kv.Put(&api.KVPair{Key: k, Value: []byte("v")}, nil)
		must(t, err)
	}
	_, err = kv.DeleteTree("t/", nil)
	must(t, err)
	keys, _, err := kv.Keys("", "", nil)
	must(t, err)
	if !slices.Equal(keys, []string{"lock", "u"}) {
		t.Fatalf("keys after DeleteTree = %v", keys)
	}
}

func TestACLToken(t *testing.T) {
	// The header is the default intention policy, whatever the token: a sidecar reads it
	// to decide connections no intention matches, and must agree with the registry's own
	// authorize endpoint.
	r := startRegistry(t, func(o *regOptions) { o.token = "s3cret"; o.policy = "deny" })
	// The configured client carries the token: writes work.
	must(t, r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "web"}))
	_, err := r.Client.KV().Put(&api.KVPair{Key: "k", Value: []byte("v")}, nil)
	must(t, err)
	cases := []struct {
		name         string
		method, path string
		hdr          []string
		want         int
	}{
		{"write without token", "PUT", "/v1/kv/k", nil, 403},
		{"write wrong token", "PUT", "/v1/kv/k", []string{"X-Consul-Token", "nope"}, 403},
		{"write X-Consul-Token", "PUT", "/v1/kv/k", []string{"X-Consul-Token", "s3cret"}, 200},
		{"write bearer", "PUT", "/v1/kv/k", []string{"Authorization", "Bearer s3cret"}, 200},
		{"write query token", "PUT", "/v1/kv/k?token=s3cret", nil, 200},
		{"kv read without token", "GET", "/v1/kv/k", nil, 403},
		{"kv read with token", "GET", "/v1/kv/k", []string{"X-Consul-Token", "s3cret"}, 200},
		{"agent write without token", "PUT", "/v1/agent/service/deregister/web", nil, 403},
		{"catalog read is open", "GET", "/v1/catalog/services", nil, 200},
		{"health read is open", "GET", "/v1/health/service/web", nil, 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, h, body := r.do(t, tc.method, tc.path, "v", tc.hdr...)
			if code != tc.want {
				t.Fatalf("status %d (%s), want %d", code, body, tc.want)
			}
			if h.Get("X-Consul-Default-ACL-Policy") != "deny" {
				t.Errorf("X-Consul-Default-ACL-Policy = %q, want deny", h.Get("X-Consul-Default-ACL-Policy"))
			}
		})
	}
}

func TestUnknownDatacenterAndMethods(t *testing.T) {
	r := startRegistry(t)
	code, _, body := r.do(t, "GET", "/v1/catalog/services?dc=dc9", "")
	if code != 500 || !strings.Contains(body, "No path to datacenter") {
		t.Fatalf("unknown dc: %d %q", code, body)
	}
	if code, _, _ := r.do(t, "GET", "/v1/catalog/services?dc=dc1", ""); code != 200 {
		t.Fatalf("own dc: %d", code)
	}
	if code, _, _ := r.do(t, "POST", "/v1/agent/service/register", `{"Name":"x"}`); code != 405 {
		t.Fatalf("POST register: %d, want 405", code)
	}
	if code, _, _ := r.do(t, "GET", "/v1/nope", ""); code != 404 {
		t.Fatalf("unknown path: %d, want 404", code)
	}
	code, _, body = r.do(t, "GET", "/v1/health/service/web?stale&consistent", "")
	if code != 400 || !strings.Contains(body, "stale") {
		t.Fatalf("stale+consistent: %d %q", code, body)
	}
}

func TestMetrics(t *testing.T) {
	r := startRegistry(t)
	fixture(t, r)
	r.do(t, "GET", "/v1/health/service/web", "")
	r.do(t, "GET", "/v1/kv/a/b", "")
	r.do(t, "GET", "/v1/kv/some/other/key", "")
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		_, _, body := r.do(t, "GET", "/metrics", "")
		for _, want := range []string{
			`podmesh_registry_http_requests_total{code="200",method="GET",route="GET /v1/health/service/{name}"} 1`,
			`podmesh_registry_http_requests_total{code="404",method="GET",route="GET /v1/kv/{key...}"} 1`,
			`podmesh_registry_http_request_duration_seconds_count{route="GET /v1/kv/{key...}"} 2`,
			`podmesh_registry_blocking_queries 0`,
			`podmesh_registry_instances{status="passing"}`,
			`podmesh_registry_check_runs_total{result="passing",type="http"}`,
			`go_goroutines`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("metrics lack %q", want)
			}
		}
		if strings.Contains(body, "some/other/key") {
			return fmt.Errorf("raw path in metric labels")
		}
		return nil
	})
}
