package pod

import (
	"context"
	"errors"
	"time"

	"github.com/podmesh/podmesh/launcher/compose"
)

// Cgroups makes pod cgroups. The supervisor implements it over launcher/cgroups; tests use
// a fake.
type Cgroups interface {
	// Pod creates (or adopts, when it exists) the cgroup of one pod with the service's
	// limits, and the child cgroups Children inside it.
	Pod(name string, limits compose.Limits) (Cgroup, error)
}

// Children of a pod cgroup, each process in its own.
var Children = []string{"init", "sidecar", "app"}

// Cgroup is one pod's cgroup.
type Cgroup interface {
	// Add moves pid (in the launcher's pid namespace) into the child cgroup.
	Add(child string, pid int) error
	// Kill sends SIGKILL to every process in the child cgroup ("" = the whole pod) and
	// returns once they are gone.
	Kill(ctx context.Context, child string) error
	// Stats reads the pod's usage.
	Stats() (Stats, error)
	// Delete kills what is left and removes the cgroups.
	Delete(ctx context.Context) error
}

// Stats is a pod cgroup's usage.
type Stats struct {
	CPU      time.Duration // CPU time used so far
	Memory   uint64        // bytes in use
	OOMKills uint64        // processes the kernel killed for exceeding the memory limit
}

// Usage is what the launcher's metrics show of a pod cgroup: its Stats, its limits as the
// cgroup files say, and the usage of the members (Children) it knows.
type Usage struct {
	Stats
	MemoryLimit uint64           // bytes; 0 = none
	CPULimit    float64          // cores; 0 = none
	Members     map[string]Stats // by child cgroup name; OOMKills unset
}

// UsageReader is a Cgroup that also reports Usage (the host's does; test fakes need not).
type UsageReader interface {
	Usage() (Usage, error)
}

// Registry is where a pod registers its instance; the supervisor implements it over
// consul/api.
type Registry interface {
	Register(ctx context.Context, r Registration) error
	// SetHealth sets the instance's TTL check: "passing" or "critical", with output. An
	// error wrapping ErrNotRegistered means the registry does not know the check (it was
	// restarted, or lost the instance): the pod registers again.
	SetHealth(ctx context.Context, id, status, output string) error
	Deregister(ctx context.Context, id string) error
}

// ErrNotRegistered: the registry does not know the instance's check (Registry.SetHealth).
var ErrNotRegistered = errors.New("pod: the registry does not know the instance")

// Registration is one instance of a service in the registry.
type Registration struct {
	ID      string
	Name    string
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
	TTL     time.Duration
}
