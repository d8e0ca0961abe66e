package lb

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Defaults, applied by Config.withDefaults when a field is zero.
const (
	DefaultPolicy = LeastRequest

	// DefaultDecayTime is the peak-EWMA decay time of least_request, as in Linkerd.
	DefaultDecayTime = 10 * time.Second
	// DefaultRTT is the latency estimate of a host before any is observed, when no other host
	// has one either (Linkerd's default). A host that joins a balancer that already has hosts
	// starts at their mean estimate instead, so it gets its share of traffic at once.
	DefaultRTT = 30 * time.Millisecond
	// DefaultFailurePenalty is the latency least_request records for a connect or gateway
	// failure that came back faster than this, so a host that fails fast does not look fast.
	DefaultFailurePenalty = time.Second

	// DefaultMinimumRingSize and DefaultMaximumRingSize bound the ring_hash ring (Consul and
	// Envoy use 1024 as the minimum; Envoy's maximum is 8M, ours is smaller to bound memory:
	// 12 bytes per entry).
	DefaultMinimumRingSize = 1024
	DefaultMaximumRingSize = 1 << 18
	maxRingSizeLimit       = 1 << 23
	// DefaultMaglevTableSize is the maglev lookup table size (Envoy's default; must be prime).
	DefaultMaglevTableSize = 65537
	maxMaglevTableSize     = 5000011

	// Outlier detection defaults. Consecutive counts and times follow Envoy. The max
	// ejection percent is ours: Envoy's 10% would, without its at-least-one rule, forbid any
	// ejection in the 2–9 instance services this mesh runs; at 50% a 3-instance service may
	// lose one instance to ejection, a 4-instance service two.
	DefaultConsecutive5xx            = 5
	DefaultConsecutiveGatewayFailure = 5
	DefaultBaseEjectionTime          = 30 * time.Second
	DefaultMaxEjectionTime           = 300 * time.Second
	DefaultMaxEjectionPercent        = 50
	DefaultOutlierInterval           = 10 * time.Second
)

// Config configures a Balancer. The zero value means least_request with the default outlier
// detection; every zero field takes the default named beside it.
type Config struct {
	// Policy is the algorithm; "" means least_request.
	Policy Policy `json:"policy,omitempty" yaml:"policy,omitempty"`

	// DecayTime is the least_request latency EWMA decay time; 0 means 10s.
	DecayTime time.Duration `json:"decay_time,omitempty" yaml:"decay_time,omitempty"`
	// DefaultRTT is the latency estimate a host starts with when no host has one; 0 means 30ms.
	DefaultRTT time.Duration `json:"default_rtt,omitempty" yaml:"default_rtt,omitempty"`
	// FailurePenalty is the least latency recorded for a connect or gateway failure; 0 means
	// 1s, negative records failures at their real latency.
	FailurePenalty time.Duration `json:"failure_penalty,omitempty" yaml:"failure_penalty,omitempty"`

	// MinimumRingSize and MaximumRingSize bound the ring_hash ring; 0 means 1024 and 262144.
	MinimumRingSize uint64 `json:"minimum_ring_size,omitempty" yaml:"minimum_ring_size,omitempty"`
	MaximumRingSize uint64 `json:"maximum_ring_size,omitempty" yaml:"maximum_ring_size,omitempty"`
	// MaglevTableSize is the maglev table size, a prime; 0 means 65537.
	MaglevTableSize uint64 `json:"maglev_table_size,omitempty" yaml:"maglev_table_size,omitempty"`

	// Outlier configures passive health (outlier ejection).
	Outlier OutlierConfig `json:"outlier,omitzero" yaml:"outlier,omitempty"`

	// Clock returns the current time; nil means time.Now.
	Clock Clock `json:"-" yaml:"-"`
	// AfterFunc schedules the return of ejected hosts; nil means time.AfterFunc.
	AfterFunc AfterFunc `json:"-" yaml:"-"`
	// Rand returns uniformly random numbers for random, least_request and the hash policies'
	// fallback; nil means math/rand/v2's Uint64. It must be safe for concurrent use when Pick
	// is called concurrently, and must not allocate.
	Rand func() uint64 `json:"-" yaml:"-"`
	// OnEvent, if set, is called after each ejection and return, outside the Balancer's lock,
	// in the goroutine that caused it (a Done caller, a timer or Update). It must not block;
	// it may call Stats. Use it to count ejections for metrics and to log.
	OnEvent func(Event) `json:"-" yaml:"-"`
}

// OutlierConfig configures passive outlier ejection, modelled on Envoy's outlier detection.
// A host is ejected after Consecutive5xx server errors (5xx, gateway failures and connect
// failures all count) or ConsecutiveGatewayFailure gateway/connect failures in a row; it stays
// out for BaseEjectionTime × 2^(n−1) the n-th time it is ejected (exponential backoff),
// capped at MaxEjectionTime, and comes back by itself. n drops by one for every Interval the
// host spends in rotation.
//
// At most MaxEjectionPercent of the hosts are ejected at once, rounded down but at least one
// when there are two hosts or more (Envoy's rule), and never the last host in rotation: with
// every host failing, sending to a failing host beats failing every request outright, which is
// what Envoy's panic threshold does too.
type OutlierConfig struct {
	// Disabled turns outlier ejection off.
	Disabled bool `json:"disabled,omitempty" yaml:"disabled,omitempty"`
	// Consecutive5xx: 0 means 5; negative turns this rule off.
	Consecutive5xx int `json:"consecutive_5xx,omitempty" yaml:"consecutive_5xx,omitempty"`
	// ConsecutiveGatewayFailure: 0 means 5; negative turns this rule off.
	ConsecutiveGatewayFailure int `json:"consecutive_gateway_failure,omitempty" yaml:"consecutive_gateway_failure,omitempty"`
	// BaseEjectionTime: 0 means 30s.
	BaseEjectionTime time.Duration `json:"base_ejection_time,omitempty" yaml:"base_ejection_time,omitempty"`
	// MaxEjectionTime: 0 means 300s. Must be at least BaseEjectionTime.
	MaxEjectionTime time.Duration `json:"max_ejection_time,omitempty" yaml:"max_ejection_time,omitempty"`
	// MaxEjectionPercent, 1–100: 0 means 50.
	MaxEjectionPercent int `json:"max_ejection_percent,omitempty" yaml:"max_ejection_percent,omitempty"`
	// Interval is how long a host must stay in rotation for its ejection multiplier to drop by
	// one: 0 means 10s.
	Interval time.Duration `json:"interval,omitempty" yaml:"interval,omitempty"`
}

