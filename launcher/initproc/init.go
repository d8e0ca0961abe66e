package initproc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Main runs the init or exec-shim side when os.Args[0] says so, and reports whether it did
// and the exit code the process must end with. Call it first thing in main, and in TestMain
// of tests that start pods, and end the process with the code when it handled the call.
func Main() (handled bool, code int) {
	switch filepath.Base(os.Args[0]) {
	case InitName:
		return true, runInit()
	case ExecName:
		return true, runExec()
	}
	return false, 0
}

// child is a process init started.
type child struct {
	name    string
	pid     int
	spec    []byte   // the Spec, written to the shim on release
	specW   *os.File // the shim reads its spec from this pipe's other end
	errR    *os.File // close-on-exec pipe: EOF without data means the exec worked
	started bool
	// reported is closed once the started event is sent; the exited event waits for it, so
	// the launcher always learns why a program failed to start before it learns it ended.
	reported chan struct{}
}

type initState struct {
	conn *net.UnixConn
	logf func(format string, args ...any)

	sendMu sync.Mutex

	mu       sync.Mutex // guards children; held across fork and across reaping
	children map[int]*child
	byName   map[string]*child
	stopping bool
}

func runInit() int {
	logger := log.New(os.Stderr, "init: ", log.LstdFlags|log.Lmicroseconds)
	// Descriptors leaked to the launcher must not reach the pod's programs (fd 3, the control
	// socket, is duplicated close-on-exec by FileConn below).
	if err := CloseOnExecFrom(3); err != nil {
		logger.Printf("mark inherited descriptors close-on-exec: %v", err)
		return 1
	}
	f := os.NewFile(3, "control")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		logger.Printf("control socket: %v", err)
		return 1
	}
	conn, ok := fc.(*net.UnixConn)
	if !ok {
		logger.Printf("control socket is a %T", fc)
		return 1
	}
	s := &initState{conn: conn, logf: logger.Printf, children: map[int]*child{}, byName: map[string]*child{}}
	return s.run()
}

func (s *initState) send(m message, oob []byte) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if err := send(s.conn, m, oob); err != nil {
		s.logf("%v", err)
	}
}

func (s *initState) run() int {
	sigs := make(chan os.Signal, 64)
	// Every catchable signal: SIGCHLD to reap, the rest to forward. SIGURG is the Go
	// runtime's preemption signal and SIGPIPE a broken pipe of our own; neither is forwarded.
	signal.Notify(sigs)
	go s.signals(sigs)

	buf := make([]byte, maxPacket)
	oob := make([]byte, unix.CmsgSpace(4*8))
	for {
		r, err := recv(s.conn, buf, oob)
		if err != nil {
			if !errors.Is(err, errEOF) && !errors.Is(err, io.EOF) {
				s.logf("control: %v", err)
			}
			s.shutdown()
			return 0
		}
		switch r.Op {
		case opSetup:
			if r.Setup == nil {
				s.send(message{Seq: r.Seq, Event: evError, Err: "setup without a body"}, nil)
				continue
			}
			if err := setup(*r.Setup); err != nil {
				s.send(message{Seq: r.Seq, Event: evError, Err: err.Error()}, nil)
				continue
			}
			s.send(message{Seq: r.Seq, Event: evReady}, nil)
		case opSpawn:
			s.spawn(r)
		case opRelease:
			s.release(r.Name, r.Pid)
		case opCancel:
			s.cancel(r.Name, r.Pid)
		case opSignal:
			s.signalChild(r.Name, r.Signal)
		case opShutdown:
			s.shutdown()
			return 0
		default:
			closeAll(r.fds)
			s.logf("unknown op %q", r.Op)
		}
	}
}

// signals reaps on SIGCHLD and forwards everything else to the children.
func (s *initState) signals(ch <-chan os.Signal) {
	for sig := range ch {
		ss, ok := sig.(syscall.Signal)
		if !ok {
			continue
		}
		switch ss {
		case syscall.SIGCHLD:
			s.reap()
		case syscall.SIGURG, syscall.SIGPIPE, syscall.SIGWINCH:
		default:
			s.mu.Lock()
			for pid := range s.children {
				_ = syscall.Kill(pid, ss)
			}
			s.mu.Unlock()
		}
	}
}

