package pod

import "fmt"

// Status is where a pod is in its lifecycle.
//
//	created ──► starting ──► running ──► stopping ──► stopped ──► removed
//	               │  ▲          │           ▲            │
//	               │  └─ backoff ◄┘ (failed, │            └─► starting (up again)
//	               │       │        restart) │
//	               └───────┴──► exited ──────┘ (no restart: policy, attempts, or success)
//
// Every state may go to stopping (the launcher is shutting down) except removed.
type Status int

// The statuses, in lifecycle order.
const (
	Created  Status = iota // network planned, nothing running
	Starting               // network, init, sidecar, sidecar ready, app
	Running                // app started; Health says whether it is healthy yet
	BackOff                // a run failed; waiting before the next start
	Exited                 // not restarted: the restart policy says so, or it completed
	Stopping               // deregistered, draining, stopping processes
	Stopped                // no process left; the network is still there
	Removed                // network and cgroups gone
)

var statusNames = [...]string{"created", "starting", "running", "backoff", "exited", "stopping", "stopped", "removed"}

func (s Status) String() string {
	if s >= 0 && int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// stateTransitionError is returned for a transition the lifecycle does not allow.
type stateTransitionError struct {
	From, To Status
}

func (e *stateTransitionError) Error() string {
	return fmt.Sprintf("pod: invalid state transition from %s to %s", e.From, e.To)
}

// podState is one state of the machine, in the shape of runc's libcontainer state_linux.go:
// each state knows where it may go. transition returns the state to move to, or a
// *stateTransitionError. A transition to the same state is allowed and changes nothing.
type podState interface {
	status() Status
	transition(to Status) (podState, error)
}

type state struct{ s Status }

func (st state) status() Status { return st.s }

// allowed lists, for each status, the statuses it may move to.
var allowed = map[Status][]Status{
	Created:  {Starting, Stopping, Removed},
	Starting: {Running, BackOff, Exited, Stopping},
	Running:  {BackOff, Exited, Stopping},
	BackOff:  {Starting, Stopping},
	Exited:   {Stopping},
	Stopping: {Stopped},
	Stopped:  {Starting, Removed},
	Removed:  {},
}

func (st state) transition(to Status) (podState, error) {
	if to == st.s {
		return st, nil
	}
	for _, a := range allowed[st.s] {
		if a == to {
			return state{to}, nil
		}
	}
	return st, &stateTransitionError{From: st.s, To: to}
}
