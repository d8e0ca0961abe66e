package initproc_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/launcher/initproc"
	"github.com/podmesh/podmesh/launcher/internal/podtest"
	"github.com/podmesh/podmesh/launcher/netns"
	"golang.org/x/sys/unix"
)

// TestMain lets the test binary act as init and as the exec shim, as the launcher binary
// does: Start re-executes /proc/self/exe, which here is this test binary.
func TestMain(m *testing.M) {
	if ok, code := initproc.Main(); ok {
		os.Exit(code)
	}
	// Under -race, a re-executed init would otherwise sleep a second at exit.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	os.Exit(m.Run())
}

func startInit(t *testing.T, cfg initproc.Config) *initproc.Init {
	t.Helper()
	ctx := testutil.Context(t, 20*time.Second)
	in, err := initproc.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close(5 * time.Second) })
	return in
}

// run starts spec in the pod, collects its output, and waits for it to end.
func run(t *testing.T, in *initproc.Init, spec initproc.Spec) (string, initproc.Exit) {
	t.Helper()
	p, out := spawn(t, in, spec)
	ctx := testutil.Context(t, 20*time.Second)
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatalf("%s did not exit", spec.Name)
	}
	return string(<-out), p.Exit()
}

func spawn(t *testing.T, in *initproc.Init, spec initproc.Spec) (*initproc.Proc, <-chan []byte) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	out := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		r.Close()
		out <- b
	}()
	ctx := testutil.Context(t, 20*time.Second)
	p, err := in.Spawn(ctx, spec, w, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, out
}

