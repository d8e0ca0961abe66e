package initproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/podmesh/podmesh/launcher/netns"
	"golang.org/x/sys/unix"
)

// Config says how to start a pod's init.
type Config struct {
	Exe   string // binary to re-execute; "" = /proc/self/exe
	NetNS string // pin of the pod's network namespace; "" = the launcher's own (tests only)
	Setup Setup
	// Place puts init (by its pid in the launcher's namespace) into the pod's cgroup. It
	// runs before init sets anything up.
	Place func(pid int) error
	// Log receives init's own diagnostics (its stderr); nil discards them.
	Log *os.File
}

// Init is a running pod init, seen from the launcher.
type Init struct {
	cmd  *exec.Cmd
	conn *net.UnixConn

	spawnMu sync.Mutex // one spawn at a time: init may then replace an unreleased child of the same name

	mu      sync.Mutex
	procs   map[string]*Proc // live children by name
	closed  bool
	seq     uint64
	pending map[uint64]chan received // requests waiting for their reply, by Seq
	gone    bool                     // the reader has stopped: no reply will come

	done    chan struct{} // init has exited and been waited for
	waitErr error
	readErr chan struct{} // the reader has stopped
}

// Proc is a child of init: the sidecar, the app, a healthcheck.
type Proc struct {
	Name    string
	Pid     int // in the launcher's pid namespace
	PodPid  int // in the pod's
	started chan struct{}
	startE  string
	done    chan struct{}
	exit    Exit
	once    sync.Once
}

// Done is closed when the process has ended; Exit then says how.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exit reports how the process ended; valid once Done is closed.
func (p *Proc) Exit() Exit { <-p.done; return p.exit }

func (p *Proc) finish(e Exit) {
	p.once.Do(func() {
		p.exit = e
		close(p.done)
	})
}

// Start launches init for one pod and waits until it has set the pod up.
func Start(ctx context.Context, cfg Config) (*Init, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("initproc: socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "init-control")
	theirs := os.NewFile(uintptr(fds[1]), "init-control")
	defer theirs.Close()
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		ours.Close()
		return nil, fmt.Errorf("initproc: SO_PASSCRED: %w", err)
	}
	fc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("initproc: control socket: %w", err)
	}
	exe := cfg.Exe
	if exe == "" {
		exe = "/proc/self/exe"
	}
	cmd := &exec.Cmd{
		Path:       exe,
		Args:       []string{InitName},
		Env:        initEnv(),
		ExtraFiles: []*os.File{theirs},
		Stdout:     cfg.Log,
		Stderr:     cfg.Log,
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
			Setsid:     true,
		},
	}
	start := func() error { return cmd.Start() }
	if cfg.NetNS != "" {
		// The child inherits the network namespace of the thread that forks it.
		err = netns.Do(cfg.NetNS, start)
	} else {
		err = start()
	}
	if err != nil {
		fc.Close()
		return nil, fmt.Errorf("initproc: start init in %s: %w", cfg.NetNS, err)
	}
	in := &Init{
		cmd:     cmd,
		conn:    fc.(*net.UnixConn),
		pending: map[uint64]chan received{},
		procs:   map[string]*Proc{},
		done:    make(chan struct{}),
		readErr: make(chan struct{}),
	}
	go in.wait()
	go in.read()
	if cfg.Place != nil {
		if err := cfg.Place(cmd.Process.Pid); err != nil {
			in.Kill()
			return nil, fmt.Errorf("initproc: place init %d: %w", cmd.Process.Pid, err)
		}
	}
	r, err := in.request(ctx, message{Op: opSetup, Setup: &cfg.Setup}, nil)
	if err == nil && r.Event != evReady {
		err = fmt.Errorf("unexpected %s", r.Event)
	}
	if err != nil {
		in.Kill()
		return nil, fmt.Errorf("initproc: set up pod %s: %w", cfg.Setup.Hostname, err)
	}
	return in, nil
}

// Pid is init's pid in the launcher's namespace.
func (in *Init) Pid() int { return in.cmd.Process.Pid }

// Done is closed when init has exited.
func (in *Init) Done() <-chan struct{} { return in.done }

func (in *Init) wait() {
	in.waitErr = in.cmd.Wait()
	// Init is PID 1 of the pod: everything in it died with it.
	<-in.readErr
	in.mu.Lock()
	procs := in.procs
	in.procs = map[string]*Proc{}
	in.mu.Unlock()
	for _, p := range procs {
		p.finish(Exit{Signal: syscall.SIGKILL, Err: "init exited"})
	}
	close(in.done)
}

