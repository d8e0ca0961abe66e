package lb

import (
	"math"
	"math/bits"
)

// leastRequestPicker is power of two random choices over a load score of latency EWMA ×
// (requests in flight + 1), Linkerd's peak-EWMA balancer (Finagle's before it). Two
// candidates are drawn and the one with the lower score wins, so a slow or busy host gets
// less traffic without any host being starved: it is still picked whenever both candidates
// are it, or it is the better of two, and its estimate decays while it is idle.
//
// Weights enter through the draw: with equal weights the two candidates are distinct hosts
// chosen uniformly; with different weights each is drawn independently in proportion to its
// weight (possibly the same host twice), which makes an idle balancer's split exactly
// proportional to the weights, while under load the score still steers traffic to the less
// loaded of the two.
type leastRequestPicker struct {
	set weightedSet
	b   *Balancer // clock, decay and random source
}

func (p *leastRequestPicker) Pick(info PickInfo) (*Host, error) {
	hosts := p.set.hosts
	n := len(hosts)
	if n == 1 {
		return scanFrom(hosts, 0, info.Avoid)
	}
	r := p.b.cfg.Rand()
	r2 := mix64(r)
	i := p.set.index(r)
	var j int
	if p.set.cum == nil {
		// A second host, distinct from the first, uniformly.
		off, _ := bits.Mul64(r2, uint64(n-1))
		j = i + 1 + int(off)
		if j >= n {
			j -= n
		}
	} else {
		j = p.set.index(r2)
	}
	a, c := hosts[i], hosts[j]
	switch okA, okC := usable(a, info.Avoid), usable(c, info.Avoid); {
	case okA && okC:
		if a == c {
			return a, nil
		}
		ca, cc := compareLoad(a, c, p.b.tau)
		if ca < cc || ca == cc && r2&1 == 0 {
			return a, nil
		}
		return c, nil
	case okA:
		return a, nil
	case okC:
		return c, nil
	}
	return scanFrom(hosts, i, info.Avoid)
}

// compareLoad returns the two hosts' scores, latency EWMA × (in flight + 1), each decayed
// towards zero for the time since it was last updated, scaled by the same positive factor so
// that no clock is needed: decaying both to now is the same as decaying the older estimate to
// the newer one's stamp. That keeps time.Now out of Pick.
func compareLoad(a, c *Host, tau float64) (float64, float64) {
	sa, sc := a.stamp.Load(), c.stamp.Load()
	la := math.Float64frombits(a.cost.Load()) * float64(max(a.active.Load(), 0)+1)
	lc := math.Float64frombits(c.cost.Load()) * float64(max(c.active.Load(), 0)+1)
	switch {
	case sa > sc:
		lc *= math.Exp(-float64(sa-sc) / tau)
	case sc > sa:
		la *= math.Exp(-float64(sc-sa) / tau)
	}
	return la, lc
}
