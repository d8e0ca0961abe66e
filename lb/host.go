package lb

import (
	"math"
	"sync/atomic"
	"time"
)

// Host is the long-lived state of one endpoint. Every picker snapshot that includes the
// endpoint points at the same Host, so its counters survive endpoint updates. The fields the
// hot path touches are atomics, read and written without locks; the ejection bookkeeping is
// guarded by the owning Balancer's mutex.
type Host struct {
	ep atomic.Pointer[Endpoint]
	b  *Balancer // owner; nil only for hosts built outside a Balancer

	active       atomic.Int64  // attempts in flight
	ejectedUntil atomic.Int64  // unix nanos; 0 while in rotation
	cost         atomic.Uint64 // float64 bits: peak-EWMA latency in nanoseconds
	stamp        atomic.Int64  // monotonic nanos (Balancer.mono) of the last cost update
	cons5xx      atomic.Int64  // consecutive 5xx, gateway and connect failures
	consGateway  atomic.Int64  // consecutive gateway and connect failures

	// Guarded by b.mu.
	ejections  int       // ejection multiplier (times ejected, decayed)
	returnedAt time.Time // when the host last came back from an ejection
	stopTimer  func() bool
	gen        uint64 // bumped by each ejection so a stale timer does nothing
}

// Endpoint returns the endpoint this host currently stands for.
func (h *Host) Endpoint() Endpoint { return *h.ep.Load() }

// Address is the address to dial.
func (h *Host) Address() string { return h.ep.Load().Address }

// Active reports the attempts in flight.
func (h *Host) Active() int64 { return h.active.Load() }

// Available reports whether the host may be picked at now (unix nanos): it is not ejected.
// Pickers only hold hosts that were in rotation when they were built, and check the cheaper
// inRotation as a guard against the moment between an ejection and the next picker.
func (h *Host) Available(now int64) bool { return h.ejectedUntil.Load() <= now }

// inRotation reports whether the host is not ejected. Ejection always republishes the
// picker, so this is only a guard for pickers published before the ejection.
func (h *Host) inRotation() bool { return h.ejectedUntil.Load() == 0 }

// Ejected reports whether the host is ejected by outlier detection.
func (h *Host) Ejected() bool { return !h.inRotation() }

// Begin records the start of an attempt; call Done when it ends.
func (h *Host) Begin() { h.active.Add(1) }

// Done records the end of an attempt that began with Begin: its latency feeds the
// least-request EWMA and its outcome the outlier detection. Pass the time to the response
// headers (or to the connection for a raw TCP stream), not the life of a long stream; a
// negative latency leaves the EWMA alone. Done never blocks on the hot path: only the
// failure that crosses an ejection threshold takes the Balancer's lock to eject the host.
func (h *Host) Done(latency time.Duration, o Outcome) {
	h.active.Add(-1)
	b := h.b
	if b == nil {
		return
	}
	if latency >= 0 {
		rtt := float64(latency)
		if (o == GatewayFailure || o == ConnectFailure) && rtt < b.penalty {
			rtt = b.penalty
		}
		h.observe(b.mono(), rtt, b.tau)
	}
	switch o {
	case Success, ClientError:
		// Store only when needed: the common case stays a read of a shared cache line.
		if h.cons5xx.Load() != 0 {
			h.cons5xx.Store(0)
		}
		if h.consGateway.Load() != 0 {
			h.consGateway.Store(0)
		}
	case ServerError:
		n := h.cons5xx.Add(1)
		if h.consGateway.Load() != 0 {
			h.consGateway.Store(0)
		}
		if b.max5xx > 0 && n >= b.max5xx {
			b.eject(h, ReasonConsecutive5xx)
		}
	case GatewayFailure, ConnectFailure:
		n := h.cons5xx.Add(1)
		g := h.consGateway.Add(1)
		switch {
		case b.maxGateway > 0 && g >= b.maxGateway:
			b.eject(h, ReasonConsecutiveGatewayFailure)
		case b.max5xx > 0 && n >= b.max5xx:
			b.eject(h, ReasonConsecutive5xx)
		}
	}
}

// observe folds one latency sample (nanoseconds) into the peak-EWMA cost, as linkerd2-proxy
// (tower's PeakEwma) does: a sample above the estimate replaces it at once, one below pulls it
// down with weight 1-exp(-elapsed/tau). The CAS loop keeps concurrent samples from being
// lost; the stamp written after it may lag by a racing sample, which only nudges the next
// weight.
func (h *Host) observe(now int64, rtt, tau float64) {
	for {
		oldBits := h.cost.Load()
		old := math.Float64frombits(oldBits)
		next := rtt
		if rtt <= old {
			td := float64(now - h.stamp.Load())
			if td < 0 {
				td = 0
			}
			w := math.Exp(-td / tau)
			next = old*w + rtt*(1-w)
		}
		if h.cost.CompareAndSwap(oldBits, math.Float64bits(next)) {
			h.stamp.Store(now)
			return
		}
	}
}

// latency returns the cost decayed towards zero for the time since it was last updated, so a
// host that stopped getting traffic after a slow spell is tried again (tower decays the same
// way when it reads the load).
func (h *Host) latency(now int64, tau float64) float64 {
	c := math.Float64frombits(h.cost.Load())
	if td := now - h.stamp.Load(); td > 0 {
		c *= math.Exp(-float64(td) / tau)
	}
	return c
}

// weight is the endpoint's weight, 0 counting as 1.
func (h *Host) weight() uint64 {
	if w := h.ep.Load().Weight; w > 0 {
		return uint64(w)
	}
	return 1
}
