package cgroups

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Pod is the cgroup of one pod. Its methods are safe for concurrent use.
type Pod struct {
	m    *Manager
	name string
	dirs []string // the pod's directory in each of m.hiers, in the same order
}

// Name is the pod's name.
func (p *Pod) Name() string { return p.name }

// Path is the pod's cgroup directory in the hierarchy of controller ("memory", "cpu", "pids",
// "freezer", "cpuacct"; any of them, or "", on v2), or "" when the controller is not in use.
func (p *Pod) Path(controller string) string {
	for i, h := range p.m.hiers {
		if p.m.mode == Unified || h.has(controller) {
			return p.dirs[i]
		}
	}
	return ""
}

// MemberPath is the directory of a member's cgroup in the hierarchy of controller.
func (p *Pod) MemberPath(mem Member, controller string) string {
	d := p.Path(controller)
	if d == "" {
		return ""
	}
	return filepath.Join(d, string(mem))
}

func validMember(mem Member) error {
	if !slices.Contains(Members, mem) {
		return fmt.Errorf("cgroups: unknown member %q", mem)
	}
	return nil
}

// create makes the pod's directories, writes its limits, and makes its members. The primary
// hierarchy comes first (see findV1).
func (p *Pod) create(l Limits) error {
	m := p.m
	for _, d := range p.dirs {
		if err := m.fs.mkdir(d); err != nil {
			return err
		}
	}
	if err := p.writeLimits(l); err != nil {
		return err
	}
	if m.mode == Unified {
		if err := m.enableControllers(p.dirs[0], m.hiers[0].controllers, false); err != nil {
			return err
		}
	}
	for _, d := range p.dirs {
		for _, mem := range Members {
			if err := m.fs.mkdir(filepath.Join(d, string(mem))); err != nil {
				return err
			}
		}
	}
	if m.mode == Unified {
		// An OOM kill in the app takes the whole app (and its children) at once, never half of
		// it, and never the sidecar or init: the app's cgroup is one OOM unit, the pod is not.
		app := filepath.Join(p.dirs[0], string(App))
		if m.fs.exists(app, "memory.oom.group") {
			if err := m.fs.write(app, "memory.oom.group", "1"); err != nil {
				return err
			}
		}
	}
	return nil
}

func cpuQuota(nanoCPUs int64) int64 {
	period := CPUPeriod.Microseconds()
	q := nanoCPUs * period / 1e9
	return max(q, 1000) // the kernel's minimum quota is 1ms
}

func (p *Pod) writeLimits(l Limits) error {
	fs := p.m.fs
	period := strconv.FormatInt(CPUPeriod.Microseconds(), 10)
	if p.m.mode == Unified {
		d := p.dirs[0]
		if l.MemoryBytes > 0 {
			if err := fs.write(d, "memory.max", strconv.FormatInt(l.MemoryBytes, 10)); err != nil {
				return err
			}
			// Pods do not swap: the limit is the memory they get, as with v1's memsw below.
			if fs.exists(d, "memory.swap.max") {
				if err := fs.write(d, "memory.swap.max", "0"); err != nil {
					return err
				}
			}
		}
		if l.NanoCPUs > 0 {
			if err := fs.write(d, "cpu.max", strconv.FormatInt(cpuQuota(l.NanoCPUs), 10)+" "+period); err != nil {
				return err
			}
		}
		if l.Pids > 0 {
			if err := fs.write(d, "pids.max", strconv.FormatInt(l.Pids, 10)); err != nil {
				return err
			}
		}
		return nil
	}
	if d := p.Path("memory"); d != "" {
		// memory.use_hierarchy is always 1 on kernels >= 5.x; older ones default to 0, which
		// would leave the members outside the pod's limit.
		if v, err := fs.read(d, "memory.use_hierarchy"); err == nil && strings.TrimSpace(v) == "0" {
			if err := fs.write(d, "memory.use_hierarchy", "1"); err != nil {
				return err
			}
		}
		if l.MemoryBytes > 0 {
			v := strconv.FormatInt(l.MemoryBytes, 10)
			if err := fs.write(d, "memory.limit_in_bytes", v); err != nil {
				return err
			}
			// memory+swap at the same value: pods do not swap. Written after the memory limit,
			// which it may not be below.
			if fs.exists(d, "memory.memsw.limit_in_bytes") {
				if err := fs.write(d, "memory.memsw.limit_in_bytes", v); err != nil {
					return err
				}
			}
		}
	}
	if l.NanoCPUs > 0 {
		d := p.Path("cpu")
		if err := fs.write(d, "cpu.cfs_period_us", period); err != nil {
			return err
		}
		if err := fs.write(d, "cpu.cfs_quota_us", strconv.FormatInt(cpuQuota(l.NanoCPUs), 10)); err != nil {
			return err
		}
	}
	if l.Pids > 0 {
		if err := fs.write(p.Path("pids"), "pids.max", strconv.FormatInt(l.Pids, 10)); err != nil {
			return err
		}
	}
	return nil
}

