package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/podmesh/podmesh/registry/state"
	"github.com/podmesh/podmesh/tls/ca"
	"github.com/podmesh/podmesh/tls/spiffe"
)

// The mesh CA's endpoints: the trust bundle, leaf certificates, and the CA configuration.
// The CA itself, and its durability, live in the store (registry/state); this file serves it
// and keeps the leaves.

// caRoots is GET /v1/connect/ca/roots and GET /v1/agent/connect/ca/roots (the same answer:
// this registry is both the agent and the server), blocking on the trust bundle. With
// ?pem=true it answers the roots as one PEM chain.
func (s *Server) caRoots(w http.ResponseWriter, r *http.Request) error {
	pem, err := boolParam(queryOf(r), "pem")
	if err != nil {
		return err
	}
	pretty := wantPretty(r)
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r, boolParamKey("pem", pem)),
		index: func(v *state.View) uint64 { return v.TopicIndex(state.TopicCARoots) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(state.TopicCARoots) },
		read: func(v *state.View) func() (*rendered, error) {
			l := v.CARoots()
			return func() (*rendered, error) {
				if l == nil {
					return nil, errors.New("registry: the mesh CA has no roots")
				}
				if pem {
					return &rendered{status: http.StatusOK, contentType: "application/pem-certificate-chain", body: []byte(l.PEM())}, nil
				}
				return jsonResponse(l, pretty)
			}
		},
	})
}

// caConfiguration is GET /v1/connect/ca/configuration.
func (s *Server) caConfiguration(w http.ResponseWriter, r *http.Request) error {
	pretty := wantPretty(r)
	return s.serveQuery(w, r, &query{
		key:   cacheKey(r),
		index: func(v *state.View) uint64 { return v.TopicIndex(state.TopicCAConfig) },
		watch: func(v *state.View) (<-chan struct{}, func()) { return v.Watch(state.TopicCAConfig) },
		read: func(v *state.View) func() (*rendered, error) {
			c := v.CAConfig()
			return func() (*rendered, error) {
				if c == nil {
					return nil, errors.New("registry: the mesh CA has no configuration")
				}
				return jsonResponse(ca.Configuration{
					Provider: c.Provider, Config: c.Config, ForceWithoutCrossSigning: c.ForceWithoutCrossSigning,
					CreateIndex: c.CreateIndex, ModifyIndex: c.ModifyIndex,
				}, pretty)
			}
		},
	})
}

// caSetConfiguration is PUT /v1/connect/ca/configuration. A new, changed or removed
// PrivateKey rotates the root, as in Consul; lifetimes apply to leaves issued from now on.
func (s *Server) caSetConfiguration(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	u, err := decodeCAConfig(body, s.store.InitialLeafCertTTL())
	if err != nil {
		return err
	}
	rotated, err := s.store.SetCAConfig(r.Context(), u)
	if err != nil {
		return err
	}
	if rotated != "" {
		s.metrics.rotations.WithLabelValues("config").Inc()
		s.log.Info("mesh CA root rotated by a configuration change", "active_root", rotated)
	}
	return writeOK(w)
}

// leafCache keeps the current leaf of each service that asked for one, so that every caller
// for a service gets the same leaf until it must be renewed, as Consul's agent cache does.
// Leaves are memory only: after a restart each service gets a new one at its next request.
type leafCache struct {
	mu sync.Mutex
	m  map[string]*leafEntry
}

type leafEntry struct {
	issue sync.Mutex // held while a leaf for the service is being issued

	mu      sync.Mutex // guards cur, changed, waiters
	cur     *issuedLeaf
	changed chan struct{} // closed (and replaced) when cur changes
	waiters int           // requests using the entry; the sweep keeps entries in use
}

// issuedLeaf is one leaf with its rendering and renewal time.
type issuedLeaf struct {
	leaf    *ca.LeafCert
	body    []byte
	renewAt time.Time
}

func newLeafCache() *leafCache { return &leafCache{m: map[string]*leafEntry{}} }

// acquire returns the service's entry, counting the caller as a user until release.
func (c *leafCache) acquire(service string) *leafEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[service]
	if e == nil {
		e = &leafEntry{changed: make(chan struct{})}
		c.m[service] = e
	}
	e.mu.Lock()
	e.waiters++
	e.mu.Unlock()
	return e
}

func (c *leafCache) release(e *leafEntry) {
	e.mu.Lock()
	e.waiters--
	e.mu.Unlock()
}

// sweep forgets services whose leaf has expired and that nobody is asking for.
func (c *leafCache) sweep(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, e := range c.m {
		e.mu.Lock()
		idle := e.waiters == 0 && (e.cur == nil || now.After(e.cur.leaf.ValidBefore))
		e.mu.Unlock()
		if idle {
			delete(c.m, name)
		}
	}
}

func (e *leafEntry) snapshot() (*issuedLeaf, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cur, e.changed
}

// due reports whether a leaf must be replaced: its renewal time has come (a random point at
// 60–90% of its life, so it is replaced well before it expires) or another root is active.
func (l *issuedLeaf) due(activeRoot string, now time.Time) bool {
	return l == nil || !now.Before(l.renewAt) || l.leaf.RootID != activeRoot
}

func (s *Server) activeRoot() (id string) {
	s.store.View(func(v *state.View) {
		if l := v.CARoots(); l != nil {
			id = l.ActiveRootID
		}
	})
	return id
}

