// Package cgroups places each pod of the launcher in its own cgroup with the pod's limits, under
// the cgroup the launcher itself runs in:
//
//	<own>/podmesh/<pod>/          memory, CPU and pids limits of the whole pod
//	<own>/podmesh/<pod>/init      the pod's PID 1
//	<own>/podmesh/<pod>/sidecar
//	<own>/podmesh/<pod>/app
//
// On cgroup v1 (and the hybrid layout, where resource control is v1) that tree exists once per
// hierarchy the package uses (memory, cpu, cpuacct, pids, freezer), each under the launcher's
// own cgroup in that hierarchy. On v2 it exists once, and the launcher moves itself into
// <own>/supervisor when its cgroup holds processes, because v2 forbids processes in a cgroup
// that delegates controllers to children (systemd's CGROUP_DELEGATION.md).
//
// All cgroupfs I/O goes through one file helper (fs.go), so a Manager can run against a fake
// cgroupfs (a temp dir) in unit tests.
package cgroups

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	containerd "github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
)

// Limits are a pod's resource limits. Zero means unlimited. compose.Limits converts to it
// directly: cgroups.Limits(service.Limits).
type Limits struct {
	NanoCPUs    int64 // CPU time per second, in billionths of a CPU: 500_000_000 = half a CPU
	MemoryBytes int64
	Pids        int64
}

// Member is one of the child cgroups of a pod.
type Member string

// The members of every pod, created with it.
const (
	Init    Member = "init"    // the pod's PID 1
	Sidecar Member = "sidecar" // the sidecar proxy
	App     Member = "app"     // the service itself
)

// Members are the members of every pod.
var Members = []Member{Init, Sidecar, App}

// CPUPeriod is the CFS period of every pod's CPU limit: the quota is NanoCPUs of it.
const CPUPeriod = 100 * time.Millisecond

// DefaultName is the directory under the launcher's own cgroup holding every pod.
const DefaultName = "podmesh"

// supervisorLeaf is where the launcher moves itself on cgroup v2.
const supervisorLeaf = "supervisor"

// Errors callers can test with errors.Is.
var (
	ErrNotUnified = errors.New("cgroups: needs cgroup v2 (this host uses v1 for resource control)")
	ErrNoOOMCount = errors.New("cgroups: the kernel does not count OOM kills (no oom_kill in memory.oom_control)")
)

// Config says where the cgroups are. The zero value means the real host.
type Config struct {
	Root       string // cgroupfs root; default /sys/fs/cgroup
	Name       string // directory under the launcher's own cgroup holding the pods; default "podmesh"
	ProcCgroup string // the launcher's /proc/self/cgroup; default "/proc/self/cgroup"
	MountInfo  string // the launcher's /proc/self/mountinfo; default "/proc/self/mountinfo"
	// Fake treats Root as a plain directory tree standing in for cgroupfs (unit tests). ProcCgroup
	// and MountInfo must then describe that tree.
	Fake bool
	// Bases are absolute base directories an earlier Manager reported (Bases), perhaps one
	// of a launcher in another cgroup: each replaces the base of the hierarchy mounted above
	// it, so its pods are found wherever this process runs. Hierarchies without one keep the
	// base under this process's own cgroup.
	Bases []string
}

func (c Config) withDefaults() Config {
	if c.Root == "" {
		c.Root = "/sys/fs/cgroup"
	}
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.ProcCgroup == "" {
		c.ProcCgroup = "/proc/self/cgroup"
	}
	if c.MountInfo == "" {
		c.MountInfo = "/proc/self/mountinfo"
	}
	return c
}

// The controllers the package uses. v1 also uses freezer (kill-all without fork races) and
// cpuacct (CPU usage); on v2 both are built in.
var (
	v1Controllers = []string{"memory", "pids", "freezer", "cpu", "cpuacct"}
	v2Controllers = []string{"cpu", "memory", "pids"}
)

// hierarchy is one cgroup tree the package writes to.
type hierarchy struct {
	controllers []string // v1: the hierarchy's controllers we use; v2: those enabled for pods
	mount       string   // mount point
	own         string   // the launcher's own cgroup: an absolute directory under mount
	base        string   // own/<Name>
}

func (h *hierarchy) has(controller string) bool { return slices.Contains(h.controllers, controller) }

// Manager creates, finds and removes pod cgroups. It is safe for concurrent use.
type Manager struct {
	cfg   Config
	fs    *cgfs
	mode  Mode
	hiers []*hierarchy // v1: primary first (see New); v2: exactly one

	mu     sync.Mutex // serialises creating and removing the base directories
	closed atomic.Bool

	kill func(pid int) error // SIGKILL; replaced in unit tests
	self int                 // the launcher's pid
}

