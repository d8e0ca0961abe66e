package pod

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/sidecar"
)

// loadInSidecar writes c and loads it with the sidecar's own loader, as `sidecar -config`
// does: strict keys, defaults, validation.
func loadInSidecar(t *testing.T, c SidecarConfig) (sidecar.Config, error) {
	t.Helper()
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return sidecar.Parse([]string{"-config", path}, func(string) string { return "" }, io.Discard)
}

// TestSidecarConfigLoadsInSidecar: every configuration the launcher writes (a meshed pod
// with upstream policies, a pod with upstreams but no port, the ingress) loads in the
// sidecar and means what the launcher meant.
func TestSidecarConfigLoadsInSidecar(t *testing.T) {
	pod := netip.MustParseAddr("10.89.0.7")
	frontend := &compose.Service{Name: "frontend", StopGracePeriod: 4 * time.Second, Mesh: compose.Mesh{
		Port: 8080, Protocol: "http", Expose: netip.MustParseAddrPort("127.0.0.1:18080"),
		Upstreams: []compose.Upstream{
			{Name: "catalog", Policy: map[string]any{
				"lb": "round_robin", "retries": 3, "timeout": "2s", "connect_timeout": "250ms",
				"retry_on": []any{"connect-failure", "5xx"}, "breakers": map[string]any{"max_requests": 64},
				"retry_budget": map[string]any{"percent": 30}, "outlier": map[string]any{"consecutive_5xx": 4},
			}},
			{Name: "prices", Policy: map[string]any{"protocol": "grpc", "lb": "ring_hash", "hash_on": "header:x-user"}},
		},
	}}
	worker := &compose.Service{Name: "worker", Mesh: compose.Mesh{Upstreams: []compose.Upstream{{Name: "catalog"}}}}

	meshed, err := NewSidecarConfig(frontend, "frontend-2", pod, "http://10.89.0.1:8500")
	if err != nil {
		t.Fatal(err)
	}
	got, err := loadInSidecar(t, meshed)
	if err != nil {
		t.Fatalf("the sidecar rejects a meshed pod's config: %v", err)
	}
	if got.Service != "frontend" || got.ID != "frontend-2" || got.Protocol != "http" || got.Inbound != "10.89.0.7:15001" ||
		got.Advertise != "10.89.0.7" || got.App != "127.0.0.1:8080" || got.Admin != "127.0.0.1:15000" ||
		got.Metrics != "10.89.0.7:15090" || got.Registry != "http://10.89.0.1:8500" ||
		got.Register == nil || *got.Register || got.DrainTimeout != sidecar.Duration(4*time.Second) {
		t.Errorf("meshed pod's sidecar config as the sidecar reads it: %+v", got)
	}
	if len(got.Upstreams) != 2 {
		t.Fatalf("upstreams %+v", got.Upstreams)
	}
	cat, pr := got.Upstreams[0], got.Upstreams[1]
	if cat.Name != "catalog" || cat.Listen != "127.0.0.2:80" || cat.LB != "round_robin" || *cat.Retries != 3 ||
		cat.Timeout != sidecar.Duration(2*time.Second) || cat.ConnectTimeout != sidecar.Duration(250*time.Millisecond) ||
		!slices.Equal(cat.RetryOn, []string{"connect-failure", "5xx"}) || cat.Breakers.MaxRequests != 64 ||
		cat.Budget.Percent != 30 || cat.Outlier.Consecutive5xx != 4 {
		t.Errorf("catalog policy as the sidecar reads it: %+v", cat)
	}
	if pr.Name != "prices" || pr.Listen != "127.0.0.3:80" || pr.Protocol != "grpc" || pr.LB != "ring_hash" || pr.HashOn != "header:x-user" {
		t.Errorf("prices policy as the sidecar reads it: %+v", pr)
	}

	out, err := NewSidecarConfig(worker, "worker-1", pod, "http://10.89.0.1:8500")
	if err != nil {
		t.Fatal(err)
	}
	got, err = loadInSidecar(t, out)
	if err != nil {
		t.Fatalf("the sidecar rejects a port-less pod's config: %v", err)
	}
	// Outbound only: no inbound listener nor app, no placeholder addresses.
	if got.Service != "worker" || got.Inbound != "" || got.App != "" || got.Metrics != "" || *got.Register ||
		len(got.Upstreams) != 1 || got.Upstreams[0].Listen != "127.0.0.2:80" {
		t.Errorf("port-less pod's sidecar config as the sidecar reads it: %+v", got)
	}

	ing := NewIngressConfig("shop", []*compose.Service{worker, frontend}, netip.MustParseAddrPort("127.0.0.1:39000"), "http://127.0.0.1:8500")
	got, err = loadInSidecar(t, ing)
	if err != nil {
		t.Fatalf("the sidecar rejects the ingress config: %v", err)
	}
	if got.Service != "shop-ingress" || got.Admin != "127.0.0.1:39000" || *got.Register || got.Registry != "http://127.0.0.1:8500" ||
		got.Inbound != "" || got.App != "" ||
		len(got.Upstreams) != 1 || got.Upstreams[0].Name != "frontend" || got.Upstreams[0].Listen != "127.0.0.1:18080" ||
		got.Upstreams[0].Protocol != "http" {
		t.Errorf("ingress config as the sidecar reads it: %+v", got)
	}
	if err := ing.Check(); err != nil {
		t.Errorf("Check of the ingress config: %v", err)
	}
}