// reap collects every exited process: children it started (reported to the launcher) and
// orphans re-parented to it (just buried).
func (s *initState) reap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		c, ok := s.children[pid]
		if !ok {
			continue
		}
		delete(s.children, pid)
		if s.byName[c.name] == c {
			delete(s.byName, c.name)
		}
		c.close()
		m := message{Event: evExited, Name: c.name, Pid: pid}
		if ws.Signaled() {
			m.Signal = ws.Signal()
		} else {
			m.Code = ws.ExitStatus()
		}
		if c.started {
			go func() {
				<-c.reported
				s.send(m, nil)
			}()
		} else {
			s.send(m, nil)
		}
	}
}

func (c *child) close() {
	if c.specW != nil {
		c.specW.Close()
		c.specW = nil
	}
}

func (s *initState) spawn(r received) {
	fail := func(err error) {
		closeAll(r.fds)
		s.send(message{Seq: r.Seq, Event: evError, Name: r.Name, Err: err.Error()}, nil)
	}
	want := "2 or 3 file descriptors (stdout, stderr, stdin)"
	ok := r.Spec != nil && len(r.fds) >= 2 && len(r.fds) <= 3
	if r.Spec != nil && r.Spec.Notify {
		want, ok = "4 file descriptors (stdout, stderr, stdin, notify)", len(r.fds) == 4
	}
	if !ok {
		fail(fmt.Errorf("spawn %q: need a spec and %s, got %d", r.Name, want, len(r.fds)))
		return
	}
	var notify *os.File
	if len(r.fds) == 4 {
		notify = os.NewFile(uintptr(r.fds[3]), "notify")
		r.fds = r.fds[:3]
		defer notify.Close() // the child has its own copy once forked
	}
	spec, err := json.Marshal(r.Spec)
	if err != nil {
		fail(err)
		return
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		fail(err)
		return
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		specR.Close()
		specW.Close()
		fail(err)
		return
	}
	var stdin *os.File
	if len(r.fds) == 3 {
		stdin = os.NewFile(uintptr(r.fds[2]), "stdin")
		r.fds = r.fds[:2]
	} else if stdin, err = os.Open(os.DevNull); err != nil {
		specR.Close()
		specW.Close()
		errR.Close()
		errW.Close()
		fail(err)
		return
	}
	attr := &syscall.ProcAttr{
		Env:   os.Environ(), // the shim's own; the program gets Spec.Env
		Files: []uintptr{stdin.Fd(), uintptr(r.fds[0]), uintptr(r.fds[1]), specR.Fd(), errW.Fd()},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	if notify != nil {
		attr.Files = append(attr.Files, notify.Fd()) // the shim's 5, the program's 3
	}
	s.mu.Lock()
	// A child of the same name that was never released was given up on by the launcher,
	// which spawns one child at a time: its cancel may still be on the way. It goes now, so
	// the name is free (it is reaped, and reported, as usual).
	if c := s.byName[r.Spec.Name]; c != nil && !c.started && !s.stopping {
		_ = syscall.Kill(c.pid, syscall.SIGKILL)
		delete(s.byName, c.name)
	}
	if s.stopping || s.byName[r.Spec.Name] != nil {
		s.mu.Unlock()
		specR.Close()
		specW.Close()
		errR.Close()
		errW.Close()
		stdin.Close()
		fail(fmt.Errorf("spawn %q: a child of that name is running or init is stopping", r.Spec.Name))
		return
	}
	pid, err := syscall.ForkExec("/proc/self/exe", []string{ExecName}, attr)
	if err == nil {
		c := &child{name: r.Spec.Name, pid: pid, spec: spec, specW: specW, errR: errR, reported: make(chan struct{})}
		s.children[pid] = c
		s.byName[c.name] = c
	}
	s.mu.Unlock()
	specR.Close()
	errW.Close()
	stdin.Close()
	closeAll(r.fds)
	if err != nil {
		specW.Close()
		errR.Close()
		fail(fmt.Errorf("spawn %q: fork: %w", r.Spec.Name, err))
		return
	}
	// The credentials name the child itself, so the launcher learns its pid in its own
	// namespace from the kernel rather than from a number that means nothing there.
	cred := unix.UnixCredentials(&unix.Ucred{Pid: int32(pid), Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())})
	s.send(message{Seq: r.Seq, Event: evSpawned, Name: r.Spec.Name, Pid: pid}, cred)
}

