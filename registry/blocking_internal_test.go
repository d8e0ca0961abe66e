package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/registry/state"
)

// newTestServer serves a fresh store on loopback, without the check runner.
func newTestServer(t *testing.T) (*Server, *state.Store, string) {
	t.Helper()
	store, err := state.Open(testutil.Context(t, 10*time.Second), state.Options{Dir: t.TempDir(), NodeName: "node1"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Store: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
		store.Close()
	})
	return srv, store, hs.URL
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testutil.Context(t, 10*time.Second), "GET", u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The render cache holds renderings for blocked watchers woken together, and nothing else:
// plain reads (no ?index) render for themselves, a query that is going to wait renders
// nothing, and what is kept is bounded in bytes however many distinct queries arrive.
func TestRenderCacheMemoryBounded(t *testing.T) {
	srv, store, base := newTestServer(t)
	srv.cache.maxBytes = 64 << 10
	ctx := testutil.Context(t, 10*time.Second)
	for i := range 50 {
		err := store.CatalogRegister(ctx, &state.CatalogRegistration{
			Node:    state.Node{Node: fmt.Sprintf("n%d", i), Address: "10.0.0.1", Meta: map[string]string{"rack": "a"}},
			Service: &state.Service{ID: "web", Service: "web", Port: 80, Tags: []string{"v1", "v2"}, Weights: state.Weights{Passing: 1, Warning: 1}},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	_, one := get(t, base+"/v1/health/service/web")
	for i := range 200 {
		f := url.QueryEscape(fmt.Sprintf(`Service.ID != "x%d"`, i))
		if code, _ := get(t, base+"/v1/health/service/web?filter="+f); code != 200 {
			t.Fatal(code)
		}
	}
	if n, b := srv.cache.stats(); n != 0 || b != 0 {
		t.Fatalf("200 plain reads left %d renderings (%d bytes) in the cache", n, b)
	}
	for i := range 200 {
		f := url.QueryEscape(fmt.Sprintf(`Service.ID != "y%d"`, i))
		if code, _ := get(t, base+"/v1/health/service/web?index=1&filter="+f); code != 200 {
			t.Fatal(code)
		}
	}
	n, b := srv.cache.stats()
	if b > srv.cache.maxBytes || n == 0 {
		t.Fatalf("after 200 distinct answered blocking reads of %d bytes each: %d renderings, %d bytes (limit %d)",
			len(one), n, b, srv.cache.maxBytes)
	}
	t.Logf("one rendering %d bytes; cache after 200 distinct blocking reads: %d renderings, %d bytes", len(one), n, b)

	// A query that waits renders nothing until it has something to answer.
	var renders atomic.Int32
	var idx uint64
	store.View(func(v *state.View) { idx = v.TopicIndex(state.TopicHealthService("web")) })
	q := &query{
		key:   "test",
		index: func(v *state.View) uint64 { return v.TopicIndex(state.TopicHealthService("web")) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(state.TopicHealthService("web")) },
		read: func(*state.View) func() (*rendered, error) {
			return func() (*rendered, error) {
				renders.Add(1)
				return &rendered{status: 200, body: []byte("x")}, nil
			}
		},
	}
	_, _, ch, release, err := srv.run(context.Background(), q, true, idx)
	defer release()
	if err != nil || ch == nil {
		t.Fatalf("run: %v, watch %v", err, ch)
	}
	if n := renders.Load(); n != 0 {
		t.Fatalf("a query about to wait rendered %d times", n)
	}
}

func TestRenderCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c := newRenderCache(100, 10<<10)
	body := []byte(strings.Repeat("x", 1<<10))
	fill := func(key string, index uint64) {
		e, owner := c.lookup(key, index)
		if owner {
			c.finish(key, e, &rendered{status: 200, body: body}, nil)
		}
	}
	for i := range 9 {
		fill(fmt.Sprint("k", i), 1)
	}
	fill("k0", 1) // used again: now the most recent
	for i := 9; i < 30; i++ {
		fill(fmt.Sprint("k", i), 1)
		if _, b := c.stats(); b > 10<<10 {
			t.Fatalf("%d bytes cached, limit %d", b, 10<<10)
		}
	}
	if _, owner := c.lookup("k29", 1); owner {
		t.Error("the newest entry was evicted")
	}
	// A newer index replaces the entry of a key, and its bytes.
	n0, b0 := c.stats()
	fill("k29", 2)
	if n, b := c.stats(); n != n0 || b != b0 {
		t.Errorf("replacing k29: %d entries %d bytes, was %d %d", n, b, n0, b0)
	}
	// A rendering larger than the whole budget is not kept.
	big := newRenderCache(100, 100)
	e, _ := big.lookup("big", 1)
	big.finish("big", e, &rendered{status: 200, body: body}, nil)
	if n, b := big.stats(); n != 0 || b != 0 {
		t.Errorf("oversized rendering kept: %d entries, %d bytes", n, b)
	}
}

// A store closed under blocked queries ends them at once with a 503, and the background
// loop with state.ErrClosed, instead of spinning on the closed store's watch channels until
// their wait runs out.
func TestStoreCloseEndsBlockedQueries(t *testing.T) {
	srv, store, base := newTestServer(t)
	ctx := testutil.Context(t, 10*time.Second)
	if err := store.RegisterAgentService(ctx, &state.Service{ID: "web", Service: "web", Weights: state.Weights{Passing: 1, Warning: 1}}, nil, false); err != nil {
		t.Fatal(err)
	}
	var idx, leafIdx uint64
	store.View(func(v *state.View) { idx = v.TopicIndex(state.TopicHealthService("web")) })
	_, body := get(t, base+"/v1/agent/service/web")
	hash := body[strings.Index(body, `"ContentHash":"`)+len(`"ContentHash":"`):]
	hash = hash[:strings.IndexByte(hash, '"')]
	resp, err := http.Get(base + "/v1/agent/connect/ca/leaf/web")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	fmt.Sscan(resp.Header.Get("X-Consul-Index"), &leafIdx)
	runDone := make(chan error, 1)
	go func() { runDone <- srv.Run(context.Background()) }()

	paths := []string{
		fmt.Sprintf("/v1/health/service/web?index=%d&wait=5s", idx),
		"/v1/agent/service/web?hash=" + hash + "&wait=5s",
		fmt.Sprintf("/v1/agent/connect/ca/leaf/web?index=%d&wait=5s", leafIdx),
	}
	type result struct {
		path string
		code int
		d    time.Duration
	}
	results := make(chan result, len(paths))
	for _, p := range paths {
		go func() {
			start := time.Now()
			resp, err := http.Get(base + p)
			if err != nil {
				results <- result{p, 0, time.Since(start)}
				return
			}
			resp.Body.Close()
			results <- result{p, resp.StatusCode, time.Since(start)}
		}()
	}
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		// The three queries' topics (service, local node, roots) and Server.Run's.
		if n := store.Watchers(); n < 4 {
			return fmt.Errorf("%d topics watched", n)
		}
		return nil
	})
	closed := time.Now()
	store.Close()
	for range paths {
		r := <-results
		if r.code != http.StatusServiceUnavailable || time.Since(closed) > 2*time.Second {
			t.Errorf("%s: %d after %v, want 503 at once when the store closes", r.path, r.code, r.d)
		}
	}
	timer := time.NewTimer(2 * time.Second)
	defer timer.Stop()
	select {
	case err := <-runDone:
		if !errors.Is(err, state.ErrClosed) {
			t.Errorf("Server.Run: %v, want ErrClosed", err)
		}
	case <-timer.C:
		t.Error("Server.Run still running 2s after the store closed")
	}
}

// A rendering that panics fails its own request and every request waiting for it (500), and
// a waiting request whose client goes away stops waiting: no request hangs on a rendering
// that will never come.
func TestRenderPanicReleasesWaiters(t *testing.T) {
	srv, _, _ := newTestServer(t)
	gate := make(chan struct{})
	q := &query{
		key:   "panics",
		index: func(*state.View) uint64 { return 5 },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch("unused") },
		read: func(*state.View) func() (*rendered, error) {
			return func() (*rendered, error) {
				<-gate
				panic("rendering bug")
			}
		},
	}
	run := func(ctx context.Context) <-chan error {
		ch := make(chan error, 1)
		go func() {
			defer func() {
				if p := recover(); p != nil {
					ch <- fmt.Errorf("the panic escaped run: %v", p)
				}
			}()
			_, _, _, release, err := srv.run(ctx, q, false, 1)
			release()
			ch <- err
		}()
		return ch
	}
	owner := run(context.Background())
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		if n, _ := srv.cache.stats(); n != 1 {
			return errors.New("owner not rendering yet")
		}
		return nil
	})
	gone, cancel := context.WithCancel(context.Background())
	leaving := run(gone)
	waiter := run(context.Background())
	time.Sleep(20 * time.Millisecond) // both wait for the owner's rendering now
	cancel()
	wait := func(name string, ch <-chan error) error {
		t.Helper()
		timer := time.NewTimer(2 * time.Second)
		defer timer.Stop()
		select {
		case err := <-ch:
			return err
		case <-timer.C:
			t.Fatalf("%s still waiting", name)
			return nil
		}
	}
	if err := wait("request whose client left", leaving); !errors.Is(err, context.Canceled) {
		t.Errorf("request whose client left: %v, want context.Canceled", err)
	}
	close(gate)
	for name, ch := range map[string]<-chan error{"owner": owner, "waiter": waiter} {
		if err := wait(name, ch); err == nil || !strings.Contains(err.Error(), "rendering bug") ||
			strings.Contains(err.Error(), "escaped") {
			t.Errorf("%s: %v, want the rendering's panic as an error", name, err)
		}
	}
	if n, _ := srv.cache.stats(); n != 0 {
		t.Errorf("a failed rendering stayed in the cache")
	}
}
