package filter_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/registry/filter"
)

// startConsul runs a Consul dev agent on free loopback ports and returns a client for it.
func startConsul(t *testing.T) *api.Client {
	t.Helper()
	bin := testutil.Tool(t, "consul")
	port := func() int {
		_, p, err := net.SplitHostPort(testutil.FreePort(t))
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	httpPort := port()
	hcl := fmt.Sprintf(`ports { http = %d, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = %d, serf_wan = %d, server = %d }`,
		httpPort, port(), port(), port())
	logPath := filepath.Join(t.TempDir(), "consul.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1",
		"-node=filter-test", "-log-level=warn", "-hcl", hcl)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logFile.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("consul log:\n%s", b)
			}
		}
	})
	client, err := api.NewClient(&api.Config{Address: fmt.Sprintf("127.0.0.1:%d", httpPort)})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, 100*time.Millisecond, func() error {
		leader, err := client.Status().Leader()
		if err == nil && leader == "" {
			err = errors.New("no leader yet")
		}
		return err
	})
	return client
}

// seed registers the data the filters run over: four "web" instances on three nodes through
// the catalog (so check statuses can be set directly), and two services on the agent.
func seed(t *testing.T, c *api.Client) {
	t.Helper()
	type inst struct {
		node, addr string
		meta       map[string]string
		svc        *api.AgentService
		checks     map[string]string // check ID → status; ":node" suffix makes a node check
	}
	insts := []inst{
		{"n1", "10.0.0.1", map[string]string{"rack": "r1", "env": "prod"},
			&api.AgentService{ID: "web-1", Service: "web", Tags: []string{"canary", "v1"},
				Meta: map[string]string{"version": "1.0.0", "team": "a"}, Port: 8080, EnableTagOverride: true,
				TaggedAddresses: map[string]api.ServiceAddress{"lan": {Address: "10.0.0.1", Port: 8443}}},
			map[string]string{"n1-alive:node": api.HealthPassing, "web-1-http": api.HealthPassing}},
		{"n2", "10.0.0.2", map[string]string{"rack": "r2"},
			&api.AgentService{ID: "web-2", Service: "web", Tags: []string{"v2"},
				Meta: map[string]string{"version": "2.0.0"}, Port: 9090},
			map[string]string{"web-2-http": api.HealthWarning}},
		{"n2", "10.0.0.2", map[string]string{"rack": "r2"},
			&api.AgentService{ID: "web-3", Service: "web", Port: 80},
			map[string]string{"web-3-a": api.HealthCritical, "web-3-b": api.HealthPassing}},
		{"n3", "10.0.0.3", nil,
			&api.AgentService{ID: "web-4", Service: "web", Tags: []string{"canary"},
				Meta: map[string]string{"build-id": "x y", "version": ""}, Port: 8081},
			nil},
	}
	for _, in := range insts {
		reg := &api.CatalogRegistration{Node: in.node, Address: in.addr, NodeMeta: in.meta,
			TaggedAddresses: map[string]string{"lan": in.addr}, Service: in.svc}
		for id, status := range in.checks {
			hc := &api.HealthCheck{Node: in.node, CheckID: id, Name: id, Status: status, ServiceID: in.svc.ID}
			if trimmed, ok := cutSuffix(id, ":node"); ok {
				hc.CheckID, hc.Name, hc.ServiceID = trimmed, trimmed, ""
			}
			reg.Checks = append(reg.Checks, hc)
		}
		if _, err := c.Catalog().Register(reg, nil); err != nil {
			t.Fatalf("register %s: %v", in.svc.ID, err)
		}
	}
	for _, r := range []*api.AgentServiceRegistration{
		{ID: "api-1", Name: "api", Tags: []string{"x"}, Meta: map[string]string{"env": "prod"}, Port: 7000},
		{ID: "api-2", Name: "api", Tags: []string{"y"}, Meta: map[string]string{"env": "dev"}, Port: 7001},
	} {
		if err := c.Agent().ServiceRegister(r); err != nil {
			t.Fatalf("register %s: %v", r.ID, err)
		}
	}
}

func cutSuffix(s, suffix string) (string, bool) {
	if len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)], true
	}
	return s, false
}

// endpoint fetches one Consul listing with an optional filter and names its items.
type endpoint[T any] struct {
	name  string
	fetch func(filter string) ([]T, error)
	id    func(T) string
}

// consulIDs returns the sorted IDs Consul's own filtering keeps.
func (e endpoint[T]) consulIDs(expr string) ([]string, error) {
	items, err := e.fetch(expr)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(items))
	for _, it := range items {
		ids = append(ids, e.id(it))
	}
	slices.Sort(ids)
	return ids, nil
}

