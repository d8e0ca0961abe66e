package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

// These tests use the real cgroupfs of the machine: pods under the test's own cgroup, named
// podmesh-test-<pid>-<n> so that tests running at the same time (here or in another package)
// never see each other's pods.

var realSeq atomic.Int64

func realManager(t *testing.T) *Manager {
	t.Helper()
	testutil.RequirePrivileged(t)
	name := fmt.Sprintf("podmesh-test-%d-%d", os.Getpid(), realSeq.Add(1))
	m, err := New(Config{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Cleanup(testutil.Context(t, 10*time.Second)); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, c := range []string{"memory", "cpu", "cpuacct", "pids", "freezer"} {
			if b := m.BasePath(c); b != "" {
				if _, err := os.Stat(b); err == nil {
					t.Errorf("%s left behind", b)
				}
			}
		}
		m.Close()
	})
	return m
}

// helper starts the test binary as a helper process (see TestMain), not yet released.
type helper struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startHelper(t *testing.T, mode string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PODMESH_CGROUPS_HELPER="+mode)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, in: in, out: bufio.NewReader(out)}
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		h.in.Close()
		h.cmd.Wait()
	})
	return h
}

func (h *helper) release(t *testing.T) {
	t.Helper()
	if _, err := h.in.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
}

func (h *helper) line(t *testing.T) string {
	t.Helper()
	s, err := h.out.ReadString('\n')
	if err != nil {
		t.Fatalf("helper output: %v", err)
	}
	return strings.TrimSpace(s)
}

// wait returns how the helper ended, failing after 20s.
func (h *helper) wait(t *testing.T) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- h.cmd.Wait() }()
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		t.Fatal("helper did not exit in 20s")
	}
	return nil
}

func killedBy(err error) syscall.Signal {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return ws.Signal()
		}
	}
	return 0
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestRealPod(t *testing.T) {
	m := realManager(t)
	t.Logf("mode %v; pods under %s", m.Mode(), m.BasePath("memory"))
	limits := Limits{NanoCPUs: 500_000_000, MemoryBytes: 64 << 20, Pids: 64}
	p, err := m.Create("pod", limits)
	if err != nil {
		t.Fatal(err)
	}

	// The kernel's own files hold the limits.
	files := map[string]string{}
	if m.Mode() == Unified {
		files[p.Path("")+"/cpu.max"] = "50000 100000"
		files[p.Path("")+"/memory.max"] = "67108864"
		files[p.Path("")+"/pids.max"] = "64"
	} else {
		files[p.Path("memory")+"/memory.limit_in_bytes"] = "67108864"
		files[p.Path("cpu")+"/cpu.cfs_quota_us"] = "50000"
		files[p.Path("cpu")+"/cpu.cfs_period_us"] = "100000"
		files[p.Path("pids")+"/pids.max"] = "64"
		if _, err := os.Stat(p.Path("memory") + "/memory.memsw.limit_in_bytes"); err == nil {
			files[p.Path("memory")+"/memory.memsw.limit_in_bytes"] = "67108864"
		}
	}
	for path, want := range files {
		if got := readTrim(t, path); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	if l, err := p.Limits(); err != nil || l != limits {
		t.Errorf("Limits() = %+v, %v", l, err)
	}

	h := startHelper(t, "spin")
	pid := h.cmd.Process.Pid
	if err := p.Add(App, pid); err != nil {
		t.Fatal(err)
	}
	h.release(t)
	// The process is in the app member in every hierarchy.
	procCg := readTrim(t, fmt.Sprintf("/proc/%d/cgroup", pid))
	for _, c := range []string{"memory", "pids", "cpu"} {
		rel := strings.TrimPrefix(p.MemberPath(App, c), m.hierarchy(c).mount)
		if !strings.Contains(procCg, rel) {
			t.Errorf("/proc/%d/cgroup does not show %s:\n%s", pid, rel, procCg)
		}
	}
	if pids, err := p.Pids(); err != nil || fmt.Sprint(pids) != fmt.Sprintf("[%d]", pid) {
		t.Errorf("Pids = %v, %v", pids, err)
	}
	if pids, err := p.MemberPids(Sidecar); err != nil || len(pids) != 0 {
		t.Errorf("MemberPids(sidecar) = %v, %v", pids, err)
	}

	if got := h.line(t); got != "spun" {
		t.Fatalf("helper said %q", got)
	}
	st, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats %+v", st)
	// The helper used 200ms of CPU time (by its own getrusage) inside the pod.
	if st.CPUUsage < 150*time.Millisecond || st.MemoryCurrent == 0 || st.MemoryMax != 64<<20 ||
		st.PidsCurrent < 1 || st.PidsMax != 64 || st.OOMKills != 0 {
		t.Errorf("unexpected stats %+v", st)
	}

	if err := p.Kill(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if sig := killedBy(h.wait(t)); sig != syscall.SIGKILL {
		t.Errorf("helper ended by signal %v, want SIGKILL", sig)
	}
	if pids, err := p.Pids(); err != nil || len(pids) != 0 {
		t.Errorf("after Kill: Pids = %v, %v", pids, err)
	}
	if err := p.Delete(testContext(t)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"memory", "cpu", "cpuacct", "pids", "freezer"} {
		if d := p.Path(c); d != "" {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still there after Delete (%v)", d, err)
			}
		}
		if b := m.BasePath(c); b != "" {
			if _, err := os.Stat(b); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still there after the last pod was deleted", b)
			}
		}
	}
}

