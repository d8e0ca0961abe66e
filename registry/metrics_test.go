package registry_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
)

// TestMetricsCatalogue checks the registry metrics docs/metrics.md promises, with the labels
// it names: requests by route, method (bounded) and code; open blocking queries while a
// watcher waits and after it is woken; instances by aggregated health status; check runs by
// type and result.
func TestMetricsCatalogue(t *testing.T) {
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "ok-1", Name: "ok"}))
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "crit-1", Name: "crit",
		Check: &api.AgentServiceCheck{CheckID: "crit-ttl", TTL: "10m"}}))
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "warn-1", Name: "warn",
		Check: &api.AgentServiceCheck{CheckID: "warn-ttl", TTL: "10m", Status: "warning"}}))
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "maint-1", Name: "maint"}))
	must(t, a.EnableServiceMaintenance("maint-1", "test"))
	must(t, a.PassTTL("warn-ttl", "")) // a TTL check run
	must(t, a.WarnTTL("warn-ttl", ""))
	r.do(t, "PROPFIND", "/v1/kv/x", "")

	// A watcher blocks on a service until it changes.
	_, meta, err := r.Client.Health().Service("ok", "", false, nil)
	must(t, err)
	woken := make(chan error, 1)
	go func() {
		_, _, err := r.Client.Health().Service("ok", "", false, &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute})
		woken <- err
	}()
	expect := func(want ...string) {
		t.Helper()
		testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
			_, _, body := r.do(t, "GET", "/metrics", "")
			for _, w := range want {
				if !strings.Contains(body, w+"\n") {
					return fmt.Errorf("metrics lack %q", w)
				}
			}
			return nil
		})
	}
	expect(
		`podmesh_registry_blocking_queries 1`,
		`podmesh_registry_instances{status="passing"} 1`,
		`podmesh_registry_instances{status="critical"} 1`,
		`podmesh_registry_instances{status="warning"} 1`,
		`podmesh_registry_instances{status="maintenance"} 1`,
		`podmesh_registry_check_runs_total{result="passing",type="ttl"} 1`,
		`podmesh_registry_check_runs_total{result="warning",type="ttl"} 1`,
		`podmesh_registry_http_requests_total{code="200",method="PUT",route="PUT /v1/agent/service/register"} 4`,
		`podmesh_registry_http_requests_total{code="405",method="other",route="unmatched"} 1`,
	)
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "ok-2", Name: "ok"}))
	must(t, <-woken)
	expect(
		`podmesh_registry_blocking_queries 0`,
		`podmesh_registry_instances{status="passing"} 2`,
		`podmesh_registry_http_request_duration_seconds_count{route="GET /v1/health/service/{name}"} 2`,
	)
}