// ourIDs returns the sorted IDs of the unfiltered listing that our filter keeps.
func (e endpoint[T]) ourIDs(t *testing.T, expr string) ([]string, *filter.Filter, error) {
	t.Helper()
	all, err := e.fetch("")
	if err != nil {
		t.Fatalf("%s unfiltered: %v", e.name, err)
	}
	f, err := filter.Parse(expr)
	if err != nil {
		return nil, nil, err
	}
	ids := []string{}
	for _, it := range all {
		ok, err := f.Match(it)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			ids = append(ids, e.id(it))
		}
	}
	slices.Sort(ids)
	return ids, f, nil
}

// same asserts that Consul and this package agree on every expression: the same items, or
// both reject it. An accepted expression's canonical String must also select the same items
// in Consul, which shows the canonical form is valid go-bexpr with the same meaning.
func (e endpoint[T]) same(t *testing.T, exprs []string) {
	t.Helper()
	for _, expr := range exprs {
		want, consulErr := e.consulIDs(expr)
		got, f, ourErr := e.ourIDs(t, expr)
		switch {
		case consulErr != nil && ourErr != nil:
			continue
		case consulErr != nil:
			t.Errorf("%s %q: Consul rejects it (%v) but we select %v", e.name, expr, consulErr, got)
			continue
		case ourErr != nil:
			t.Errorf("%s %q: we reject it (%v) but Consul selects %v", e.name, expr, ourErr, want)
			continue
		case !slices.Equal(got, want):
			t.Errorf("%s %q: we select %v, Consul selects %v", e.name, expr, got, want)
		}
		canon, err := e.consulIDs(f.String())
		if err != nil || !slices.Equal(canon, want) {
			t.Errorf("%s %q: canonical form %q selects %v (err %v) in Consul, want %v", e.name, expr, f.String(), canon, err, want)
		}
	}
}

