package lb

import (
	"fmt"
	"testing"
	"time"
)

// inPicker reports whether p can return h: some pick among many does.
func inPicker(p Picker, h *Host) bool {
	for i := range 300 {
		got, err := p.Pick(PickInfo{Hash: uint64(i), HasHash: true})
		if err == nil && got == h {
			return true
		}
	}
	return false
}

func TestEjectConsecutiveFailures(t *testing.T) {
	for _, tc := range []struct {
		outcome Outcome
		reason  string
	}{
		{ConnectFailure, ReasonConsecutiveGatewayFailure},
		{GatewayFailure, ReasonConsecutiveGatewayFailure},
		{ServerError, ReasonConsecutive5xx},
	} {
		t.Run(fmt.Sprint(tc.outcome), func(t *testing.T) {
			b := newTestBalancer(t, Config{Policy: RoundRobin}, endpoints(3))
			a := b.host(t, "a")
			fail(a, 4, tc.outcome)
			if a.Ejected() {
				t.Fatal("ejected after 4 failures, want 5")
			}
			changed := b.Changed()
			fail(a, 1, tc.outcome)
			if !a.Ejected() {
				t.Fatal("not ejected after 5 consecutive failures")
			}
			select {
			case <-changed:
			default:
				t.Fatal("ejection did not publish a new picker")
			}
			if inPicker(b.Picker(), a) {
				t.Error("the new picker still returns the ejected host")
			}
			if a.Available(b.clock.Now().UnixNano()) {
				t.Error("Available reports the ejected host available")
			}
			ev := b.events.all()
			if len(ev) != 1 || ev[0].Kind != EventEjected || ev[0].Reason != tc.reason || ev[0].Endpoint.ID != "a" ||
				ev[0].Ejections != 1 || !ev[0].Until.Equal(b.clock.Now().Add(30*time.Second)) {
				t.Errorf("events = %+v, want one ejection of a for 30s by %s", ev, tc.reason)
			}
			s := b.Stats()
			if s.Ejected != 1 || s.Ready != 2 || s.EjectionsTotal != 1 || s.Hosts[0].State != StateEjected {
				t.Errorf("stats = %+v, want a ejected", s)
			}
		})
	}
}

func TestSuccessResetsFailures(t *testing.T) {
	for _, reset := range []Outcome{Success, ClientError} {
		b := newTestBalancer(t, Config{}, endpoints(3))
		a := b.host(t, "a")
		fail(a, 4, ConnectFailure)
		fail(a, 1, reset)
		fail(a, 4, ServerError)
		if a.Ejected() {
			t.Errorf("outcome %d did not reset the consecutive count: 4 failures after it ejected the host", reset)
		}
		if s := b.Stats().Hosts[0]; s.Consecutive5xx != 4 || s.ConsecutiveGatewayFailures != 0 {
			t.Errorf("counts = %d 5xx, %d gateway; want 4 and 0 (a 500 breaks a gateway run)", s.Consecutive5xx, s.ConsecutiveGatewayFailures)
		}
	}
}

func TestEjectionRulesConfigurable(t *testing.T) {
	// A 500 counts only towards the 5xx rule; with it off, 500s never eject.
	b := newTestBalancer(t, Config{Outlier: OutlierConfig{Consecutive5xx: -1, ConsecutiveGatewayFailure: 2}}, endpoints(3))
	a := b.host(t, "a")
	fail(a, 20, ServerError)
	if a.Ejected() {
		t.Fatal("ejected by 500s with the 5xx rule off")
	}
	fail(a, 2, GatewayFailure)
	if !a.Ejected() {
		t.Fatal("not ejected after 2 gateway failures with the threshold at 2")
	}
	d := newTestBalancer(t, Config{Outlier: OutlierConfig{Disabled: true}}, endpoints(3))
	fail(d.host(t, "a"), 50, ConnectFailure)
	if d.host(t, "a").Ejected() {
		t.Fatal("ejected with outlier detection disabled")
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(3))
	a, bh, c := b.host(t, "a"), b.host(t, "b"), b.host(t, "c")
	fail(a, 5, ConnectFailure)
	fail(bh, 5, ConnectFailure)
	fail(c, 5, ConnectFailure)
	ejected := 0
	for _, h := range []*Host{a, bh, c} {
		if h.Ejected() {
			ejected++
		}
	}
	if ejected != 1 || !a.Ejected() {
		t.Fatalf("%d of 3 hosts ejected (a: %v), want only the first, a (50%% of 3 is 1)", ejected, a.Ejected())
	}
	if s := b.Stats(); s.EjectionsOverflow != 2 {
		t.Errorf("ejections_overflow = %d, want 2", s.EjectionsOverflow)
	}
	// b and c keep failing: still refused, and Pick keeps returning them.
	fail(bh, 10, ConnectFailure)
	if bh.Ejected() || !inPicker(b.Picker(), bh) {
		t.Error("a second host was ejected past the limit")
	}

	// A single host is never ejected.
	one := newTestBalancer(t, Config{Outlier: OutlierConfig{MaxEjectionPercent: 100}}, endpoints(1))
	fail(one.host(t, "a"), 50, ConnectFailure)
	if one.host(t, "a").Ejected() {
		t.Error("the only host was ejected")
	}
	if _, err := one.Pick(PickInfo{}); err != nil {
		t.Errorf("pick with the only host failing: %v", err)
	}
}

