package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/podmesh/podmesh/launcher/cgroups"
	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/pod"
)

// HostCgroups is the CgroupSystem of the real host: each project's pods under
// <launcher's own cgroup>/podmesh-<project>/ in every hierarchy (launcher/cgroups).
type HostCgroups struct{}

// Project opens the cgroups of one project, under dirs when given.
func (HostCgroups) Project(name string, dirs []string) (ProjectCgroups, error) {
	m, err := cgroups.New(cgroups.Config{Name: name, Bases: dirs})
	if err != nil {
		return nil, err
	}
	return &hostProject{m: m}, nil
}

type hostProject struct{ m *cgroups.Manager }

func (h *hostProject) Pod(name string, limits compose.Limits) (pod.Cgroup, error) {
	p, err := h.m.Create(name, cgroups.Limits(limits))
	if errors.Is(err, os.ErrExist) {
		// A leftover of this pod (a start that failed half-way): kill and recreate it.
		if old, oerr := h.m.Open(name); oerr == nil {
			ctx, cancel := context.WithTimeout(context.TODO(), 10*time.Second)
			_ = old.Kill(ctx)
			_ = old.Delete(ctx)
			cancel()
		}
		p, err = h.m.Create(name, cgroups.Limits(limits))
	}
	if err != nil {
		return nil, err
	}
	return &hostPod{p: p}, nil
}

func (h *hostProject) Cleanup(ctx context.Context) error { return h.m.Cleanup(ctx) }
func (h *hostProject) Close() error                      { return h.m.Close() }
func (h *hostProject) Dirs() []string                    { return h.m.Bases() }

type hostPod struct{ p *cgroups.Pod }

func (h *hostPod) Add(child string, pid int) error { return h.p.Add(cgroups.Member(child), pid) }

// Kill kills the whole pod (child "") through launcher/cgroups, or one member by signalling
// its processes until none is left.
func (h *hostPod) Kill(ctx context.Context, child string) error {
	if child == "" {
		return h.p.Kill(ctx)
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		pids, err := h.p.MemberPids(cgroups.Member(child))
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("supervisor: kill %s/%s: %d processes left: %w", h.p.Name(), child, len(pids), ctx.Err())
		case <-t.C:
		}
	}
}

func (h *hostPod) Stats() (pod.Stats, error) {
	st, err := h.p.Stats()
	if err != nil {
		return pod.Stats{}, err
	}
	return pod.Stats{CPU: st.CPUUsage, Memory: st.MemoryCurrent, OOMKills: st.OOMKills}, nil
}

// Usage reads the pod's usage and limits from its cgroup files, and the app's and the
// sidecar's usage from theirs.
func (h *hostPod) Usage() (pod.Usage, error) {
	st, err := h.p.Stats()
	if err != nil {
		return pod.Usage{}, err
	}
	u := pod.Usage{
		Stats:       pod.Stats{CPU: st.CPUUsage, Memory: st.MemoryCurrent, OOMKills: st.OOMKills},
		MemoryLimit: st.MemoryMax,
		Members:     map[string]pod.Stats{},
	}
	l, err := h.p.Limits()
	if err != nil {
		return pod.Usage{}, err
	}
	u.CPULimit = float64(l.NanoCPUs) / 1e9
	for _, m := range []cgroups.Member{cgroups.App, cgroups.Sidecar} {
		ms, err := h.p.MemberStats(m)
		if err != nil {
			return pod.Usage{}, err
		}
		u.Members[string(m)] = pod.Stats{CPU: ms.CPUUsage, Memory: ms.MemoryCurrent}
	}
	return u, nil
}

func (h *hostPod) Delete(ctx context.Context) error {
	if err := h.p.Kill(ctx); err != nil {
		return err
	}
	return h.p.Delete(ctx)
}

var (
	_ CgroupSystem    = HostCgroups{}
	_ pod.Cgroup      = (*hostPod)(nil)
	_ pod.UsageReader = (*hostPod)(nil)
)
