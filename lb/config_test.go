package lb

import (
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	c := Config{}.WithDefaults()
	o := c.Outlier
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"policy", c.Policy, LeastRequest},
		{"decay_time", c.DecayTime, 10 * time.Second},
		{"default_rtt", c.DefaultRTT, 30 * time.Millisecond},
		{"failure_penalty", c.FailurePenalty, time.Second},
		{"minimum_ring_size", c.MinimumRingSize, uint64(1024)},
		{"maximum_ring_size", c.MaximumRingSize, uint64(1 << 18)},
		{"maglev_table_size", c.MaglevTableSize, uint64(65537)},
		{"consecutive_5xx", o.Consecutive5xx, 5},
		{"consecutive_gateway_failure", o.ConsecutiveGatewayFailure, 5},
		{"base_ejection_time", o.BaseEjectionTime, 30 * time.Second},
		{"max_ejection_time", o.MaxEjectionTime, 300 * time.Second},
		{"max_ejection_percent", o.MaxEjectionPercent, 50},
		{"interval", o.Interval, 10 * time.Second},
	} {
		if tc.got != tc.want {
			t.Errorf("default %s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if c.Clock == nil || c.AfterFunc == nil || c.Rand == nil {
		t.Error("default Clock, AfterFunc or Rand is nil")
	}
	// A set field is kept, and a maximum below a raised minimum follows it.
	c = Config{Policy: Maglev, MinimumRingSize: 1 << 20, Outlier: OutlierConfig{BaseEjectionTime: time.Hour}}.WithDefaults()
	if c.Policy != Maglev || c.MaximumRingSize != 1<<20 || c.Outlier.MaxEjectionTime != time.Hour {
		t.Errorf("WithDefaults overrode or mismatched set fields: %+v", c)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none means valid
	}{
		{"zero", Config{}, nil},
		{"every policy", Config{Policy: RingHash, MaglevTableSize: 251}, nil},
		{"unknown policy", Config{Policy: "fastest"}, []string{"policy = fastest"}},
		{"negative decay", Config{DecayTime: -time.Second}, []string{"decay_time = -1s"}},
		{"negative default rtt", Config{DefaultRTT: -1}, []string{"default_rtt = -1ns"}},
		{"ring min above max", Config{MinimumRingSize: 4096, MaximumRingSize: 2048}, []string{"maximum_ring_size = 2048", "minimum_ring_size (4096)"}},
		{"ring too large", Config{MaximumRingSize: 1 << 30}, []string{"maximum_ring_size = 1073741824"}},
		{"maglev not prime", Config{MaglevTableSize: 65536}, []string{"maglev_table_size = 65536", "prime"}},
		{"maglev too large", Config{MaglevTableSize: 5000101}, []string{"maglev_table_size = 5000101"}},
		{"max ejection time below base", Config{Outlier: OutlierConfig{BaseEjectionTime: time.Minute, MaxEjectionTime: time.Second}}, []string{"outlier.max_ejection_time = 1s"}},
		{"percent above 100", Config{Outlier: OutlierConfig{MaxEjectionPercent: 150}}, []string{"outlier.max_ejection_percent = 150"}},
		{"negative percent", Config{Outlier: OutlierConfig{MaxEjectionPercent: -1}}, []string{"outlier.max_ejection_percent = -1"}},
		{"several", Config{Policy: "x", DecayTime: -1}, []string{"policy = x", "decay_time = -1ns"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate(%+v) = nil, want an error mentioning %q", tc.cfg, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate error %q does not mention %q", err, w)
				}
			}
			if _, nerr := New(tc.cfg); nerr == nil {
				t.Errorf("New accepted the invalid config")
			}
		})
	}
}

func TestMaxEjectable(t *testing.T) {
	for _, tc := range []struct{ n, percent, want int }{
		{0, 50, 0},
		{1, 50, 0},   // never the only host
		{1, 100, 0},  // even at 100%
		{2, 10, 1},   // Envoy's at-least-one rule
		{3, 10, 1},   // the 3-instance case the default must allow
		{3, 50, 1},   // 1.5 rounds down
		{3, 100, 2},  // never the last host
		{4, 50, 2},   //
		{10, 10, 1},  //
		{10, 50, 5},  //
		{10, 100, 9}, //
	} {
		b, err := New(Config{Outlier: OutlierConfig{MaxEjectionPercent: tc.percent}})
		if err != nil {
			t.Fatal(err)
		}
		if got := b.maxEjectable(tc.n); got != tc.want {
			t.Errorf("maxEjectable(%d hosts, %d%%) = %d, want %d", tc.n, tc.percent, got, tc.want)
		}
	}
}