// New finds the launcher's own cgroup in every hierarchy it needs. It creates nothing.
func New(cfg Config) (*Manager, error) {
	cfg = cfg.withDefaults()
	if !filepath.IsAbs(cfg.Root) {
		return nil, fmt.Errorf("cgroups: root %q is not absolute", cfg.Root)
	}
	cfg.Root = filepath.Clean(cfg.Root)
	if !validName(cfg.Name) {
		return nil, fmt.Errorf("cgroups: invalid name %q", cfg.Name)
	}
	mi, err := os.ReadFile(cfg.MountInfo)
	if err != nil {
		return nil, fmt.Errorf("cgroups: read mounts: %w", err)
	}
	mounts, err := parseMountinfo(bytes.NewReader(mi), cfg.Root)
	if err != nil {
		return nil, err
	}
	pc, err := os.ReadFile(cfg.ProcCgroup)
	if err != nil {
		return nil, fmt.Errorf("cgroups: read own cgroup: %w", err)
	}
	v1Paths, v2Path, err := containerd.ParseCgroupFromReaderUnified(bytes.NewReader(pc))
	if err != nil {
		return nil, fmt.Errorf("cgroups: parse %s: %w", cfg.ProcCgroup, err)
	}
	fsys, err := openFS(cfg.Root, cfg.Fake)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, fs: fsys, mode: detectMode(mounts, cfg.Root), self: os.Getpid()}
	m.kill = func(pid int) error {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("cgroups: kill %d: %w", pid, err)
		}
		return nil
	}
	switch m.mode {
	case Unified:
		err = m.findV2(mounts, v2Path)
	case Legacy, Hybrid:
		err = m.findV1(mounts, v1Paths)
	default:
		err = fmt.Errorf("cgroups: no cgroup hierarchy mounted under %s", cfg.Root)
	}
	if err == nil {
		err = m.useBases(cfg.Bases)
	}
	if err != nil {
		fsys.close()
		return nil, err
	}
	return m, nil
}

// useBases puts recorded base directories in place of the computed ones (Config.Bases).
func (m *Manager) useBases(bases []string) error {
	for _, b := range bases {
		b = filepath.Clean(b)
		var found *hierarchy
		for _, h := range m.hiers {
			if strings.HasPrefix(b, h.mount+"/") && (found == nil || len(h.mount) > len(found.mount)) {
				found = h
			}
		}
		if found == nil || !filepath.IsAbs(b) || !validName(filepath.Base(b)) {
			return fmt.Errorf("cgroups: recorded base %s is in none of the hierarchies used (%s)", b, m.mounts())
		}
		found.base, found.own = b, filepath.Dir(b)
	}
	return nil
}

func (m *Manager) mounts() string {
	var out []string
	for _, h := range m.hiers {
		out = append(out, h.mount)
	}
	return strings.Join(out, ", ")
}

// Bases are the absolute directories holding the pods, one per hierarchy used: what a later
// Manager, perhaps in another process's cgroup, needs (Config.Bases) to find them.
func (m *Manager) Bases() []string {
	var out []string
	for _, h := range m.hiers {
		out = append(out, h.base)
	}
	return out
}

// ownDir maps the launcher's cgroup path (as /proc/self/cgroup shows it) to a directory.
func ownDir(mnt mount, path string) (string, error) {
	rel := path
	if mnt.root != "/" {
		r, ok := strings.CutPrefix(path, mnt.root)
		if !ok || (r != "" && !strings.HasPrefix(r, "/")) {
			return "", fmt.Errorf("cgroups: own cgroup %s is outside the part of the hierarchy mounted at %s (%s)", path, mnt.point, mnt.root)
		}
		rel = r
	}
	return filepath.Join(mnt.point, filepath.Clean("/"+rel)), nil
}

func (m *Manager) findV2(mounts []mount, own string) error {
	if own == "" {
		return fmt.Errorf("cgroups: %s has no cgroup v2 entry", m.cfg.ProcCgroup)
	}
	var mnt mount
	for _, mt := range mounts {
		if mt.v2 && mt.point == m.cfg.Root {
			mnt = mt
		}
	}
	dir, err := ownDir(mnt, own)
	if err != nil {
		return err
	}
	// A launcher started from a shell inside a previous launcher's supervisor leaf belongs to
	// the same delegated cgroup.
	if filepath.Base(dir) == supervisorLeaf && dir != mnt.point {
		dir = filepath.Dir(dir)
	}
	avail, err := m.fs.read(dir, "cgroup.controllers")
	if err != nil {
		return err
	}
	h := &hierarchy{mount: mnt.point, own: dir, base: filepath.Join(dir, m.cfg.Name)}
	for _, c := range strings.Fields(avail) {
		if slices.Contains(v2Controllers, c) {
			h.controllers = append(h.controllers, c)
		}
	}
	sort.Strings(h.controllers)
	m.hiers = []*hierarchy{h}
	return nil
}