// release lets a placed child go on: it writes the spec to the shim, then waits on the
// close-on-exec pipe to learn whether the exec worked.
func (s *initState) release(name string, want int) {
	s.mu.Lock()
	c := s.byName[name]
	var specW, errR *os.File
	var spec []byte
	var reported chan struct{}
	pid := 0
	if c != nil && !c.started && (want == 0 || c.pid == want) {
		pid = c.pid
		reported = c.reported
		c.started = true
		specW, c.specW = c.specW, nil
		errR, c.errR = c.errR, nil
		spec = c.spec
	}
	s.mu.Unlock()
	if specW == nil {
		s.send(message{Event: evStarted, Name: name, Pid: want, Err: fmt.Sprintf("release %q (pid %d): no such child waiting", name, want)}, nil)
		return
	}
	_, werr := specW.Write(spec)
	specW.Close()
	go func() {
		defer errR.Close()
		b, _ := io.ReadAll(errR)
		m := message{Event: evStarted, Name: name, Pid: pid}
		switch {
		case len(b) > 0:
			m.Err = string(b)
		case werr != nil:
			m.Err = fmt.Sprintf("hand spec to %q: %v", name, werr)
		}
		s.send(m, nil)
		close(reported)
	}()
}

// cancel kills a spawned child that will not be released: the named one, if pid is 0 or
// its pid.
func (s *initState) cancel(name string, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.byName[name]; c != nil && (pid == 0 || c.pid == pid) {
		_ = syscall.Kill(c.pid, syscall.SIGKILL)
		return
	}
	if c := s.children[pid]; c != nil && pid != 0 && c.name == name {
		_ = syscall.Kill(c.pid, syscall.SIGKILL)
	}
}

func (s *initState) signalChild(name string, sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.byName[name]; c != nil {
		// The child leads its own session and process group: signal the whole group, so a
		// shell healthcheck takes its children with it.
		if err := syscall.Kill(-c.pid, sig); err != nil {
			_ = syscall.Kill(c.pid, sig)
		}
	}
}

// shutdown kills every process of the pod. kill(-1) from PID 1 reaches every other process
// of its pid namespace, including orphans it does not track.
func (s *initState) shutdown() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	_ = syscall.Kill(-1, syscall.SIGKILL)
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			break
		}
	}
	s.reap()
}

