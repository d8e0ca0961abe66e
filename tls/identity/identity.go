// Package identity is the sidecar's side of mutual TLS: it keeps the service's leaf
// certificate, the mesh's trust bundle and the intentions for the service fresh, and turns
// them into TLS configurations and an authorizer.
//
// Everything is fetched through github.com/hashicorp/consul/api only, with blocking queries
// (GET /v1/agent/connect/ca/roots, /v1/agent/connect/ca/leaf/<service> and
// /v1/connect/intentions/match?by=destination&name=<service>), so the same sidecar works
// against Podmesh's registry or a real Consul agent. Each query runs in its own loop with
// exponential backoff on errors; on any error the last good material stays in use (static
// stability), so a registry outage does not break connections until the leaf actually
// expires.
//
// The current material lives in atomic pointers. The TLS configurations read it through
// callbacks (GetCertificate, GetClientCertificate, VerifyConnection) on every handshake, so a
// new leaf or trust bundle applies to the next handshake without restarting listeners, and
// connections already established are not touched.
package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/backoff"
	"github.com/podmesh/podmesh/tls/authz"
	"github.com/podmesh/podmesh/tls/spiffe"
)

// Config configures a Source. Client and Service are required; the zero value of every other
// field means its default.
type Config struct {
	// Client talks to the registry or a Consul agent.
	Client *api.Client
	// Service is the service name this sidecar speaks for: the leaf is fetched for it and
	// intentions are matched with it as the destination.
	Service string
	// DefaultPolicy ("allow" or "deny") decides connections no intention matches when the
	// registry does not send X-Consul-Default-ACL-Policy; when it does, the header wins.
	// Empty means deny.
	DefaultPolicy string
	// WaitTime bounds each blocking query; zero leaves it to the server (5 minutes).
	WaitTime time.Duration
	// Backoff is the template for the wait between failed queries (each loop copies it).
	// Zero means 100ms doubling to 30s with 20% jitter.
	Backoff backoff.Waiter
	// Logger receives errors and updates; nil discards.
	Logger *slog.Logger
	// Now is the clock used to check certificate validity; time.Now when nil.
	Now func() time.Time
	// OnEvent, if set, is called from the fetch loops after every update and error. It must
	// not block.
	OnEvent func(Event)
}

func (c Config) withDefaults() Config {
	if c.Backoff == (backoff.Waiter{}) {
		c.Backoff = backoff.Waiter{Min: 100 * time.Millisecond, Max: 30 * time.Second, Jitter: 0.2}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// EventKind says what an Event reports.
type EventKind uint8

// The event kinds.
const (
	RootsUpdated EventKind = iota + 1
	LeafUpdated
	IntentionsUpdated
	FetchFailed
)

func (k EventKind) String() string {
	switch k {
	case RootsUpdated:
		return "roots_updated"
	case LeafUpdated:
		return "leaf_updated"
	case IntentionsUpdated:
		return "intentions_updated"
	case FetchFailed:
		return "fetch_failed"
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event reports an update or an error from one of the loops ("roots", "leaf", "intentions").
type Event struct {
	Kind  EventKind
	Loop  string
	Index uint64
	Err   error
}

// Stats is a snapshot of the counters, for metrics.
type Stats struct {
	RootUpdates, LeafUpdates, IntentionUpdates uint64
	RootErrors, LeafErrors, IntentionErrors    uint64
	// LeafNotAfter is the current leaf's expiry (zero before the first leaf).
	LeafNotAfter time.Time
	ActiveRootID string
	TrustDomain  string
	Intentions   int
}

// Source keeps a service's mTLS material and intentions fresh. Create it with New, start the
// loops with Run, and wait for Ready before serving.
type Source struct {
	cfg Config
	def authz.Default // fallback default policy

	roots atomic.Pointer[rootsSnapshot]
	leaf  atomic.Pointer[leafSnapshot]
	table atomic.Pointer[authz.Table]

	rootUpdates, leafUpdates, ixnUpdates atomic.Uint64
	rootErrors, leafErrors, ixnErrors    atomic.Uint64

	sessions tls.ClientSessionCache

	readyOnce sync.Once
	ready     chan struct{}
	running   atomic.Bool
}

type rootsSnapshot struct {
	pool        *x509.CertPool
	trustDomain string
	activeID    string
	key         string // root and intermediate PEMs, to detect real changes
}

type leafSnapshot struct {
	cert   *tls.Certificate
	id     spiffe.ServiceID
	serial string
}

// reasonNotLoaded is the reason Authorize gives before the first intentions arrive.
const reasonNotLoaded = "intentions not loaded yet"

// New checks the configuration and returns a Source with no material yet.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil {
		return nil, errors.New("identity: config: Client is required")
	}
	if cfg.Service == "" {
		return nil, errors.New("identity: config: Service is required")
	}
	if _, err := spiffe.Parse("spiffe://x/ns/default/dc/x/svc/" + cfg.Service); err != nil {
		return nil, fmt.Errorf("identity: config: Service %q: %w", cfg.Service, err)
	}
	def := authz.DefaultDeny
	if cfg.DefaultPolicy != "" {
		d, err := authz.ParseDefault(cfg.DefaultPolicy)
		if err != nil {
			return nil, fmt.Errorf("identity: config: DefaultPolicy: %w", err)
		}
		def = d
	}
	if cfg.WaitTime < 0 {
		return nil, fmt.Errorf("identity: config: WaitTime %v: must not be negative", cfg.WaitTime)
	}
	return &Source{
		cfg:      cfg.withDefaults(),
		def:      def,
		sessions: tls.NewLRUClientSessionCache(256),
		ready:    make(chan struct{}),
	}, nil
}

// Run fetches and refreshes the roots, the leaf and the intentions until ctx is done, then
// returns nil after every loop has stopped. It may be called once.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("identity: Run called twice")
	}
	var wg sync.WaitGroup
	for _, l := range []struct {
		name  string
		fetch func(context.Context, uint64) (uint64, error)
	}{
		{"roots", s.fetchRoots},
		{"leaf", s.fetchLeaf},
		{"intentions", s.fetchIntentions},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop(ctx, l.name, l.fetch)
		}()
	}
	wg.Wait()
	return nil
}