func TestRealKillAll(t *testing.T) {
	m := realManager(t)
	p, err := m.Create("forks", Limits{Pids: 64})
	if err != nil {
		t.Fatal(err)
	}
	h := startHelper(t, "forker")
	if err := p.Add(App, h.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	h.release(t)
	children := map[int]bool{}
	for i := 0; i < 5; i++ {
		pid, err := strconv.Atoi(h.line(t))
		if err != nil {
			t.Fatal(err)
		}
		children[pid] = true
	}
	pids, err := p.Pids()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		delete(children, pid)
	}
	if len(pids) != 6 || len(children) != 0 {
		t.Fatalf("pod holds %v; children missing: %v", pids, children)
	}
	if err := p.Kill(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if pids, err := p.Pids(); err != nil || len(pids) != 0 {
		t.Errorf("after Kill: %v, %v", pids, err)
	}
	if sig := killedBy(h.wait(t)); sig != syscall.SIGKILL {
		t.Errorf("helper ended by %v, want SIGKILL", sig)
	}
	if err := p.Delete(testContext(t)); err != nil {
		t.Fatal(err)
	}
}

func TestRealOOM(t *testing.T) {
	testutil.CheckGoroutines(t)
	m := realManager(t)
	p, err := m.Create("oom", Limits{MemoryBytes: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel(t)
	defer cancel()
	events, err := p.WatchOOM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := startHelper(t, "hog") // touches up to 256 MiB
	if err := p.Add(App, h.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	h.release(t)
	if sig := killedBy(h.wait(t)); sig != syscall.SIGKILL {
		t.Fatalf("hog ended by %v, want the OOM killer's SIGKILL", sig)
	}
	if n := recvTimeout(t, events); n < 1 {
		t.Errorf("watch reported %d", n)
	}
	if n, err := p.OOMKills(); err != nil || n != 1 {
		t.Errorf("OOMKills = %d, %v, want 1", n, err)
	}
	if n, err := p.MemberOOMKills(App); err != nil || n != 1 {
		t.Errorf("MemberOOMKills(app) = %d, %v, want 1", n, err)
	}
	if n, err := p.MemberOOMKills(Sidecar); err != nil || n != 0 {
		t.Errorf("MemberOOMKills(sidecar) = %d, %v, want 0", n, err)
	}
	if st, err := p.Stats(); err != nil || st.OOMKills != 1 {
		t.Errorf("Stats = %+v, %v", st, err)
	}
	if err := p.Delete(testContext(t)); err != nil {
		t.Fatal(err)
	}
	// Removing the cgroup ends the watch.
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-events:
			if !ok {
				return
			}
		case <-timer.C:
			t.Fatal("watch channel not closed after the pod was deleted")
		}
	}
}

// TestRealCleanupAfterCrash: a launcher killed with its pods running leaves cgroups and
// processes; the next one finds them under its own cgroup and removes them.
func TestRealCleanupAfterCrash(t *testing.T) {
	m := realManager(t)
	var helpers []*helper
	for _, name := range []string{"a", "b"} {
		p, err := m.Create(name, Limits{MemoryBytes: 64 << 20})
		if err != nil {
			t.Fatal(err)
		}
		h := startHelper(t, "forker")
		if err := p.Add(Sidecar, h.cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		h.release(t)
		for i := 0; i < 5; i++ {
			h.line(t)
		}
		helpers = append(helpers, h)
	}
	// The "next launcher": a new Manager with nothing but the name.
	next, err := New(Config{Name: m.cfg.Name})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	names, err := next.List()
	if err != nil || strings.Join(names, " ") != "a b" {
		t.Fatalf("List = %v, %v", names, err)
	}
	if err := next.Cleanup(testContext(t)); err != nil {
		t.Fatal(err)
	}
	for _, h := range helpers {
		if sig := killedBy(h.wait(t)); sig != syscall.SIGKILL {
			t.Errorf("helper ended by %v", sig)
		}
	}
	for _, c := range []string{"memory", "cpu", "pids", "freezer"} {
		if b := next.BasePath(c); b != "" {
			if _, err := os.Stat(filepath.Join(b)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left after Cleanup", b)
			}
		}
	}
}

func TestRealCgroupFD(t *testing.T) {
	m := realManager(t)
	p, err := m.Create("fd", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := p.CgroupFD(App)
	if m.Mode() != Unified {
		if !errors.Is(err, ErrNotUnified) {
			t.Errorf("CgroupFD on %v: %v", m.Mode(), err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("true")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkRealCreateDelete measures what a pod start and stop cost in cgroupfs work: Create
// with all three limits (the members included), Add of one process, Delete.
func BenchmarkRealCreateDelete(b *testing.B) {
	testutil.RequirePrivileged(b)
	m, err := New(Config{Name: fmt.Sprintf("podmesh-bench-%d", os.Getpid())})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	ctx := testutil.Context(b, time.Minute)
	defer m.Cleanup(ctx)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p, err := m.Create(fmt.Sprintf("p%d", i), Limits{NanoCPUs: 5e8, MemoryBytes: 64 << 20, Pids: 64})
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Add(Sidecar, os.Getpid()); err != nil {
			b.Fatal(err)
		}
		// Move back out, or the pod could not be removed.
		for _, h := range m.hiers {
			if err := m.fs.write(h.own, "cgroup.procs", strconv.Itoa(os.Getpid())); err != nil {
				b.Fatal(err)
			}
		}
		if err := p.Delete(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
