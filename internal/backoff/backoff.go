// Package backoff is exponential backoff as a value, in the shape of Consul's lib/retry
// Waiter: the zero value is usable, Wait honours cancellation, Reset starts over after a
// success. Used by the sidecar's registry watches and the launcher's restart policy.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Defaults applied by a zero Waiter.
const (
	DefaultMin    = 100 * time.Millisecond
	DefaultMax    = 30 * time.Second
	DefaultFactor = 2.0
)

// Waiter computes successive waits of Min·Factorⁿ, capped at Max, with up to Jitter (a
// fraction, 0 to 1) of each wait removed at random so that many waiters spread out.
// A Waiter is not safe for concurrent use.
type Waiter struct {
	Min    time.Duration // first wait; DefaultMin when zero
	Max    time.Duration // cap; DefaultMax when zero
	Factor float64       // growth per failure; DefaultFactor when < 1
	Jitter float64       // fraction of each wait removed at random, 0..1

	failures int
}

// Failures reports how many waits have happened since the last Reset.
func (w *Waiter) Failures() int { return w.failures }

// Reset forgets earlier failures, so the next wait is Min again.
func (w *Waiter) Reset() { w.failures = 0 }

// Next returns the wait that follows one more failure and records that failure.
func (w *Waiter) Next() time.Duration {
	lo, hi, f := w.Min, w.Max, w.Factor
	if lo <= 0 {
		lo = DefaultMin
	}
	if hi <= 0 {
		hi = DefaultMax
	}
	if hi < lo {
		hi = lo
	}
	if f < 1 {
		f = DefaultFactor
	}
	d := float64(lo)
	for i := 0; i < w.failures && d < float64(hi); i++ {
		d *= f
	}
	if d > float64(hi) {
		d = float64(hi)
	}
	if j := w.Jitter; j > 0 {
		if j > 1 {
			j = 1
		}
		d -= d * j * rand.Float64()
	}
	w.failures++
	return time.Duration(d)
}

// Wait sleeps for Next(), or returns ctx.Err() as soon as ctx is done.
func (w *Waiter) Wait(ctx context.Context) error {
	t := time.NewTimer(w.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