// Ready is closed once a trust bundle, a leaf and the intentions have all been loaded.
func (s *Source) Ready() <-chan struct{} { return s.ready }

func (s *Source) checkReady() {
	if s.roots.Load() != nil && s.leaf.Load() != nil && s.table.Load() != nil {
		s.readyOnce.Do(func() { close(s.ready) })
	}
}

// loop runs one blocking query after another. idx follows the server's index, reset to 0
// when it goes backwards; errors back off; a token bucket (burst 3, 10 per second) keeps a
// misbehaving server that answers at once from turning the loop into a busy one.
func (s *Source) loop(ctx context.Context, name string, fetch func(context.Context, uint64) (uint64, error)) {
	bo := s.cfg.Backoff
	lim := limiter{every: 100 * time.Millisecond, burst: 3}
	var idx uint64
	for {
		if err := lim.wait(ctx); err != nil {
			return
		}
		next, err := fetch(ctx, idx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.failed(name, err)
			if bo.Wait(ctx) != nil {
				return
			}
			continue
		}
		bo.Reset()
		switch {
		case next < idx:
			idx = 0 // the server's index went backwards (restart, restore): start over
		case next < 1:
			idx = 1 // never block on index 0, which would not block
		default:
			idx = next
		}
	}
}

func (s *Source) failed(loop string, err error) {
	switch loop {
	case "roots":
		s.rootErrors.Add(1)
	case "leaf":
		s.leafErrors.Add(1)
	case "intentions":
		s.ixnErrors.Add(1)
	}
	s.cfg.Logger.Warn("identity: fetch failed; keeping the last good value", "loop", loop, "service", s.cfg.Service, "err", err)
	s.emit(Event{Kind: FetchFailed, Loop: loop, Err: err})
}

func (s *Source) emit(e Event) {
	if s.cfg.OnEvent != nil {
		s.cfg.OnEvent(e)
	}
}

func (s *Source) query(ctx context.Context, idx uint64) *api.QueryOptions {
	return (&api.QueryOptions{WaitIndex: idx, WaitTime: s.cfg.WaitTime}).WithContext(ctx)
}

// fetchRoots runs one roots query and installs a changed, valid bundle.
func (s *Source) fetchRoots(ctx context.Context, idx uint64) (uint64, error) {
	list, meta, err := s.cfg.Client.Agent().ConnectCARoots(s.query(ctx, idx))
	if err != nil {
		return 0, fmt.Errorf("identity: fetch roots: %w", err)
	}
	if s.roots.Load() != nil && meta.LastIndex == idx {
		return meta.LastIndex, nil // the wait timed out: nothing changed
	}
	snap, err := buildRoots(list)
	if err != nil {
		return 0, err
	}
	if cur := s.roots.Load(); cur == nil || cur.key != snap.key || cur.trustDomain != snap.trustDomain {
		s.roots.Store(snap)
		s.rootUpdates.Add(1)
		s.cfg.Logger.Info("identity: trust bundle updated", "service", s.cfg.Service, "active_root", snap.activeID, "trust_domain", snap.trustDomain, "index", meta.LastIndex)
		s.emit(Event{Kind: RootsUpdated, Loop: "roots", Index: meta.LastIndex})
		s.checkReady()
	}
	return meta.LastIndex, nil
}