// read dispatches init's messages: exits to their Proc, starts to their Proc, replies to
// the request of the same Seq. A spawned child whose request was given up on is cancelled.
func (in *Init) read() {
	defer close(in.readErr)
	buf := make([]byte, maxPacket)
	oob := make([]byte, unix.CmsgSpace(4*8)+unix.CmsgSpace(unix.SizeofUcred))
	for {
		r, err := recv(in.conn, buf, oob)
		if err != nil {
			in.mu.Lock()
			in.gone = true
			for seq, ch := range in.pending {
				close(ch)
				delete(in.pending, seq)
			}
			in.mu.Unlock()
			return
		}
		closeAll(r.fds)
		switch r.Event {
		case evExited:
			// Matched by pid too: a child given up on may share its name with a later one.
			in.mu.Lock()
			p := in.procs[r.Name]
			if p != nil && p.PodPid == r.Pid {
				delete(in.procs, r.Name)
			} else {
				p = nil
			}
			in.mu.Unlock()
			if p != nil {
				p.finish(Exit{Code: r.Code, Signal: r.Signal})
			}
		case evStarted:
			in.mu.Lock()
			p := in.procs[r.Name]
			in.mu.Unlock()
			if p != nil && p.PodPid == r.Pid {
				p.startE = r.Err
				close(p.started)
			}
		default:
			in.mu.Lock()
			ch := in.pending[r.Seq]
			delete(in.pending, r.Seq)
			in.mu.Unlock()
			if ch != nil {
				ch <- r // buffered: never blocks
			} else {
				in.abandoned(r)
			}
		}
	}
}

// abandoned handles a reply nobody waits for any more: a child spawned for a request given
// up on waits, as a shim, for a release that will never come, holding the output
// descriptors it was given. It is killed.
func (in *Init) abandoned(r received) {
	if r.Event == evSpawned {
		_ = send(in.conn, message{Op: opCancel, Name: r.Name, Pid: r.Pid}, nil)
	}
}

// request sends m with a new Seq and waits for init's reply to it. When ctx ends first the
// request is given up on, and its reply, whenever it comes, is handled by abandoned.
func (in *Init) request(ctx context.Context, m message, oob []byte) (received, error) {
	ch := make(chan received, 1)
	in.mu.Lock()
	if in.gone {
		in.mu.Unlock()
		return received{}, errors.New("init exited")
	}
	in.seq++
	m.Seq = in.seq
	in.pending[m.Seq] = ch
	in.mu.Unlock()
	if err := send(in.conn, m, oob); err != nil {
		in.mu.Lock()
		delete(in.pending, m.Seq)
		in.mu.Unlock()
		return received{}, err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return received{}, errors.New("init exited")
		}
		if r.Event == evError {
			return r, errors.New(r.Err)
		}
		return r, nil
	case <-ctx.Done():
		in.mu.Lock()
		_, waiting := in.pending[m.Seq]
		delete(in.pending, m.Seq)
		in.mu.Unlock()
		if !waiting {
			// The reply was delivered just now: it is abandoned all the same.
			if r, ok := <-ch; ok {
				in.abandoned(r)
			}
		}
		return received{}, ctx.Err()
	}
}

// Spawn starts spec in the pod with stdout and stderr as its fds 1 and 2 (and /dev/null as
// its stdin), calls place with the new process's pid (in the launcher's namespace) while it
// is still waiting, and lets it exec only when place succeeds. It returns once the exec has
// happened (or failed).
func (in *Init) Spawn(ctx context.Context, spec Spec, stdout, stderr *os.File, place func(pid int) error) (*Proc, error) {
	return in.SpawnStdin(ctx, spec, nil, stdout, stderr, place)
}

// SpawnStdin is Spawn with stdin as the program's fd 0 (nil: /dev/null). A file opened by
// the launcher reaches a program that could not open it by its path (a directory on the
// way it may not search): the sidecar reads its configuration from /dev/stdin.
func (in *Init) SpawnStdin(ctx context.Context, spec Spec, stdin, stdout, stderr *os.File, place func(pid int) error) (*Proc, error) {
	return in.SpawnFiles(ctx, spec, Files{Stdin: stdin, Stdout: stdout, Stderr: stderr}, place)
}

