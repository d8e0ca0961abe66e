package registry

import (
	"container/list"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/podmesh/podmesh/registry/state"
)

// query is one read endpoint's logic for the blocking loop.
type query struct {
	// key identifies the response for the render cache: everything that changes the rendered
	// bytes besides the state (path, output-affecting parameters).
	key string
	// index returns the query's X-Consul-Index: the modify index of what it reads.
	index func(v *state.View) uint64
	// watch registers a wake-up for the next change to what it reads.
	watch func(v *state.View) (<-chan struct{}, func())
	// read gathers what the response needs (immutable rows) inside the view and returns the
	// function that renders it outside the lock.
	read func(v *state.View) func() (*rendered, error)
}

// rendered is a response ready to write: status, content type and body.
type rendered struct {
	status      int
	contentType string
	body        []byte
}

func jsonResponse(v any, pretty bool) (*rendered, error) {
	b, err := encodeJSON(v, pretty)
	if err != nil {
		return nil, err
	}
	return &rendered{status: http.StatusOK, contentType: "application/json", body: b}, nil
}

// renderCache keeps recent renderings of blocking queries with the index each was rendered
// at. When a change wakes a thousand watchers of one service, the first to re-run the query
// renders it and the others wait for and reuse its bytes instead of each re-encoding. The
// same index means the same body, because the index covers everything the query reads.
//
// Only blocking queries that are about to answer use it (a plain read renders for itself, a
// query about to wait renders nothing), a key keeps only its latest index, and what it holds
// is bounded by maxBytes and maxEntries, least recently used first out: distinct queries
// (every ?filter is a key) cannot make it grow without limit.
type renderCache struct {
	mu         sync.Mutex
	m          map[string]*list.Element // of *cacheEntry
	lru        list.List                // front: most recently used
	bytes      int64                    // sizes of the finished entries in m
	maxBytes   int64
	maxEntries int
}

type cacheEntry struct {
	key   string
	index uint64
	done  chan struct{} // closed when res/err are set
	res   *rendered
	err   error
	size  int64 // counted in renderCache.bytes once finished
}

// DefaultRenderCacheBytes bounds the render cache (Config.RenderCacheBytes).
const DefaultRenderCacheBytes = 32 << 20

const maxRenderCacheEntries = 4096

func newRenderCache(maxEntries int, maxBytes int64) *renderCache {
	return &renderCache{m: map[string]*list.Element{}, maxEntries: maxEntries, maxBytes: maxBytes}
}

// lookup returns the entry for (key, index); owner is true if the caller created it and must
// fill it with finish.
func (c *renderCache) lookup(key string, index uint64) (e *cacheEntry, owner bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.m[key]; el != nil {
		if e := el.Value.(*cacheEntry); e.index == index {
			c.lru.MoveToFront(el)
			return e, false
		}
		c.removeLocked(el)
	}
	e = &cacheEntry{key: key, index: index, done: make(chan struct{})}
	c.m[key] = c.lru.PushFront(e)
	for c.lru.Len() > c.maxEntries {
		c.removeLocked(c.lru.Back())
	}
	return e, true
}

// finish records the owner's rendering and wakes those waiting for it. A failed rendering is
// dropped at once, so the next caller tries again.
func (c *renderCache) finish(key string, e *cacheEntry, res *rendered, err error) {
	e.res, e.err = res, err
	close(e.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.m[key]
	if el == nil || el.Value.(*cacheEntry) != e {
		return // evicted or replaced meanwhile
	}
	if err != nil {
		c.removeLocked(el)
		return
	}
	e.size = int64(len(res.body) + len(key) + 256) // 256: the entry, its list element and map slot
	c.bytes += e.size
	for c.bytes > c.maxBytes && c.lru.Len() > 0 {
		c.removeLocked(c.lru.Back())
	}
}

func (c *renderCache) removeLocked(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	delete(c.m, e.key)
	c.bytes -= e.size
}

// stats returns how many renderings the cache holds and their size in bytes.
func (c *renderCache) stats() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes
}

// blockingOpts are a read's ?index and ?wait.
type blockingOpts struct {
	minIndex uint64
	wait     time.Duration
}

// parseBlocking reads ?index and ?wait as Consul does: wait is a Go duration (the Go client
// sends "120000ms"), defaulting to 5 minutes and capped at 10, plus a random jitter of up to
// wait/16 so that watchers started together do not all return together.
func parseBlocking(q url.Values) (blockingOpts, error) {
	var o blockingOpts
	if v := q.Get("index"); v != "" {
		idx, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return o, badRequest("index", "invalid index %q: want an unsigned integer", v)
		}
		o.minIndex = idx
	}
	o.wait = DefaultQueryWait
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return o, badRequest("wait", "invalid wait time %q: want a duration such as 120000ms or 5m", v)
		}
		if d > 0 {
			o.wait = min(d, MaxQueryWait)
		}
	}
	if o.minIndex > 0 {
		o.wait += rand.N(o.wait/16 + 1)
	}
	return o, nil
}