func (m *Manager) findV1(mounts []mount, own map[string]string) error {
	byMount := map[string]*hierarchy{}
	for _, c := range v1Controllers {
		var mnt *mount
		for i := range mounts {
			if !mounts[i].v2 && slices.Contains(mounts[i].controllers, c) {
				mnt = &mounts[i]
				break
			}
		}
		path, ok := own[c]
		if mnt == nil || !ok {
			continue // not mounted here; Create fails if a limit needs it
		}
		if h, ok := byMount[mnt.point]; ok {
			h.controllers = append(h.controllers, c)
			continue
		}
		dir, err := ownDir(*mnt, path)
		if err != nil {
			return err
		}
		h := &hierarchy{controllers: []string{c}, mount: mnt.point, own: dir, base: filepath.Join(dir, m.cfg.Name)}
		byMount[mnt.point] = h
		m.hiers = append(m.hiers, h)
	}
	if len(m.hiers) == 0 {
		return fmt.Errorf("cgroups: none of the v1 controllers %v is mounted under %s", v1Controllers, m.cfg.Root)
	}
	// The primary hierarchy is the one most specific to this launcher (the deepest own
	// cgroup; memory first on ties, by the order above). Create makes the pod there first and
	// Delete removes it there last, so any pod left anywhere by a killed launcher is in the
	// primary hierarchy, and List needs to look only there. Hierarchies where the launcher
	// sits at the root are shared with every other process on the host.
	sort.SliceStable(m.hiers, func(i, j int) bool {
		return strings.Count(m.hiers[i].own, "/")-strings.Count(m.hiers[i].mount, "/") >
			strings.Count(m.hiers[j].own, "/")-strings.Count(m.hiers[j].mount, "/")
	})
	return nil
}

// Mode is the host's cgroup layout.
func (m *Manager) Mode() Mode { return m.mode }

// BasePath is the directory holding every pod in the hierarchy of controller ("" for any on v2).
func (m *Manager) BasePath(controller string) string {
	if h := m.hierarchy(controller); h != nil {
		return h.base
	}
	return ""
}

func (m *Manager) hierarchy(controller string) *hierarchy {
	if m.mode == Unified {
		return m.hiers[0]
	}
	for _, h := range m.hiers {
		if h.has(controller) {
			return h
		}
	}
	return nil
}

// Close releases the Manager's handle on cgroupfs. Pods stay. A second Close returns
// net.ErrClosed.
func (m *Manager) Close() error {
	if m.closed.Swap(true) {
		return net.ErrClosed
	}
	return m.fs.close()
}

var nameRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

func validName(n string) bool { return nameRe.MatchString(n) }

// Create makes the pod's cgroups with its limits and its member cgroups. It fails if the pod
// exists (a killed launcher's leftover: see Cleanup), and removes what it made when it fails
// part way.
func (m *Manager) Create(pod string, l Limits) (*Pod, error) {
	if m.closed.Load() {
		return nil, net.ErrClosed
	}
	if !validName(pod) {
		return nil, fmt.Errorf("cgroups: create pod %q: invalid name (letters, digits, '_', '.', '-')", pod)
	}
	if err := m.checkLimits(l); err != nil {
		return nil, fmt.Errorf("cgroups: create pod %q: %w", pod, err)
	}
	p := m.pod(pod)
	m.mu.Lock()
	if m.fs.exists(p.dirs[0], "") {
		m.mu.Unlock()
		return nil, fmt.Errorf("cgroups: create pod %q: %s: %w", pod, p.dirs[0], os.ErrExist)
	}
	err := m.ensureBase()
	if err == nil {
		err = p.create(l)
	}
	m.mu.Unlock()
	if err != nil {
		if derr := p.remove(nil, time.Now().Add(2*time.Second)); derr != nil {
			err = errors.Join(err, derr)
		}
		return nil, fmt.Errorf("cgroups: create pod %q: %w", pod, err)
	}
	return p, nil
}

func (m *Manager) checkLimits(l Limits) error {
	if l.NanoCPUs < 0 || l.MemoryBytes < 0 || l.Pids < 0 {
		return fmt.Errorf("negative limit in %+v", l)
	}
	need := func(c string, set bool) error {
		if set && m.hierarchy(c) == nil {
			return fmt.Errorf("the %s controller is not available, so the limit cannot be enforced", c)
		}
		if set && m.mode == Unified && !m.hiers[0].has(c) {
			return fmt.Errorf("the %s controller is not delegated to %s", c, m.hiers[0].own)
		}
		return nil
	}
	return errors.Join(need("cpu", l.NanoCPUs > 0), need("memory", l.MemoryBytes > 0), need("pids", l.Pids > 0))
}

