package lb

import "time"

// EventKind says what happened to a host.
type EventKind uint8

// The events OnEvent receives.
const (
	EventEjected EventKind = iota + 1
	EventReturned
)

func (k EventKind) String() string {
	switch k {
	case EventEjected:
		return "ejected"
	case EventReturned:
		return "returned"
	}
	return "unknown"
}

// Reasons carried by events.
const (
	ReasonConsecutive5xx            = "consecutive_5xx"
	ReasonConsecutiveGatewayFailure = "consecutive_gateway_failure"
	ReasonEjectionTimeElapsed       = "ejection_time_elapsed"
	// ReasonMaxEjectionPercent: returned early because endpoints were removed and too large a
	// share of the rest was ejected.
	ReasonMaxEjectionPercent = "max_ejection_percent"
)

// Event reports an ejection or a return, for metrics and logs.
type Event struct {
	Kind      EventKind
	Endpoint  Endpoint
	Reason    string
	Ejections int       // the host's ejection multiplier after the event
	Until     time.Time // end of the ejection (EventEjected only)
}

// HostState is a host's place in rotation.
type HostState string

// Host states.
const (
	StateReady   HostState = "ready"
	StateEjected HostState = "ejected"
)

// Stats is a snapshot of a Balancer for the admin /config view and metrics.
type Stats struct {
	Policy            Policy      `json:"policy"`
	Ready             int         `json:"ready"`
	Ejected           int         `json:"ejected"`
	EjectionsTotal    uint64      `json:"ejections_total"`
	EjectionsOverflow uint64      `json:"ejections_overflow"` // refused by max_ejection_percent
	ReturnsTotal      uint64      `json:"returns_total"`
	Hosts             []HostStats `json:"hosts"`
}

// HostStats is a snapshot of one host.
type HostStats struct {
	ID                         string        `json:"id"`
	Address                    string        `json:"address"`
	Node                       string        `json:"node,omitempty"`
	Weight                     uint32        `json:"weight"`
	State                      HostState     `json:"state"`
	Active                     int64         `json:"active"`
	LatencyEWMA                time.Duration `json:"latency_ewma_ns"`
	Consecutive5xx             int64         `json:"consecutive_5xx"`
	ConsecutiveGatewayFailures int64         `json:"consecutive_gateway_failures"`
	Ejections                  int           `json:"ejections"` // current multiplier
	EjectedUntil               time.Time     `json:"ejected_until,omitzero"`
}

// Stats returns a snapshot of the balancer and its hosts, ordered by key.
func (b *Balancer) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.cfg.Clock()
	mono := b.mono()
	s := Stats{
		Policy:            b.cfg.Policy,
		EjectionsTotal:    b.ejectionsTotal,
		EjectionsOverflow: b.ejectionsOverflow,
		ReturnsTotal:      b.returnsTotal,
		Hosts:             make([]HostStats, 0, len(b.sorted)),
	}
	for _, h := range b.sorted {
		ep := h.ep.Load()
		hs := HostStats{
			ID:                         ep.ID,
			Address:                    ep.Address,
			Node:                       ep.Node,
			Weight:                     uint32(h.weight()),
			State:                      StateReady,
			Active:                     h.active.Load(),
			LatencyEWMA:                time.Duration(h.latency(mono, b.tau)),
			Consecutive5xx:             h.cons5xx.Load(),
			ConsecutiveGatewayFailures: h.consGateway.Load(),
			Ejections:                  h.multiplierLocked(now, b.cfg.Outlier.Interval),
		}
		if u := h.ejectedUntil.Load(); u != 0 {
			hs.State = StateEjected
			hs.EjectedUntil = time.Unix(0, u)
			s.Ejected++
		} else {
			s.Ready++
		}
		s.Hosts = append(s.Hosts, hs)
	}
	return s
}
