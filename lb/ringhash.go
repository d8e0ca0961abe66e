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

// newRingHashPicker builds the ring as Envoy does: the ring has about minSize points, more if
// the lightest host's share of minSize would round to a fraction, at most maxSize; hosts get
// points in proportion to their weights, by cumulative rounding so the total matches.
func newRingHashPicker(set weightedSet, minSize, maxSize uint64, rnd func() uint64) *ringHashPicker {
	hosts := set.hosts
	total, minW := 0.0, math.Inf(1)
	for _, h := range hosts {
		w := float64(h.weight())
		total += w
		minW = min(minW, w)
	}
	minNorm := minW / total
	scale := min(math.Ceil(minNorm*float64(minSize))/minNorm, float64(maxSize))

	type point struct {
		hash  uint64
		owner uint32
	}
	points := make([]point, 0, int(scale)+len(hosts))
	var current, target float64
	for i, h := range hosts {
		key := h.ep.Load().Key()
		target += scale * float64(h.weight()) / total
		for n := uint64(0); current < target; n++ {
			points = append(points, point{hashReplica(key, n), uint32(i)})
			current++
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
		return p.set.pickRandom(p.rand())
	}
	n := len(p.hashes)
	i, _ := slices.BinarySearch(p.hashes, mix64(info.Hash))
	if i == n {
		i = 0
	}
	hosts := p.set.hosts
	if h := hosts[p.owner[i]]; h.inRotation() {
		return h, nil
	}
	// Walk clockwise to the next point owned by a host in rotation.
	for k := 1; k < n; k++ {
		j := i + k
		if j >= n {
			j -= n
		}
		if h := hosts[p.owner[j]]; h.inRotation() {
			return h, nil
		}
	}
	return nil, ErrNoHost
}
