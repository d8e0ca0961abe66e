package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podmesh/podmesh/internal/backoff"
	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/logs"
	"github.com/podmesh/podmesh/launcher/netns"
	"github.com/podmesh/podmesh/launcher/pod"
	"golang.org/x/sys/unix"
)

// The ingress is how the host reaches a project's services (compose `ports` are refused):
// the real sidecar, run by the launcher in the host's network namespace, with one outbound
// listener per exposed service (x-podmesh.expose) on the exposed host address. It picks a
// healthy instance from the registry and reaches it through that pod's sidecar like any
// caller in the mesh, so retries, ejection and (once on) mutual TLS apply to host traffic
// too; it has its own identity, <project>-ingress (pod.NewIngressConfig).
//
// It is supervised like a pod: restarted with exponential backoff when it exits, shown by
// `ps` (service "ingress", replica 0), its output in <LogDir>/<project>/ingress-0/sidecar.log.
// It starts once the services are launched and stops first, so no request comes in while
// the services stop. Its process sits in a cgroup of its own under the project's and is
// recorded in the state, so after a crashed launcher the next `up` or `down` ends it with
// the pods.

// Ingress names: the replica 0 of a service "ingress", which no pod ever is (pods count
// from 1), so a service of that name does not collide with it.
const (
	ingressName    = "ingress"
	ingressReplica = 0
)

// ingressRestart is the ingress's restart policy: always, from 100ms up to
// pod.MaxRestartDelay, reset after a minute of running.
var ingressRestart = struct {
	min, window time.Duration
}{100 * time.Millisecond, time.Minute}

// ingressGrace is how long the ingress has to drain after SIGTERM before SIGKILL (its
// configured drain timeout is 5s).
const ingressGrace = 8 * time.Second

type ingress struct {
	cfg      Config
	dir      string // its state directory (config file)
	conf     pod.SidecarConfig
	exposes  []string // "ADDR → service", for ps
	cgs      ProjectCgroups
	state    *stateFile
	cgName   string
	admin    string
	logDir   string
	done     chan struct{}
	readyOne chan struct{} // closed the first time it is ready

	mu       sync.Mutex
	status   pod.Status
	health   string
	pid      int
	restarts int
	lastExit string
	since    time.Time
	cg       pod.Cgroup
}

// newIngress prepares the project's ingress, or returns nil when no service is exposed.
func newIngress(cfg Config, p *compose.Project, dir string, cgs ProjectCgroups, sf *stateFile, registryURL, traceURL string) (*ingress, error) {
	var exposed []*compose.Service
	var exposes []string
	for i := range p.Services {
		svc := &p.Services[i]
		if svc.Mesh.Expose.IsValid() && svc.Replicas > 0 {
			exposed = append(exposed, svc)
			exposes = append(exposes, fmt.Sprintf("%s → %s", svc.Mesh.Expose, svc.Name))
		}
	}
	if len(exposed) == 0 {
		return nil, nil
	}
	if cfg.SidecarBin == "" {
		return nil, errors.New("supervisor: the ingress for x-podmesh.expose needs the sidecar binary")
	}
	admin, err := freeLoopbackPort()
	if err != nil {
		return nil, fmt.Errorf("supervisor: ingress admin port: %w", err)
	}
	conf := pod.NewIngressConfig(p.Name, exposed, admin, registryURL)
	conf.TraceEndpoint = traceURL // in the host's network: the collector itself
	in := &ingress{
		cfg: cfg, dir: filepath.Join(dir, "ingress"), conf: conf, exposes: exposes, cgs: cgs, state: sf,
		cgName:   netns.PinName(p.Name, ingressName, ingressReplica),
		admin:    admin.String(),
		logDir:   filepath.Join(cfg.LogDir, p.Name, fmt.Sprintf("%s-%d", ingressName, ingressReplica)),
		done:     make(chan struct{}),
		readyOne: make(chan struct{}),
		status:   pod.Created,
		since:    time.Now(),
	}
	return in, nil
}

func freeLoopbackPort() (netip.AddrPort, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer l.Close()
	return netip.ParseAddrPort(l.Addr().String())
}

func (in *ingress) set(f func()) {
	in.mu.Lock()
	defer in.mu.Unlock()
	f()
}

