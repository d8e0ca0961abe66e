package lb

import (
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// within fails the test unless got is within tol of want.
func within(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s = %.4f, want %.4f ± %.4f", what, got, want, tol)
	}
}

// sequence picks n times and returns the IDs joined.
func sequence(t *testing.T, p Picker, n int) string {
	t.Helper()
	var ids []string
	for range n {
		h, err := p.Pick(PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, h.Endpoint().ID)
	}
	return strings.Join(ids, "")
}

func TestRoundRobin(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []uint32
		start   uint64
		want    string // one cycle from the counter's start
	}{
		{"equal", nil, 0, "abc"},
		{"equal, zero weight is one", []uint32{0, 1, 0}, 0, "abc"},
		{"equal, random start", nil, 2, "cab"},
		{"equal weights above one", []uint32{7, 7, 7}, 0, "abc"},
		{"weighted 1,2,3", []uint32{1, 2, 3}, 0, "cbacbc"},
		{"weighted 5,1,1 is smooth", []uint32{5, 1, 1}, 0, "aabacaa"},
		{"weighted 10,20,30 reduces by gcd", []uint32{10, 20, 30}, 0, "cbacbc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := tc.start
			b := newTestBalancer(t, Config{Policy: RoundRobin, Rand: func() uint64 { return start }}, endpoints(3, tc.weights...))
			// Three whole cycles: the cycle repeats exactly.
			if got, want := sequence(t, b.Picker(), 3*len(tc.want)), strings.Repeat(tc.want, 3); got != want {
				t.Errorf("round robin = %s, want %s", got, want)
			}
		})
	}
}

func TestRoundRobinScheduleScaled(t *testing.T) {
	// A weight sum above maxSchedule is scaled down; proportions hold and every host keeps a slot.
	b := newTestBalancer(t, Config{Policy: RoundRobin, Rand: func() uint64 { return 0 }}, endpoints(3, 100000, 50000, 1))
	p := b.Picker().(*roundRobinPicker)
	if len(p.sched) > maxSchedule+3 {
		t.Fatalf("schedule length %d, want ≤ %d", len(p.sched), maxSchedule+3)
	}
	got := counts(t, p, len(p.sched), nil)
	if got["c"] < 1 {
		t.Errorf("host c lost its slot: %v", got)
	}
	within(t, "a/b ratio", float64(got["a"])/float64(got["b"]), 2, 0.01)
}

func TestRandomDistribution(t *testing.T) {
	const n = 60000
	for _, tc := range []struct {
		name    string
		weights []uint32
	}{
		{"equal", nil},
		{"weighted 1,2,3", []uint32{1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBalancer(t, Config{Policy: Random, Rand: seededRand(7)}, endpoints(3, tc.weights...))
			got := counts(t, b.Picker(), n, nil)
			total := 0.0
			for i := range 3 {
				total += float64(weightOr1(tc.weights, i))
			}
			for i, id := range []string{"a", "b", "c"} {
				p := float64(weightOr1(tc.weights, i)) / total
				// Five standard deviations of a binomial count.
				tol := 5 * math.Sqrt(n*p*(1-p))
				within(t, "picks of "+id, float64(got[id]), n*p, tol)
			}
		})
	}
}

func weightOr1(w []uint32, i int) uint32 {
	if i < len(w) && w[i] > 0 {
		return w[i]
	}
	return 1
}

func TestLeastRequestPrefersFewerActive(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(3))
	a := b.host(t, "a")
	for range 10 {
		a.Begin()
	}
	got := counts(t, b.Picker(), 3000, nil)
	// With equal latency and distinct candidates, the busy host loses every comparison.
	if got["a"] != 0 {
		t.Errorf("busy host a got %d of 3000 picks: %v", got["a"], got)
	}
	within(t, "share of b", float64(got["b"])/3000, 0.5, 0.05)

	// Once a's requests finish, it is back in play.
	for range 10 {
		a.Done(-1, Success)
	}
	got = counts(t, b.Picker(), 3000, nil)
	for _, id := range []string{"a", "b", "c"} {
		within(t, "idle share of "+id, float64(got[id])/3000, 1.0/3, 0.05)
	}
}