// TestSidecarConfigCheck: a policy value the sidecar refuses is caught by Check and by
// CheckSidecars, naming the service.
func TestSidecarConfigCheck(t *testing.T) {
	p := &compose.Project{File: "/x/compose.yaml", Services: []compose.Service{
		{Name: "api", Mesh: compose.Mesh{Port: 80}},
		{Name: "web", Mesh: compose.Mesh{Port: 80, Upstreams: []compose.Upstream{{Name: "api", Policy: map[string]any{"lb": "fancy"}}}}},
	}}
	err := CheckSidecars(p)
	if err == nil || !strings.Contains(err.Error(), "services.web.x-podmesh") || !strings.Contains(err.Error(), `upstreams[0].lb: "fancy"`) {
		t.Errorf("CheckSidecars with lb: fancy: %v", err)
	}
	p.Services[1].Mesh.Upstreams[0].Policy["lb"] = "random"
	if err := CheckSidecars(p); err != nil {
		t.Errorf("CheckSidecars of a good project: %v", err)
	}
}

// TestUpstreamPolicyKeys: the keys the compose file accepts per upstream are exactly the
// sidecar's per-upstream keys, less name and listen (which the launcher writes).
func TestUpstreamPolicyKeys(t *testing.T) {
	var want []string
	typ := reflect.TypeOf(sidecar.Upstream{})
	for i := 0; i < typ.NumField(); i++ {
		tag, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ",")
		if tag != "" && tag != "-" && tag != "name" && tag != "listen" {
			want = append(want, tag)
		}
	}
	got := slices.Clone(compose.UpstreamPolicyKeys)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("compose.UpstreamPolicyKeys = %v; the sidecar's upstream keys are %v", got, want)
	}
}

// TestCheckBeforeStart: an app port that is one of the sidecar's, and a user that does not
// resolve or is the sidecars' own, are refused before anything starts, naming the service
// and the field.
func TestCheckBeforeStart(t *testing.T) {
	for _, port := range []int{AdminPort, InboundPort, MetricsPort} {
		p := &compose.Project{File: "/x/compose.yaml", Services: []compose.Service{{Name: "api", Mesh: compose.Mesh{Port: port}}}}
		err := CheckSidecars(p)
		if err == nil || !strings.Contains(err.Error(), "services.api.x-podmesh.port") || !strings.Contains(err.Error(), fmt.Sprint(port)) {
			t.Errorf("app port %d: %v; want an error naming services.api.x-podmesh.port", port, err)
		}
	}
	for _, tc := range []struct{ user, want string }{
		{"no-such-user-podmesh", "no-such-user-podmesh"},
		{fmt.Sprint(SidecarUID), "sidecars' own"},
		{"", ""},
		{"nobody", ""},
	} {
		p := &compose.Project{File: "/x/compose.yaml", Services: []compose.Service{{Name: "api", User: tc.user}}}
		err := CheckUsers(p)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("user %q: %v", tc.user, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), "services.api.user") || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("user %q: %v; want an error on services.api.user naming %q", tc.user, err, tc.want)
		}
	}
}
