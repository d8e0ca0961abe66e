package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeHost is a fake cgroupfs in a temp dir, with the test playing the kernel: it creates the
// control files of each new cgroup, and a fake SIGKILL takes the pid out of every cgroup.procs.
type fakeHost struct {
	t    *testing.T
	root string // stands in for /sys/fs/cgroup
	m    *Manager

	mu     sync.Mutex
	killed []int
}

// v2Files are the control files the fake kernel puts in every new v2 cgroup.
var v2Files = map[string]string{
	"cgroup.procs":           "",
	"cgroup.subtree_control": "",
	"cgroup.controllers":     "cpu memory pids",
	"cgroup.events":          "populated 0\nfrozen 0\n",
	"cgroup.kill":            "",
	"cgroup.freeze":          "0",
	"memory.max":             "max",
	"memory.swap.max":        "max",
	"memory.events":          "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
	"memory.oom.group":       "0",
	"memory.current":         "0",
	"cpu.max":                "max 100000",
	"cpu.stat":               "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
	"pids.max":               "max",
	"pids.current":           "0",
}

// v1Files are those of a new v1 cgroup, per hierarchy directory name.
var v1Files = map[string]map[string]string{
	"memory": {
		"memory.limit_in_bytes":       "9223372036854771712",
		"memory.memsw.limit_in_bytes": "9223372036854771712",
		"memory.use_hierarchy":        "1",
		"memory.oom_control":          "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
		"memory.usage_in_bytes":       "0",
		"memory.max_usage_in_bytes":   "0",
		"cgroup.event_control":        "",
	},
	"cpu":     {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1", "cpu.shares": "1024"},
	"cpuacct": {"cpuacct.usage": "0"},
	"pids":    {"pids.max": "max", "pids.current": "0"},
	"freezer": {"freezer.state": "THAWED"},
	"systemd": {},
}

func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func (h *fakeHost) write(path, content string) {
	h.t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *fakeHost) read(path string) string {
	h.t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

func (h *fakeHost) exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// newFakeV2 makes a v2 host where the launcher runs in /user.slice/launcher.scope, whose
// cgroup.procs holds ownProcs.
func newFakeV2(t *testing.T, ownProcs string) *fakeHost {
	root := t.TempDir()
	h := &fakeHost{t: t, root: root}
	writeFiles(t, root, v2Files)
	own := filepath.Join(root, "user.slice", "launcher.scope")
	writeFiles(t, filepath.Join(root, "user.slice"), v2Files)
	writeFiles(t, own, v2Files)
	h.write(filepath.Join(own, "cgroup.procs"), ownProcs)
	h.start(fmt.Sprintf("33 25 0:28 / %s rw - cgroup2 cgroup2 rw\n", root), "0::/user.slice/launcher.scope\n",
		func(dir string) error { writeFiles(t, dir, v2Files); return nil })
	return h
}

// newFakeHybrid makes this project's machines: v1 hierarchies (memory nested, the others at
// the root, cpu and cpuacct mounted apart, a named systemd one) plus an empty v2 at unified.
func newFakeHybrid(t *testing.T) *fakeHost {
	root := t.TempDir()
	h := &fakeHost{t: t, root: root}
	var mi strings.Builder
	fmt.Fprintf(&mi, "33 25 0:28 / %s rw - tmpfs tmpfs rw,mode=755\n", root)
	for i, c := range []string{"cpu", "cpuacct", "memory", "pids", "freezer", "systemd"} {
		opt := c
		if c == "systemd" {
			opt = "xattr,name=systemd"
		}
		fmt.Fprintf(&mi, "%d 33 0:%d / %s/%s rw - cgroup cgroup rw,%s\n", 40+i, 40+i, root, c, opt)
		writeFiles(t, filepath.Join(root, c), v1Files[c])
		writeFiles(t, filepath.Join(root, c), map[string]string{"cgroup.procs": "1\n"})
	}
	fmt.Fprintf(&mi, "50 33 0:50 / %s/unified rw - cgroup2 cgroup2 rw\n", root)
	writeFiles(t, filepath.Join(root, "unified"), map[string]string{"cgroup.controllers": "hugetlb"})
	own := filepath.Join(root, "memory", "process_api", "abc")
	writeFiles(t, own, v1Files["memory"])
	proc := "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n"
	h.start(mi.String(), proc, func(dir string) error {
		rel, _ := strings.CutPrefix(dir, root+"/")
		hier, _, _ := strings.Cut(rel, "/")
		writeFiles(t, dir, v1Files[hier])
		writeFiles(t, dir, map[string]string{"cgroup.procs": "", "tasks": ""})
		return nil
	})
	return h
}

func (h *fakeHost) start(mountinfo, procCgroup string, mkdir func(string) error) {
	t := h.t
	dir := t.TempDir()
	mi, pc := filepath.Join(dir, "mountinfo"), filepath.Join(dir, "cgroup")
	h.write(mi, mountinfo)
	h.write(pc, procCgroup)
	m, err := New(Config{Root: h.root, Fake: true, MountInfo: mi, ProcCgroup: pc})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	m.fs.fakeMkdir = mkdir
	m.kill = h.kill
	m.self = 4242
	h.m = m
}

// kill is the fake SIGKILL: the process leaves every cgroup.procs under the root.
func (h *fakeHost) kill(pid int) error {
	h.mu.Lock()
	h.killed = append(h.killed, pid)
	h.mu.Unlock()
	return filepath.WalkDir(h.root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.Name() != "cgroup.procs" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var keep []string
		for _, f := range strings.Fields(string(b)) {
			if f != strconv.Itoa(pid) {
				keep = append(keep, f)
			}
		}
		return os.WriteFile(path, []byte(strings.Join(keep, "\n")), 0o644)
	})
}

func TestFakeV2Create(t *testing.T) {
	h := newFakeV2(t, "4242\n")
	m := h.m
	if m.Mode() != Unified {
		t.Fatalf("mode %v", m.Mode())
	}
	p, err := m.Create("web-0", Limits{NanoCPUs: 500_000_000, MemoryBytes: 64 << 20, Pids: 64})
	if err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(h.root, "user.slice", "launcher.scope")
	base := filepath.Join(own, "podmesh")
	pod := filepath.Join(base, "web-0")
	for path, want := range map[string]string{
		// the launcher left its cgroup for a leaf before delegating controllers
		own + "/supervisor/cgroup.procs":  "4242",
		own + "/cgroup.subtree_control":   "+cpu +memory +pids",
		base + "/cgroup.subtree_control":  "+cpu +memory +pids",
		pod + "/cgroup.subtree_control":   "+cpu +memory +pids",
		pod + "/cpu.max":                  "50000 100000",
		pod + "/memory.max":               "67108864",
		pod + "/memory.swap.max":          "0",
		pod + "/pids.max":                 "64",
		pod + "/app/memory.oom.group":     "1",
		pod + "/sidecar/memory.oom.group": "0",
		pod + "/app/memory.max":           "max", // limits are on the pod only
	} {
		if got := h.read(path); got != want {
			t.Errorf("%s = %q, want %q", strings.TrimPrefix(path, h.root), got, want)
		}
	}
	for _, mem := range Members {
		if !h.exists(filepath.Join(pod, string(mem))) {
			t.Errorf("member %s not created", mem)
		}
		if got, want := p.MemberPath(mem, "memory"), filepath.Join(pod, string(mem)); got != want {
			t.Errorf("MemberPath(%s) = %s, want %s", mem, got, want)
		}
	}
	if p.Path("pids") != pod || p.Path("") != pod || m.BasePath("") != base {
		t.Errorf("paths: %s %s %s", p.Path("pids"), p.Path(""), m.BasePath(""))
	}
	l, err := p.Limits()
	if err != nil || l != (Limits{NanoCPUs: 500_000_000, MemoryBytes: 64 << 20, Pids: 64}) {
		t.Errorf("Limits() = %+v, %v", l, err)
	}

	// A second pod reuses the delegation: nothing is written again.
	h.write(own+"/cgroup.subtree_control", "cpu memory pids")
	h.write(base+"/cgroup.subtree_control", "cpu memory pids")
	if _, err := m.Create("web-1", Limits{NanoCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	if got := h.read(own + "/cgroup.subtree_control"); got != "cpu memory pids" {
		t.Errorf("own subtree_control rewritten: %q", got)
	}
	if got := h.read(base + "/web-1/cpu.max"); got != "1000 100000" {
		t.Errorf("tiny cpu limit: cpu.max = %q, want the kernel's minimum quota", got)
	}
	if got := h.read(base + "/web-1/memory.max"); got != "max" {
		t.Errorf("no memory limit, but memory.max = %q", got)
	}
	if names, err := m.List(); err != nil || strings.Join(names, " ") != "web-0 web-1" {
		t.Errorf("List = %v, %v", names, err)
	}
	if _, err := m.Create("web-0", Limits{}); !errors.Is(err, os.ErrExist) {
		t.Errorf("Create of an existing pod: %v", err)
	}
}

func TestFakeV2OwnCgroupShared(t *testing.T) {
	h := newFakeV2(t, "4242\n777\n")
	_, err := h.m.Create("web-0", Limits{})
	own := filepath.Join(h.root, "user.slice", "launcher.scope")
	want := fmt.Sprintf(`cgroups: create pod "web-0": cgroups: %s holds processes [777] besides the launcher; cgroup v2 needs a cgroup delegated to the launcher alone (for example systemd-run --scope -p Delegate=yes)`, own)
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	if h.exists(filepath.Join(own, "podmesh")) {
		t.Error("base dir created although delegation failed")
	}
}

func TestFakeV2RootCgroup(t *testing.T) {
	// A launcher in the root cgroup (a container with its own cgroup namespace) stays there:
	// the root is exempt from the no-internal-processes rule.
	h := newFakeV2(t, "")
	h.write(filepath.Join(h.root, "cgroup.procs"), "4242\n")
	dir := t.TempDir()
	mi, pc := filepath.Join(dir, "mountinfo"), filepath.Join(dir, "cgroup")
	h.write(mi, fmt.Sprintf("33 25 0:28 / %s rw - cgroup2 cgroup2 rw\n", h.root))
	h.write(pc, "0::/\n")
	m, err := New(Config{Root: h.root, Fake: true, MountInfo: mi, ProcCgroup: pc})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.fs.fakeMkdir = h.m.fs.fakeMkdir
	m.self = 4242
	if _, err := m.Create("a", Limits{Pids: 10}); err != nil {
		t.Fatal(err)
	}
	if h.exists(filepath.Join(h.root, "supervisor")) {
		t.Error("moved itself out of the root cgroup")
	}
	if got := h.read(filepath.Join(h.root, "podmesh", "a", "pids.max")); got != "10" {
		t.Errorf("pids.max = %q", got)
	}
}

func TestFakeV2MissingController(t *testing.T) {
	h := newFakeV2(t, "")
	own := filepath.Join(h.root, "user.slice", "launcher.scope")
	h.write(own+"/cgroup.controllers", "memory") // pids and cpu not delegated
	dir := t.TempDir()
	mi, pc := filepath.Join(dir, "mountinfo"), filepath.Join(dir, "cgroup")
	h.write(mi, fmt.Sprintf("33 25 0:28 / %s rw - cgroup2 cgroup2 rw\n", h.root))
	h.write(pc, "0::/user.slice/launcher.scope/supervisor\n") // a launcher already in the leaf
	m, err := New(Config{Root: h.root, Fake: true, MountInfo: mi, ProcCgroup: pc})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.BasePath("") != own+"/podmesh" {
		t.Errorf("base %s: a launcher in the supervisor leaf belongs to its parent", m.BasePath(""))
	}
	_, err = m.Create("a", Limits{Pids: 10, NanoCPUs: 1e9})
	want := fmt.Sprintf(`cgroups: create pod "a": the cpu controller is not delegated to %[1]s
the pids controller is not delegated to %[1]s`, own)
	if err == nil || err.Error() != want {
		t.Errorf("err = %v\nwant %s", err, want)
	}
}

func TestFakeV2AddPidsKill(t *testing.T) {
	h := newFakeV2(t, "")
	p, err := h.m.Create("web-0", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	pod := p.Path("")
	if err := p.Add(App, 100); err != nil {
		t.Fatal(err)
	}
	if got := h.read(pod + "/app/cgroup.procs"); got != "100" {
		t.Errorf("app/cgroup.procs = %q", got)
	}
	h.write(pod+"/app/cgroup.procs", "100\n101\n")
	h.write(pod+"/sidecar/cgroup.procs", "90\n")
	h.write(pod+"/init/cgroup.procs", "80\n")
	if pids, err := p.Pids(); err != nil || fmt.Sprint(pids) != "[80 90 100 101]" {
		t.Errorf("Pids = %v, %v", pids, err)
	}
	if pids, err := p.MemberPids(App); err != nil || fmt.Sprint(pids) != "[100 101]" {
		t.Errorf("MemberPids(app) = %v, %v", pids, err)
	}
	if err := p.Add("bogus", 1); err == nil {
		t.Error("Add to an unknown member")
	}
	if err := p.Add(App, 0); err == nil {
		t.Error("Add of pid 0")
	}

	// cgroup.kill: the kernel kills; Kill waits until the pod is empty.
	done := make(chan error, 1)
	go func() { done <- p.Kill(testContext(t)) }()
	waitFile(t, pod+"/cgroup.kill", "1")
	for _, f := range []string{"app", "sidecar", "init"} {
		h.write(pod+"/"+f+"/cgroup.procs", "")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Without cgroup.kill (Linux < 5.14): freeze, SIGKILL each, thaw.
	os.Remove(pod + "/cgroup.kill")
	h.write(pod+"/app/cgroup.procs", "100\n101\n")
	h.write(pod+"/sidecar/cgroup.procs", "90\n")
	h.write(pod+"/cgroup.events", "populated 1\nfrozen 1\n")
	if err := p.Kill(testContext(t)); err != nil {
		t.Fatal(err)
	}
	slices.Sort(h.killed)
	if fmt.Sprint(h.killed) != "[90 100 101]" {
		t.Errorf("killed %v", h.killed)
	}
	if got := h.read(pod + "/cgroup.freeze"); got != "0" {
		t.Errorf("left frozen: cgroup.freeze = %q", got)
	}
}

func waitFile(t *testing.T, path, want string) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if b, _ := os.ReadFile(path); string(b) == want {
			return
		}
		sleep()
	}
	t.Fatalf("%s never became %q", path, want)
}

func TestFakeV2StatsAndOOM(t *testing.T) {
	testCheckGoroutines(t)
	h := newFakeV2(t, "")
	p, err := h.m.Create("web-0", Limits{MemoryBytes: 64 << 20, Pids: 64})
	if err != nil {
		t.Fatal(err)
	}
	pod := p.Path("")
	h.write(pod+"/cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
	h.write(pod+"/memory.current", "1048576\n")
	h.write(pod+"/memory.peak", "2097152\n")
	h.write(pod+"/pids.current", "7\n")
	h.write(pod+"/memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n")
	st, err := p.Stats()
	want := Stats{CPUUsage: 1500 * 1e6, MemoryCurrent: 1 << 20, MemoryMax: 64 << 20, MemoryPeak: 2 << 20, PidsCurrent: 7, PidsMax: 64, OOMKills: 2}
	if err != nil || st != want {
		t.Errorf("Stats = %+v, %v\nwant %+v", st, err, want)
	}
	h.write(pod+"/app/memory.events", "oom_kill 2\n")
	if n, err := p.MemberOOMKills(App); n != 2 || err != nil {
		t.Errorf("MemberOOMKills(app) = %d, %v", n, err)
	}
	if st, err := p.MemberStats(Sidecar); err != nil || st.MemoryMax != 0 || st.OOMKills != 0 {
		t.Errorf("MemberStats(sidecar) = %+v, %v", st, err)
	}

	ctx, cancel := contextWithCancel(t)
	ch, err := p.WatchOOM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.write(pod+"/memory.events", "low 0\nhigh 0\nmax 4\noom 3\noom_kill 3\n")
	if n := recvTimeout(t, ch); n != 3 {
		t.Errorf("watch sent %d, want 3", n)
	}
	h.write(pod+"/memory.events", "low 0\nhigh 0\nmax 5\noom 3\noom_kill 3\n") // no new kill: nothing sent
	h.write(pod+"/memory.events", "low 0\nhigh 0\nmax 6\noom 4\noom_kill 4\n")
	if n := recvTimeout(t, ch); n != 4 {
		t.Errorf("watch sent %d, want 4", n)
	}
	cancel()
	for range ch { // closed once ctx ends
	}
}

func TestFakeHybridCreate(t *testing.T) {
	h := newFakeHybrid(t)
	m := h.m
	if m.Mode() != Hybrid {
		t.Fatalf("mode %v", m.Mode())
	}
	// memory is the primary hierarchy: the only one where the launcher is not at the root.
	if got := m.hiers[0].controllers; fmt.Sprint(got) != "[memory]" {
		t.Errorf("primary hierarchy %v", got)
	}
	memPod := filepath.Join(h.root, "memory/process_api/abc/podmesh/web-0")
	h.fakeOnce("/podmesh/web-0", "memory.use_hierarchy", "0") // an old kernel's default
	p, err := m.Create("web-0", Limits{NanoCPUs: 1_500_000_000, MemoryBytes: 64 << 20, Pids: 64})
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		memPod + "/memory.limit_in_bytes":               "67108864",
		memPod + "/memory.memsw.limit_in_bytes":         "67108864",
		memPod + "/memory.use_hierarchy":                "1",
		h.root + "/cpu/podmesh/web-0/cpu.cfs_period_us": "100000",
		h.root + "/cpu/podmesh/web-0/cpu.cfs_quota_us":  "150000",
		h.root + "/pids/podmesh/web-0/pids.max":         "64",
		h.root + "/freezer/podmesh/web-0/freezer.state": "THAWED",
	} {
		if got := h.read(path); got != want {
			t.Errorf("%s = %q, want %q", strings.TrimPrefix(path, h.root), got, want)
		}
	}
	for _, hier := range []string{"cpuacct", "cpu", "pids", "freezer"} {
		for _, mem := range Members {
			if !h.exists(filepath.Join(h.root, hier, "podmesh/web-0", string(mem))) {
				t.Errorf("%s: member %s missing", hier, mem)
			}
		}
	}
	for _, untouched := range []string{"systemd/podmesh", "unified/podmesh"} {
		if h.exists(filepath.Join(h.root, untouched)) {
			t.Errorf("%s created: podmesh writes only to the hierarchies it uses", untouched)
		}
	}
	if got := p.Path("memory"); got != memPod {
		t.Errorf("Path(memory) = %s", got)
	}
	if p.Path("cpuset") != "" {
		t.Error("Path of an unused controller")
	}
	if l, err := p.Limits(); err != nil || l != (Limits{NanoCPUs: 1_500_000_000, MemoryBytes: 64 << 20, Pids: 64}) {
		t.Errorf("Limits() = %+v, %v", l, err)
	}
	if _, err := p.CgroupFD(App); !errors.Is(err, ErrNotUnified) {
		t.Errorf("CgroupFD on v1: %v", err)
	}

	if err := p.Add(Sidecar, 55); err != nil {
		t.Fatal(err)
	}
	for _, hier := range []string{"memory/process_api/abc", "cpu", "cpuacct", "pids", "freezer"} {
		if got := h.read(filepath.Join(h.root, hier, "podmesh/web-0/sidecar/cgroup.procs")); got != "55" {
			t.Errorf("%s sidecar/cgroup.procs = %q", hier, got)
		}
	}
}

// fakeOnce makes new cgroups whose path ends in suffix get file with content instead of the
// kernel's default.
func (h *fakeHost) fakeOnce(suffix, file, content string) {
	prev := h.m.fs.fakeMkdir
	h.m.fs.fakeMkdir = func(dir string) error {
		if err := prev(dir); err != nil {
			return err
		}
		if strings.HasSuffix(dir, suffix) && h.exists(filepath.Join(dir, file)) {
			return os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644)
		}
		return nil
	}
}

func TestFakeHybridKillStatsOOM(t *testing.T) {
	h := newFakeHybrid(t)
	p, err := h.m.Create("web-0", Limits{MemoryBytes: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	mem := p.Path("memory")
	h.write(mem+"/app/cgroup.procs", "100\n")
	h.write(mem+"/init/cgroup.procs", "80\n")
	h.write(p.Path("freezer")+"/app/cgroup.procs", "100\n")
	if err := p.Kill(testContext(t)); err != nil {
		t.Fatal(err)
	}
	slices.Sort(h.killed)
	if fmt.Sprint(h.killed) != "[80 100]" {
		t.Errorf("killed %v", h.killed)
	}
	if got := h.read(p.Path("freezer") + "/freezer.state"); got != "THAWED" {
		t.Errorf("freezer.state = %q after Kill", got)
	}

	h.write(p.Path("cpuacct")+"/cpuacct.usage", "2500000000\n")
	h.write(mem+"/memory.usage_in_bytes", "4096\n")
	h.write(mem+"/memory.max_usage_in_bytes", "8192\n")
	h.write(p.Path("pids")+"/pids.current", "3\n")
	// The v1 kernel counts a kill in the killed process's cgroup only.
	h.write(mem+"/app/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
	h.write(mem+"/sidecar/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
	st, err := p.Stats()
	want := Stats{CPUUsage: 2500 * 1e6, MemoryCurrent: 4096, MemoryMax: 32 << 20, MemoryPeak: 8192, PidsCurrent: 3, OOMKills: 3}
	if err != nil || st != want {
		t.Errorf("Stats = %+v, %v\nwant %+v", st, err, want)
	}
	// A kernel that does propagate: the pod's own count already includes the members'.
	h.write(mem+"/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
	if n, err := p.OOMKills(); n != 3 || err != nil {
		t.Errorf("OOMKills = %d, %v, want 3", n, err)
	}
	h.write(mem+"/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n")
	if _, err := p.OOMKills(); !errors.Is(err, ErrNoOOMCount) {
		t.Errorf("OOMKills without the counter: %v", err)
	}
}

func TestFakeDelete(t *testing.T) {
	h := newFakeHybrid(t)
	m := h.m
	p, err := m.Create("a", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create("b", Limits{}); err != nil {
		t.Fatal(err)
	}
	// The kernel refuses the first removals while exited processes are being accounted.
	busy := map[string]int{}
	m.fs.fakeRmdir = func(dir string) error {
		if busy[dir] < 2 {
			busy[dir]++
			return unix.EBUSY
		}
		return nil
	}
	if err := p.Delete(testContext(t)); err != nil {
		t.Fatal(err)
	}
	m.fs.fakeRmdir = nil
	for _, hier := range []string{"memory/process_api/abc", "cpu", "pids"} {
		if h.exists(filepath.Join(h.root, hier, "podmesh", "a")) {
			t.Errorf("%s: pod a left", hier)
		}
		if !h.exists(filepath.Join(h.root, hier, "podmesh", "b")) {
			t.Errorf("%s: pod b removed with a", hier)
		}
	}
	if err := p.Delete(testContext(t)); err != nil {
		t.Errorf("second Delete: %v", err)
	}

	// A pod a killed launcher made only in the primary hierarchy, one member in.
	os.MkdirAll(filepath.Join(h.root, "memory/process_api/abc/podmesh/half/app"), 0o755)
	names, err := m.List()
	if err != nil || strings.Join(names, " ") != "b half" {
		t.Fatalf("List = %v, %v", names, err)
	}
	if _, err := m.Open("nosuch"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(nosuch): %v", err)
	}
	if err := m.Cleanup(testContext(t)); err != nil {
		t.Fatal(err)
	}
	for _, hier := range []string{"memory/process_api/abc", "cpu", "cpuacct", "pids", "freezer"} {
		if h.exists(filepath.Join(h.root, hier, "podmesh")) {
			t.Errorf("%s/podmesh left after Cleanup", hier)
		}
	}
	if names, err := m.List(); err != nil || len(names) != 0 {
		t.Errorf("List after Cleanup = %v, %v", names, err)
	}
}

func TestFakeDeleteGivesUp(t *testing.T) {
	h := newFakeHybrid(t)
	p, err := h.m.Create("a", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	h.m.fs.fakeRmdir = func(dir string) error { return unix.EBUSY }
	ctx, cancel := contextWithTimeout(t, 50)
	defer cancel()
	err = p.Delete(ctx)
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "rmdir "+h.root) {
		t.Errorf("Delete of a busy pod: %v", err)
	}
}

func TestFakeCreateFailsCleanly(t *testing.T) {
	h := newFakeHybrid(t)
	// pids.max of the new pod is a directory: the write fails half way through Create.
	h.m.fs.fakeMkdir = func(dir string) error {
		rel, _ := strings.CutPrefix(dir, h.root+"/")
		hier, _, _ := strings.Cut(rel, "/")
		writeFiles(t, dir, v1Files[hier])
		if strings.HasSuffix(dir, "pids/podmesh/p") {
			os.Remove(filepath.Join(dir, "pids.max"))
			return os.Mkdir(filepath.Join(dir, "pids.max"), 0o755)
		}
		return nil
	}
	_, err := h.m.Create("p", Limits{MemoryBytes: 64 << 20, Pids: 64})
	path := filepath.Join(h.root, "pids/podmesh/p/pids.max")
	want := fmt.Sprintf(`cgroups: create pod "p": cgroups: write "64" to %s: openat2 %s: is a directory`, path, path)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("err = %v\nwant prefix %s", err, want)
	}
	// Everything Create made is gone.
	for _, hier := range []string{"memory/process_api/abc", "cpu", "cpuacct", "pids", "freezer"} {
		if h.exists(filepath.Join(h.root, hier, "podmesh")) {
			t.Errorf("%s/podmesh left after a failed Create", hier)
		}
	}
}

func TestFakeCreateRejects(t *testing.T) {
	h := newFakeHybrid(t)
	for _, tt := range []struct {
		name string
		l    Limits
		want string
	}{
		{"../x", Limits{}, `cgroups: create pod "../x": invalid name (letters, digits, '_', '.', '-')`},
		{"", Limits{}, `cgroups: create pod "": invalid name (letters, digits, '_', '.', '-')`},
		{"ok", Limits{Pids: -1}, `cgroups: create pod "ok": negative limit in {NanoCPUs:0 MemoryBytes:0 Pids:-1}`},
	} {
		if _, err := h.m.Create(tt.name, tt.l); err == nil || err.Error() != tt.want {
			t.Errorf("Create(%q, %+v) = %v, want %s", tt.name, tt.l, err, tt.want)
		}
	}
	if err := h.m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Close(); !errors.Is(err, netErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	if _, err := h.m.Create("a", Limits{}); !errors.Is(err, netErrClosed) {
		t.Errorf("Create after Close: %v", err)
	}
}

func TestFakeLegacyWithoutPids(t *testing.T) {
	// v1 without a pids hierarchy (old kernels): pods work, a pids limit is refused.
	root := t.TempDir()
	h := &fakeHost{t: t, root: root}
	mi := fmt.Sprintf("33 25 0:28 / %[1]s rw - tmpfs tmpfs rw\n34 33 0:29 / %[1]s/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n37 33 0:32 / %[1]s/memory rw - cgroup cgroup rw,memory\n", root)
	writeFiles(t, filepath.Join(root, "cpu,cpuacct"), v1Files["cpu"])
	writeFiles(t, filepath.Join(root, "memory"), v1Files["memory"])
	h.start(mi, "3:cpu,cpuacct:/\n2:memory:/\n", func(dir string) error {
		writeFiles(t, dir, v1Files["cpu"])
		writeFiles(t, dir, v1Files["memory"])
		writeFiles(t, dir, map[string]string{"cgroup.procs": ""})
		return nil
	})
	if h.m.Mode() != Legacy {
		t.Fatalf("mode %v", h.m.Mode())
	}
	if _, err := h.m.Create("a", Limits{Pids: 5}); err == nil || !strings.Contains(err.Error(), "the pids controller is not available") {
		t.Errorf("pids limit without pids controller: %v", err)
	}
	p, err := h.m.Create("a", Limits{NanoCPUs: 2e9})
	if err != nil {
		t.Fatal(err)
	}
	// cpu and cpuacct share one hierarchy: one directory, written once.
	if p.Path("cpu") != p.Path("cpuacct") || p.Path("cpu") != filepath.Join(root, "cpu,cpuacct/podmesh/a") {
		t.Errorf("cpu %s cpuacct %s", p.Path("cpu"), p.Path("cpuacct"))
	}
	if got := h.read(p.Path("cpu") + "/cpu.cfs_quota_us"); got != "200000" {
		t.Errorf("cpu.cfs_quota_us = %q", got)
	}
	if err := p.Kill(testContext(t)); err != nil { // no freezer: plain SIGKILL loop
		t.Fatal(err)
	}
}

// TestFakeBasesElsewhere: a Manager in another cgroup (a `down` run from another shell)
// finds a launcher's pods only through the base directories that launcher reported, and
// cleans them up; a recorded base outside every hierarchy is refused.
func TestFakeBasesElsewhere(t *testing.T) {
	h := newFakeV2(t, "4242\n")
	if _, err := h.m.Create("a", Limits{}); err != nil {
		t.Fatal(err)
	}
	bases := h.m.Bases()
	if want := filepath.Join(h.root, "user.slice", "launcher.scope", "podmesh"); len(bases) != 1 || bases[0] != want {
		t.Fatalf("Bases = %v; want [%s]", bases, want)
	}
	other := filepath.Join(h.root, "user.slice", "other.scope")
	writeFiles(t, other, v2Files)
	dir := t.TempDir()
	mi, pc := filepath.Join(dir, "mountinfo"), filepath.Join(dir, "cgroup")
	h.write(mi, fmt.Sprintf("33 25 0:28 / %s rw - cgroup2 cgroup2 rw\n", h.root))
	h.write(pc, "0::/user.slice/other.scope\n")
	open := func(bases []string) (*Manager, error) {
		m, err := New(Config{Root: h.root, Fake: true, MountInfo: mi, ProcCgroup: pc, Bases: bases})
		if err == nil {
			t.Cleanup(func() { m.Close() })
			m.kill = h.kill
		}
		return m, err
	}
	plain, err := open(nil)
	if err != nil {
		t.Fatal(err)
	}
	if names, err := plain.List(); err != nil || len(names) != 0 {
		t.Fatalf("another cgroup's Manager without bases lists %v, %v", names, err)
	}
	m, err := open(bases)
	if err != nil {
		t.Fatal(err)
	}
	if names, err := m.List(); err != nil || strings.Join(names, " ") != "a" {
		t.Fatalf("with the recorded bases: List = %v, %v; want [a]", names, err)
	}
	if err := m.Cleanup(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if h.exists(bases[0]) {
		t.Errorf("%s left after Cleanup", bases[0])
	}
	if _, err := open([]string{"/elsewhere/podmesh"}); err == nil {
		t.Error("a base outside the hierarchies was accepted")
	}
}