// Limits reads the pod's limits back from the cgroup files.
func (p *Pod) Limits() (Limits, error) {
	var l Limits
	fs := p.m.fs
	if p.m.mode == Unified {
		d := p.dirs[0]
		if v, err := fs.read(d, "memory.max"); err == nil {
			l.MemoryBytes, err = parseMax(v)
			if err != nil {
				return l, fmt.Errorf("cgroups: %s/memory.max: %w", d, err)
			}
		}
		if v, err := fs.read(d, "cpu.max"); err == nil {
			q, per, _ := strings.Cut(strings.TrimSpace(v), " ")
			quota, err1 := parseMax(q)
			period, err2 := strconv.ParseInt(per, 10, 64)
			if err1 != nil || err2 != nil || period <= 0 {
				return l, fmt.Errorf("cgroups: %s/cpu.max: bad value %q", d, v)
			}
			l.NanoCPUs = quota * 1e9 / period
		}
		if v, err := fs.read(d, "pids.max"); err == nil {
			if l.Pids, err = parseMax(v); err != nil {
				return l, fmt.Errorf("cgroups: %s/pids.max: %w", d, err)
			}
		}
		return l, nil
	}
	if d := p.Path("memory"); d != "" {
		v, err := readInt(fs, d, "memory.limit_in_bytes")
		if err != nil {
			return l, err
		}
		if v < 1<<62 { // the kernel shows "unlimited" as PAGE_COUNTER_MAX pages
			l.MemoryBytes = v
		}
	}
	if d := p.Path("cpu"); d != "" {
		quota, err := readInt(fs, d, "cpu.cfs_quota_us")
		if err != nil {
			return l, err
		}
		period, err := readInt(fs, d, "cpu.cfs_period_us")
		if err != nil {
			return l, err
		}
		if quota > 0 && period > 0 {
			l.NanoCPUs = quota * 1e9 / period
		}
	}
	if d := p.Path("pids"); d != "" {
		v, err := fs.read(d, "pids.max")
		if err != nil {
			return l, err
		}
		if l.Pids, err = parseMax(v); err != nil {
			return l, fmt.Errorf("cgroups: %s/pids.max: %w", d, err)
		}
	}
	return l, nil
}

// parseMax reads a limit file value: a number, or "max" for none (0).
func parseMax(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "max" {
		return 0, nil
	}
	return strconv.ParseInt(s, 10, 64)
}

func readInt(fs *cgfs, dir, file string) (int64, error) {
	s, err := fs.read(dir, file)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cgroups: %s: %w", filepath.Join(dir, file), err)
	}
	return v, nil
}

