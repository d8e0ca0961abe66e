package registry_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
)

type blockResult struct {
	code  int
	index uint64
	body  string
	at    time.Time
	err   error
}

// block starts a blocking GET of path at index and returns the channel its result arrives on.
func (r *testRegistry) block(t *testing.T, path string, index uint64, wait string) <-chan blockResult {
	t.Helper()
	ch := make(chan blockResult, 1)
	sep := "?"
	for _, c := range path {
		if c == '?' {
			sep = "&"
		}
	}
	url := fmt.Sprintf("%s%s%sindex=%d&wait=%s", r.URL, path, sep, index, wait)
	go func() {
		resp, err := http.Get(url)
		if err != nil {
			ch <- blockResult{err: err, at: time.Now()}
			return
		}
		defer resp.Body.Close()
		var buf [1 << 16]byte
		n, _ := resp.Body.Read(buf[:])
		idx, _ := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
		ch <- blockResult{code: resp.StatusCode, index: idx, body: string(buf[:n]), at: time.Now()}
	}()
	return ch
}

func (r *testRegistry) index(t *testing.T, path string) uint64 {
	t.Helper()
	_, h, _ := r.do(t, "GET", path, "")
	idx, err := strconv.ParseUint(h.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		t.Fatalf("X-Consul-Index of %s: %v", path, err)
	}
	return idx
}

// waitBlocked waits until n watch channels are registered in the store, so the query is
// known to be waiting before the test changes anything.
func (r *testRegistry) waitBlocked(t *testing.T, n int) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, 2*time.Millisecond, func() error {
		if got := r.Store.Watchers() - r.baseWatchers; got < n {
			return fmt.Errorf("%d topics watched by queries, want %d", got, n)
		}
		return nil
	})
}

func expectNoReturn(t *testing.T, ch <-chan blockResult, d time.Duration, why string) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case res := <-ch:
		t.Fatalf("blocking query returned on %s: %+v", why, res)
	case <-timer.C:
	}
}

func expectReturn(t *testing.T, ch <-chan blockResult, ack time.Time, within time.Duration) blockResult {
	t.Helper()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatal(res.err)
		}
		if lat := res.at.Sub(ack); lat > within {
			t.Errorf("blocking query returned %v after the change was acknowledged, want within %v", lat, within)
		}
		return res
	case <-timer.C:
		t.Fatal("blocking query did not return after a relevant change")
	}
	return blockResult{}
}

func TestBlockingWakesOnlyForItsService(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web", Check: &api.AgentServiceCheck{CheckID: "web1-ttl", TTL: "1m", Status: "passing"}}))
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "db1", Name: "db", Check: &api.AgentServiceCheck{CheckID: "db1-ttl", TTL: "1m", Status: "passing"}}))
	idx := r.index(t, "/v1/health/service/web")
	ch := r.block(t, "/v1/health/service/web", idx, "10s")
	r.waitBlocked(t, 1)

	// Unrelated: another service's registration, status and output, KV, a catalog node.
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "db2", Name: "db"}))
	must(t, a.FailTTL("db1-ttl", "down"))
	must(t, a.PassTTL("db1-ttl", "up"))
	_, err := r.Client.KV().Put(&api.KVPair{Key: "k", Value: []byte("v")}, nil)
	must(t, err)
	_, err = r.Client.Catalog().Register(&api.CatalogRegistration{Node: "ext", Address: "10.1.1.1",
		Service: &api.AgentService{Service: "cache"}}, nil)
	must(t, err)
	expectNoReturn(t, ch, 300*time.Millisecond, "changes to other services")
	if got := r.index(t, "/v1/health/service/web"); got != idx {
		t.Fatalf("web's index moved from %d to %d on unrelated changes", idx, got)
	}

	// Relevant: web's check changes status.
	must(t, a.FailTTL("web1-ttl", "boom"))
	res := expectReturn(t, ch, time.Now(), 100*time.Millisecond)
	if res.code != 200 || res.index <= idx {
		t.Fatalf("result %d, index %d (was %d)", res.code, res.index, idx)
	}
	testutil.Eventually(t, time.Second, 5*time.Millisecond, func() error {
		if n := r.Store.Watchers() - r.baseWatchers; n != 0 {
			return fmt.Errorf("%d watch entries left after the query returned", n)
		}
		return nil
	})
}