func buildRoots(list *api.CARootList) (*rootsSnapshot, error) {
	if list == nil || len(list.Roots) == 0 {
		return nil, errors.New("identity: roots: empty trust bundle")
	}
	if err := spiffe.ValidateTrustDomain(list.TrustDomain); err != nil {
		return nil, fmt.Errorf("identity: roots: TrustDomain: %w", err)
	}
	pool := x509.NewCertPool()
	ids := make([]string, 0, len(list.Roots))
	active := false
	for _, r := range list.Roots {
		c, err := parseCert(r.RootCertPEM)
		if err != nil {
			return nil, fmt.Errorf("identity: roots: root %s: %w", r.ID, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("identity: roots: root %s is not a CA certificate", r.ID)
		}
		pool.AddCert(c)
		ids = append(ids, r.RootCertPEM)
		if r.ID == list.ActiveRootID {
			active = true
		}
	}
	if !active {
		return nil, fmt.Errorf("identity: roots: active root %q is not in the list", list.ActiveRootID)
	}
	slices.Sort(ids)
	key := ""
	for _, id := range ids {
		key += id
	}
	return &rootsSnapshot{pool: pool, trustDomain: list.TrustDomain, activeID: list.ActiveRootID, key: key}, nil
}

// fetchLeaf runs one leaf query and installs a changed, valid leaf.
func (s *Source) fetchLeaf(ctx context.Context, idx uint64) (uint64, error) {
	lc, meta, err := s.cfg.Client.Agent().ConnectCALeaf(s.cfg.Service, s.query(ctx, idx))
	if err != nil {
		return 0, fmt.Errorf("identity: fetch leaf for %q: %w", s.cfg.Service, err)
	}
	if cur := s.leaf.Load(); cur != nil && cur.serial == lc.SerialNumber {
		return meta.LastIndex, nil
	}
	snap, err := s.buildLeaf(lc)
	if err != nil {
		return 0, err
	}
	s.leaf.Store(snap)
	s.leafUpdates.Add(1)
	s.cfg.Logger.Info("identity: leaf updated", "service", s.cfg.Service, "serial", snap.serial, "not_after", snap.cert.Leaf.NotAfter, "index", meta.LastIndex)
	s.emit(Event{Kind: LeafUpdated, Loop: "leaf", Index: meta.LastIndex})
	s.checkReady()
	return meta.LastIndex, nil
}

func (s *Source) buildLeaf(lc *api.LeafCert) (*leafSnapshot, error) {
	cert, err := tls.X509KeyPair([]byte(lc.CertPEM), []byte(lc.PrivateKeyPEM))
	if err != nil {
		return nil, fmt.Errorf("identity: leaf %s for %q: %w", lc.SerialNumber, s.cfg.Service, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("identity: leaf %s for %q: %w", lc.SerialNumber, s.cfg.Service, err)
		}
	}
	id, err := identityOf(cert.Leaf)
	if err != nil {
		return nil, fmt.Errorf("identity: leaf %s for %q: %w", lc.SerialNumber, s.cfg.Service, err)
	}
	if id.Service != s.cfg.Service {
		return nil, fmt.Errorf("identity: leaf %s: identity %s is not service %q", lc.SerialNumber, id, s.cfg.Service)
	}
	if now := s.cfg.Now(); !now.Before(cert.Leaf.NotAfter) {
		return nil, fmt.Errorf("identity: leaf %s for %q: expired at %v", lc.SerialNumber, s.cfg.Service, cert.Leaf.NotAfter)
	}
	return &leafSnapshot{cert: &cert, id: id, serial: lc.SerialNumber}, nil
}

// fetchIntentions runs one match query for this service and installs a new table when the
// intentions or the default policy changed.
func (s *Source) fetchIntentions(ctx context.Context, idx uint64) (uint64, error) {
	m, meta, err := s.cfg.Client.Connect().IntentionMatch(&api.IntentionMatch{
		By: api.IntentionMatchDestination, Names: []string{s.cfg.Service},
	}, s.query(ctx, idx))
	if err != nil {
		return 0, fmt.Errorf("identity: fetch intentions for %q: %w", s.cfg.Service, err)
	}
	if s.table.Load() != nil && meta.LastIndex == idx {
		return meta.LastIndex, nil // the wait timed out: nothing changed
	}
	ixns, err := convertIntentions(m[s.cfg.Service])
	if err != nil {
		return 0, err
	}
	def := s.def
	if meta.DefaultACLPolicy != "" {
		if d, err := authz.ParseDefault(meta.DefaultACLPolicy); err == nil {
			def = d
		}
	}
	t, err := authz.NewTable(ixns, s.cfg.Service, def)
	if err != nil {
		return 0, fmt.Errorf("identity: intentions for %q: %w", s.cfg.Service, err)
	}
	s.table.Store(t)
	s.ixnUpdates.Add(1)
	s.cfg.Logger.Info("identity: intentions updated", "service", s.cfg.Service, "intentions", t.Len(), "default", def.String(), "index", meta.LastIndex)
	s.emit(Event{Kind: IntentionsUpdated, Loop: "intentions", Index: meta.LastIndex})
	s.checkReady()
	return meta.LastIndex, nil
}

// convertIntentions turns consul/api intentions into authz ones through their shared JSON
// form, so that every field (L7 permissions included) carries over.
func convertIntentions(in []*api.Intention) ([]*authz.Intention, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("identity: intentions: encode: %w", err)
	}
	var out []*authz.Intention
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("identity: intentions: decode: %w", err)
	}
	for _, x := range out {
		if x.Precedence == 0 {
			x.UpdatePrecedence()
		}
	}
	return out, nil
}

