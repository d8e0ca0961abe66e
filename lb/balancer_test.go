package lb

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestUpdateKeepsHostState(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(3))
	a := b.host(t, "a")
	a.Begin()
	a.Begin()
	fail(a, 3, ServerError)
	b.clock.Advance(time.Second)
	a.Begin()
	a.Done(5*time.Millisecond, ServerError)
	cost := a.cost.Load()

	eps := endpoints(4)
	eps[0].Meta = map[string]string{"protocol": "http"}
	eps[0].Node = "node-2"
	b.Update(eps)
	if got := b.host(t, "a"); got != a {
		t.Fatal("Update replaced the host of an unchanged key")
	}
	if a.Active() != 2 || a.cons5xx.Load() != 4 || a.cost.Load() != cost {
		t.Errorf("state lost: active %d, consecutive 5xx %d", a.Active(), a.cons5xx.Load())
	}
	if ep := a.Endpoint(); ep.Node != "node-2" || ep.Meta["protocol"] != "http" {
		t.Errorf("endpoint fields not updated in place: %+v", ep)
	}
	// The fifth failure still ejects: the count carried over.
	fail(a, 1, ServerError)
	if !a.Ejected() {
		t.Error("the carried-over failure count did not eject at 5")
	}
	// Ejection survives an update too.
	b.Update(endpoints(4))
	if !b.host(t, "a").Ejected() {
		t.Error("ejection lost across an update")
	}
}

func TestUpdateRepublishesOnlyOnChange(t *testing.T) {
	b := newTestBalancer(t, Config{Policy: RoundRobin}, endpoints(3))
	for _, tc := range []struct {
		name    string
		eps     []Endpoint
		publish bool
	}{
		{"identical", endpoints(3), false},
		{"reordered", []Endpoint{endpoints(3)[2], endpoints(3)[0], endpoints(3)[1]}, false},
		{"meta only", func() []Endpoint { e := endpoints(3); e[1].Meta = map[string]string{"k": "v"}; return e }(), false},
		{"weight", endpoints(3, 1, 5), true},
		{"weight back", endpoints(3), true},
		{"address", func() []Endpoint { e := endpoints(3); e[2].Address = "127.0.0.1:1"; return e }(), true},
		{"added", endpoints(4), true},
		{"removed", endpoints(2), true},
		{"empty", nil, true},
		{"empty again", []Endpoint{}, false},
	} {
		ch := b.Changed()
		b.Update(tc.eps)
		if got := closed(ch); got != tc.publish {
			t.Errorf("%s: new picker published = %v, want %v", tc.name, got, tc.publish)
		}
		if n := len(b.Hosts()); n != len(tc.eps) {
			t.Errorf("%s: %d hosts, want %d", tc.name, n, len(tc.eps))
		}
	}
	if _, err := b.Pick(PickInfo{}); !errors.Is(err, ErrNoHost) {
		t.Errorf("Pick with no endpoints: %v, want ErrNoHost", err)
	}
}

func TestChangedWakesWaiter(t *testing.T) {
	b := newTestBalancer(t, Config{}, nil)
	if _, err := b.Pick(PickInfo{}); !errors.Is(err, ErrNoHost) {
		t.Fatalf("Pick on an empty balancer: %v", err)
	}
	got := make(chan *Host)
	go func() {
		for {
			ch := b.Changed()
			if h, err := b.Pick(PickInfo{}); err == nil {
				got <- h
				return
			}
			<-ch
		}
	}()
	b.Update(endpoints(1))
	select {
	case h := <-got:
		if h.Endpoint().ID != "a" {
			t.Errorf("waiter got %s", h.Endpoint().ID)
		}
	case <-testutil.Context(t, 5*time.Second).Done():
		t.Fatal("waiter not woken by Update")
	}
}

func TestDuplicateKeys(t *testing.T) {
	b := newTestBalancer(t, Config{}, nil)
	eps := append(endpoints(2), endpoints(1, 9)...)
	b.Update(eps)
	if n := len(b.Hosts()); n != 2 {
		t.Fatalf("%d hosts from 3 endpoints with 2 keys, want 2", n)
	}
	if w := b.host(t, "a").Endpoint().Weight; w != 9 {
		t.Errorf("duplicate key: weight %d, want the last one's 9", w)
	}
}