// Files are the descriptors a spawned program gets: Stdin (nil: /dev/null), Stdout and
// Stderr as its 0, 1 and 2, and Notify as its 3 when the spec asks for it.
type Files struct {
	Stdin, Stdout, Stderr, Notify *os.File
}

// SpawnFiles is Spawn with every descriptor the program gets.
func (in *Init) SpawnFiles(ctx context.Context, spec Spec, files Files, place func(pid int) error) (*Proc, error) {
	if spec.Notify != (files.Notify != nil) {
		return nil, fmt.Errorf("initproc: spawn %s: Spec.Notify and Files.Notify go together", spec.Name)
	}
	stdin, stdout, stderr := files.Stdin, files.Stdout, files.Stderr
	if stdin == nil && files.Notify != nil {
		// The descriptors travel in order (stdout, stderr, stdin, notify): notify needs a stdin.
		null, err := os.Open(os.DevNull)
		if err != nil {
			return nil, fmt.Errorf("initproc: spawn %s: %w", spec.Name, err)
		}
		defer null.Close()
		stdin = null
	}
	in.spawnMu.Lock()
	defer in.spawnMu.Unlock()
	in.mu.Lock()
	closed := in.closed
	in.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("initproc: spawn %s: %w", spec.Name, net.ErrClosed)
	}
	fds := []int{int(stdout.Fd()), int(stderr.Fd())}
	if stdin != nil {
		fds = append(fds, int(stdin.Fd()))
	}
	if files.Notify != nil {
		fds = append(fds, int(files.Notify.Fd()))
	}
	rights := unix.UnixRights(fds...)
	r, err := in.request(ctx, message{Op: opSpawn, Name: spec.Name, Spec: &spec}, rights)
	if err != nil {
		return nil, fmt.Errorf("initproc: spawn %s: %w", spec.Name, err)
	}
	if r.Event != evSpawned || r.cred == nil {
		return nil, fmt.Errorf("initproc: spawn %s: unexpected reply %q without credentials", spec.Name, r.Event)
	}
	p := &Proc{Name: spec.Name, Pid: int(r.cred.Pid), PodPid: r.Pid, started: make(chan struct{}), done: make(chan struct{})}
	in.mu.Lock()
	in.procs[spec.Name] = p
	in.mu.Unlock()
	if place != nil {
		if err := place(p.Pid); err != nil {
			_ = send(in.conn, message{Op: opCancel, Name: spec.Name, Pid: r.Pid}, nil)
			return nil, fmt.Errorf("initproc: place %s (pid %d): %w", spec.Name, p.Pid, err)
		}
	}
	if err := send(in.conn, message{Op: opRelease, Name: spec.Name, Pid: r.Pid}, nil); err != nil {
		return nil, err
	}
	select {
	case <-p.started:
		if p.startE != "" {
			return nil, fmt.Errorf("initproc: start %s: %s", spec.Name, p.startE)
		}
	case <-p.done:
		if !p.exit.OK() {
			return nil, fmt.Errorf("initproc: start %s: %s", spec.Name, p.exit)
		}
	case <-ctx.Done():
		_ = in.Signal(spec.Name, syscall.SIGKILL)
		return nil, fmt.Errorf("initproc: start %s: %w", spec.Name, ctx.Err())
	}
	return p, nil
}

// Signal sends sig to the named child's process group.
func (in *Init) Signal(name string, sig syscall.Signal) error {
	return send(in.conn, message{Op: opSignal, Name: name, Signal: sig}, nil)
}

// Close asks init to kill every process of the pod and exit, and waits for it for up to
// timeout before killing it. A second Close returns net.ErrClosed.
func (in *Init) Close(timeout time.Duration) error {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return net.ErrClosed
	}
	in.closed = true
	in.mu.Unlock()
	_ = send(in.conn, message{Op: opShutdown}, nil)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-in.done:
	case <-t.C:
		in.Kill()
	}
	in.conn.Close()
	return nil
}

// Kill ends init with SIGKILL (the kernel then kills the whole pod) and waits for it.
func (in *Init) Kill() {
	_ = in.cmd.Process.Kill()
	in.conn.Close()
	<-in.done
}

// initEnv is init's whole environment. GORACE passes through so that race-enabled test
// binaries acting as init skip the race runtime's one-second sleep at exit.
func initEnv() []string {
	env := []string{"PATH=" + defaultPath}
	if v, ok := os.LookupEnv("GORACE"); ok {
		env = append(env, "GORACE="+v)
	}
	return env
}