// setup prepares the pod's mount, uts and network view. It runs before any child exists.
func setup(st Setup) error {
	// The OOM killer should pick the pod's programs, never its init: when init dies, the
	// whole pod dies. The shim resets its children to 0 before exec. Best effort: lowering
	// needs CAP_SYS_RESOURCE, which some sandboxes withhold even from root.
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("-998"), 0)
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("setup: make mounts private: %w", err)
	}
	if st.Hostname != "" {
		if err := unix.Sethostname([]byte(st.Hostname)); err != nil {
			return fmt.Errorf("setup: hostname %q: %w", st.Hostname, err)
		}
	}
	mounts := st.Mounts
	if st.Hosts != "" {
		mounts = append([]Mount{{Source: st.Hosts, Target: "/etc/hosts", ReadOnly: true}}, mounts...)
	}
	// Hold every source open first: the tmpfs on /tmp below would hide a source under /tmp.
	sources := make([]*os.File, len(mounts))
	defer func() {
		for _, f := range sources {
			if f != nil {
				f.Close()
			}
		}
	}()
	for i, m := range mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target) {
			return fmt.Errorf("setup: bind %s on %s: both paths must be absolute", m.Source, m.Target)
		}
		fd, err := unix.Open(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("setup: bind %s on %s: source: %w", m.Source, m.Target, err)
		}
		sources[i] = os.NewFile(uintptr(fd), m.Source)
	}
	tmpfses := []string{"/tmp", "/dev/shm"}
	var keep []Mount
	// Shortest first, so a directory is kept before what lies inside it.
	keepPaths := append([]string(nil), st.Keep...)
	sort.Slice(keepPaths, func(i, j int) bool { return len(keepPaths[i]) < len(keepPaths[j]) })
	for _, k := range keepPaths {
		k = filepath.Clean(k)
		for _, t := range tmpfses {
			if strings.HasPrefix(k, t+"/") {
				keep = append(keep, Mount{Source: k, Target: k})
			}
		}
	}
	keepSrc := make([]*os.File, len(keep))
	defer func() {
		for _, f := range keepSrc {
			if f != nil {
				f.Close()
			}
		}
	}()
	for i, k := range keep {
		fd, err := unix.Open(k.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("setup: keep %s visible: %w", k.Source, err)
		}
		keepSrc[i] = os.NewFile(uintptr(fd), k.Source)
	}
	// The host's device nodes the pod gets, held open before the pod's /dev hides them.
	devs, err := openDevices()
	defer func() {
		for _, d := range devs {
			d.f.Close()
		}
	}()
	if err != nil {
		return err
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("setup: mount /proc: %w", err)
	}
	if err := setupDev(devs); err != nil {
		return err
	}
	for _, dir := range tmpfses {
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
			return fmt.Errorf("setup: mount tmpfs on %s: %w", dir, err)
		}
	}
	for i, k := range keep {
		fi, err := keepSrc[i].Stat()
		if err != nil {
			return fmt.Errorf("setup: keep %s visible: %w", k.Source, err)
		}
		// Already visible through a directory kept before it: nothing to do.
		if cur, err := os.Stat(k.Target); err == nil && os.SameFile(cur, fi) {
			continue
		}
		// Recreate the mount point in the new tmpfs: a directory, or an empty file.
		if fi.IsDir() {
			err = os.MkdirAll(k.Target, 0o755)
		} else if err = os.MkdirAll(filepath.Dir(k.Target), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(k.Target, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o600); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("setup: keep %s visible: %w", k.Target, err)
		}
		if err := bind(k, keepSrc[i]); err != nil {
			return err
		}
	}
	for i, m := range mounts {
		if err := bind(m, sources[i]); err != nil {
			return err
		}
	}
	infos, err := mountinfo()
	if err != nil {
		return err
	}
	// Deepest first, so a parent is detached after what is mounted below it.
	sort.Slice(infos, func(i, j int) bool { return len(infos[i].point) > len(infos[j].point) })
	for _, mi := range infos {
		for _, d := range st.Detach {
			if mi.point == d || strings.HasPrefix(mi.point, d+"/") {
				if err := unix.Unmount(mi.point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
					return fmt.Errorf("setup: detach %s: %w", mi.point, err)
				}
			}
		}
	}
	return readOnlyKernelFiles(infos)
}

// readOnlyProc are the paths of the pod's own /proc that write to the kernel as a whole
// rather than to the pod (Docker's list): sysctls (kernel.core_pattern runs a program as
// root on the host at the next crash; vm.* and most others are host-wide), the magic SysRq
// trigger, interrupt affinities. Only the owner's permission bits guard them, which a uid-0
// app passes even without capabilities.
var readOnlyProc = []string{"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"}

// readOnlyKernelFiles remounts read-only, inside the pod, every mount at or under /sys
// (sysfs and what is mounted on it: cgroupfs, where an app could otherwise write its pid
// into another cgroup and leave its limits behind, securityfs, debugfs…) and binds
// readOnlyProc read-only over themselves. The launcher works on the host's view, which
// stays writable. infos is /proc/self/mountinfo after every other mount of the setup.
func readOnlyKernelFiles(infos []mountEntry) error {
	const ro = unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	for _, mi := range infos {
		if mi.point != "/sys" && !strings.HasPrefix(mi.point, "/sys/") {
			continue
		}
		if err := unix.Mount("", mi.point, "", ro, ""); err != nil {
			return fmt.Errorf("setup: remount %s read-only: %w", mi.point, err)
		}
	}
	for _, p := range readOnlyProc {
		if _, err := os.Lstat(p); err != nil {
			continue // not in this kernel
		}
		if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("setup: bind %s: %w", p, err)
		}
		if err := unix.Mount("", p, "", ro, ""); err != nil {
			return fmt.Errorf("setup: remount %s read-only: %w", p, err)
		}
	}
	return nil
}

