package lb

import (
	"cmp"
	"math"
	"slices"
)

// ringHashPicker is consistent hashing on a ring, as Envoy's and Consul's ring_hash: each host
// owns points on a 64-bit ring, hashed from "<key>_<i>", in proportion to its weight; a
// request goes to the owner of the first point at or after its hash. When a host leaves, only
// the keys that landed on its points move.
type ringHashPicker struct {
	hashes []uint64 // sorted ring points
	owner  []uint32 // owner[i] is the index in set.hosts of the host at hashes[i]
	set    weightedSet
	rand   func() uint64
}

// newRingHashPicker builds the ring. Each host gets minSize × weight / (lightest weight)
// points, so with equal weights every host has minSize points and the ring at least minSize,
// as in Envoy and Consul. Unlike Envoy, which spreads about minSize points over all hosts, a
// host's point count here does not depend on how many other hosts there are: when one leaves,
// the others keep exactly their points and only the leaving host's keys move (with Envoy's
// scheme the survivors gain points and take about 8% of each other's keys when one of three
// leaves). Only when the ring would exceed maxSize are all counts scaled down to fit.
func newRingHashPicker(set weightedSet, minSize, maxSize uint64, rnd func() uint64) *ringHashPicker {
	hosts := set.hosts
	total, minW := 0.0, math.Inf(1)
	for _, h := range hosts {
		w := float64(h.weight())
		total += w
		minW = min(minW, w)
	}
	scale := float64(minSize) / minW // points per unit of weight
	if scale*total > float64(maxSize) {
		scale = float64(maxSize) / total
	}

	type point struct {
		hash  uint64
		owner uint32
	}
	points := make([]point, 0, int(scale*total)+len(hosts))
	for i, h := range hosts {
		key := h.ep.Load().Key()
		n := max(uint64(math.Ceil(scale*float64(h.weight()))), 1)
		for r := range n {
			points = append(points, point{hashReplica(key, r), uint32(i)})
		}
	}
	slices.SortFunc(points, func(a, b point) int {
		// Ties (vanishingly rare) broken by owner so the ring does not depend on sort order.
		return cmp.Or(cmp.Compare(a.hash, b.hash), cmp.Compare(a.owner, b.owner))
	})
	p := &ringHashPicker{
		hashes: make([]uint64, len(points)),
		owner:  make([]uint32, len(points)),
		set:    set,
		rand:   rnd,
	}
	for i, pt := range points {
		p.hashes[i], p.owner[i] = pt.hash, pt.owner
	}
	return p
}

func (p *ringHashPicker) Pick(info PickInfo) (*Host, error) {
	if !info.HasHash {
		return p.set.pickRandom(p.rand(), info.Avoid)
	}
	hosts := p.set.hosts
	if len(hosts) == 1 {
		return scanFrom(hosts, 0, info.Avoid)
	}
	n := len(p.hashes)
	i, _ := slices.BinarySearch(p.hashes, mix64(info.Hash))
	if i == n {
		i = 0
	}
	if h := hosts[p.owner[i]]; usable(h, info.Avoid) {
		return h, nil
	}
	// Walk clockwise to the next point owned by a host in rotation.
	for k := 1; k < n; k++ {
		j := i + k
		if j >= n {
			j -= n
		}
		if h := hosts[p.owner[j]]; usable(h, info.Avoid) {
			return h, nil
		}
	}
	// Only the host to avoid is left, if it is in rotation.
	if info.Avoid != nil && info.Avoid.inRotation() && containsHost(hosts, info.Avoid) {
		return info.Avoid, nil
	}
	return nil, ErrNoHost
}
