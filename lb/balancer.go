package lb

import (
	"sync"
	"sync/atomic"
	"time"
)

// Host is the long-lived state of one endpoint. Every picker snapshot that includes the
// endpoint points at the same Host, so its counters survive endpoint updates. All fields are
// atomics: the hot path reads and writes them without locks.
type Host struct {
	ep atomic.Pointer[Endpoint]

	active       atomic.Int64 // attempts in flight
	ejectedUntil atomic.Int64 // unix nanos; ejected while now < ejectedUntil
}

// Endpoint returns the endpoint this host currently stands for.
func (h *Host) Endpoint() Endpoint { return *h.ep.Load() }

// Address is the address to dial.
func (h *Host) Address() string { return h.ep.Load().Address }

// Active reports the attempts in flight.
func (h *Host) Active() int64 { return h.active.Load() }

// Available reports whether the host may be picked at now (unix nanos): it is not ejected.
func (h *Host) Available(now int64) bool { return h.ejectedUntil.Load() <= now }

// Begin records the start of an attempt; call Done when it ends.
func (h *Host) Begin() { h.active.Add(1) }

// Done records the end of an attempt that began with Begin.
func (h *Host) Done(latency time.Duration, o Outcome) {
	h.active.Add(-1)
	_ = latency
	_ = o
}

// Config configures a Balancer. The zero value means: least_request, default outlier
// detection.
type Config struct {
	Policy Policy
	Clock  Clock
}

// Balancer owns the hosts of one upstream and publishes a picker over the ready ones.
type Balancer struct {
	cfg    Config
	picker atomic.Pointer[pickerBox]

	mu    sync.Mutex
	hosts map[string]*Host // by Endpoint.Key
}

type pickerBox struct {
	p     Picker
	hosts []*Host
	ready chan struct{} // closed when a newer picker replaces this one
}

// New returns a Balancer with no endpoints.
func New(cfg Config) (*Balancer, error) {
	if cfg.Policy == "" {
		cfg.Policy = LeastRequest
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	b := &Balancer{cfg: cfg, hosts: map[string]*Host{}}
	b.picker.Store(&pickerBox{p: emptyPicker{}, ready: make(chan struct{})})
	return b, nil
}

// Update replaces the endpoint set. Hosts whose key is unchanged keep their state.
func (b *Balancer) Update(eps []Endpoint) {
	b.mu.Lock()
	defer b.mu.Unlock()
	next := make(map[string]*Host, len(eps))
	hosts := make([]*Host, 0, len(eps))
	for i := range eps {
		ep := eps[i]
		h := b.hosts[ep.Key()]
		if h == nil {
			h = &Host{}
		}
		h.ep.Store(&ep)
		next[ep.Key()] = h
		hosts = append(hosts, h)
	}
	b.hosts = next
	b.publishLocked(hosts)
}

func (b *Balancer) publishLocked(hosts []*Host) {
	var p Picker = emptyPicker{}
	if len(hosts) > 0 {
		p = &roundRobinPicker{hosts: hosts, now: b.cfg.Clock}
	}
	old := b.picker.Swap(&pickerBox{p: p, hosts: hosts, ready: make(chan struct{})})
	close(old.ready)
}

// Pick chooses a host for one attempt.
func (b *Balancer) Pick(info PickInfo) (*Host, error) { return b.picker.Load().p.Pick(info) }

// Hosts returns the current hosts, for display.
func (b *Balancer) Hosts() []*Host { return b.picker.Load().hosts }

// Changed returns a channel closed when the picker is next replaced, so a caller that found
// no host can wait for endpoints without polling.
func (b *Balancer) Changed() <-chan struct{} { return b.picker.Load().ready }

type emptyPicker struct{}

func (emptyPicker) Pick(PickInfo) (*Host, error) { return nil, ErrNoHost }

type roundRobinPicker struct {
	hosts []*Host
	next  atomic.Uint64
	now   Clock
}

func (p *roundRobinPicker) Pick(PickInfo) (*Host, error) {
	n := uint64(len(p.hosts))
	start := p.next.Add(1)
	now := p.now().UnixNano()
	for i := uint64(0); i < n; i++ {
		if h := p.hosts[(start+i)%n]; h.Available(now) {
			return h, nil
		}
	}
	return nil, ErrNoHost
}