func TestBlockingTimeoutReturnsSameIndex(t *testing.T) {
	r := startRegistry(t)
	must(t, r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web"}))
	idx := r.index(t, "/v1/health/service/web")
	start := time.Now()
	res := <-r.block(t, "/v1/health/service/web", idx, "200ms")
	if res.err != nil || res.code != 200 || res.index != idx {
		t.Fatalf("timeout: %+v, want 200 with index %d", res, idx)
	}
	if el := res.at.Sub(start); el < 200*time.Millisecond {
		t.Fatalf("returned after %v, before the wait of 200ms", el)
	}
	// An index from the future (e.g. from before a restore) blocks until the wait ends too.
	res = <-r.block(t, "/v1/health/service/web", idx+1000, "100ms")
	if res.code != 200 || res.index != idx {
		t.Fatalf("future index: %+v", res)
	}
}

func TestIndexRisesOnDeletion(t *testing.T) {
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web"}))
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web2", Name: "web"}))
	for _, id := range []string{"web2", "web1"} { // the newest first, then the last one
		idx := r.index(t, "/v1/health/service/web")
		ch := r.block(t, "/v1/health/service/web", idx, "10s")
		r.waitBlocked(t, 1)
		must(t, a.ServiceDeregister(id))
		res := expectReturn(t, ch, time.Now(), 100*time.Millisecond)
		if res.index <= idx {
			t.Fatalf("deregistering %s: index %d -> %d, want higher", id, idx, res.index)
		}
	}
	if idx := r.index(t, "/v1/health/service/web"); idx < 2 {
		t.Fatalf("empty service index %d", idx)
	}
	code, _, body := r.do(t, "GET", "/v1/health/service/web", "")
	if code != 200 || body != "[]\n" {
		t.Fatalf("after deregistration: %d %q", code, body)
	}
}

func TestKVBlocking(t *testing.T) {
	r := startRegistry(t)
	kv := r.Client.KV()
	// A missing key: 404 with an index; blocking on it returns when the key appears.
	code, h, _ := r.do(t, "GET", "/v1/kv/cfg/feature", "")
	idx, _ := strconv.ParseUint(h.Get("X-Consul-Index"), 10, 64)
	if code != 404 || idx < 1 {
		t.Fatalf("missing key: %d index %d", code, idx)
	}
	ch := r.block(t, "/v1/kv/cfg/feature", idx, "10s")
	r.waitBlocked(t, 1)
	_, err := kv.Put(&api.KVPair{Key: "cfg/other", Value: []byte("x")}, nil)
	must(t, err)
	expectNoReturn(t, ch, 200*time.Millisecond, "another key")
	_, err = kv.Put(&api.KVPair{Key: "cfg/feature", Value: []byte("on")}, nil)
	must(t, err)
	res := expectReturn(t, ch, time.Now(), 100*time.Millisecond)
	if res.code != 200 || res.index <= idx {
		t.Fatalf("after put: %+v", res)
	}
	// A prefix list wakes on the deletion of its newest key, with a higher index.
	idx = r.index(t, "/v1/kv/cfg/?recurse")
	ch = r.block(t, "/v1/kv/cfg/?recurse", idx, "10s")
	r.waitBlocked(t, 1)
	_, err = kv.Put(&api.KVPair{Key: "elsewhere", Value: []byte("x")}, nil)
	must(t, err)
	expectNoReturn(t, ch, 200*time.Millisecond, "a key outside the prefix")
	_, err = kv.Delete("cfg/feature", nil)
	must(t, err)
	res = expectReturn(t, ch, time.Now(), 100*time.Millisecond)
	if res.index <= idx {
		t.Fatalf("prefix index after deleting its newest key: %d -> %d", idx, res.index)
	}
}

func TestCatalogServicesNotWokenByChecks(t *testing.T) {
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web", Check: &api.AgentServiceCheck{CheckID: "t", TTL: "1m"}}))
	idx := r.index(t, "/v1/catalog/services")
	ch := r.block(t, "/v1/catalog/services", idx, "10s")
	r.waitBlocked(t, 1)
	must(t, a.PassTTL("t", "")) // a status change: no change to the service list
	expectNoReturn(t, ch, 200*time.Millisecond, "a check status change")
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "api1", Name: "api"}))
	expectReturn(t, ch, time.Now(), 100*time.Millisecond)
}

