package registry_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hashicorp/consul/api"
)

// BenchmarkHealthServiceHit is the path every woken watcher takes: the query's index is
// unchanged since the first watcher rendered it, so the bytes come from the render cache.
func BenchmarkHealthServiceHit(b *testing.B) {
	r := startRegistryB(b)
	for i := range 10 {
		if err := r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: fmt.Sprint("web", i), Name: "web", Port: 8000 + i,
			Check: &api.AgentServiceCheck{TTL: "1m", Status: "passing"}}); err != nil {
			b.Fatal(err)
		}
	}
	req := httptest.NewRequest(http.MethodGet, "/v1/health/service/web?passing=1&stale=&wait=60000ms", nil)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w := httptest.NewRecorder()
		r.Server.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}
