package lb

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a manual clock whose AfterFunc timers fire, in order, when Advance passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
	fired   bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped && !t.fired
		t.stopped = true
		return was
	}
}

// Advance moves the clock by d, firing the timers that come due, each at its own time.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var due *fakeTimer
		for _, t := range c.timers {
			if !t.stopped && !t.fired && !t.at.After(end) && (due == nil || t.at.Before(due.at)) {
				due = t
			}
		}
		if due == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		due.fired = true
		c.now = due.at
		c.mu.Unlock()
		due.f()
	}
}

// pending counts the timers neither fired nor stopped.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped && !t.fired {
			n++
		}
	}
	return n
}

// eventLog records OnEvent calls.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (l *eventLog) add(ev Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
}

func (l *eventLog) all() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// seededRand returns a deterministic random source (not safe for concurrent use).
func seededRand(seed uint64) func() uint64 {
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)).Uint64
}

// endpoints returns n endpoints a, b, c, … with the given weights (missing weights are 0).
func endpoints(n int, weights ...uint32) []Endpoint {
	eps := make([]Endpoint, n)
	for i := range eps {
		eps[i] = Endpoint{
			ID:      string(rune('a' + i)),
			Address: fmt.Sprintf("127.0.0.1:%d", 20000+i),
		}
		if i < len(weights) {
			eps[i].Weight = weights[i]
		}
	}
	return eps
}

type testBalancer struct {
	*Balancer
	clock  *fakeClock
	events *eventLog
}

// newTestBalancer returns a Balancer on a fake clock with a seeded random source, recording
// its events, and closes it when the test ends.
func newTestBalancer(t testing.TB, cfg Config, eps []Endpoint) *testBalancer {
	t.Helper()
	clk := newFakeClock()
	log := &eventLog{}
	cfg.Clock = clk.Now
	cfg.AfterFunc = clk.AfterFunc
	if cfg.Rand == nil {
		cfg.Rand = seededRand(1)
	}
	cfg.OnEvent = log.add
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if eps != nil {
		b.Update(eps)
	}
	return &testBalancer{Balancer: b, clock: clk, events: log}
}

// host returns the host with endpoint ID id.
func (b *testBalancer) host(t testing.TB, id string) *Host {
	t.Helper()
	for _, h := range b.Hosts() {
		if h.Endpoint().ID == id {
			return h
		}
	}
	t.Fatalf("no host %q", id)
	return nil
}

// fail records n attempts on h ending with outcome o.
func fail(h *Host, n int, o Outcome) {
	for range n {
		h.Begin()
		h.Done(time.Millisecond, o)
	}
}

// counts picks n times and counts the picks per endpoint ID.
func counts(t testing.TB, p Picker, n int, info func(i int) PickInfo) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		var pi PickInfo
		if info != nil {
			pi = info(i)
		}
		h, err := p.Pick(pi)
		if err != nil {
			t.Fatalf("pick %d: %v", i, err)
		}
		got[h.Endpoint().ID]++
	}
	return got
}