// /v1/catalog/node/NAME shows the node and its services, not their checks: a check status
// change must not wake its watchers (nor move its index), as it does not in Consul.
// /v1/health/node/NAME shows the checks and wakes.
func TestCatalogNodeNotWokenByChecks(t *testing.T) {
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web", Check: &api.AgentServiceCheck{CheckID: "t", TTL: "1m"}}))
	catIdx := r.index(t, "/v1/catalog/node/node1")
	healthIdx := r.index(t, "/v1/health/node/node1")
	cat := r.block(t, "/v1/catalog/node/node1", catIdx, "10s")
	health := r.block(t, "/v1/health/node/node1", healthIdx, "10s")
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		_, _, m := r.do(t, "GET", "/metrics", "")
		if !strings.Contains(m, "\npodmesh_registry_blocking_queries 2\n") {
			return errors.New("queries not blocked yet")
		}
		return nil
	})
	must(t, a.PassTTL("t", "")) // a status change: the node and its services are the same
	ack := time.Now()
	if res := expectReturn(t, health, ack, 100*time.Millisecond); res.index <= healthIdx {
		t.Fatalf("health/node index %d after a check change, was %d", res.index, healthIdx)
	}
	expectNoReturn(t, cat, 200*time.Millisecond, "a check status change")
	if got := r.index(t, "/v1/catalog/node/node1"); got != catIdx {
		t.Fatalf("catalog/node index moved on a check change: %d -> %d", catIdx, got)
	}
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "api1", Name: "api"}))
	expectReturn(t, cat, time.Now(), 100*time.Millisecond)
}

func TestManyWatchersOneService(t *testing.T) {
	r := startRegistry(t)
	must(t, r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web"}))
	idx := r.index(t, "/v1/health/service/web")
	const n = 100
	var wg sync.WaitGroup
	results := make(chan blockResult, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- <-r.block(t, "/v1/health/service/web", idx, "10s")
		}()
	}
	// All n share one topic channel; wait until every one of them holds it.
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		_, _, body := r.do(t, "GET", "/metrics", "")
		want := fmt.Sprintf("podmesh_registry_blocking_queries %d", n)
		if !strings.Contains(body, want) {
			return fmt.Errorf("metrics lack %q", want)
		}
		return nil
	})
	must(t, r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web2", Name: "web"}))
	wg.Wait()
	close(results)
	var first *blockResult
	for res := range results {
		if res.err != nil || res.code != 200 || res.index <= idx {
			t.Fatalf("watcher result %+v", res)
		}
		if first == nil {
			first = &res
		} else if res.body != first.body || res.index != first.index {
			t.Fatal("watchers got different answers for the same index")
		}
	}
}

func TestCloseReleasesBlockedQueries(t *testing.T) {
	r := startRegistry(t)
	idx := r.index(t, "/v1/health/service/web")
	ch := r.block(t, "/v1/health/service/web", idx, "10m")
	r.waitBlocked(t, 1)
	if err := r.Server.Close(); err != nil {
		t.Fatal(err)
	}
	res := expectReturn(t, ch, time.Now(), time.Second)
	if res.code != 200 || res.index != idx {
		t.Fatalf("after Close: %+v", res)
	}
	if err := r.Server.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close = %v, want net.ErrClosed", err)
	}
}