// pod returns the handle of a pod by name, whether or not it exists.
func (m *Manager) pod(name string) *Pod {
	p := &Pod{m: m, name: name}
	for _, h := range m.hiers {
		p.dirs = append(p.dirs, filepath.Join(h.base, name))
	}
	return p
}

// ensureBase creates <own>/<Name> in every hierarchy. Called with m.mu held.
func (m *Manager) ensureBase() error {
	if m.mode != Unified {
		for _, h := range m.hiers {
			if err := m.fs.mkdir(h.base); err != nil {
				return err
			}
		}
		return nil
	}
	h := m.hiers[0]
	if err := m.enableControllers(h.own, h.controllers, true); err != nil {
		return err
	}
	if err := m.fs.mkdir(h.base); err != nil {
		return err
	}
	return m.enableControllers(h.base, h.controllers, false)
}

// enableControllers turns on controllers for the children of dir (v2). own marks the
// launcher's own cgroup, from which the launcher first moves itself to the supervisor leaf
// when it holds processes: v2 allows no processes in a cgroup whose children get controllers.
func (m *Manager) enableControllers(dir string, controllers []string, own bool) error {
	cur, err := m.fs.read(dir, "cgroup.subtree_control")
	if err != nil {
		return err
	}
	var missing []string
	for _, c := range controllers {
		if !slices.Contains(strings.Fields(cur), c) {
			missing = append(missing, "+"+c)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if own && dir != m.hiers[0].mount { // the root cgroup is exempt from the rule
		if err := m.leaveOwnCgroup(dir); err != nil {
			return err
		}
	}
	return m.fs.write(dir, "cgroup.subtree_control", strings.Join(missing, " "))
}

// leaveOwnCgroup moves the launcher into dir/supervisor when dir holds processes, and fails if
// processes other than the launcher remain there.
func (m *Manager) leaveOwnCgroup(dir string) error {
	pids, err := m.readPids(dir)
	if err != nil {
		return err
	}
	if len(pids) == 0 {
		return nil
	}
	if slices.Contains(pids, m.self) {
		leaf := filepath.Join(dir, supervisorLeaf)
		if err := m.fs.mkdir(leaf); err != nil {
			return err
		}
		if err := m.fs.write(leaf, "cgroup.procs", fmt.Sprint(m.self)); err != nil {
			return err
		}
		if pids, err = m.readPids(dir); err != nil {
			return err
		}
		pids = slices.DeleteFunc(pids, func(p int) bool { return p == m.self })
	}
	if len(pids) > 0 {
		return fmt.Errorf("cgroups: %s holds processes %v besides the launcher; cgroup v2 needs a cgroup delegated to the launcher alone (for example systemd-run --scope -p Delegate=yes)", dir, pids)
	}
	return nil
}

// readPids reads dir/cgroup.procs.
func (m *Manager) readPids(dir string) ([]int, error) {
	s, err := m.fs.read(dir, "cgroup.procs")
	if err != nil {
		return nil, err
	}
	return parsePids(dir, s)
}

// removeBaseLocked removes the base directories once no pod is left in them. Called with m.mu
// held; a base another launcher still uses (EBUSY) stays.
func (m *Manager) removeBaseLocked() error {
	var errs []error
	for i := len(m.hiers) - 1; i >= 0; i-- {
		err := m.fs.rmdir(m.hiers[i].base)
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.ENOTEMPTY) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// List returns the names of the pods that exist, in name order: after a killed launcher,
// those it left behind.
func (m *Manager) List() ([]string, error) {
	if m.closed.Load() {
		return nil, net.ErrClosed
	}
	names, err := m.fs.subdirs(m.hiers[0].base)
	if err != nil {
		return nil, err
	}
	names = slices.DeleteFunc(names, func(n string) bool { return !validName(n) })
	sort.Strings(names)
	return names, nil
}

// Open returns the handle of an existing pod, even one a killed launcher left half made.
func (m *Manager) Open(pod string) (*Pod, error) {
	if m.closed.Load() {
		return nil, net.ErrClosed
	}
	if !validName(pod) {
		return nil, fmt.Errorf("cgroups: open pod %q: invalid name", pod)
	}
	p := m.pod(pod)
	for _, d := range p.dirs {
		if m.fs.exists(d, "") {
			return p, nil
		}
	}
	return nil, fmt.Errorf("cgroups: open pod %q: %w", pod, os.ErrNotExist)
}

// Cleanup kills the processes of every pod that exists and removes the pods: what a launcher
// does at start after a predecessor was killed.
func (m *Manager) Cleanup(ctx context.Context) error {
	names, err := m.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		p, err := m.Open(n)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if err := p.Kill(ctx); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := p.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(names) == 0 {
		m.mu.Lock()
		err := m.removeBaseLocked()
		m.mu.Unlock()
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