// Authorize decides whether a caller with identity src may connect to this service, with
// Consul's reason text. Before the first intentions arrive every caller is denied. It never
// allocates.
func (s *Source) Authorize(src spiffe.ServiceID) (bool, string) {
	t := s.table.Load()
	if t == nil {
		return false, reasonNotLoaded
	}
	return t.Authorize(src)
}

// Identity returns this service's own identity, from the current leaf.
func (s *Source) Identity() (spiffe.ServiceID, bool) {
	l := s.leaf.Load()
	if l == nil {
		return spiffe.ServiceID{}, false
	}
	return l.id, true
}

// LeafExpiry returns the current leaf's NotAfter, zero before the first leaf.
func (s *Source) LeafExpiry() time.Time {
	if l := s.leaf.Load(); l != nil {
		return l.cert.Leaf.NotAfter
	}
	return time.Time{}
}

// Stats returns the counters and the current material's summary.
func (s *Source) Stats() Stats {
	st := Stats{
		RootUpdates: s.rootUpdates.Load(), LeafUpdates: s.leafUpdates.Load(), IntentionUpdates: s.ixnUpdates.Load(),
		RootErrors: s.rootErrors.Load(), LeafErrors: s.leafErrors.Load(), IntentionErrors: s.ixnErrors.Load(),
		LeafNotAfter: s.LeafExpiry(),
	}
	if r := s.roots.Load(); r != nil {
		st.ActiveRootID, st.TrustDomain = r.activeID, r.trustDomain
	}
	if t := s.table.Load(); t != nil {
		st.Intentions = t.Len()
	}
	return st
}

func parseCert(s string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(b.Bytes)
}

// identityOf returns the SPIFFE service identity of a certificate: its one URI SAN.
func identityOf(c *x509.Certificate) (spiffe.ServiceID, error) {
	if len(c.URIs) != 1 {
		return spiffe.ServiceID{}, fmt.Errorf("certificate %q has %d URI SANs, want 1", c.Subject.CommonName, len(c.URIs))
	}
	return spiffe.FromURI(c.URIs[0])
}

// limiter is a small token bucket: burst tokens, one more every interval.
type limiter struct {
	every  time.Duration
	burst  int
	tokens float64
	last   time.Time
}

func (l *limiter) wait(ctx context.Context) error {
	now := time.Now()
	if l.last.IsZero() {
		l.tokens = float64(l.burst)
	} else {
		l.tokens += float64(now.Sub(l.last)) / float64(l.every)
		if l.tokens > float64(l.burst) {
			l.tokens = float64(l.burst)
		}
	}
	l.last = now
	if l.tokens >= 1 {
		l.tokens--
		return ctx.Err()
	}
	d := time.Duration((1 - l.tokens) * float64(l.every))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	l.last = time.Now()
	l.tokens = 0
	return nil
}