func sh(name, script string) initproc.Spec {
	return initproc.Spec{Name: name, Argv: []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/usr/bin:/bin"}}
}

func ns(t *testing.T, pid int, kind string) string {
	t.Helper()
	s, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPodIsolation starts init in a pinned network namespace and checks, from the test's
// side and from a program inside, what the pod looks like.
func TestPodIsolation(t *testing.T) {
	testutil.RequirePrivileged(t)
	bridge, subnet := podtest.Network(t)
	n := netns.Network{Bridge: bridge, Subnet: subnet}
	st, err := netns.EnsureBridge(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.RemoveBridge(n, st) })
	pod := netns.Plan(netns.PinName(fmt.Sprintf("init%d", os.Getpid()), "svc", 1), subnet.Addr().Next().Next(), n)
	if err := netns.Create(n, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Remove(pod) })

	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.2 catalog\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(dir, "vol")
	if err := os.Mkdir(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "data"), []byte("volume-data"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Outside /tmp, which the pod replaces with its own tmpfs.
	target, err := os.MkdirTemp("/var/tmp", "podmesh-target")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(target) })
	in := startInit(t, initproc.Config{
		NetNS: pod.Pin,
		Setup: initproc.Setup{
			Hostname: "svc-1",
			Hosts:    hosts,
			Mounts:   []initproc.Mount{{Source: vol, Target: target, ReadOnly: true}},
			Detach:   []string{netns.PinDir},
		},
	})

	for _, kind := range []string{"pid_for_children", "mnt", "uts", "ipc", "net"} {
		self, theirs := ns(t, os.Getpid(), kind), ns(t, in.Pid(), kind)
		if kind == "pid_for_children" {
			theirs = ns(t, in.Pid(), kind)
			self = ns(t, os.Getpid(), "pid")
		}
		if self == theirs {
			t.Errorf("init shares the test's %s namespace %s", kind, self)
		}
	}
	var pinSt, initSt unix.Stat_t
	if err := unix.Stat(pod.Pin, &pinSt); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", in.Pid()), &initSt); err != nil {
		t.Fatal(err)
	}
	if pinSt.Ino != initSt.Ino {
		t.Errorf("init's network namespace %d is not the pod's %d", initSt.Ino, pinSt.Ino)
	}
	// Every thread of init, not just the first, is in the pod's network namespace.
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", in.Pid()))
	for _, task := range tasks {
		var ts unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/task/%s/ns/net", in.Pid(), task.Name()), &ts); err == nil && ts.Ino != pinSt.Ino {
			t.Errorf("init thread %s is in network namespace %d", task.Name(), ts.Ino)
		}
	}

	script := strings.Join([]string{
		"echo init=$(tr '\\0' ' ' < /proc/1/cmdline)",
		"echo host=$(hostname)",
		"grep -c . /etc/hosts | sed s/^/hostslines=/",
		"grep catalog /etc/hosts",
		"cat " + target + "/data; echo",
		"touch " + target + "/x 2>/dev/null && echo volume-writable || echo volume-readonly",
		"stat -f -c tmp=%T /tmp",
		"grep -c ' /run/netns/' /proc/self/mountinfo | sed s/^/pins=/",
		"grep -E '^(CapEff|CapBnd|CapPrm|CapAmb|NoNewPrivs)' /proc/self/status",
		"(echo $$ > /sys/fs/cgroup/pids/cgroup.procs) 2>/dev/null && echo cgroup-writable || echo cgroup-readonly",
		"ip -4 -o addr show eth0 | awk '{print \"addr=\" $4}'",
		// Host-wide kernel settings: written back with the value they hold, so a failure
		// of the test changes nothing on the host.
		"(cat /proc/sys/vm/swappiness > /proc/sys/vm/swappiness) 2>/dev/null && echo procsys-writable || echo procsys-readonly",
		"(cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern) 2>/dev/null && echo core-writable || echo core-readonly",
		"awk '$5==\"/sys\" {print \"sys=\" $6}' /proc/self/mountinfo | cut -d, -f1",
		"awk '$5 ~ /^\\/sys\\// && $6 !~ /^ro/ {print \"sys-writable=\" $5}' /proc/self/mountinfo",
		"echo devs=$(ls /dev | tr '\\n' ' ')",
		"echo x > /dev/null && echo null-ok",
		"head -c 16 /dev/urandom | wc -c | sed s/^/urandom=/",
		"head -c 4 /dev/zero | od -An -tx1 | tr -d ' ' | sed s/^/zero=/",
		"stat -f -c shm=%T /dev/shm",
		"ls /dev/sda /dev/vda /dev/kmsg /dev/mem 2>/dev/null | sed s/^/hostdev=/",
	}, "; ")
	out, exit := run(t, in, sh("probe", script))
	if !exit.OK() {
		t.Fatalf("probe %s: %s", exit, out)
	}
	for _, want := range []string{
		"init=" + initproc.InitName + "\n", // pid 1 of the pod is init
		"host=svc-1\n",
		"hostslines=1\n",
		"127.0.0.2 catalog\n",
		"volume-data\n",
		"volume-readonly\n",
		"tmp=tmpfs\n",
		"pins=0\n",
		"CapEff:\t0000000000000000\n",
		"CapPrm:\t0000000000000000\n",
		"CapBnd:\t0000000000000000\n",
		"CapAmb:\t0000000000000000\n",
		"NoNewPrivs:\t1\n",
		"cgroup-readonly\n",
		"addr=" + pod.Addr.String() + "\n",
		"procsys-readonly\n",
		"core-readonly\n",
		"sys=ro\n",
		"devs=fd full null ptmx pts random shm stderr stdin stdout tty urandom zero\n",
		"null-ok\n",
		"urandom=16\n",
		"zero=00000000\n",
		"shm=tmpfs\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("probe output lacks %q:\n%s", want, out)
		}
	}
	for _, unwanted := range []string{"sys-writable=", "hostdev="} {
		if strings.Contains(out, unwanted) {
			t.Errorf("probe output has %q:\n%s", unwanted, out)
		}
	}
	// Nothing of the pod's mounts leaked to the host.
	if b, _ := os.ReadFile(filepath.Join(target, "data")); len(b) != 0 {
		t.Errorf("bind volume visible on the host at %s", target)
	}
}

