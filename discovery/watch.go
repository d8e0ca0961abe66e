// Package discovery watches the registry for the healthy instances of a service, through
// github.com/hashicorp/consul/api only (so a Consul agent works as well as Podmesh's own
// registry), and hands each new endpoint set to a listener: in the sidecar, an upstream's
// load balancer.
//
// Static stability: the registry being down never empties an endpoint set. On errors the
// watcher keeps the last set and retries with jittered exponential backoff. After a period
// of errors, or when the registry's index goes backwards (a restart or a restore), the
// registry may answer before the instances have registered again; for a grace period
// after such a recovery every published set is the union of the answer and the set known
// before, so that traffic keeps flowing to instances that are merely not re-registered yet.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/backoff"
	"github.com/podmesh/podmesh/lb"
)

// Listener receives endpoint sets. Update is called from the watcher's goroutine, one call
// at a time, only when the set changed; it must not block for long. The slice is the
// listener's to keep.
type Listener interface {
	Update(eps []lb.Endpoint)
}

// ListenerFunc adapts a function to Listener.
type ListenerFunc func([]lb.Endpoint)

// Update calls f.
func (f ListenerFunc) Update(eps []lb.Endpoint) { f(eps) }

// Defaults of a Config.
const (
	// DefaultWaitTime is the blocking query's wait; the registry answers sooner on change.
	DefaultWaitTime = 60 * time.Second
	// DefaultRecoveryGrace is how long sets are merged with the last known one after the
	// registry recovers: a few health-check intervals, time enough to re-register.
	DefaultRecoveryGrace = 15 * time.Second
	// DefaultMinInterval and burst 2 rate-limit the query loop (a token bucket, as the
	// Consul documentation asks of blocking-query clients).
	DefaultMinInterval = 100 * time.Millisecond
)

// Config configures a Watcher. Zero fields take the defaults above.
type Config struct {
	Client        *api.Client
	Service       string
	Listener      Listener
	WaitTime      time.Duration
	RecoveryGrace time.Duration
	MinInterval   time.Duration
	// Backoff paces retries after errors; the zero value means 250ms doubling to 10s,
	// with half of each wait jittered.
	Backoff backoff.Waiter
	Log     *slog.Logger
}

// State is a watcher's status, for the admin /config view.
type State struct {
	Service     string    `json:"service"`
	Index       uint64    `json:"index"`
	Endpoints   int       `json:"endpoints"`
	Answered    bool      `json:"answered"` // the registry has answered at least once
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Failures    int       `json:"consecutive_failures"`
	Recovering  bool      `json:"recovering"` // within the grace period after a recovery
}

// Watcher follows one service's passing instances with blocking queries.
type Watcher struct {
	cfg   Config
	log   *slog.Logger
	ready chan struct{}

	mu    sync.Mutex
	state State
}

// New returns a watcher; Run starts it.
func New(cfg Config) (*Watcher, error) {
	if cfg.Client == nil || cfg.Service == "" || cfg.Listener == nil {
		return nil, errors.New("discovery: watcher needs a client, a service and a listener")
	}
	if cfg.WaitTime <= 0 {
		cfg.WaitTime = DefaultWaitTime
	}
	if cfg.RecoveryGrace <= 0 {
		cfg.RecoveryGrace = DefaultRecoveryGrace
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.Backoff == (backoff.Waiter{}) {
		cfg.Backoff = backoff.Waiter{Min: 250 * time.Millisecond, Max: 10 * time.Second, Jitter: 0.5}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{
		cfg:   cfg,
		log:   cfg.Log.With("watch", cfg.Service),
		ready: make(chan struct{}),
		state: State{Service: cfg.Service},
	}, nil
}

// Ready is closed once the registry has answered for the first time (even with no
// instances), so that a sidecar can report ready without stalling on a new upstream.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// State returns the watcher's status.
func (w *Watcher) State() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

// Run watches until ctx is cancelled, then returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	var (
		index      uint64
		last       []lb.Endpoint // the set last published
		stable     []lb.Endpoint // the set known before the registry failed
		published  bool
		failing    bool
		recoverEnd time.Time
		bucket     = tokenBucket{interval: w.cfg.MinInterval, burst: 2}
		wait       = w.cfg.Backoff
	)
	for {
		if err := bucket.take(ctx); err != nil {
			return nil
		}
		waitTime := w.cfg.WaitTime
		recovering := !recoverEnd.IsZero()
		if recovering {
			// Answer by the end of the grace at the latest, to publish the plain set then.
			waitTime = min(waitTime, max(time.Until(recoverEnd), 10*time.Millisecond))
		}
		entries, meta, err := w.query(ctx, index, waitTime)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !failing && published {
				stable = last
			}
			failing = true
			index = 0 // start over with a non-blocking read once the registry is back
			w.record(func(s *State) { s.LastError = err.Error(); s.Failures++ })
			w.log.Warn("registry query failed; keeping the last endpoints", "err", err, "endpoints", len(last))
			if wait.Wait(ctx) != nil {
				return nil
			}
			continue
		}
		wait.Reset()
		if meta.LastIndex < index {
			// The registry's index went backwards: a restart or a restore.
			if published && !failing {
				stable = last
			}
			failing = true
		}
		if failing {
			failing = false
			if stable != nil {
				recoverEnd = time.Now().Add(w.cfg.RecoveryGrace)
				w.log.Info("registry answering again; merging with the last known endpoints", "grace", w.cfg.RecoveryGrace)
			}
		}
		eps := toEndpoints(entries)
		if !recoverEnd.IsZero() {
			if time.Now().Before(recoverEnd) {
				eps = union(eps, stable)
			} else {
				recoverEnd, stable = time.Time{}, nil
			}
		}
		index = max(meta.LastIndex, 1) // Consul: an index below 1 is treated as 1
		w.record(func(s *State) {
			s.Index, s.Endpoints, s.Answered = index, len(eps), true
			s.LastSuccess, s.LastError, s.Failures = time.Now(), "", 0
			s.Recovering = !recoverEnd.IsZero()
		})
		if !published || !slices.EqualFunc(eps, last, sameEndpoint) {
			w.cfg.Listener.Update(slices.Clone(eps))
			last, published = eps, true
		}
		select {
		case <-w.ready:
		default:
			close(w.ready)
		}
	}
}