func TestLeastRequestPrefersLowerEWMA(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(3))
	for range 20 {
		for _, id := range []string{"a", "b", "c"} {
			lat := time.Millisecond
			if id == "b" {
				lat = 100 * time.Millisecond
			}
			h := b.host(t, id)
			h.Begin()
			h.Done(lat, Success)
		}
		b.clock.Advance(time.Second)
	}
	got := counts(t, b.Picker(), 3000, nil)
	if got["b"] != 0 {
		t.Errorf("slow host b got %d of 3000 picks: %v", got["b"], got)
	}
	// The score is latency × (active+1): one request in flight on a fast host still beats
	// an idle host a hundred times slower, but 200 in flight do not.
	a, c := b.host(t, "a"), b.host(t, "c")
	for range 200 {
		a.Begin()
		c.Begin()
	}
	got = counts(t, b.Picker(), 3000, nil)
	if got["b"] < 1000 {
		t.Errorf("idle slow host b got %d of 3000 picks against two hosts with 200 in flight: %v", got["b"], got)
	}

	// An idle slow host's estimate decays, so it is tried again.
	b2 := newTestBalancer(t, Config{}, endpoints(2))
	slow := b2.host(t, "a")
	slow.Begin()
	slow.Done(time.Second, Success)
	fast := b2.host(t, "b")
	fast.Begin()
	fast.Done(time.Millisecond, Success)
	if h, _ := b2.Pick(PickInfo{}); h != fast {
		t.Fatalf("picked %s, want the fast host", h.Endpoint().ID)
	}
	fast.Begin() // the fast host stays busy and its estimate stays fresh
	fast.Done(time.Millisecond, Success)
	b2.clock.Advance(time.Minute) // 1s·e^-6 ≈ 2.5ms: still slower than 1ms·(0+1)…
	fast.Begin()
	fast.Begin() // …but not than 1ms·(2+1) once the fast host has two in flight
	fast.Done(time.Millisecond, Success)
	fast.Begin()
	if h, _ := b2.Pick(PickInfo{}); h != slow {
		t.Errorf("picked %s after the slow host idled a minute, want it tried again", h.Endpoint().ID)
	}
}

func TestLeastRequestNewHostGetsTraffic(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(3))
	for range 200 { // 20s of samples: the estimate converges on 2ms
		for _, h := range b.Hosts() {
			h.Begin()
			h.Done(2*time.Millisecond, Success)
		}
		b.clock.Advance(100 * time.Millisecond)
	}
	for _, h := range b.Hosts() {
		h.Begin() // one request in flight each
		h.Done(2*time.Millisecond, Success)
		h.Begin()
	}
	mean := 0.0
	for _, h := range b.Hosts() {
		mean += h.latency(b.mono(), b.tau) / 3
	}
	if mean > float64(DefaultRTT)/4 {
		t.Fatalf("estimates did not converge: mean %v", time.Duration(mean))
	}
	b.Update(endpoints(4))
	d := b.host(t, "d")
	if got := d.latency(b.mono(), b.tau); math.Abs(got-mean) > 1 {
		t.Errorf("new host starts at %v, want the mean of the others, %v", time.Duration(got), time.Duration(mean))
	}
	got := counts(t, b.Picker(), 3000, nil)
	// d is the only idle host: it wins every comparison it is in, half of all pairs.
	within(t, "share of the new host", float64(got["d"])/3000, 0.5, 0.05)

	// With no hosts yet, a host starts at DefaultRTT.
	b2 := newTestBalancer(t, Config{DefaultRTT: 7 * time.Millisecond}, endpoints(1))
	if got := time.Duration(b2.host(t, "a").latency(b2.mono(), b2.tau)); got != 7*time.Millisecond {
		t.Errorf("first host starts at %v, want DefaultRTT 7ms", got)
	}
}

func TestLeastRequestWeighted(t *testing.T) {
	// Idle hosts with equal estimates split traffic in proportion to weight.
	const n = 60000
	b := newTestBalancer(t, Config{Rand: seededRand(3)}, endpoints(3, 1, 2, 3))
	got := counts(t, b.Picker(), n, nil)
	for i, id := range []string{"a", "b", "c"} {
		within(t, "share of "+id, float64(got[id])/n, float64(i+1)/6, 0.01)
	}
}

func TestFailurePenalty(t *testing.T) {
	b := newTestBalancer(t, Config{}, endpoints(1))
	h := b.host(t, "a")
	h.Begin()
	h.Done(time.Microsecond, ConnectFailure)
	if got := time.Duration(h.latency(b.mono(), b.tau)); got != time.Second {
		t.Errorf("after a fast connect failure the estimate is %v, want the 1s penalty", got)
	}
	b2 := newTestBalancer(t, Config{FailurePenalty: -1}, endpoints(1))
	h2 := b2.host(t, "a")
	b2.clock.Advance(time.Second)
	h2.Begin()
	h2.Done(time.Microsecond, ConnectFailure)
	if got := time.Duration(h2.latency(b2.mono(), b2.tau)); got >= DefaultRTT {
		t.Errorf("with the penalty off the estimate is %v, want it pulled below %v", got, DefaultRTT)
	}
}

// keyHash is the hash of the i-th test key, as the proxy would compute it.
func keyHash(i int) PickInfo { return PickInfo{Hash: Hash(fmt.Sprintf("user-%d", i)), HasHash: true} }