// currentLeaf returns the service's leaf, issuing a new one when there is none or it is
// due, with the channel that is closed when it is next replaced; issued reports whether this
// call issued it.
func (s *Server) currentLeaf(ctx context.Context, e *leafEntry, service string) (cur *issuedLeaf, changed <-chan struct{}, issued bool, err error) {
	if cur, changed = e.snapshot(); !cur.due(s.activeRoot(), time.Now()) {
		return cur, changed, false, nil
	}
	e.issue.Lock()
	defer e.issue.Unlock()
	if cur, changed = e.snapshot(); !cur.due(s.activeRoot(), time.Now()) {
		return cur, changed, false, nil // another request issued it while this one waited
	}
	leaf, err := s.store.IssueLeaf(ctx, service)
	if err != nil {
		return nil, nil, false, err
	}
	body, err := encodeJSON(leaf, false)
	if err != nil {
		return nil, nil, false, err
	}
	cur = &issuedLeaf{leaf: leaf, body: body, renewAt: ca.RenewalTime(leaf.IssuedAt, leaf.ValidBefore, nil)}
	next := make(chan struct{})
	e.mu.Lock()
	e.cur = cur
	close(e.changed)
	e.changed = next
	e.mu.Unlock()
	s.metrics.leaves.Inc()
	return cur, next, true, nil
}

// agentLeaf is GET /v1/agent/connect/ca/leaf/SERVICE: the service's leaf certificate with its
// private key. With ?index=N (the leaf's ModifyIndex) it blocks until the leaf is replaced:
// at its renewal time, well before it expires, or at once when the root rotates, so a blocked
// sidecar always has its next leaf before the current one runs out.
func (s *Server) agentLeaf(w http.ResponseWriter, r *http.Request) error {
	service := r.PathValue("service")
	if err := (spiffe.ServiceID{TrustDomain: "x", Namespace: "default", Datacenter: "x", Service: service}).Validate(); err != nil {
		return badRequest("service", "%q cannot be named in a certificate: %v", service, err)
	}
	opts, err := parseBlocking(queryOf(r))
	if err != nil {
		return err
	}
	e := s.leaves.acquire(service)
	defer s.leaves.release(e)
	timer := time.NewTimer(opts.wait)
	defer timer.Stop()
	if opts.minIndex > 0 {
		s.metrics.blocking.Inc()
		defer s.metrics.blocking.Dec()
	}
	last := opts.minIndex == 0
	for {
		// Watch the trust bundle first, so that a rotation after the leaf is read wakes us.
		var rootsCh <-chan struct{}
		releaseRoots := func() {}
		if !last {
			s.store.View(func(v *state.View) { rootsCh, releaseRoots = v.Watch(state.TopicCARoots) })
		}
		cur, changed, issued, err := s.currentLeaf(r.Context(), e, service)
		if err != nil {
			releaseRoots()
			return err
		}
		if last || cur.leaf.ModifyIndex > opts.minIndex {
			releaseRoots()
			return s.writeLeaf(w, r, cur, issued)
		}
		renew := time.NewTimer(time.Until(cur.renewAt))
		select {
		case <-rootsCh:
		case <-changed:
		case <-renew.C:
		case <-timer.C:
			last = true
		case <-s.closing:
			last = true
		case <-r.Context().Done():
			renew.Stop()
			releaseRoots()
			return nil
		}
		renew.Stop()
		releaseRoots()
		if s.storeClosed() {
			return state.ErrClosed
		}
	}
}

func (s *Server) writeLeaf(w http.ResponseWriter, r *http.Request, cur *issuedLeaf, issued bool) error {
	body := cur.body
	if wantPretty(r) {
		b, err := encodeJSON(cur.leaf, true)
		if err != nil {
			return err
		}
		body = b
	}
	h := w.Header()
	if issued {
		h.Set("X-Cache", "MISS")
	} else {
		h.Set("X-Cache", "HIT")
	}
	return s.writeRendered(w, r, &rendered{status: http.StatusOK, contentType: "application/json", body: body}, cur.leaf.ModifyIndex)
}

// Run does the registry's background work until ctx ends: it rotates the mesh CA's root when
// RotationPeriod has passed, prunes roots no leaf can chain to any more, and forgets the
// leaves of services that stopped asking. It looks a tenth of the shorter of LeafCertTTL and
// RotationPeriod apart (at least 100ms, at most a minute), and at once after a configuration
// change. It returns nil when ctx ends, state.ErrClosed if the store is closed first.
func (s *Server) Run(ctx context.Context) error {
	var changed <-chan struct{}
	release := func() {}
	defer func() { release() }()
	for {
		if changed == nil {
			// The watch is kept across ticks and renewed only once it fires.
			s.store.View(func(v *state.View) { changed, release = v.Watch(state.TopicCAConfig) })
		}
		cfg := s.store.CAConfigOf()
		interval := min(cfg.LeafCertTTL, cfg.RotationPeriod) / 10
		interval = max(100*time.Millisecond, min(interval, time.Minute))
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-s.store.Closed():
			timer.Stop()
			return state.ErrClosed
		case <-timer.C:
		case <-changed:
			timer.Stop()
			release()
			changed, release = nil, func() {}
		}
		if s.storeClosed() {
			return state.ErrClosed
		}
		rotated, removed, err := s.store.MaintainCA(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			s.log.Warn("mesh CA maintenance failed; retrying", "err", err)
		default:
			if rotated != "" {
				s.metrics.rotations.WithLabelValues("rotation_period").Inc()
				s.log.Info("mesh CA root rotated: RotationPeriod passed", "active_root", rotated)
			}
			if len(removed) > 0 {
				s.log.Info("mesh CA pruned roots no leaf can chain to any more", "roots", fmt.Sprint(removed))
			}
		}
		s.leaves.sweep(time.Now())
	}
}