func (w *Watcher) record(f func(*State)) {
	w.mu.Lock()
	f(&w.state)
	w.mu.Unlock()
}

// query runs one blocking query for the passing instances. The context bounds it a little
// beyond the wait plus the registry's jitter (wait/16), so a registry that vanished
// without closing the connection cannot hang the watch.
func (w *Watcher) query(ctx context.Context, index uint64, wait time.Duration) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+wait/16+5*time.Second)
	defer cancel()
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	entries, meta, err := w.cfg.Client.Health().Service(w.cfg.Service, "", true, q)
	if err != nil {
		return nil, nil, fmt.Errorf("discovery: watch %q: %w", w.cfg.Service, err)
	}
	return entries, meta, nil
}

// toEndpoints converts registry entries, sorted by key so that sets compare by value. An
// instance without its own address uses its node's, as Consul clients do.
func toEndpoints(entries []*api.ServiceEntry) []lb.Endpoint {
	eps := make([]lb.Endpoint, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		host := e.Service.Address
		node := ""
		if e.Node != nil {
			node = e.Node.Node
			if host == "" {
				host = e.Node.Address
			}
		}
		if host == "" || e.Service.Port <= 0 {
			continue
		}
		w := e.Service.Weights.Passing
		eps = append(eps, lb.Endpoint{
			ID:      e.Service.ID,
			Address: net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			Weight:  uint32(max(w, 0)),
			Node:    node,
			Meta:    e.Service.Meta,
		})
	}
	slices.SortFunc(eps, func(a, b lb.Endpoint) int {
		switch ka, kb := a.Key(), b.Key(); {
		case ka < kb:
			return -1
		case ka > kb:
			return 1
		}
		return 0
	})
	return eps
}

func sameEndpoint(a, b lb.Endpoint) bool {
	if a.ID != b.ID || a.Address != b.Address || a.Weight != b.Weight || a.Node != b.Node || len(a.Meta) != len(b.Meta) {
		return false
	}
	for k, v := range a.Meta {
		if w, ok := b.Meta[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// union returns eps plus the endpoints of old whose key eps lacks, sorted.
func union(eps, old []lb.Endpoint) []lb.Endpoint {
	have := make(map[string]bool, len(eps))
	for _, e := range eps {
		have[e.Key()] = true
	}
	out := slices.Clone(eps)
	for _, e := range old {
		if !have[e.Key()] {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b lb.Endpoint) int {
		switch ka, kb := a.Key(), b.Key(); {
		case ka < kb:
			return -1
		case ka > kb:
			return 1
		}
		return 0
	})
	return out
}

// tokenBucket allows burst queries at once, then one per interval.
type tokenBucket struct {
	interval time.Duration
	burst    float64
	tokens   float64
	last     time.Time
	started  bool
}

func (b *tokenBucket) take(ctx context.Context) error {
	now := time.Now()
	if !b.started {
		b.started, b.tokens, b.last = true, b.burst, now
	}
	b.tokens = min(b.burst, b.tokens+float64(now.Sub(b.last))/float64(b.interval))
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return nil
	}
	d := time.Duration((1 - b.tokens) * float64(b.interval))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	b.tokens, b.last = 0, time.Now()
	return nil
}