func TestAgentServiceHashBlocking(t *testing.T) {
	r := startRegistry(t)
	a := r.Client.Agent()
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web", Port: 80}))
	svc, _, err := a.Service("web1", nil)
	must(t, err)
	hash := svc.ContentHash
	// The same hash blocks until the wait ends, then answers the same hash.
	start := time.Now()
	svc, _, err = a.Service("web1", &api.QueryOptions{WaitHash: hash, WaitTime: 150 * time.Millisecond})
	must(t, err)
	if svc.ContentHash != hash || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("unchanged service: hash %s after %v", svc.ContentHash, time.Since(start))
	}
	// A change to another service does not wake it; a change to it does.
	type res struct {
		svc *api.AgentService
		err error
		at  time.Time
	}
	ch := make(chan res, 1)
	go func() {
		s, _, err := a.Service("web1", &api.QueryOptions{WaitHash: hash, WaitTime: 10 * time.Second})
		ch <- res{s, err, time.Now()}
	}()
	r.waitBlocked(t, 1)
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "db1", Name: "db"}))
	// The other registration touches the node's topic, so the query re-checks its hash and
	// blocks again: it must not answer.
	timer := time.NewTimer(200 * time.Millisecond)
	select {
	case got := <-ch:
		t.Fatalf("hash query answered on another service's change: %+v", got)
	case <-timer.C:
	}
	must(t, a.ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web", Port: 81}))
	ack := time.Now()
	got := <-ch
	must(t, got.err)
	if got.svc.Port != 81 || got.svc.ContentHash == hash || got.at.Sub(ack) > 100*time.Millisecond {
		t.Fatalf("after the change: port %d hash %s (was %s) after %v", got.svc.Port, got.svc.ContentHash, hash, got.at.Sub(ack))
	}
}

// The render cache shares a rendering between queries that must give the same answer, and
// only those: each query is answered as if it were the only one. Parameters that take their
// first value (?filter, ?passing) or their last per key (?node-meta) are keyed by that value,
// not by the set of values, and a value cannot pass itself off as another parameter. The
// reads use ?index=1, the path that goes through the cache.
func TestRenderCacheKeyedByEffectiveParameters(t *testing.T) {
	r := startRegistry(t)
	code, _, body := r.do(t, "PUT", "/v1/catalog/register", `{"Node":"n1","Address":"10.0.0.1","NodeMeta":{"rack":"a"},
		"Service":{"Service":"web","Tags":["v1"],"Port":80},"Check":{"CheckID":"c","ServiceID":"web","Status":"critical"}}`)
	if code != 200 {
		t.Fatal(code, body)
	}
	q := url.QueryEscape
	pairs := []struct {
		name                string
		first, then         string
		wantFirst, wantThen int
	}{
		{"node-meta last wins", "node-meta=rack:b&node-meta=rack:a", "node-meta=rack:a&node-meta=rack:b", 1, 0},
		{"filter first wins", "filter=" + q("Service.Port == 80") + "&filter=" + q("Service.Port == 81"),
			"filter=" + q("Service.Port == 81") + "&filter=" + q("Service.Port == 80"), 1, 0},
		{"passing first wins", "passing=false&passing=true", "passing=true&passing=false", 1, 0},
		{"NUL in a value", "tag=" + q("v1\x00node-meta=rack:a"), "tag=v1&node-meta=rack:a", 0, 1},
	}
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			_, _, b1 := r.do(t, "GET", "/v1/health/service/web?index=1&"+p.first, "")
			_, _, b2 := r.do(t, "GET", "/v1/health/service/web?index=1&"+p.then, "")
			if n1, n2 := countEntries(t, b1), countEntries(t, b2); n1 != p.wantFirst || n2 != p.wantThen {
				t.Fatalf("?%s: %d entries, want %d; then ?%s: %d entries, want %d", p.first, n1, p.wantFirst, p.then, n2, p.wantThen)
			}
		})
	}
}

// countEntries returns the length of a JSON array body.
func countEntries(t *testing.T, body string) int {
	t.Helper()
	var out []json.RawMessage
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return len(out)
}