// CgroupFD opens the member's cgroup directory for SysProcAttr.UseCgroupFD/CgroupFD, which
// starts a process directly in it (clone3 CLONE_INTO_CGROUP). Only on cgroup v2: elsewhere it
// returns ErrNotUnified and the process is started first and then moved with Add. The caller
// closes the file once the process has started.
func (p *Pod) CgroupFD(mem Member) (*os.File, error) {
	if err := validMember(mem); err != nil {
		return nil, err
	}
	if p.m.mode != Unified {
		return nil, ErrNotUnified
	}
	return p.m.fs.openDir(filepath.Join(p.dirs[0], string(mem)))
}

// Add moves the process pid (with all its threads) into the member's cgroup, in every
// hierarchy. A process fresh from fork may briefly be refused with EINVAL; Add retries that.
func (p *Pod) Add(mem Member, pid int) error {
	if err := validMember(mem); err != nil {
		return err
	}
	if pid <= 0 {
		return fmt.Errorf("cgroups: add pid %d to %s/%s: invalid pid", pid, p.name, mem)
	}
	for _, d := range p.dirs {
		dir := filepath.Join(d, string(mem))
		var err error
		for attempt := 0; attempt < 5; attempt++ {
			if err = p.m.fs.write(dir, "cgroup.procs", strconv.Itoa(pid)); !errors.Is(err, unix.EINVAL) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Pids lists the processes in the pod, members included, sorted.
func (p *Pod) Pids() ([]int, error) {
	pids, err := p.walkPids(p.dirs[0], 0)
	if err != nil {
		return nil, err
	}
	slices.Sort(pids)
	return slices.Compact(pids), nil
}

// MemberPids lists the processes in one member's cgroup, sorted.
func (p *Pod) MemberPids(mem Member) ([]int, error) {
	if err := validMember(mem); err != nil {
		return nil, err
	}
	pids, err := p.walkPids(filepath.Join(p.dirs[0], string(mem)), 0)
	slices.Sort(pids)
	return pids, err
}

func (p *Pod) walkPids(dir string, depth int) ([]int, error) {
	if depth > 8 {
		return nil, fmt.Errorf("cgroups: %s: cgroups nested too deep", dir)
	}
	pids, err := p.m.readPids(dir)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil // a half-made pod
		}
		return nil, err
	}
	subs, err := p.m.fs.subdirs(dir)
	if err != nil {
		return nil, err
	}
	for _, s := range subs {
		more, err := p.walkPids(filepath.Join(dir, s), depth+1)
		if err != nil {
			return nil, err
		}
		pids = append(pids, more...)
	}
	return pids, nil
}

func parsePids(dir, s string) ([]int, error) {
	var pids []int
	for _, f := range strings.Fields(s) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("cgroups: %s/cgroup.procs: bad pid %q", dir, f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// Kill kills every process in the pod and returns once the pod is empty, or with an error
// naming the survivors when ctx ends first. On v2 with cgroup.kill (Linux 5.14) the kernel does
// it atomically; otherwise the pod is frozen (so nothing forks behind the kill), every process
// gets SIGKILL, the pod is thawed so the signals land, and that repeats until it is empty.
func (p *Pod) Kill(ctx context.Context) error {
	m := p.m
	if m.mode == Unified && m.fs.exists(p.dirs[0], "cgroup.kill") {
		if err := m.fs.write(p.dirs[0], "cgroup.kill", "1"); err != nil {
			return fmt.Errorf("cgroups: kill pod %q: %w", p.name, err)
		}
		return p.waitEmpty(ctx)
	}
	for {
		pids, err := p.Pids()
		if err != nil {
			return fmt.Errorf("cgroups: kill pod %q: %w", p.name, err)
		}
		if len(pids) == 0 {
			return nil
		}
		frozen := p.freeze(ctx)
		if frozen { // what was listed before the freeze may have forked since
			if pids, err = p.Pids(); err != nil {
				err = fmt.Errorf("cgroups: kill pod %q: %w", p.name, err)
			}
		}
		for _, pid := range pids {
			if kerr := m.kill(pid); kerr != nil && err == nil {
				err = fmt.Errorf("cgroups: kill pod %q: %w", p.name, kerr)
			}
		}
		if frozen {
			if terr := p.thaw(); terr != nil && err == nil {
				err = fmt.Errorf("cgroups: kill pod %q: %w", p.name, terr)
			}
		}
		if err != nil {
			return err
		}
		// Give the killed processes a moment to exit before freezing again.
		werr := p.waitEmptyFor(ctx, 50*time.Millisecond)
		if werr == nil {
			return nil
		}
		if ctx.Err() != nil {
			return werr
		}
	}
}

// waitEmptyFor is waitEmpty bounded by d as well as by ctx.
func (p *Pod) waitEmptyFor(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return p.waitEmpty(ctx)
}

func (p *Pod) waitEmpty(ctx context.Context) error {
	delay := time.Millisecond
	for {
		pids, err := p.Pids()
		if err != nil {
			return fmt.Errorf("cgroups: kill pod %q: %w", p.name, err)
		}
		if len(pids) == 0 {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("cgroups: kill pod %q: processes %v left: %w", p.name, pids, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// freeze freezes the pod and waits (briefly) until it is frozen. It reports whether a freezer
// was there to use; killing works without one, with a window for forks.
func (p *Pod) freeze(ctx context.Context) bool {
	fs := p.m.fs
	var dir, file, on string
	var frozen func() bool
	if p.m.mode == Unified {
		dir, file, on = p.dirs[0], "cgroup.freeze", "1"
		if !fs.exists(dir, file) {
			return false
		}
		frozen = func() bool {
			v, err := fs.read(dir, "cgroup.events")
			return err == nil && slices.Contains(strings.Split(v, "\n"), "frozen 1")
		}
	} else {
		dir, file, on = p.Path("freezer"), "freezer.state", "FROZEN"
		if dir == "" || !fs.exists(dir, file) {
			return false
		}
		frozen = func() bool {
			v, err := fs.read(dir, file)
			return err == nil && strings.TrimSpace(v) == "FROZEN"
		}
	}
	if err := fs.write(dir, file, on); err != nil {
		return false
	}
	// A task in uninterruptible sleep can hold the freeze off; never wait long for it.
	deadline := time.Now().Add(100 * time.Millisecond)
	for !frozen() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	return true
}

func (p *Pod) thaw() error {
	if p.m.mode == Unified {
		return p.m.fs.write(p.dirs[0], "cgroup.freeze", "0")
	}
	return p.m.fs.write(p.Path("freezer"), "freezer.state", "THAWED")
}

// Delete removes the pod's cgroups, members first, in every hierarchy (the primary last),
// retrying briefly while the kernel still counts exited processes (EBUSY). It copes with a pod
// that was only partly made, and deleting a deleted pod does nothing. Kill the pod first.
func (p *Pod) Delete(ctx context.Context) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(2 * time.Second)
	}
	return p.remove(ctx.Done(), deadline)
}

func (p *Pod) remove(done <-chan struct{}, deadline time.Time) error {
	m := p.m
	var errs []error
	for i := len(p.dirs) - 1; i >= 0; i-- {
		if err := p.removeTree(p.dirs[i], done, deadline, 0); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("cgroups: delete pod %q: %w", p.name, errors.Join(errs...))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.removeBaseLocked(); err != nil {
		return fmt.Errorf("cgroups: delete pod %q: %w", p.name, err)
	}
	return nil
}

// removeTree removes dir and the cgroups below it, bottom up.
func (p *Pod) removeTree(dir string, done <-chan struct{}, deadline time.Time, depth int) error {
	if depth > 8 {
		return fmt.Errorf("cgroups: %s: cgroups nested too deep", dir)
	}
	subs, err := p.m.fs.subdirs(dir)
	if err != nil {
		return err
	}
	for _, s := range subs {
		if err := p.removeTree(filepath.Join(dir, s), done, deadline, depth+1); err != nil {
			return err
		}
	}
	delay := time.Millisecond
	for {
		err := p.m.fs.rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-done:
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}
