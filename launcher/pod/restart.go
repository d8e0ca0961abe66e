package pod

import (
	"context"
	"time"

	"github.com/podmesh/podmesh/internal/backoff"
	"github.com/podmesh/podmesh/launcher/compose"
)

// MaxRestartDelay caps the restart backoff.
const MaxRestartDelay = 30 * time.Second

// Clock is the time a pod's restart loop uses; tests substitute a fake.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer a Clock hands out.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time                 { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// restarter applies a compose restart policy: whether a finished run is restarted, and
// after how long. Waits grow exponentially from Delay (internal/backoff), capped at
// MaxRestartDelay, and start over after a run that lasted at least Window.
type restarter struct {
	policy   compose.RestartPolicy
	waiter   backoff.Waiter
	attempts int // restarts so far
}

func newRestarter(p compose.RestartPolicy) *restarter {
	return &restarter{policy: p, waiter: backoff.Waiter{Min: p.Delay, Max: MaxRestartDelay, Factor: 2}}
}

// next decides what follows a run that lasted ran and ended in failure (a non-zero exit, a
// signal, an unhealthy app, a dead sidecar) or not.
func (r *restarter) next(failed bool, ran time.Duration) (restart bool, wait time.Duration) {
	switch r.policy.Condition {
	case "none":
		return false, 0
	case "on-failure":
		if !failed {
			return false, 0
		}
	}
	if r.policy.Window > 0 && ran >= r.policy.Window {
		r.waiter.Reset()
		r.attempts = 0
	}
	if r.policy.MaxAttempts > 0 && r.attempts >= r.policy.MaxAttempts {
		return false, 0
	}
	r.attempts++
	return true, r.waiter.Next()
}

// sleep waits d on clock, or until ctx ends (false).
func sleep(ctx context.Context, clock Clock, d time.Duration) bool {
	t := clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}