func TestExitsAndUser(t *testing.T) {
	testutil.RequirePrivileged(t)
	in := startInit(t, initproc.Config{Setup: initproc.Setup{Hostname: "t"}})
	tests := []struct {
		spec initproc.Spec
		want string // Exit.String()
		out  string
	}{
		{sh("ok", "exit 0"), "exited 0", ""},
		{sh("code", "exit 3"), "exited 3", ""},
		{sh("killed", "kill -9 $$"), "killed by SIGKILL", ""},
		{func() initproc.Spec {
			s := sh("user", "id -u; id -g; id -G")
			s.User = &initproc.User{UID: 65534, GID: 65534, Groups: []uint32{65534, 100}}
			return s
		}(), "exited 0", "65534\n65534\n65534 100\n"},
		{initproc.Spec{Name: "env", Argv: []string{"env"}, Env: []string{"A=1", "PATH=/usr/bin:/bin"}, Dir: "/usr"}, "exited 0", "A=1\nPATH=/usr/bin:/bin\n"},
		{initproc.Spec{Name: "pwd", Argv: []string{"pwd"}, Dir: "/usr"}, "exited 0", "/usr\n"},
	}
	for _, tc := range tests {
		out, exit := run(t, in, tc.spec)
		if exit.String() != tc.want || (tc.out != "" && out != tc.out) {
			t.Errorf("%s: %s, output %q; want %s, %q", tc.spec.Name, exit, out, tc.want, tc.out)
		}
	}
	// A program that does not exist never starts, and Spawn says why.
	ctx := testutil.Context(t, 10*time.Second)
	_, err := in.Spawn(ctx, initproc.Spec{Name: "missing", Argv: []string{"no-such-program-podmesh"}}, os.Stderr, os.Stderr, nil)
	if err == nil || !strings.Contains(err.Error(), "not found in PATH") {
		t.Errorf("spawn of a missing program = %v; want a not-found error", err)
	}
}

// TestPlacementBeforeExec checks that place runs while the child is still the shim and that
// a failed placement means the program never runs.
func TestPlacementBeforeExec(t *testing.T) {
	testutil.RequirePrivileged(t)
	in := startInit(t, initproc.Config{Setup: initproc.Setup{Hostname: "t"}})
	marker := filepath.Join(t.TempDir(), "ran")
	ctx := testutil.Context(t, 10*time.Second)
	var comm string
	_, err := in.Spawn(ctx, sh("app", "touch "+marker), os.Stderr, os.Stderr, func(pid int) error {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		comm = string(bytes.TrimRight(b, "\x00"))
		if err != nil {
			return err
		}
		return fmt.Errorf("no cgroup for you")
	})
	if err == nil || !strings.Contains(err.Error(), "no cgroup for you") {
		t.Fatalf("Spawn with failing place = %v", err)
	}
	if comm != initproc.ExecName {
		t.Errorf("at placement the child runs %q; want the shim %q", comm, initproc.ExecName)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Error("the program ran although its placement failed")
	}
}

// TestReapAndSignals: orphans re-parented to init are reaped, and Signal reaches the
// child's process group.
func TestReapAndSignals(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.CheckGoroutines(t)
	in := startInit(t, initproc.Config{Setup: initproc.Setup{Hostname: "t"}})
	// The shell starts 20 background sleeps and exits: they become init's children.
	if out, exit := run(t, in, sh("orphans", "for i in $(seq 20); do sleep 0.2 & done; exit 0")); !exit.OK() {
		t.Fatalf("orphans: %s %s", exit, out)
	}
	testutil.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		z, err := zombies(in.Pid())
		if err != nil {
			return err
		}
		if z != 0 {
			return fmt.Errorf("%d zombies in the pod", z)
		}
		if n := countChildren(in.Pid()); n != 0 {
			return fmt.Errorf("init still has %d children", n)
		}
		return nil
	})

	p, _ := spawn(t, in, sh("app", "trap 'exit 42' TERM; while :; do sleep 0.05; done"))
	time.Sleep(100 * time.Millisecond)
	if err := in.Signal("app", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t, 10*time.Second)
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatal("app ignored SIGTERM")
	}
	if e := p.Exit(); e.Code != 42 {
		t.Errorf("app after SIGTERM: %s; want exited 42 from its trap", e)
	}
}

