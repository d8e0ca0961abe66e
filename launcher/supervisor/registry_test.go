package supervisor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/launcher/pod"
)

// TestKillOrphan: a process started through a symlinked program is recognised by what the
// state records (the resolved path, as /proc/PID/exe shows it) and ended; a record whose
// start time is not the process's (the pid reused) leaves the process alone.
func TestKillOrphan(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep program")
	}
	link := filepath.Join(t.TempDir(), "registry")
	if err := os.Symlink(sleep, link); err != nil {
		t.Fatal(err)
	}
	exe, err := resolveExe(link)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "60")
	done, err := startChild(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	pid := cmd.Process.Pid
	start, err := procStart(pid)
	if err != nil || start == 0 {
		t.Fatalf("start time of %d: %d, %v", pid, start, err)
	}
	if err := killOrphan(pid, exe, start+1, time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		t.Fatal("a process with another start time than recorded was killed")
	case <-time.After(100 * time.Millisecond):
	}
	if err := killOrphan(pid, exe, start, time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the orphan %d (%s, started through %s) still runs", pid, exe, link)
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGTERM {
		t.Errorf("orphan ended by %v; want SIGTERM", cmd.ProcessState)
	}
}

// TestWritePSOOM: ps shows each pod's OOM kill count, in a column of its own before the
// last exit (which may hold spaces), so the columns scripts read keep their place.
func TestWritePSOOM(t *testing.T) {
	var b strings.Builder
	rows := []Row{{Info: pod.Info{Service: "web", Replica: 1, State: "running", Health: "healthy", OOMKills: 2, LastExit: "app OOMKilled"}}}
	if err := WritePS(&b, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "OOM KILLS") {
		t.Fatalf("ps output:\n%s", b.String())
	}
	f := strings.Fields(lines[1])
	if len(f) < 10 || f[6] != "healthy" || f[9] != "2" {
		t.Errorf("ps row %q: want health in column 7 and the OOM kills (2) in column 10", lines[1])
	}
}