func TestConsistentHashing(t *testing.T) {
	const keys = 10000
	for _, policy := range []Policy{RingHash, Maglev} {
		t.Run(string(policy), func(t *testing.T) {
			b := newTestBalancer(t, Config{Policy: policy}, endpoints(3))
			before := assign(t, b.Picker(), keys)

			// The same key always maps to the same host.
			if again := assign(t, b.Picker(), keys); !slices.Equal(before, again) {
				t.Fatal("the same keys mapped differently on a second pass")
			}
			share := map[string]int{}
			for _, id := range before {
				share[id]++
			}
			for _, id := range []string{"a", "b", "c"} {
				within(t, "share of "+id, float64(share[id])/keys, 1.0/3, 0.06)
			}

			// Another balancer fed the endpoints in another order, as another sidecar would be,
			// maps every key the same way.
			other := newTestBalancer(t, Config{Policy: policy}, nil)
			eps := endpoints(3)
			slices.Reverse(eps)
			other.Update(eps)
			if o := assign(t, other.Picker(), keys); !slices.Equal(before, o) {
				t.Fatal("a second balancer with the same endpoints maps keys differently")
			}

			// c leaves: its keys move, about 1/3 of all, and few others do.
			b.Update(endpoints(2))
			after := assign(t, b.Picker(), keys)
			moved, movedOthers := 0, 0
			for i := range before {
				if before[i] != after[i] {
					moved++
					if before[i] != "c" {
						movedOthers++
					}
				}
				if after[i] == "c" {
					t.Fatalf("key %d still maps to the removed host", i)
				}
			}
			t.Logf("%s: one of 3 hosts left: %.4f of %d keys moved, %.4f between hosts that stayed", policy, float64(moved)/keys, keys, float64(movedOthers)/keys)
			within(t, "fraction of keys moved", float64(moved)/keys, 1.0/3, 0.06)
			maxOthers := 0.0 // a ring never moves another host's keys
			if policy == Maglev {
				maxOthers = 0.03 // Maglev trades a little disruption for balance and lookup speed
			}
			if f := float64(movedOthers) / keys; f > maxOthers {
				t.Errorf("%.4f of keys moved between hosts that stayed, want ≤ %.2f", f, maxOthers)
			}

			// c comes back: the original mapping is restored exactly.
			b.Update(endpoints(3))
			if back := assign(t, b.Picker(), keys); !slices.Equal(before, back) {
				t.Error("mapping differs after the host came back")
			}
		})
	}
}

func TestConsistentHashWeights(t *testing.T) {
	const keys = 20000
	for _, policy := range []Policy{RingHash, Maglev} {
		t.Run(string(policy), func(t *testing.T) {
			b := newTestBalancer(t, Config{Policy: policy}, endpoints(3, 1, 1, 2))
			share := map[string]int{}
			for _, id := range assign(t, b.Picker(), keys) {
				share[id]++
			}
			within(t, "share of a (weight 1)", float64(share["a"])/keys, 0.25, 0.05)
			within(t, "share of c (weight 2)", float64(share["c"])/keys, 0.5, 0.05)
		})
	}
}

func TestConsistentHashFallbackAndSkip(t *testing.T) {
	for _, policy := range []Policy{RingHash, Maglev} {
		t.Run(string(policy), func(t *testing.T) {
			b := newTestBalancer(t, Config{Policy: policy}, endpoints(3))
			// No hash key: a random host, so all get some.
			got := counts(t, b.Picker(), 3000, nil)
			for _, id := range []string{"a", "b", "c"} {
				within(t, "fallback share of "+id, float64(got[id])/3000, 1.0/3, 0.06)
			}

			// A key whose host is out of rotation goes to another host, the same one each time.
			stale := b.Picker() // published before the ejection: exercises the walk
			before := assign(t, stale, 3000)
			fail(b.host(t, "a"), 5, ConnectFailure)
			if !b.host(t, "a").Ejected() {
				t.Fatal("host a was not ejected")
			}
			for _, p := range []Picker{stale, b.Picker()} {
				after := assign(t, p, 3000)
				if !slices.Equal(after, assign(t, p, 3000)) {
					t.Fatal("keys of an ejected host do not map consistently")
				}
				for i := range before {
					if after[i] == "a" {
						t.Fatalf("key %d maps to the ejected host", i)
					}
					if before[i] != "a" && before[i] != after[i] && p == stale {
						t.Fatalf("key %d moved from %s to %s though its host is fine", i, before[i], after[i])
					}
				}
			}
		})
	}
}

// assign returns the host ID each of n keys maps to.
func assign(t *testing.T, p Picker, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range n {
		h, err := p.Pick(keyHash(i))
		if err != nil {
			t.Fatalf("pick key %d: %v", i, err)
		}
		out[i] = h.Endpoint().ID
	}
	return out
}