// run keeps the ingress sidecar running until ctx ends, then stops it.
func (in *ingress) run(ctx context.Context) {
	defer close(in.done)
	defer in.set(func() { in.status, in.health, in.pid, in.since = pod.Stopped, "", 0, time.Now() })
	logf, err := in.prepare()
	if err != nil {
		in.cfg.Logf("ingress: %v", err)
		in.set(func() { in.lastExit = err.Error() })
		return
	}
	defer logf.Close()
	w := backoff.Waiter{Min: ingressRestart.min, Max: pod.MaxRestartDelay, Factor: 2}
	for {
		in.set(func() { in.status, in.since = pod.Starting, time.Now() })
		began := time.Now()
		why := in.once(ctx, logf)
		if ctx.Err() != nil {
			return
		}
		in.cfg.Logf("ingress: %s", why)
		if time.Since(began) >= ingressRestart.window {
			w.Reset()
		}
		wait := w.Next()
		logf.Notef("%s; restarting in %v", why, wait.Round(time.Millisecond))
		in.set(func() {
			in.status, in.health, in.pid, in.lastExit, in.since = pod.BackOff, "", 0, why, time.Now()
			in.restarts++
		})
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// prepare writes the configuration and opens the log and the cgroup.
func (in *ingress) prepare() (*logs.File, error) {
	if err := os.MkdirAll(in.dir, 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	b, err := in.conf.Marshal()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(in.configPath(), b, 0o644); err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}
	logf, err := logs.Open(filepath.Join(in.logDir, "sidecar.log"), in.cfg.LogPolicy)
	if err != nil {
		return nil, err
	}
	cg, err := in.cgs.Pod(in.cgName, compose.Limits{})
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	in.set(func() { in.cg = cg })
	return logf, nil
}

func (in *ingress) configPath() string { return filepath.Join(in.dir, "sidecar.yaml") }

// once runs the sidecar until it exits or ctx ends (then stops it), and says how it ended.
func (in *ingress) once(ctx context.Context, logf *logs.File) string {
	out, _, err := logf.Capture("stdout")
	if err != nil {
		return err.Error()
	}
	errw, _, err := logf.Capture("stderr")
	if err != nil {
		out.Close()
		return err.Error()
	}
	exe, err := resolveExe(in.cfg.SidecarBin)
	if err != nil {
		return err.Error()
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		out.Close()
		errw.Close()
		return err.Error()
	}
	defer readyR.Close()
	cmd := exec.Command(exe, "-config", in.configPath(), "-ready-fd", "3")
	cmd.Stdout, cmd.Stderr = out, errw
	cmd.ExtraFiles = []*os.File{readyW} // its fd 3
	cmd.Dir = "/"
	// Its own process group: a terminal's Ctrl-C reaches the launcher, which stops the
	// ingress first, in order. It ends with the launcher (startChild).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	exited, err := startChild(cmd)
	out.Close()
	errw.Close()
	readyW.Close() // the sidecar's copy is the only writer left
	if err != nil {
		return fmt.Sprintf("start %s: %v", exe, err)
	}
	pid := cmd.Process.Pid
	start, _ := procStart(pid)
	if err := in.state.update(func(st *State) { st.Ingress = &Proc{Pid: pid, Start: start, Exe: exe} }); err != nil {
		in.cfg.Logf("ingress: record pid %d: %v", pid, err)
	}
	in.mu.Lock()
	cg := in.cg
	in.mu.Unlock()
	if err := cg.Add("sidecar", pid); err != nil {
		in.cfg.Logf("ingress: cgroup: %v", err)
	}
	logf.Notef("started the ingress sidecar, pid %d, admin %s: %s", pid, in.admin, strings.Join(in.exposes, ", "))
	in.set(func() { in.pid, in.health, in.since = pid, pod.HealthStarting, time.Now() })

	ready := in.waitReady(ctx, readyR, exited)
	if ready {
		in.set(func() { in.status, in.health = pod.Running, pod.HealthHealthy })
		logf.Notef("ready")
		select {
		case <-in.readyOne:
		default:
			close(in.readyOne)
		}
	}
	select {
	case <-ctx.Done():
		in.set(func() { in.status, in.health, in.since = pod.Stopping, "", time.Now() })
		_ = cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(ingressGrace)
		defer t.Stop()
		select {
		case <-exited:
		case <-t.C:
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Notef("ingress sidecar %s", exitString(cmd.ProcessState))
		return "stopped"
	case <-exited:
		return "ingress sidecar " + exitString(cmd.ProcessState)
	}
}

func exitString(ps *os.ProcessState) string {
	if ps == nil {
		return "gone"
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by " + unix.SignalName(ws.Signal())
	}
	return fmt.Sprintf("exited %d", ps.ExitCode())
}

// waitReady waits for the sidecar to say READY=1 on its readiness pipe: true once it did,
// false when it closed the pipe first, exited or ctx ended.
func (in *ingress) waitReady(ctx context.Context, ready *os.File, exited <-chan struct{}) bool {
	got := make(chan error, 1)
	go func() { got <- pod.ReadReady(ready) }()
	select {
	case err := <-got:
		if err != nil {
			in.cfg.Logf("ingress: sidecar not ready: %v", err)
		}
		return err == nil
	case <-ctx.Done():
	case <-exited:
	}
	ready.Close() // ends ReadReady
	return false
}

// row is the ingress's line in `launcher ps`.
func (in *ingress) row() Row {
	in.mu.Lock()
	defer in.mu.Unlock()
	r := Row{Info: pod.Info{
		Name: fmt.Sprintf("%s-%d", ingressName, ingressReplica), Service: ingressName, Replica: ingressReplica,
		Status: in.status, State: in.status.String(), Health: in.health, Restarts: in.restarts,
		Pid: in.pid, LastExit: in.lastExit, Since: in.since,
	}, Exposes: in.exposes}
	if in.cg != nil {
		if st, err := in.cg.Stats(); err == nil {
			r.Memory = st.Memory
			r.CPUTime = st.CPU.Round(time.Millisecond).String()
		}
	}
	return r
}

// remove deletes the ingress's cgroup once run has returned.
func (in *ingress) remove(ctx context.Context) error {
	in.mu.Lock()
	cg := in.cg
	in.cg = nil
	in.mu.Unlock()
	if cg == nil {
		return nil
	}
	return cg.Delete(ctx)
}
