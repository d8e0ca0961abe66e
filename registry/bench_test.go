package registry_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/registry/state"
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

// BenchmarkFanOut1000 is one registration waking 1000 blocked watchers of its service over
// loopback HTTP (client and server in this process).
func BenchmarkFanOut1000(b *testing.B) {
	r := startRegistryB(b)
	const n = 1000
	tr := &http.Transport{MaxIdleConnsPerHost: 2 * n}
	cl := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	if err := r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "fan-0", Name: "fan"}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var writes time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		var idx uint64
		r.Store.View(func(v *state.View) { idx = v.TopicIndex(state.TopicHealthService("fan")) })
		url := fmt.Sprintf("%s/v1/health/service/fan?index=%d&wait=60s", r.URL, idx)
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := cl.Get(url)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}()
		}
		for r.Store.Watchers() < 2 { // the check runner's watch plus the shared one
			runtime.Gosched()
		}
		time.Sleep(50 * time.Millisecond)
		b.StartTimer()
		t0 := time.Now()
		var err error
		if i%2 == 0 {
			err = r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "fan-x", Name: "fan"})
		} else {
			err = r.Client.Agent().ServiceDeregister("fan-x")
		}
		if err != nil {
			b.Fatal(err)
		}
		writes += time.Since(t0)
		wg.Wait()
	}
	b.ReportMetric(float64(writes.Microseconds())/float64(b.N), "write-µs/op")
}

// BenchmarkLeafHit is what every sidecar's leaf request costs once its service's leaf is
// issued: a cache hit, answered with the stored rendering.
func BenchmarkLeafHit(b *testing.B) {
	r := startRegistryB(b)
	if _, _, err := r.Client.Agent().ConnectCALeaf("web", nil); err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/v1/agent/connect/ca/leaf/web", nil)
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

// BenchmarkLeafIssue issues a new leaf per request (a new service each time): key generation,
// signing, and the commit of the CA's serial counter, from 16 concurrent clients, so the
// commits are grouped.
func BenchmarkLeafIssue(b *testing.B) {
	r := startRegistryB(b)
	b.SetParallelism(16)
	b.ReportAllocs()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := r.Client.Agent().ConnectCALeaf(fmt.Sprint("svc-", n.Add(1)), nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkAuthorize is POST /v1/agent/connect/authorize against 100 intentions to one
// destination.
func BenchmarkAuthorize(b *testing.B) {
	r := startRegistryB(b)
	for i := range 100 {
		if _, err := r.Client.Connect().IntentionUpsert(&api.Intention{SourceName: fmt.Sprint("src", i), DestinationName: "db", Action: api.IntentionActionAllow}, nil); err != nil {
			b.Fatal(err)
		}
	}
	body := `{"Target":"db","ClientCertURI":"spiffe://` + r.Store.TrustDomain() + `/ns/default/dc/dc1/svc/src50"}`
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/agent/connect/authorize", strings.NewReader(body))
		w := httptest.NewRecorder()
		r.Server.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code, w.Body.String())
		}
	}
}