// podDevices are the device nodes of the pod's /dev, bind-mounted from the host's: what
// programs expect to open, nothing that reaches hardware, the kernel log or other
// terminals.
var podDevices = []string{"null", "zero", "full", "random", "urandom", "tty"}

type device struct {
	name string
	f    *os.File // O_PATH descriptor of the host's node
}

// openDevices holds the host's podDevices open (O_PATH), so they can be bound into the
// pod's /dev once it hides the host's.
func openDevices() ([]device, error) {
	var out []device
	for _, name := range podDevices {
		path := filepath.Join("/dev", name)
		fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return out, fmt.Errorf("setup: device %s: %w", path, err)
		}
		out = append(out, device{name: name, f: os.NewFile(uintptr(fd), path)})
	}
	return out, nil
}

// setupDev gives the pod a /dev of its own: a small tmpfs with devs bound in, a private
// devpts instance on /dev/pts (and /dev/ptmx), /dev/shm (a tmpfs mounted by the caller),
// and the usual links to /proc/self/fd. Needs the pod's /proc mounted.
func setupDev(devs []device) error {
	if err := unix.Mount("tmpfs", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=65536"); err != nil {
		return fmt.Errorf("setup: mount tmpfs on /dev: %w", err)
	}
	for _, d := range devs {
		target := filepath.Join("/dev", d.name)
		f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o666)
		if err != nil {
			return fmt.Errorf("setup: %s: %w", target, err)
		}
		f.Close()
		if err := bind(Mount{Source: d.f.Name(), Target: target}, d.f); err != nil {
			return err
		}
	}
	for _, dir := range []string{"/dev/pts", "/dev/shm"} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("setup: %s: %w", dir, err)
		}
	}
	if err := unix.Mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("setup: mount devpts on /dev/pts: %w", err)
	}
	for link, to := range map[string]string{
		"/dev/ptmx": "pts/ptmx", "/dev/fd": "/proc/self/fd",
		"/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(to, link); err != nil {
			return fmt.Errorf("setup: %s: %w", link, err)
		}
	}
	return nil
}

// bind mounts src (an O_PATH descriptor of m.Source) on m.Target.
func bind(m Mount, src *os.File) error {
	if _, err := os.Stat(m.Target); err != nil {
		return fmt.Errorf("setup: bind %s on %s: target: %w", m.Source, m.Target, err)
	}
	// /proc is already the pod's own here, where init is pid 1.
	from := fmt.Sprintf("/proc/self/fd/%d", src.Fd())
	if err := unix.Mount(from, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("setup: bind %s on %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		if err := unix.Mount("", m.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("setup: make %s read-only: %w", m.Target, err)
		}
	}
	return nil
}

type mountEntry struct{ point, fstype string }

// mountinfo parses /proc/self/mountinfo: field 5 is the mount point, the field after " - "
// the filesystem type. Octal escapes (\040 for a space) are decoded.
func mountinfo() ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("setup: read mountinfo: %w", err)
	}
	return parseMountinfo(string(b)), nil
}

func parseMountinfo(s string) []mountEntry {
	var out []mountEntry
	for _, line := range strings.Split(s, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		p := strings.Fields(post)
		if len(f) < 5 || len(p) < 1 {
			continue
		}
		out = append(out, mountEntry{point: unescapeOctal(f[4]), fstype: p[0]})
	}
	return out
}

func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOct(s[i+1]) && isOct(s[i+2]) && isOct(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOct(c byte) bool { return c >= '0' && c <= '7' }