func countChildren(pid int) int {
	n := 0
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		n += len(strings.Fields(string(b)))
	}
	return n
}

// zombies counts processes in state Z whose parent is pid.
func zombies(pid int) (int, error) {
	n := 0
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[0] == "Z" && f[1] == fmt.Sprint(pid) {
			n++
		}
	}
	return n, nil
}

// TestLauncherDeathKillsPod: when the control socket closes, init kills the pod.
func TestCloseKillsPod(t *testing.T) {
	testutil.RequirePrivileged(t)
	in := startInit(t, initproc.Config{Setup: initproc.Setup{Hostname: "t"}})
	p, _ := spawn(t, in, sh("app", "trap '' TERM; sleep 60"))
	pid := p.Pid
	if err := in.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := in.Close(time.Second); err == nil {
		t.Error("second Close returned nil; want net.ErrClosed")
	}
	select {
	case <-p.Done():
	default:
		t.Error("app still tracked as running after Close")
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("app pid %d still exists after Close", pid)
	}
}

// TestKeepUnderTmp: the pod's /tmp is its own, except for the directories and files the
// launcher keeps visible (the project, the programs), including one inside another.
func TestKeepUnderTmp(t *testing.T) {
	testutil.RequirePrivileged(t)
	dir := t.TempDir() // under /tmp
	file := filepath.Join(dir, "prog")
	other, err := os.CreateTemp("", "podmesh-keep-file")
	if err != nil {
		t.Fatal(err)
	}
	other.WriteString("kept-file")
	other.Close()
	t.Cleanup(func() { os.Remove(other.Name()) })
	hidden, err := os.CreateTemp("", "podmesh-hidden")
	if err != nil {
		t.Fatal(err)
	}
	hidden.Close()
	t.Cleanup(func() { os.Remove(hidden.Name()) })
	if err := os.WriteFile(file, []byte("kept-dir"), 0o644); err != nil {
		t.Fatal(err)
	}
	in := startInit(t, initproc.Config{Setup: initproc.Setup{Hostname: "t", Keep: []string{file, dir, other.Name()}}})
	out, exit := run(t, in, sh("probe", fmt.Sprintf("cat %s; echo; cat %s; echo; test -e %s && echo hidden-visible || echo hidden-gone", file, other.Name(), hidden.Name())))
	if !exit.OK() || out != "kept-dir\nkept-file\nhidden-gone\n" {
		t.Errorf("probe: %s %q", exit, out)
	}
	// The host's file was not touched by the pod's setup.
	if b, _ := os.ReadFile(file); string(b) != "kept-dir" {
		t.Errorf("host file now %q", b)
	}
}

// TestNoLeakedDescriptors: a descriptor the launcher inherited without close-on-exec (from a
// shell, say) reaches neither init's children nor their programs: each sees its stdin,
// stdout and stderr only.
func TestNoLeakedDescriptors(t *testing.T) {
	testutil.RequirePrivileged(t)
	fd, err := unix.Open(t.TempDir(), unix.O_RDONLY|unix.O_DIRECTORY, 0) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	in := startInit(t, initproc.Config{Setup: initproc.Setup{Hostname: "t"}})
	// ls opens a descriptor of its own to read the directory: 3, the lowest free one.
	out, exit := run(t, in, initproc.Spec{Name: "fds", Argv: []string{"ls", "/proc/self/fd"}, Env: []string{"PATH=/usr/bin:/bin"}})
	if !exit.OK() {
		t.Fatalf("ls: %s: %s", exit, out)
	}
	if got := strings.Fields(out); strings.Join(got, " ") != "0 1 2 3" {
		t.Errorf("the program's descriptors: %v; want 0 1 2 and ls's own 3 (%d leaked from the launcher?)", got, fd)
	}
}

