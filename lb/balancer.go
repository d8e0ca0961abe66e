package lb

import (
	"fmt"
	"maps"
	"math"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Balancer owns the hosts of one upstream and publishes a picker over the ones in rotation.
//
// Writers (Update, an ejection from Done, an ejection timer) hold mu, change the host set or
// a host's ejection, build a new immutable Picker and swap it in; Pick only loads the
// current picker. Each published picker carries a channel closed when the next one replaces
// it (grpc-go's picker wrapper), which is what Changed returns.
type Balancer struct {
	cfg        Config
	epoch      time.Time // origin of mono
	tau        float64   // EWMA decay, nanoseconds
	penalty    float64   // least latency recorded for a connect/gateway failure, nanoseconds
	max5xx     int64     // 0 when the rule is off
	maxGateway int64     // 0 when the rule is off

	picker atomic.Pointer[pickerBox]

	mu     sync.Mutex
	hosts  map[string]*Host // by Endpoint.Key
	sorted []*Host          // hosts ordered by Endpoint.Key, so pickers do not depend on discovery order
	closed bool

	ejectionsTotal    uint64 // guarded by mu
	ejectionsOverflow uint64 // ejections refused by max_ejection_percent; guarded by mu
	returnsTotal      uint64 // guarded by mu
}

type pickerBox struct {
	p     Picker
	hosts []*Host       // every host, in rotation or not, for display
	ready chan struct{} // closed when a newer picker replaces this one
}

// New returns a Balancer with no endpoints, or an error naming the invalid config fields.
func New(cfg Config) (*Balancer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	b := &Balancer{
		cfg:     cfg,
		epoch:   cfg.Clock(),
		tau:     float64(cfg.DecayTime),
		penalty: float64(max(cfg.FailurePenalty, 0)),
		hosts:   map[string]*Host{},
	}
	if !cfg.Outlier.Disabled {
		b.max5xx = int64(max(cfg.Outlier.Consecutive5xx, 0))
		b.maxGateway = int64(max(cfg.Outlier.ConsecutiveGatewayFailure, 0))
	}
	b.picker.Store(&pickerBox{p: emptyPicker{}, ready: make(chan struct{})})
	return b, nil
}

// Config returns the effective configuration (defaults applied).
func (b *Balancer) Config() Config { return b.cfg }

// mono is a monotonic clock in nanoseconds since the Balancer was built.
func (b *Balancer) mono() int64 { return int64(b.cfg.Clock().Sub(b.epoch)) }

// Update replaces the endpoint set. Hosts whose Key is unchanged keep their state (in-flight
// count, EWMA, failures, ejection). The picker is rebuilt only when the set of keys or a
// weight changed; other endpoint fields are updated in place. If removing endpoints leaves
// more hosts ejected than max_ejection_percent allows, the ones due back soonest return now.
func (b *Balancer) Update(eps []Endpoint) {
	b.mu.Lock()
	next := make(map[string]*Host, len(eps))
	changed := false
	var newHosts []*Host
	for i := range eps {
		ep := eps[i]
		key := ep.Key()
		h := b.hosts[key]
		if h == nil {
			h = &Host{b: b}
			newHosts = append(newHosts, h)
			changed = true
		} else if old := h.ep.Load(); old.Weight != ep.Weight {
			changed = true
		}
		h.ep.Store(&ep)
		next[key] = h
	}
	changed = changed || len(next) != len(b.hosts)
	for key, h := range b.hosts {
		if next[key] != h {
			changed = true
			if h.stopTimer != nil {
				h.stopTimer()
				h.stopTimer = nil
			}
		}
	}
	if !changed {
		b.mu.Unlock()
		return
	}
	b.initHostsLocked(newHosts)
	b.hosts = next
	b.sorted = slices.SortedFunc(maps.Values(next), func(x, y *Host) int {
		return strings.Compare(x.ep.Load().Key(), y.ep.Load().Key())
	})
	events := b.enforceMaxEjectedLocked()
	b.publishLocked()
	b.mu.Unlock()
	b.emit(events)
}

// initHostsLocked gives new hosts their starting latency estimate: the mean of the current
// hosts' estimates, so a new host is neither starved nor flooded, or DefaultRTT when there
// are none.
func (b *Balancer) initHostsLocked(hosts []*Host) {
	if len(hosts) == 0 {
		return
	}
	now := b.mono()
	est := float64(b.cfg.DefaultRTT)
	if len(b.sorted) > 0 {
		sum := 0.0
		for _, h := range b.sorted {
			sum += h.latency(now, b.tau)
		}
		est = sum / float64(len(b.sorted))
	}
	for _, h := range hosts {
		h.cost.Store(math.Float64bits(est))
		h.stamp.Store(now)
	}
}

// maxEjectable is how many of n hosts may be ejected at once: max_ejection_percent of n
// rounded down, at least one when n ≥ 2, and never all of them.
func (b *Balancer) maxEjectable(n int) int {
	if n < 2 {
		return 0
	}
	m := n * b.cfg.Outlier.MaxEjectionPercent / 100
	return min(max(m, 1), n-1)
}

func (b *Balancer) ejectedLocked() int {
	n := 0
	for _, h := range b.sorted {
		if !h.inRotation() {
			n++
		}
	}
	return n
}

// enforceMaxEjectedLocked returns hosts to rotation, soonest-due first, until no more are
// ejected than maxEjectable allows.
func (b *Balancer) enforceMaxEjectedLocked() []Event {
	var events []Event
	for b.ejectedLocked() > b.maxEjectable(len(b.sorted)) {
		var first *Host
		for _, h := range b.sorted {
			if !h.inRotation() && (first == nil || h.ejectedUntil.Load() < first.ejectedUntil.Load()) {
				first = h
			}
		}
		events = append(events, b.returnLocked(first, ReasonMaxEjectionPercent))
	}
	return events
}

// eject takes h out of rotation after it crossed a consecutive-failure threshold, unless it
// is already out, no longer belongs to the Balancer, or max_ejection_percent forbids it.
func (b *Balancer) eject(h *Host, reason string) {
	if !h.inRotation() {
		return
	}
	b.mu.Lock()
	if b.closed || !h.inRotation() || b.hosts[h.ep.Load().Key()] != h {
		b.mu.Unlock()
		return
	}
	if b.ejectedLocked()+1 > b.maxEjectable(len(b.sorted)) {
		b.ejectionsOverflow++
		b.mu.Unlock()
		return
	}
	o := b.cfg.Outlier
	now := b.cfg.Clock()
	mult := h.multiplierLocked(now, o.Interval) + 1
	h.ejections = mult
	d := min(o.BaseEjectionTime*time.Duration(mult), o.MaxEjectionTime)
	until := now.Add(d)
	h.ejectedUntil.Store(until.UnixNano())
	h.gen++
	gen := h.gen
	h.stopTimer = b.cfg.AfterFunc(d, func() { b.timerReturn(h, gen) })
	b.ejectionsTotal++
	b.publishLocked()
	ev := Event{Kind: EventEjected, Endpoint: h.Endpoint(), Reason: reason, Ejections: mult, Until: until}
	b.mu.Unlock()
	b.emit([]Event{ev})
}

// multiplierLocked is the host's ejection multiplier now: the times it was ejected, less one
// for every interval it has spent in rotation since it last came back.
func (h *Host) multiplierLocked(now time.Time, interval time.Duration) int {
	m := h.ejections
	if m > 0 && h.inRotation() && interval > 0 {
		m -= int(now.Sub(h.returnedAt) / interval)
	}
	return max(m, 0)
}

// timerReturn is the ejection timer of generation gen of h firing.
func (b *Balancer) timerReturn(h *Host, gen uint64) {
	b.mu.Lock()
	if b.closed || h.gen != gen || h.inRotation() || b.hosts[h.ep.Load().Key()] != h {
		b.mu.Unlock()
		return
	}
	ev := b.returnLocked(h, ReasonEjectionTimeElapsed)
	b.publishLocked()
	b.mu.Unlock()
	b.emit([]Event{ev})
}

// returnLocked puts an ejected host back in rotation (the caller republishes).
func (b *Balancer) returnLocked(h *Host, reason string) Event {
	now := b.cfg.Clock()
	h.ejections = h.multiplierLocked(now, b.cfg.Outlier.Interval)
	h.ejectedUntil.Store(0)
	h.returnedAt = now
	h.cons5xx.Store(0)
	h.consGateway.Store(0)
	if h.stopTimer != nil {
		h.stopTimer()
		h.stopTimer = nil
	}
	b.returnsTotal++
	return Event{Kind: EventReturned, Endpoint: h.Endpoint(), Reason: reason, Ejections: h.ejections}
}

func (b *Balancer) emit(events []Event) {
	if b.cfg.OnEvent == nil {
		return
	}
	for _, ev := range events {
		b.cfg.OnEvent(ev)
	}
}

// publishLocked builds a picker over the hosts in rotation and swaps it in, waking the
// callers waiting on Changed.
func (b *Balancer) publishLocked() {
	ready := make([]*Host, 0, len(b.sorted))
	for _, h := range b.sorted {
		if h.inRotation() {
			ready = append(ready, h)
		}
	}
	box := &pickerBox{p: b.build(ready), hosts: b.sorted, ready: make(chan struct{})}
	old := b.picker.Swap(box)
	close(old.ready)
}

// Pick chooses a host for one attempt. It never blocks and never allocates. It returns
// ErrNoHost when there are no endpoints; while there are, outlier detection always leaves
// at least one in rotation.
func (b *Balancer) Pick(info PickInfo) (*Host, error) { return b.picker.Load().p.Pick(info) }

// Picker returns the current picker snapshot.
func (b *Balancer) Picker() Picker { return b.picker.Load().p }

// Hosts returns the current hosts, in rotation or ejected, ordered by key, for display.
func (b *Balancer) Hosts() []*Host { return slices.Clone(b.picker.Load().hosts) }

// Changed returns a channel closed when the picker is next replaced, so a caller that found
// no host can wait for endpoints without polling.
func (b *Balancer) Changed() <-chan struct{} { return b.picker.Load().ready }

// Close stops the ejection timers. Hosts ejected at that moment stay ejected, and Pick keeps
// working on the last picker. A second Close returns net.ErrClosed.
func (b *Balancer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("lb: close balancer: %w", net.ErrClosed)
	}
	b.closed = true
	for _, h := range b.sorted {
		if h.stopTimer != nil {
			h.stopTimer()
			h.stopTimer = nil
		}
	}
	return nil
}