// run runs q once: inside one view it reads the index and, when the caller will have to wait
// (watch set and the index not above minIndex), registers a watch and returns without
// rendering anything (res nil). Otherwise it renders the result: a blocking query (minIndex
// above 0) through the render cache, shared with the watchers woken with it; a plain read for
// itself. A rendering that panics is an error for its request and for every request waiting
// for it; a request waiting for another's rendering gives up when ctx ends.
func (s *Server) run(ctx context.Context, q *query, watch bool, minIndex uint64) (res *rendered, index uint64, ch <-chan struct{}, release func(), err error) {
	var entry *cacheEntry
	var owner bool
	var build func() (*rendered, error)
	release = func() {}
	s.store.View(func(v *state.View) {
		index = q.index(v)
		if watch && index <= minIndex {
			ch, release = q.watch(v)
			return
		}
		if minIndex == 0 {
			build = q.read(v)
			return
		}
		entry, owner = s.cache.lookup(q.key, index)
		if owner {
			build = q.read(v)
		}
	})
	switch {
	case ch != nil:
		return nil, index, ch, release, nil
	case entry == nil:
		res, err = s.render(q, build)
		return res, index, nil, release, err
	case owner:
		res, err = s.render(q, build)
		s.cache.finish(q.key, entry, res, err)
		return res, index, nil, release, err
	}
	select {
	case <-entry.done:
		return entry.res, index, nil, release, entry.err
	case <-ctx.Done():
		return nil, index, nil, release, ctx.Err()
	}
}

// render runs build, turning a panic into an error (a 500) so that the requests waiting for
// this rendering are answered too.
func (s *Server) render(q *query, build func() (*rendered, error)) (res *rendered, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("rendering a response panicked", "query", q.key, "panic", p, "stack", string(debug.Stack()))
			res, err = nil, fmt.Errorf("registry: rendering the response panicked: %v", p)
		}
	}()
	return build()
}

// serveQuery answers a read, blocking as Consul does when ?index is set: it runs the query,
// returns at once if its index is above ?index (or ?index is 0 or absent), and otherwise
// waits until what the query reads changes or the wait ends, then runs it again. A timeout
// answers 200 with the current (unchanged) result and index.
//
// Slow consumers: a waiting query holds only a channel of its topic, which the store closes on
// change and never writes to, so a publisher never blocks on a watcher. A watcher that wakes
// late re-runs the query against the latest state: intermediate states are coalesced away,
// the policy Consul's blocking queries have.
func (s *Server) serveQuery(w http.ResponseWriter, r *http.Request, q *query) error {
	opts, err := parseBlocking(queryOf(r))
	if err != nil {
		return err
	}
	if opts.minIndex == 0 {
		res, index, _, _, err := s.run(r.Context(), q, false, 0)
		if err != nil {
			return err
		}
		return s.writeRendered(w, r, res, index)
	}
	timer := time.NewTimer(opts.wait)
	defer timer.Stop()
	s.metrics.blocking.Inc()
	defer s.metrics.blocking.Dec()
	last := false
	for {
		res, index, ch, release, err := s.run(r.Context(), q, !last, opts.minIndex)
		if err != nil {
			release()
			return err
		}
		if last || index > opts.minIndex {
			release()
			return s.writeRendered(w, r, res, index)
		}
		select {
		case <-ch:
		case <-timer.C:
			last = true
		case <-s.closing:
			last = true
		case <-r.Context().Done():
			release()
			return nil
		}
		release()
		if s.storeClosed() {
			return state.ErrClosed
		}
	}
}

// storeClosed reports whether the store has been closed: its watches then fire at once, so
// a blocked query ends (503) rather than spin until its wait runs out.
func (s *Server) storeClosed() bool {
	select {
	case <-s.store.Closed():
		return true
	default:
		return false
	}
}

func (s *Server) writeRendered(w http.ResponseWriter, r *http.Request, res *rendered, index uint64) error {
	s.setQueryHeaders(w, r, index)
	switch res.contentType {
	case "":
	case "application/json":
		w.Header()["Content-Type"] = hdrJSON
	default:
		w.Header().Set("Content-Type", res.contentType)
	}
	w.WriteHeader(res.status)
	_, _ = w.Write(res.body)
	return nil
}

// keyParam is one parameter of a render-cache key: its name and the values the handler
// actually uses.
type keyParam struct {
	name string
	vals []string
}

// param is a keyParam with the values in the order given.
func param(name string, vals ...string) keyParam { return keyParam{name, vals} }

// setParam is a keyParam for a parameter whose values are a set (?tag: every one must
// match), sorted so that their order does not matter.
func setParam(name string, vals []string) keyParam {
	vals = slices.Clone(vals)
	slices.Sort(vals)
	return keyParam{name, vals}
}

func boolParamKey(name string, v bool) keyParam {
	return keyParam{name, []string{strconv.FormatBool(v)}}
}

// filterKey is the key of ?filter: the first value, the one parseFilter uses.
func filterKey(r *http.Request) keyParam { return param("filter", queryOf(r).Get("filter")) }

// cacheKey builds a query's render-cache key from its path, ?pretty, and the effective
// values of the parameters that change its output, as the handler parsed them (the first
// ?filter, the last ?node-meta of each key, ...): two requests get the same key only if they
// must get the same answer. Every name and value is length-prefixed, so no value can pass
// itself off as another parameter.
func cacheKey(r *http.Request, params ...keyParam) string {
	b := make([]byte, 0, 64)
	add := func(s string) {
		b = strconv.AppendInt(b, int64(len(s)), 10)
		b = append(b, ':')
		b = append(b, s...)
	}
	add(r.URL.Path)
	if wantPretty(r) {
		add("pretty")
	}
	for _, p := range params {
		add(p.name)
		b = strconv.AppendInt(b, int64(len(p.vals)), 10)
		b = append(b, '#')
		for _, v := range p.vals {
			add(v)
		}
	}
	return string(b)
}