func TestCloseStopsTimers(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(3))
	fail(b.host(t, "a"), 5, ConnectFailure)
	if b.clock.pending() != 1 {
		t.Fatalf("%d timers pending after an ejection, want 1", b.clock.pending())
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := b.clock.pending(); n != 0 {
		t.Errorf("%d timers still pending after Close", n)
	}
	if err := b.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
	// No ejections after Close, and picking still works.
	fail(b.host(t, "b"), 5, ConnectFailure)
	if b.host(t, "b").Ejected() {
		t.Error("ejected after Close")
	}
	if _, err := b.Pick(PickInfo{}); err != nil {
		t.Errorf("Pick after Close: %v", err)
	}
}

func TestStatsJSON(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(2))
	fail(b.host(t, "a"), 5, ConnectFailure)
	out, err := json.Marshal(b.Stats())
	if err != nil {
		t.Fatalf("marshal stats: %v", err)
	}
	var back Stats
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatalf("unmarshal %s: %v", out, err)
	}
	if back.Ejected != 1 || back.Hosts[0].State != StateEjected || back.Hosts[0].EjectedUntil.IsZero() || back.Hosts[1].State != StateReady {
		t.Errorf("stats round trip: %s", out)
	}
	if _, err := json.Marshal(b.Config()); err != nil {
		t.Errorf("the effective config does not marshal for /config: %v", err)
	}
}

// TestConcurrentPickDoneUpdate hammers every path at once under the race detector with the
// real clock and real timers, then checks that in-flight counts balance and nothing leaks.
func TestConcurrentPickDoneUpdate(t *testing.T) {
	testutil.CheckGoroutines(t)
	for _, policy := range []Policy{RoundRobin, Random, LeastRequest, RingHash, Maglev} {
		t.Run(string(policy), func(t *testing.T) {
			var ejections atomic.Int64
			b, err := New(Config{
				Policy:          policy,
				MaglevTableSize: 1021, // keep rebuilds cheap under the race detector
				Outlier:         OutlierConfig{BaseEjectionTime: time.Millisecond, MaxEjectionTime: 5 * time.Millisecond},
				OnEvent: func(ev Event) {
					if ev.Kind == EventEjected {
						ejections.Add(1)
					}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			b.Update(endpoints(5))
			const workers, iterations = 4, 3000
			var wg sync.WaitGroup
			var mu sync.Mutex
			seen := map[*Host]bool{}
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 1))
					local := map[*Host]bool{}
					for i := range iterations {
						h, err := b.Pick(PickInfo{Hash: r.Uint64(), HasHash: i%2 == 0})
						if err != nil {
							continue // a moment with no endpoints
						}
						local[h] = true
						h.Begin()
						o := Success
						switch {
						case h.Endpoint().ID == "a":
							o = ConnectFailure // a always fails: ejected, returned, ejected…
						case r.IntN(10) == 0:
							o = Outcome(r.IntN(5))
						}
						h.Done(time.Duration(r.IntN(1000))*time.Microsecond, o)
					}
					mu.Lock()
					for h := range local {
						seen[h] = true
					}
					mu.Unlock()
				}()
			}
			// The updater changes the endpoint set, then waits for the next picker (an
			// ejection or a return) or a millisecond, until the workers are done.
			var stop atomic.Bool
			updaterDone := make(chan struct{})
			go func() {
				defer close(updaterDone)
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				for i := 0; !stop.Load(); i++ {
					b.Update(endpoints(3 + i%3))
					_ = b.Stats()
					// a also fails here, so it is ejected whatever the policy makes of it.
					if hosts := b.Hosts(); hosts[0].Endpoint().ID == "a" {
						hosts[0].Begin()
						hosts[0].Done(time.Millisecond, ConnectFailure)
					}
					select {
					case <-b.Changed():
					case <-tick.C:
					}
				}
			}()
			wg.Wait()
			stop.Store(true)
			<-updaterDone
			for h := range seen {
				if n := h.Active(); n != 0 {
					t.Errorf("host %s: %d attempts still in flight after all finished", h.Endpoint().ID, n)
				}
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if ejections.Load() == 0 {
				t.Error("the always-failing host was never ejected")
			}
			t.Logf("%d ejections", ejections.Load())
		})
	}
}