func TestReturnAfterEjectionTime(t *testing.T) {
	b := newTestBalancer(t, Config{Policy: Random}, endpoints(3))
	a := b.host(t, "a")
	fail(a, 5, ConnectFailure)
	b.clock.Advance(30*time.Second - time.Nanosecond)
	if !a.Ejected() {
		t.Fatal("returned before its 30s were up")
	}
	changed := b.Changed()
	b.clock.Advance(time.Nanosecond)
	if a.Ejected() {
		t.Fatal("not returned after 30s")
	}
	select {
	case <-changed:
	default:
		t.Fatal("the return did not publish a new picker")
	}
	if !inPicker(b.Picker(), a) {
		t.Error("the returned host is not in the new picker")
	}
	ev := b.events.all()
	if len(ev) != 2 || ev[1].Kind != EventReturned || ev[1].Reason != ReasonEjectionTimeElapsed {
		t.Errorf("events = %+v, want an ejection then a return", ev)
	}
	// The failure count starts afresh: four more failures do not eject it again.
	fail(a, 4, ConnectFailure)
	if a.Ejected() {
		t.Error("consecutive count survived the return")
	}
	if s := b.Stats(); s.ReturnsTotal != 1 || s.Ready != 3 {
		t.Errorf("stats = %+v, want 1 return and 3 ready", s)
	}
}

func TestEjectionTimeGrows(t *testing.T) {
	b := newTestBalancer(t, Config{Outlier: OutlierConfig{BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 100 * time.Second}}, endpoints(3))
	a := b.host(t, "a")
	for i, want := range []time.Duration{30 * time.Second, 60 * time.Second, 100 * time.Second, 100 * time.Second} {
		start := b.clock.Now()
		fail(a, 5, ConnectFailure)
		if !a.Ejected() {
			t.Fatalf("ejection %d did not happen", i+1)
		}
		if got := time.Unix(0, a.ejectedUntil.Load()).Sub(start); got != want {
			t.Errorf("ejection %d lasts %v, want %v (base × 2^(n−1), capped)", i+1, got, want)
		}
		b.clock.Advance(want)
		if a.Ejected() {
			t.Fatalf("ejection %d did not end after %v", i+1, want)
		}
	}
}

func TestEjectionMultiplierDecays(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(3))
	a := b.host(t, "a")
	for i := range 3 {
		fail(a, 5, ConnectFailure)
		b.clock.Advance(time.Duration(1<<i) * 30 * time.Second) // exactly until it returns
	}
	if got := b.Stats().Hosts[0].Ejections; got != 3 {
		t.Fatalf("multiplier = %d after 3 ejections, want 3", got)
	}
	// Two intervals (10s each) in rotation take two off; the next ejection makes it 2.
	b.clock.Advance(20 * time.Second)
	if got := b.Stats().Hosts[0].Ejections; got != 1 {
		t.Errorf("multiplier = %d after 20s healthy, want 1", got)
	}
	start := b.clock.Now()
	fail(a, 5, ConnectFailure)
	if got := time.Unix(0, a.ejectedUntil.Load()).Sub(start); got != 60*time.Second {
		t.Errorf("ejection after decay lasts %v, want 60s", got)
	}
	// A long healthy spell brings it back to the base time.
	b.clock.Advance(60 * time.Second)
	b.clock.Advance(10 * time.Minute)
	start = b.clock.Now()
	fail(a, 5, ConnectFailure)
	if got := time.Unix(0, a.ejectedUntil.Load()).Sub(start); got != 30*time.Second {
		t.Errorf("ejection after a long healthy spell lasts %v, want the base 30s", got)
	}
}

func TestUpdateEnforcesMaxEjected(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(4))
	a, bh := b.host(t, "a"), b.host(t, "b")
	fail(a, 5, ConnectFailure)
	b.clock.Advance(time.Second)
	fail(bh, 5, ConnectFailure)
	if !a.Ejected() || !bh.Ejected() {
		t.Fatal("50% of 4 hosts: a and b should both be ejected")
	}
	// d leaves: 50% of 3 is 1, so the host due back first, a, returns now.
	b.Update(endpoints(3))
	if a.Ejected() || !bh.Ejected() {
		t.Errorf("after d left: a ejected %v, b ejected %v; want a back and b still out", a.Ejected(), bh.Ejected())
	}
	ev := b.events.all()
	if last := ev[len(ev)-1]; last.Kind != EventReturned || last.Reason != ReasonMaxEjectionPercent || last.Endpoint.ID != "a" {
		t.Errorf("last event %+v, want a returned for max_ejection_percent", last)
	}
	// c leaves too: b must come back, never leaving only ejected hosts.
	b.Update(endpoints(2)[1:])
	if bh.Ejected() {
		t.Error("the only remaining host stays ejected")
	}
	if h, err := b.Pick(PickInfo{}); err != nil || h != bh {
		t.Errorf("Pick = %v, %v; want b", h, err)
	}
	if n := b.clock.pending(); n != 0 {
		t.Errorf("%d ejection timers left running for hosts back in rotation", n)
	}
}

func TestRemovedHostNotEjected(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(3))
	a := b.host(t, "a")
	for range 5 {
		a.Begin()
	}
	b.Update(endpoints(3)[1:])
	for range 5 {
		a.Done(time.Millisecond, ConnectFailure) // in-flight attempts finishing after removal
	}
	if a.Ejected() || len(b.events.all()) != 0 {
		t.Error("a host no longer in the balancer was ejected")
	}
	// Re-added, it is a fresh host.
	b.Update(endpoints(3))
	if b.host(t, "a") == a {
		t.Error("a removed and re-added endpoint kept its old host")
	}
}
