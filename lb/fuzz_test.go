package lb

import (
	"errors"
	"testing"
	"time"
)

// FuzzBalancerAvailability drives a balancer through a fuzzed sequence of failures, clock
// advances and endpoint updates, and checks after each step that outlier ejection respects
// the max ejection percent (never the last host) and that Pick, with or without a hash key,
// never returns an ejected host and fails only when there are no endpoints.
func FuzzBalancerAvailability(f *testing.F) {
	f.Add([]byte{0, 3, 0, 4, 8, 1, 2})
	f.Add([]byte{2, 5, 0, 4, 8, 12, 16, 121, 0, 2, 30})
	f.Add([]byte{4, 8, 0, 4, 8, 12, 16, 20, 24, 28, 6, 10, 3, 253})
	f.Add([]byte{3, 1, 0, 0, 0, 2, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 || len(data) > 64 {
			return
		}
		policy := policies[int(data[0])%len(policies)]
		n := 1 + int(data[1])%8
		b := newTestBalancer(t, Config{Policy: policy, MaglevTableSize: 251, MinimumRingSize: 64}, endpoints(n))
		for step, op := range data[2:] {
			hosts := b.Hosts()
			arg := int(op >> 2)
			switch op % 4 {
			case 0: // a host fails enough to be ejected, if allowed
				if len(hosts) > 0 {
					fail(hosts[arg%len(hosts)], 5, Outcome(2+arg%3))
				}
			case 1: // time passes: ejections end
				b.clock.Advance(time.Duration(arg) * 5 * time.Second)
			case 2: // endpoints come and go, weights change
				eps := endpoints(1+arg%8, uint32(arg%3), uint32(arg%5))
				if arg%16 == 15 {
					eps = nil
				}
				b.Update(eps)
			case 3: // a host succeeds
				if len(hosts) > 0 {
					h := hosts[arg%len(hosts)]
					h.Begin()
					h.Done(time.Duration(arg)*time.Millisecond, Success)
				}
			}
			checkAvailability(t, b, step)
		}
	})
}

func checkAvailability(t *testing.T, b *testBalancer, step int) {
	t.Helper()
	hosts := b.Hosts()
	ejected := 0
	for _, h := range hosts {
		if h.Ejected() {
			ejected++
		}
	}
	if max := b.maxEjectable(len(hosts)); ejected > max {
		t.Fatalf("step %d: %d of %d hosts ejected, max %d", step, ejected, len(hosts), max)
	}
	for i := range 40 {
		h, err := b.Pick(PickInfo{Hash: uint64(i) * 0x9e3779b97f4a7c15, HasHash: i%2 == 0})
		switch {
		case err != nil && len(hosts) > 0:
			t.Fatalf("step %d: Pick failed with %d hosts, %d ejected: %v", step, len(hosts), ejected, err)
		case err != nil && !errors.Is(err, ErrNoHost):
			t.Fatalf("step %d: Pick error %v, want ErrNoHost", step, err)
		case err == nil && h.Ejected():
			t.Fatalf("step %d: Pick returned ejected host %s", step, h.Endpoint().ID)
		}
	}
}

// FuzzStalePicker checks the guard in every picker: a picker built over some hosts, some of
// which are ejected afterwards (the moment before the next picker is published), never
// returns an ejected host, returns ErrNoHost only when all of its hosts are ejected, and
// returns the host to avoid only when it is the last one in rotation.
func FuzzStalePicker(f *testing.F) {
	f.Add(uint8(0), uint8(3), uint8(0b001), []byte{1, 2, 3}, uint64(1))
	f.Add(uint8(2), uint8(5), uint8(0b11110), []byte{0, 9}, uint64(7))
	f.Add(uint8(3), uint8(8), uint8(0b01111111), []byte{4}, uint64(99))
	f.Add(uint8(4), uint8(2), uint8(0b11), []byte{}, uint64(3))
	f.Fuzz(func(t *testing.T, pol, count, mask uint8, weights []byte, seed uint64) {
		policy := policies[int(pol)%len(policies)]
		n := 1 + int(count)%8
		w := make([]uint32, n)
		for i := range w {
			if i < len(weights) {
				w[i] = uint32(weights[i] % 16)
			}
		}
		b := newTestBalancer(t, Config{Policy: policy, MaglevTableSize: 251, MinimumRingSize: 64, Rand: seededRand(seed)}, endpoints(n, w...))
		p := b.Picker()
		hosts := b.Hosts()
		var avoid *Host
		if seed%3 == 0 {
			avoid = hosts[int(seed/3)%n]
		}
		live := 0
		for i, h := range hosts {
			if mask&(1<<i) != 0 {
				h.ejectedUntil.Store(1) // behind the balancer's back: the picker is now stale
			} else {
				live++
			}
		}
		for i := range 64 {
			h, err := p.Pick(PickInfo{Hash: seed + uint64(i)*0x9e3779b97f4a7c15, HasHash: i%3 != 0, Avoid: avoid})
			switch {
			case err != nil && live > 0:
				t.Fatalf("%s: ErrNoHost with %d of %d hosts live", policy, live, n)
			case err == nil && h.Ejected():
				t.Fatalf("%s: returned ejected host %s", policy, h.Endpoint().ID)
			case err == nil && h == avoid && live > 1:
				t.Fatalf("%s: returned the host to avoid with %d hosts live", policy, live)
			}
		}
	})
}
