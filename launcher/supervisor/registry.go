package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/logs"
)

// registryProc is the registry the launcher started.
type registryProc struct {
	cmd  *exec.Cmd
	addr string
	done <-chan struct{}
}

// resolveExe is the absolute path of a program with its symlinks resolved: what
// /proc/PID/exe of its process shows, so a later launcher recognises the process.
func resolveExe(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// startChild starts cmd with SIGTERM as its parent-death signal, from a goroutine locked to
// its thread which stays there in cmd.Wait: the kernel sends the signal when the starting
// thread ends, so it must be one that lives as long as the child, not any runtime thread.
// A launcher that dies, even by SIGKILL, so takes the process with it. done is closed when
// cmd.Wait has returned.
func startChild(cmd *exec.Cmd) (done <-chan struct{}, err error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	started := make(chan error, 1)
	d := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(d)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return d, nil
}

// procStart is a process's start time (clock ticks after boot, /proc/PID/stat field 22):
// with the pid, it names one process, not whichever reuses the pid later.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("supervisor: /proc/%d/stat: no command", pid)
	}
	// After ") ": field 3 (state) onwards; the start time is field 22.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("supervisor: /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// startRegistry starts the registry binary on a free loopback port with its data under the
// project's state dir, records it in the state first, and waits until it answers.
// addr "" picks a free port; a restart passes the address the relay and the launcher use.
func startRegistry(ctx context.Context, cfg Config, dir string, sf *stateFile, policy, addr string) (*registryProc, error) {
	if addr == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("supervisor: pick a registry port: %w", err)
		}
		addr = l.Addr().String()
		l.Close()
	}
	data := filepath.Join(dir, "registry")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, fmt.Errorf("supervisor: registry data dir: %w", err)
	}
	// Size-rotated like the pods' logs (cfg.LogPolicy), closed once the registry has exited
	// and its output is drained.
	logf, err := logs.Open(filepath.Join(cfg.LogDir, sf.get().Project, "registry.log"), cfg.LogPolicy)
	if err != nil {
		return nil, fmt.Errorf("supervisor: registry log: %w", err)
	}
	out, outDone, err := logf.Capture("stdout")
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("supervisor: registry log: %w", err)
	}
	errw, errDone, err := logf.Capture("stderr")
	if err != nil {
		out.Close()
		<-outDone
		logf.Close()
		return nil, fmt.Errorf("supervisor: registry log: %w", err)
	}
	started := false
	defer func() {
		out.Close()
		errw.Close()
		if !started {
			<-outDone
			<-errDone
			logf.Close()
		}
	}()
	exe, err := resolveExe(cfg.RegistryBin)
	if err != nil {
		return nil, fmt.Errorf("supervisor: registry program: %w", err)
	}
	args := cfg.RegistryArgs(addr, data)
	if policy == compose.PolicyDeny {
		// cmd/registry's flag; the sidecars take the default from the registry's answers.
		args = append(args, "-default-intention-policy", "deny")
	}
	// Recorded before it starts (without a pid yet): a launcher killed in between leaves
	// at most a registry that its parent-death signal ends, and a data dir cleanup finds.
	if err := sf.update(func(st *State) {
		st.Registry = &RegistryProc{Exe: exe, DataDir: data, Addr: addr}
	}); err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = out, errw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // not killed by the terminal's Ctrl-C before the pods deregister
	done, err := startChild(cmd)
	if err != nil {
		return nil, fmt.Errorf("supervisor: start registry %s: %w", exe, err)
	}
	started = true
	go func() {
		<-outDone
		<-errDone
		logf.Close()
	}()
	r := &registryProc{cmd: cmd, addr: addr, done: done}
	start, _ := procStart(cmd.Process.Pid)
	if err := sf.update(func(st *State) {
		st.Registry = &RegistryProc{Pid: cmd.Process.Pid, Start: start, Exe: exe, DataDir: data, Addr: addr}
	}); err != nil {
		_ = r.stop()
		return nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		// Ready once it names a leader: before that a Consul-compatible server answers "".
		resp, err := http.Get("http://" + addr + "/v1/status/leader")
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Trim(strings.TrimSpace(string(b)), `"`) != "" {
				return r, nil
			}
		}
		select {
		case <-r.done:
			return nil, fmt.Errorf("supervisor: registry %s exited: %v (see registry.log)", exe, cmd.ProcessState)
		case <-ctx.Done():
			_ = r.stop()
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			_ = r.stop()
			return nil, fmt.Errorf("supervisor: registry at %s not answering after 20s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RegistryRestartMax caps the wait between restarts of a registry that keeps exiting.
const RegistryRestartMax = 30 * time.Second

// superviseRegistry restarts the launcher's registry whenever it exits before teardown, on
// the same address and data (the relay and the pods keep their URL), after a wait that
// doubles from 500ms while restarts fail. The pods register again when the restarted
// registry does not know them (pod.ErrNotRegistered). It returns when ctx ends.
func (s *Supervisor) superviseRegistry(ctx context.Context, policy string) {
	wait := 500 * time.Millisecond
	for {
		s.mu.Lock()
		r := s.registry
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-r.done:
		}
		s.cfg.Logf("registry exited (%v); restarting it in %v", r.cmd.ProcessState, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		next, err := startRegistry(ctx, s.cfg, s.dir, s.state, policy, r.addr)
		if err != nil {
			s.cfg.Logf("restart registry: %v", err)
			wait = min(2*wait, RegistryRestartMax)
			// Still watching the dead one: its done channel is closed, so the loop retries.
			continue
		}
		wait = 500 * time.Millisecond
		s.mu.Lock()
		s.registry = next
		s.mu.Unlock()
		s.cfg.Logf("registry restarted, pid %d", next.cmd.Process.Pid)
		// Its data kept the intentions; any it lost are made again.
		if err := s.allowEdges(ctx, "http://"+next.addr); err != nil {
			s.cfg.Logf("after the registry's restart: %v", err)
		}
		// And the launcher's own instance, if it had lost it (registering again is harmless).
		s.mu.Lock()
		at, ok := s.selfAt, s.registered
		s.mu.Unlock()
		if ok {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := registerLauncher(rctx, "http://"+next.addr, s.project.Name, at); err != nil {
				s.cfg.Logf("after the registry's restart: %v", err)
			}
			cancel()
		}
	}
}

func (r *registryProc) stop() error {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C:
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	return nil
}

// killOrphan ends a process a dead launcher started, if pid still runs exe and (when start
// is known) began at start: SIGTERM, then SIGKILL after grace.
func killOrphan(pid int, exe string, start uint64, grace time.Duration) error {
	if pid <= 0 {
		return nil
	}
	running := func() bool {
		got, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			return false
		}
		got = strings.TrimSuffix(got, " (deleted)")
		if got != exe {
			return false
		}
		if start != 0 {
			if s, err := procStart(pid); err != nil || s != start {
				return false
			}
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		i := strings.LastIndexByte(string(b), ')')
		return i < 0 || !strings.HasPrefix(string(b[i:]), ") Z")
	}
	if !running() {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for running() {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			deadline = time.Now().Add(5 * time.Second)
			for running() {
				if time.Now().After(deadline) {
					return fmt.Errorf("supervisor: process %d (%s) survives SIGKILL", pid, exe)
				}
				time.Sleep(20 * time.Millisecond)
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// relay forwards TCP from the bridge's gateway address (which pods can reach) to the
// registry (which may listen on the host's loopback, which they cannot).
type relay struct {
	l      net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func startRelay(listen, target string) (*relay, error) {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("supervisor: relay on %s (to %s): %w", listen, target, err)
	}
	r := &relay{l: l, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		if !r.track(c) {
			c.Close()
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer r.untrack(c)
			up, err := net.DialTimeout("tcp", r.target, 5*time.Second)
			if err != nil {
				return
			}
			if !r.track(up) {
				up.Close()
				return
			}
			defer r.untrack(up)
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go pipe(up, c)
			go pipe(c, up)
			<-done
			<-done
		}()
	}
}

func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

// Close stops the relay and its connections; a second Close returns net.ErrClosed.
func (r *relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return net.ErrClosed
	}
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	err := r.l.Close()
	r.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