func TestMaglevTable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    uint64
		weights []uint32
	}{
		{"equal", 65537, nil},
		{"small prime", 251, nil},
		{"weighted 1,2,3", 65537, []uint32{1, 2, 3}},
		{"weighted 1,1,8", 65537, []uint32{1, 1, 8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBalancer(t, Config{Policy: Maglev, MaglevTableSize: tc.size}, endpoints(3, tc.weights...))
			p, ok := b.Picker().(*maglevPicker)
			if !ok {
				t.Fatalf("picker is %T, want *maglevPicker", b.Picker())
			}
			if uint64(len(p.table)) != tc.size {
				t.Fatalf("table size %d, want %d", len(p.table), tc.size)
			}
			entries := make([]int, 3)
			for _, owner := range p.table {
				entries[owner]++
			}
			total := 0.0
			for i := range 3 {
				total += float64(weightOr1(tc.weights, i))
			}
			for i := range 3 {
				want := float64(tc.size) * float64(weightOr1(tc.weights, i)) / total
				// Hosts claim entries in turns, so shares are exact to within a turn.
				within(t, fmt.Sprintf("entries of host %d", i), float64(entries[i]), want, float64(weightOr1(tc.weights, i))+1)
			}
		})
	}
}

func TestHashIsFNV1aMixed(t *testing.T) {
	for _, s := range []string{"", "a", "user-42", strings.Repeat("x", 300)} {
		f := fnv.New64a()
		f.Write([]byte(s))
		if got, want := Hash(s), mix64(f.Sum64()); got != want {
			t.Errorf("Hash(%q) = %#x, want mix64(FNV-1a) = %#x", s, got, want)
		}
		if HashBytes([]byte(s)) != Hash(s) {
			t.Errorf("HashBytes(%q) != Hash", s)
		}
	}
	if got, want := hashReplica("k", 12), Hash("k_12"); got != want {
		t.Errorf("hashReplica(k, 12) = %#x, want Hash(k_12) = %#x", got, want)
	}
}

func TestPickAvoid(t *testing.T) {
	for _, policy := range policies {
		t.Run(string(policy), func(t *testing.T) {
			b := newTestBalancer(t, Config{Policy: policy}, endpoints(3))
			a := b.host(t, "a")
			for i := range 3000 {
				info := keyHash(i)
				info.HasHash = i%2 == 0
				first, err := b.Pick(info)
				if err != nil {
					t.Fatal(err)
				}
				info.Avoid = a
				h, err := b.Pick(info)
				if err != nil {
					t.Fatal(err)
				}
				if h == a {
					t.Fatalf("pick %d returned the host to avoid", i)
				}
				if info.HasHash && first != a && h != first && (policy == RingHash || policy == Maglev) {
					t.Fatalf("key %d moved from %s to %s by avoiding another host", i, first.Endpoint().ID, h.Endpoint().ID)
				}
				if info.HasHash && (policy == RingHash || policy == Maglev) {
					if again, _ := b.Pick(info); again != h {
						t.Fatalf("key %d avoiding a: %s then %s, want the same host", i, h.Endpoint().ID, again.Endpoint().ID)
					}
				}
			}
			// The host to avoid is still returned when it is the only one left.
			one := newTestBalancer(t, Config{Policy: policy}, endpoints(1))
			only := one.host(t, "a")
			for _, hasHash := range []bool{false, true} {
				if h, err := one.Pick(PickInfo{Hash: 1, HasHash: hasHash, Avoid: only}); err != nil || h != only {
					t.Errorf("single host avoided (hash %v): %v, %v", hasHash, h, err)
				}
			}
			// With two hosts, one ejected and the other to avoid, the avoided one is returned.
			two := newTestBalancer(t, Config{Policy: policy}, endpoints(2))
			stale := two.Picker()
			fail(two.host(t, "a"), 5, ConnectFailure)
			bh := two.host(t, "b")
			for _, p := range []Picker{stale, two.Picker()} {
				for i := range 20 {
					if h, err := p.Pick(PickInfo{Hash: uint64(i), HasHash: i%2 == 0, Avoid: bh}); err != nil || h != bh {
						t.Fatalf("pick with a ejected and b avoided: %v, %v; want b", h, err)
					}
				}
			}
			// A host to avoid that is not in the picker is never returned.
			stranger := newTestBalancer(t, Config{}, endpoints(1)).host(t, "a")
			if h, err := stale.Pick(PickInfo{Hash: 3, HasHash: true, Avoid: stranger}); err != nil || h != bh {
				t.Errorf("avoiding a host from elsewhere: %v, %v; want b", h, err)
			}
		})
	}
}
