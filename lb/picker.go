package lb

import "math/bits"

// build returns the picker of the configured policy over ready, the hosts in rotation,
// ordered by key. Pickers are immutable once built apart from their own atomic counters.
func (b *Balancer) build(ready []*Host) Picker {
	if len(ready) == 0 {
		return emptyPicker{}
	}
	set := newWeightedSet(ready)
	switch b.cfg.Policy {
	case RoundRobin:
		return newRoundRobinPicker(ready, b.cfg.Rand())
	case Random:
		return &randomPicker{set: set, rand: b.cfg.Rand}
	case RingHash:
		return newRingHashPicker(set, b.cfg.MinimumRingSize, b.cfg.MaximumRingSize, b.cfg.Rand)
	case Maglev:
		if p := newMaglevPicker(set, b.cfg.MaglevTableSize, b.cfg.Rand); p != nil {
			return p
		}
		// More hosts than the table can hold: consistent hashing on a ring instead.
		return newRingHashPicker(set, b.cfg.MinimumRingSize, b.cfg.MaximumRingSize, b.cfg.Rand)
	default:
		return &leastRequestPicker{set: set, b: b}
	}
}

type emptyPicker struct{}

func (emptyPicker) Pick(PickInfo) (*Host, error) { return nil, ErrNoHost }

// weightedSet draws hosts at random in proportion to their weights.
type weightedSet struct {
	hosts []*Host
	// cum[i] is the sum of the weights of hosts[0..i]; nil when all weights are equal.
	cum   []uint64
	total uint64
}

func newWeightedSet(hosts []*Host) weightedSet {
	s := weightedSet{hosts: hosts}
	equal := true
	for _, h := range hosts {
		if h.weight() != hosts[0].weight() {
			equal = false
		}
	}
	if equal {
		s.total = uint64(len(hosts))
		return s
	}
	s.cum = make([]uint64, len(hosts))
	for i, h := range hosts {
		s.total += h.weight()
		s.cum[i] = s.total
	}
	return s
}

// index maps a uniform random r to a host index, weighted.
func (s *weightedSet) index(r uint64) int {
	// Lemire's multiply-shift reduction of r to [0, total).
	x, _ := bits.Mul64(r, s.total)
	if s.cum == nil {
		return int(x)
	}
	// The first i with cum[i] > x.
	lo, hi := 0, len(s.cum)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s.cum[m] <= x {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// pickRandom returns a weighted random host, or the next usable one after it.
func (s *weightedSet) pickRandom(r uint64, avoid *Host) (*Host, error) {
	return scanFrom(s.hosts, s.index(r), avoid)
}

// usable reports whether a picker may return h: it is in rotation and not the one to avoid.
func usable(h, avoid *Host) bool { return h != avoid && h.inRotation() }

// scanFrom returns the first usable host at or after hosts[start], wrapping around, or the
// host to avoid if it is among them and the only one in rotation: at most one pass.
func scanFrom(hosts []*Host, start int, avoid *Host) (*Host, error) {
	n := len(hosts)
	sawAvoid := false
	for k := 0; k < n; k++ {
		j := start + k
		if j >= n {
			j -= n
		}
		h := hosts[j]
		if !h.inRotation() {
			continue
		}
		if h == avoid {
			sawAvoid = true
			continue
		}
		return h, nil
	}
	if sawAvoid {
		return avoid, nil
	}
	return nil, ErrNoHost
}

// randomPicker picks a host at random in proportion to its weight.
type randomPicker struct {
	set  weightedSet
	rand func() uint64
}

func (p *randomPicker) Pick(info PickInfo) (*Host, error) {
	return p.set.pickRandom(p.rand(), info.Avoid)
}

// Interface guards.
var (
	_ Picker = emptyPicker{}
	_ Picker = (*randomPicker)(nil)
	_ Picker = (*roundRobinPicker)(nil)
	_ Picker = (*leastRequestPicker)(nil)
	_ Picker = (*ringHashPicker)(nil)
	_ Picker = (*maglevPicker)(nil)
)

func containsHost(hosts []*Host, h *Host) bool {
	for _, x := range hosts {
		if x == h {
			return true
		}
	}
	return false
}
