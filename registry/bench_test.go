package registry_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
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

// BenchmarkRegisterParallel registers services with a TTL check each from many clients over
// loopback HTTP: the store groups concurrent writes into one fsynced transaction.
func BenchmarkRegisterParallel(b *testing.B) {
	r := startRegistryB(b)
	b.SetParallelism(16)
	b.ReportAllocs()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprint("svc-", n.Add(1))
			if err := r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "bench", Port: 80,
				Check: &api.AgentServiceCheck{CheckID: id + "-ttl", TTL: "10m"}}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
