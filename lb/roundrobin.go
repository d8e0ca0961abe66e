package lb

import "sync/atomic"

// maxSchedule bounds the length of a weighted round-robin schedule; larger weight sums are
// scaled down to it (each host keeping at least one slot).
const maxSchedule = 4096

// roundRobinPicker walks the hosts in order, or a precomputed smooth weighted round-robin
// schedule when weights differ, with one atomic counter.
type roundRobinPicker struct {
	hosts []*Host
	sched []uint32 // host indexes, one cycle; nil when all weights are equal
	next  atomic.Uint64
}

// newRoundRobinPicker builds the picker; start offsets the counter so that sidecars do not
// all begin with the same host.
func newRoundRobinPicker(hosts []*Host, start uint64) *roundRobinPicker {
	p := &roundRobinPicker{hosts: hosts, sched: smoothSchedule(hosts)}
	p.next.Store(start)
	return p
}

func (p *roundRobinPicker) Pick(info PickInfo) (*Host, error) {
	i := p.next.Add(1) - 1
	if p.sched == nil {
		return scanFrom(p.hosts, int(i%uint64(len(p.hosts))), info.Avoid)
	}
	return scanFrom(p.hosts, int(p.sched[i%uint64(len(p.sched))]), info.Avoid)
}

// smoothSchedule returns one cycle of nginx's smooth weighted round robin over the hosts'
// weights (reduced by their gcd and scaled to maxSchedule), or nil when they are all equal.
// Smooth means a heavy host's turns are spread through the cycle, not bunched: weights 5,1,1
// give a a b a c a a, not a a a a a b c.
func smoothSchedule(hosts []*Host) []uint32 {
	w := make([]uint64, len(hosts))
	var g, sum uint64
	for i, h := range hosts {
		w[i] = h.weight()
		g = gcd(g, w[i])
		sum += w[i]
	}
	if allEqual(w) {
		return nil
	}
	sum = 0
	for i := range w {
		w[i] /= g
		sum += w[i]
	}
	if sum > maxSchedule {
		total := sum
		sum = 0
		for i := range w {
			w[i] = max(w[i]*maxSchedule/total, 1)
			sum += w[i]
		}
	}
	cur := make([]int64, len(w))
	sched := make([]uint32, 0, sum)
	for range sum {
		best := 0
		for i := range w {
			cur[i] += int64(w[i])
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= int64(sum)
		sched = append(sched, uint32(best))
	}
	return sched
}

func allEqual(w []uint64) bool {
	for _, x := range w {
		if x != w[0] {
			return false
		}
	}
	return true
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
