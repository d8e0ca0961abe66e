package pod

import (
	"testing"
	"time"
)

// TestProbeInterval: probes keep their base cadence while few pods poll together, and
// spread out in proportion beyond, never past maxProbe nor below the base.
func TestProbeInterval(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		base time.Duration
		n    int64
		want time.Duration
	}{
		{5 * ms, 0, 5 * ms},
		{5 * ms, 1, 5 * ms},
		{5 * ms, probingAlone, 5 * ms},
		{5 * ms, 8, 10 * ms},
		{5 * ms, 20, 25 * ms},
		{5 * ms, 1000, maxProbe},
		{100 * ms, 1000, 100 * ms},
	} {
		if got := probeInterval(c.base, c.n); got != c.want {
			t.Errorf("probeInterval(%v, %d) = %v; want %v", c.base, c.n, got, c.want)
		}
	}
}

// TestProbingCount: the TCP check's polling are counted while under way
// and no longer once over.
func TestProbingCount(t *testing.T) {
	before := probing.Load()
	startProbing()
	startProbing()
	if got := probing.Load() - before; got != 2 {
		t.Errorf("two pods probing counted as %d", got)
	}
	stopProbing()
	stopProbing()
	if got := probing.Load(); got != before {
		t.Errorf("after both stopped: %d; want %d", got, before)
	}
}