// TestAbandonedSpawn: a spawn given up on while init is still forking (a health check whose
// timeout ran out) leaves no half-started child holding its output descriptors, and its
// late reply is never taken for the answer to a later spawn.
func TestAbandonedSpawn(t *testing.T) {
	testutil.RequirePrivileged(t)
	in := startInit(t, initproc.Config{Setup: initproc.Setup{Hostname: "t"}})
	for try := 0; ; try++ {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		// Cancelled before the call: Spawn sends the request, then gives up before init,
		// which has to fork first, can answer.
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err = in.Spawn(ctx, sh("health", "echo ran"), w, w, nil)
		w.Close()
		if err == nil {
			// The answer beat the cancelled context: nothing was given up on; try again.
			r.Close()
			if try < 5 {
				continue
			}
			t.Fatal("every spawn with a cancelled context succeeded")
		}
		// The pipe's last writer is the abandoned child: once it is killed, the read ends.
		got := make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(r); r.Close(); got <- b }()
		timer := time.NewTimer(5 * time.Second)
		select {
		case b := <-got:
			if len(b) != 0 {
				t.Errorf("the abandoned spawn ran: %q", b)
			}
		case <-timer.C:
			r.Close()
			t.Fatal("5s after the spawn was given up on, a half-started child still holds its output")
		}
		timer.Stop()
		break
	}
	// Later spawns get their own answers, the same name included.
	for _, name := range []string{"other", "health"} {
		out, exit := run(t, in, sh(name, "echo "+name))
		if !exit.OK() || out != name+"\n" {
			t.Errorf("spawn %s after an abandoned one: %s, %q", name, exit, out)
		}
	}
}

// TestNotifyDescriptor: a spec with Notify gets Files.Notify as its fd 3 and nothing more
// (the status pipe and the shim's copy do not leak), it can write on it, and the reader
// sees EOF once the program is gone (init and the launcher keep no copy).
func TestNotifyDescriptor(t *testing.T) {
	testutil.RequirePrivileged(t)
	in := startInit(t, initproc.Config{Setup: initproc.Setup{Hostname: "t"}})
	nr, nw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer nr.Close()
	or, ow, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer or.Close()
	spec := sh("notified", "ls /proc/self/fd | tr '\\n' ' '; echo READY=1 >&3")
	spec.Notify = true
	ctx := testutil.Context(t, 20*time.Second)
	if _, err := in.SpawnFiles(ctx, spec, initproc.Files{Stdout: ow, Stderr: ow}, nil); err == nil {
		t.Fatal("Notify without Files.Notify was accepted")
	}
	p, err := in.SpawnFiles(ctx, spec, initproc.Files{Stdout: ow, Stderr: ow, Notify: nw}, nil)
	ow.Close()
	nw.Close()
	if err != nil {
		t.Fatal(err)
	}
	notified, _ := io.ReadAll(nr) // EOF: the program's copy was the last writer
	out, _ := io.ReadAll(or)
	if e := p.Exit(); !e.OK() {
		t.Fatalf("exit %s: %s", e, out)
	}
	if string(notified) != "READY=1\n" {
		t.Errorf("notify pipe: %q", notified)
	}
	// ls's own directory descriptor is the lowest free one: 4.
	if got := strings.Join(strings.Fields(string(out)), " "); got != "0 1 2 3 4" {
		t.Errorf("the program's descriptors: %s; want 0 1 2, the notify pipe 3 and ls's own 4", got)
	}
}
