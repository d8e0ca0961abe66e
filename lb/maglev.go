package lb

import "math"

// maglevPicker is Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI 2016, §3.4), weighted as in Envoy: a lookup table of
// prime size M in which each host owns entries in proportion to its weight; a request goes to
// the owner of entry hash mod M. Lookup is one index; when a host leaves, little more than its
// own entries change owner.
type maglevPicker struct {
	table []uint16 // entry → index in set.hosts
	set   weightedSet
	rand  func() uint64
}

// newMaglevPicker populates the table, or returns nil when there are more hosts than the
// table or a uint16 index can hold.
//
// Each host i has a permutation of the table's entries, (offset_i + j·skip_i) mod M, from two
// independent hashes of its key. Hosts take turns claiming the next free entry of their
// permutation; with weights, a host takes its turn only when its accumulated weight reaches
// the largest weight (Envoy's weighted variant), so it claims entries at a rate proportional
// to its weight.
func newMaglevPicker(set weightedSet, size uint64, rnd func() uint64) *maglevPicker {
	hosts := set.hosts
	n := len(hosts)
	if uint64(n) > size || n >= math.MaxUint16 {
		return nil
	}
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n)
	weight := make([]uint64, n)
	acc := make([]uint64, n)
	var maxW uint64
	for i, h := range hosts {
		key := h.ep.Load().Key()
		offset[i] = hashSeeded(key, 0) % size
		skip[i] = hashSeeded(key, 1)%(size-1) + 1
		weight[i] = h.weight()
		maxW = max(maxW, weight[i])
	}
	// slot holds owner+1 while the table fills; 0 is empty.
	slot := make([]uint16, size)
	filled := uint64(0)
	for filled < size {
		for i := 0; i < n && filled < size; i++ {
			acc[i] += weight[i]
			if acc[i] < maxW {
				continue
			}
			acc[i] -= maxW
			c := (offset[i] + next[i]*skip[i]) % size
			for slot[c] != 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % size
			}
			slot[c] = uint16(i + 1)
			next[i]++
			filled++
		}
	}
	for c := range slot {
		slot[c]--
	}
	return &maglevPicker{table: slot, set: set, rand: rnd}
}

func (p *maglevPicker) Pick(info PickInfo) (*Host, error) {
	if !info.HasHash {
		return p.set.pickRandom(p.rand(), info.Avoid)
	}
	m := uint64(len(p.table))
	c := mix64(info.Hash) % m
	hosts := p.set.hosts
	if len(hosts) == 1 {
		return scanFrom(hosts, 0, info.Avoid)
	}
	if h := hosts[p.table[c]]; usable(h, info.Avoid) {
		return h, nil
	}
	// Walk the table to the next entry owned by a host in rotation.
	for k := uint64(1); k < m; k++ {
		j := c + k
		if j >= m {
			j -= m
		}
		if h := hosts[p.table[j]]; usable(h, info.Avoid) {
			return h, nil
		}
	}
	// Only the host to avoid is left, if it is in rotation.
	if info.Avoid != nil && info.Avoid.inRotation() && containsHost(hosts, info.Avoid) {
		return info.Avoid, nil
	}
	return nil, ErrNoHost
}