func TestAgainstConsul(t *testing.T) {
	c := startConsul(t)
	seed(t, c)

	health := endpoint[*api.ServiceEntry]{"health/service/web",
		func(expr string) ([]*api.ServiceEntry, error) {
			es, _, err := c.Health().Service("web", "", false, &api.QueryOptions{Filter: expr})
			return es, err
		},
		func(e *api.ServiceEntry) string { return e.Service.ID }}
	health.same(t, []string{
		`Service.Tags contains "canary"`,
		`"canary" in Service.Tags`,
		`canary in Service.Tags`,
		`"canary" not in Service.Tags`,
		`Service.Tags not contains canary`,
		`Service.Tags is empty`,
		`Service.Tags is not empty`,
		`Service.Tags contains v1.beta`,
		`Service.Meta.version == "1.0.0"`,
		`Service.Meta.version != "1.0.0"`,
		`Service.Meta.version == ""`,
		`Service.Meta.version not matches "^1"`,
		`Service.Meta.version contains "."`,
		`Service.Meta.version not contains "."`,
		`Service.Meta["build-id"] == "x y"`,
		"Service.Meta[`build-id`] contains \"x\"",
		`Service.Meta is empty`,
		`"version" in Service.Meta`,
		`"version" not in Service.Meta`,
		`Service.ID matches "web-[12]"`,
		`Service.ID not matches "web-[12]"`,
		`"eb-" in Service.ID`,
		`Service.ID contains "3"`,
		`Service.ID == "web\u002d1"`,
		`Service.Port == 8080`,
		`Service.Port != 8080`,
		`Service.Port == "0x1F90"`,
		`Service.EnableTagOverride == true`,
		`Service.EnableTagOverride == F`,
		`Service.Weights.Passing == 1`,
		`Service.TaggedAddresses.lan.Port == 8443`,
		`Service.TaggedAddresses.lan.Address != "10.0.0.1"`,
		`"lan" in Service.TaggedAddresses`,
		`Service.Service == web and Service.Port == 9090`,
		`Node.Node == n1`,
		`Node.Meta.rack == "r1"`,
		`Node.Meta.rack != "r1"`,
		`Node.TaggedAddresses.lan == "10.0.0.2"`,
		`Checks.Status == passing`,
		`Checks.Status != passing`,
		`Checks.Status == critical`,
		`not Checks.Status == critical`,
		`Checks.Status == warning or Checks.Status == critical`,
		`Checks is empty`,
		`Checks.CheckID == "web-3-a"`,
		`Checks.ServiceTags contains "canary"`,
		`Checks.ServiceTags is empty`,
		`not Service.Tags contains "canary" or Service.Port == 9090 and Node.Meta.rack == r2`,
		`(not Service.Tags contains "canary" or Service.Port == 9090) and Node.Meta.rack == r2`,
		`not (Service.Port == 8080 or Service.Port == 80)`,
		`not not Service.Port == 80`,
		`((Service.Port == 80))`,
		// Rejected by both.
		`Service.Bogus == 1`,
		`Service.Port == abc`,
		`Service.Port == 8080.0`,
		`Service.Port == 0x1F90`,
		`Service.Tags == canary`,
		`Service.Tags matches canary`,
		`Service.Port contains 8`,
		`"8" in Service.Port`,
		`Service == web`,
		`Checks contains x`,
		`Service.Tags.x == 1`,
		`Service.Meta.version.x == 1`,
		`Service.ID matches "("`,
		`Service.EnableTagOverride == maybe`,
		`Service.Port ==`,
		`(Service.Port == 80`,
		`Service.Port == 80)`,
		`Service.Meta["a" == 1`,
		`Service.Meta[a] == 1`,
		`Service .Port == 80`,
		`Service.Port == 80 AND Service.Port == 81`,
	})

	catalog := endpoint[*api.CatalogService]{"catalog/service/web",
		func(expr string) ([]*api.CatalogService, error) {
			ss, _, err := c.Catalog().Service("web", "", &api.QueryOptions{Filter: expr})
			return ss, err
		},
		func(s *api.CatalogService) string { return s.ServiceID }}
	catalog.same(t, []string{
		`NodeMeta.rack == "r1"`,
		`NodeMeta is empty`,
		`ServiceTags contains canary`,
		`ServiceTags is empty`,
		`ServiceMeta.version == "2.0.0"`,
		`ServicePort == 80`,
		`ServiceTaggedAddresses.lan.Port == 8443`,
		`TaggedAddresses.lan matches "\\.2$"`,
		`Node == n2 and ServiceName == web`,
		`ServiceEnableTagOverride == true`,
		`Service.Port == 80`,
	})

	checks := endpoint[*api.HealthCheck]{"health/state/any",
		func(expr string) ([]*api.HealthCheck, error) {
			hs, _, err := c.Health().State(api.HealthAny, &api.QueryOptions{Filter: expr})
			return hs, err
		},
		func(h *api.HealthCheck) string { return h.Node + "/" + h.CheckID }}
	checks.same(t, []string{
		`Status == critical`,
		`Status != passing`,
		`ServiceName == web`,
		`ServiceName != ""`,
		`ServiceTags contains canary`,
		`Node matches "^n[12]$"`,
		`CheckID contains "http"`,
		`ServiceID == "" and Node != "filter-test"`,
	})

	agent := endpoint[*api.AgentService]{"agent/services",
		func(expr string) ([]*api.AgentService, error) {
			m, err := c.Agent().ServicesWithFilter(expr)
			out := make([]*api.AgentService, 0, len(m))
			for _, s := range m {
				out = append(out, s)
			}
			return out, err
		},
		func(s *api.AgentService) string { return s.ID }}
	agent.same(t, []string{
		`Service == api`,
		`Tags contains y`,
		`Meta.env == prod`,
		`Port == 7001`,
		`Kind == ""`,
		`Weights.Passing == 1`,
		`Namespace == default`, // hidden by bexpr:"-" in consul/api: both reject
		`CreateIndex == 1`,
	})

	// Where we deliberately differ from go-bexpr v0.1.2 (see the package doc), pin down both
	// sides so that a change on either is noticed.
	differ := []struct {
		expr       string
		consul     []string // nil: Consul rejects the expression
		ours       []string
		whyConsult string
	}{
		{`Service.Meta.version matches "^[0-9]"`, []string{"web-1", "web-2", "web-3"}, []string{"web-1", "web-2"},
			"v0.1.2 says a missing key (web-3) matches any regexp"},
		{`Service.Meta.version is empty`, nil, []string{"web-3", "web-4"},
			"v0.1.2 has no is empty on strings"},
		{`not(Service.Port == 80)`, nil, []string{"web-1", "web-2", "web-4"},
			"go-bexpr wants whitespace after not"},
		{`Service.ID == "web\"1"`, nil, []string{},
			`go-bexpr has no \" in strings`},
	}
	for _, d := range differ {
		want, consulErr := health.consulIDs(d.expr)
		if (d.consul == nil) != (consulErr != nil) || consulErr == nil && !slices.Equal(want, d.consul) {
			t.Errorf("%q: Consul now gives %v (err %v); expected %v because %s", d.expr, want, consulErr, d.consul, d.whyConsult)
		}
		got, _, err := health.ourIDs(t, d.expr)
		if err != nil || !slices.Equal(got, d.ours) {
			t.Errorf("%q: we give %v (err %v), want %v", d.expr, got, err, d.ours)
		}
	}
}