// AfterFunc calls f in its own goroutine after d and returns a function that cancels the call
// (reporting whether it did), like time.AfterFunc and (*time.Timer).Stop. Tests substitute a
// fake driven by a fake clock.
type AfterFunc func(d time.Duration, f func()) (stop func() bool)

func realAfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// withDefaults returns c with every zero field set to its default. It is the only place
// defaults are applied.
func (c Config) withDefaults() Config {
	if c.Policy == "" {
		c.Policy = DefaultPolicy
	}
	if c.DecayTime == 0 {
		c.DecayTime = DefaultDecayTime
	}
	if c.DefaultRTT == 0 {
		c.DefaultRTT = DefaultRTT
	}
	if c.FailurePenalty == 0 {
		c.FailurePenalty = DefaultFailurePenalty
	}
	if c.MinimumRingSize == 0 {
		c.MinimumRingSize = DefaultMinimumRingSize
	}
	if c.MaximumRingSize == 0 {
		c.MaximumRingSize = max(DefaultMaximumRingSize, c.MinimumRingSize)
	}
	if c.MaglevTableSize == 0 {
		c.MaglevTableSize = DefaultMaglevTableSize
	}
	o := &c.Outlier
	if o.Consecutive5xx == 0 {
		o.Consecutive5xx = DefaultConsecutive5xx
	}
	if o.ConsecutiveGatewayFailure == 0 {
		o.ConsecutiveGatewayFailure = DefaultConsecutiveGatewayFailure
	}
	if o.BaseEjectionTime == 0 {
		o.BaseEjectionTime = DefaultBaseEjectionTime
	}
	if o.MaxEjectionTime == 0 {
		o.MaxEjectionTime = max(DefaultMaxEjectionTime, o.BaseEjectionTime)
	}
	if o.MaxEjectionPercent == 0 {
		o.MaxEjectionPercent = DefaultMaxEjectionPercent
	}
	if o.Interval == 0 {
		o.Interval = DefaultOutlierInterval
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.AfterFunc == nil {
		c.AfterFunc = realAfterFunc
	}
	if c.Rand == nil {
		c.Rand = rand.Uint64
	}
	return c
}

// WithDefaults returns the effective configuration: c with the defaults filled in, as a
// Balancer built from c runs it (for display in the sidecar's /config).
func (c Config) WithDefaults() Config { return c.withDefaults() }

// Validate reports every invalid field of c (after defaults), each error naming the field
// and its value.
func (c Config) Validate() error {
	c = c.withDefaults()
	o := c.Outlier
	checks := []struct {
		bad   bool
		field string
		value any
		want  string
	}{
		{!c.Policy.valid(), "policy", c.Policy, "round_robin, random, least_request, ring_hash or maglev"},
		{c.DecayTime < 0, "decay_time", c.DecayTime, "a positive duration"},
		{c.DefaultRTT < 0, "default_rtt", c.DefaultRTT, "a positive duration"},
		{c.MinimumRingSize > maxRingSizeLimit, "minimum_ring_size", c.MinimumRingSize, fmt.Sprintf("at most %d", maxRingSizeLimit)},
		{c.MaximumRingSize > maxRingSizeLimit, "maximum_ring_size", c.MaximumRingSize, fmt.Sprintf("at most %d", maxRingSizeLimit)},
		{c.MaximumRingSize < c.MinimumRingSize, "maximum_ring_size", c.MaximumRingSize, fmt.Sprintf("at least minimum_ring_size (%d)", c.MinimumRingSize)},
		{c.MaglevTableSize > maxMaglevTableSize || !isPrime(c.MaglevTableSize), "maglev_table_size", c.MaglevTableSize, fmt.Sprintf("a prime at most %d", maxMaglevTableSize)},
		{o.BaseEjectionTime < 0, "outlier.base_ejection_time", o.BaseEjectionTime, "a positive duration"},
		{o.MaxEjectionTime < o.BaseEjectionTime, "outlier.max_ejection_time", o.MaxEjectionTime, fmt.Sprintf("at least base_ejection_time (%v)", o.BaseEjectionTime)},
		{o.MaxEjectionPercent < 0 || o.MaxEjectionPercent > 100, "outlier.max_ejection_percent", o.MaxEjectionPercent, "between 1 and 100"},
		{o.Interval < 0, "outlier.interval", o.Interval, "a positive duration"},
	}
	var errs []error
	for _, ch := range checks {
		if ch.bad {
			errs = append(errs, fmt.Errorf("lb: config %s = %v: want %s", ch.field, ch.value, ch.want))
		}
	}
	return errors.Join(errs...)
}

func (p Policy) valid() bool {
	switch p {
	case RoundRobin, Random, LeastRequest, RingHash, Maglev:
		return true
	}
	return false
}

func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
