// Package pod runs one replica of a service as a pod and keeps it alive: its network
// namespace and veth (launcher/netns), its cgroup, an init as PID 1 (launcher/initproc), the
// sidecar, the app, health checks, registration, restarts.
//
// A pod runs a sidecar when its service serves through the mesh (x-podmesh.port) or calls
// upstreams; without a port the sidecar serves only the app's outbound calls and nothing
// is registered.
//
// Start order: pod network → init → sidecar → sidecar ready (it says READY=1 on a pipe the
// launcher gave it as fd 3, -ready-fd 3, when its /ready turns 200: nothing polls) → app → app healthy (the compose healthcheck run inside the
// pod, or a TCP connect to the app's port) → registered passing (a TTL check the pod keeps
// passing from the health results, since the registry cannot reach a pod's loopback).
//
// Stop order: deregister → the sidecar drains inbound (POST /drain on its admin address;
// it keeps serving the app's outbound calls) → the app gets its stop_signal → after
// stop_grace_period SIGKILL of everything in the app's cgroup → SIGTERM to the sidecar,
// which exits → init and anything left killed through the pod cgroup → on removal, the
// namespace and veth deleted. A restart runs the same stop, keeps the network (so the
// address), and starts again after the restart policy's backoff.
//
// A sidecar that exits while the app runs is restarted alone (whatever the app's restart
// policy: it is the pod's infrastructure), with a backoff of its own; the instance is
// critical in the registry until the new sidecar is ready.
package pod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podmesh/podmesh/internal/backoff"
	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/initproc"
	"github.com/podmesh/podmesh/launcher/logs"
	"github.com/podmesh/podmesh/launcher/netns"
)

// Config is what one pod needs. The zero values of the optional fields mean defaults.
type Config struct {
	Project string
	Service *compose.Service
	Dir     string // the compose file's directory: the default working dir
	Replica int    // 1-based

	Network netns.Network
	Net     netns.Pod // planned by the caller (netns.Plan), created by Run

	StateDir  string // this pod's files: hosts, sidecar config
	LogDir    string // this pod's logs: app.log, sidecar.log, init.log
	LogPolicy logs.Policy

	Exe         string // binary re-executed as init; "" = /proc/self/exe
	SidecarBin  string // the sidecar program
	RegistryURL string // the registry as the sidecar reaches it from inside the pod
	TraceURL    string // the trace collector (OTLP/HTTP) as the sidecar reaches it; "" = none

	Cgroups  Cgroups
	Registry Registry // nil: not registered
	Clock    Clock    // nil: the real clock

	ReadyTimeout time.Duration // for the sidecar's /ready; default 60s
	TTL          time.Duration // of the registry check; default 10s
	SidecarGrace time.Duration // between SIGTERM to the sidecar and SIGKILL; default 5s

	Logf func(format string, args ...any) // the supervisor's log; nil discards
}

func (c *Config) withDefaults() {
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = 60 * time.Second
	}
	if c.TTL <= 0 {
		c.TTL = 10 * time.Second
	}
	if c.SidecarGrace <= 0 {
		c.SidecarGrace = 5 * time.Second
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Health values.
const (
	HealthNone      = ""          // no check ran yet or the pod is not running
	HealthStarting  = "starting"  // running, not yet healthy
	HealthHealthy   = "healthy"   //
	HealthUnhealthy = "unhealthy" // failed Retries checks in a row
)

// Info is a snapshot of a pod for `launcher ps`.
type Info struct {
	Name     string     `json:"name"`
	Service  string     `json:"service"`
	Replica  int        `json:"replica"`
	Addr     netip.Addr `json:"addr"`
	Status   Status     `json:"-"`
	State    string     `json:"state"`
	Health   string     `json:"health"`
	Restarts int        `json:"restarts"`
	Pid      int        `json:"pid"` // the app's, in the launcher's namespace
	InitPid  int        `json:"init_pid"`
	LastExit string     `json:"last_exit"`
	OOMKills int        `json:"oom_kills"`
	Since    time.Time  `json:"since"`
}

// Pod is one replica.
type Pod struct {
	cfg  Config
	name string // "<service>-<replica>": hostname, registry ID, log directory

	mu       sync.Mutex
	st       podState
	health   string
	restarts int
	lastExit string
	ooms     int
	pid      int
	initPid  int
	since    time.Time
	changed  chan struct{} // closed and replaced on every change
	cg       Cgroup

	logApp, logSidecar, logInit *logs.File
	done                        chan struct{}
}

// New prepares a pod; Run starts it.
func New(cfg Config) *Pod {
	cfg.withDefaults()
	return &Pod{
		cfg:     cfg,
		name:    fmt.Sprintf("%s-%d", cfg.Service.Name, cfg.Replica),
		st:      state{Created},
		changed: make(chan struct{}),
		since:   cfg.Clock.Now(),
		done:    make(chan struct{}),
	}
}

// Name is "<service>-<replica>".
func (p *Pod) Name() string { return p.name }

// Meshed reports whether the service serves through the mesh (its x-podmesh block names a
// port): its pods are registered. A service with upstreams but no port has a sidecar too
// (HasSidecar), for its outbound calls only.
func (p *Pod) Meshed() bool { return p.cfg.Service.Mesh.Port > 0 }

// Info returns the pod's current state.
func (p *Pod) Info() Info {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Info{
		Name: p.name, Service: p.cfg.Service.Name, Replica: p.cfg.Replica, Addr: p.cfg.Net.Addr.Addr(),
		Status: p.st.status(), State: p.st.status().String(), Health: p.health, Restarts: p.restarts,
		Pid: p.pid, InitPid: p.initPid, LastExit: p.lastExit, OOMKills: p.ooms, Since: p.since,
	}
}

// Stats reads the pod cgroup's usage; zero before the cgroup exists.
func (p *Pod) Stats() (Stats, error) {
	p.mu.Lock()
	cg := p.cg
	p.mu.Unlock()
	if cg == nil {
		return Stats{}, nil
	}
	return cg.Stats()
}

// ErrNoUsage is returned by Usage while the pod has no cgroup (not created yet, or removed),
// or when its cgroup does not report usage.
var ErrNoUsage = errors.New("pod: no cgroup usage")

// Usage reads the pod cgroup's usage, limits and members for the metrics.
func (p *Pod) Usage() (Usage, error) {
	p.mu.Lock()
	cg := p.cg
	p.mu.Unlock()
	u, ok := cg.(UsageReader)
	if !ok {
		return Usage{}, ErrNoUsage
	}
	return u.Usage()
}

// WaitFor blocks until cond holds for the pod's Info, or ctx ends.
func (p *Pod) WaitFor(ctx context.Context, cond func(Info) bool) error {
	for {
		p.mu.Lock()
		ch := p.changed
		p.mu.Unlock()
		if cond(p.Info()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Done is closed when Run has returned.
func (p *Pod) Done() <-chan struct{} { return p.done }

func (p *Pod) changedLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// to moves the state machine; an invalid transition is a bug and is returned.
func (p *Pod) to(s Status) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	next, err := p.st.transition(s)
	if err != nil {
		p.cfg.Logf("pod %s: %v", p.name, err)
		return err
	}
	if next.status() != p.st.status() {
		p.since = p.cfg.Clock.Now()
	}
	p.st = next
	if s != Running {
		p.health = HealthNone
		if s != Starting {
			p.pid = 0
		}
	}
	p.changedLocked()
	return nil
}

func (p *Pod) update(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f()
	p.changedLocked()
}

// Run creates the pod's network and cgroup and keeps the pod running until ctx ends; then
// it stops the pod in order and returns. The network and cgroup stay until Remove.
func (p *Pod) Run(ctx context.Context) error {
	defer close(p.done)
	if err := p.prepare(); err != nil {
		p.update(func() { p.lastExit = err.Error() })
		_ = p.to(Stopping)
		_ = p.to(Stopped)
		return err
	}
	r := newRestarter(p.cfg.Service.Restart)
	for {
		if err := p.to(Starting); err != nil {
			return err
		}
		run, err := p.start(ctx)
		var failed bool
		var why string
		var ran time.Duration // since the app's exec: a start that failed did not run
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			failed, why = true, err.Error()
			// The OOM killer may have ended init or the sidecar before the app ran.
			if p.oomKilled(run, initproc.Exit{Signal: syscall.SIGKILL}) {
				why = "OOMKilled while starting: " + why
			}
			p.cfg.Logf("pod %s: start: %v", p.name, err)
			p.logApp.Notef("start failed: %v", err)
		} else {
			execAt := p.cfg.Clock.Now() // start returns once the app has exec'd
			_ = p.to(Running)
			failed, why = p.supervise(ctx, run)
			ran = p.cfg.Clock.Now().Sub(execAt)
			if ctx.Err() != nil {
				_ = p.to(Stopping)
				p.stopRun(run)
				_ = p.to(Stopped)
				return nil
			}
			p.logApp.Notef("%s; stopping the pod's processes", why)
			p.cfg.Logf("pod %s: %s", p.name, why)
			p.stopRun(run)
		}
		p.update(func() { p.lastExit = why })
		restart, wait := r.next(failed, ran)
		if !restart {
			_ = p.to(Exited)
			p.logApp.Notef("not restarting (restart_policy %s, %d restarts)", p.cfg.Service.Restart.Condition, r.attempts)
			<-ctx.Done()
			break
		}
		_ = p.to(BackOff)
		p.update(func() { p.restarts++ })
		p.logApp.Notef("restarting in %v", wait.Round(time.Millisecond))
		if !sleep(ctx, p.cfg.Clock, wait) {
			break
		}
	}
	_ = p.to(Stopping)
	_ = p.to(Stopped)
	return nil
}

// prepare creates the network, the cgroup, the log files and the pod's files.
func (p *Pod) prepare() error {
	var err error
	for _, l := range []struct {
		f    **logs.File
		name string
	}{{&p.logApp, "app"}, {&p.logSidecar, "sidecar"}, {&p.logInit, "init"}} {
		if *l.f, err = logs.Open(filepath.Join(p.cfg.LogDir, l.name+".log"), p.cfg.LogPolicy); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(p.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("pod %s: state dir: %w", p.name, err)
	}
	var upstreams []string
	for _, u := range p.cfg.Service.Mesh.Upstreams {
		upstreams = append(upstreams, u.Name)
	}
	hosts, err := Hosts(p.name, p.cfg.Net.Addr.Addr(), upstreams)
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.hostsPath(), hosts, 0o644); err != nil {
		return fmt.Errorf("pod %s: write hosts: %w", p.name, err)
	}
	if HasSidecar(p.cfg.Service) {
		sc, err := NewSidecarConfig(p.cfg.Service, p.name, p.cfg.Net.Addr.Addr(), p.cfg.RegistryURL)
		if err != nil {
			return err
		}
		sc.TraceEndpoint = p.cfg.TraceURL
		b, err := sc.Marshal()
		if err != nil {
			return err
		}
		if err := os.WriteFile(p.sidecarConfigPath(), b, 0o644); err != nil {
			return fmt.Errorf("pod %s: write sidecar config: %w", p.name, err)
		}
	}
	t0 := time.Now()
	cg, err := p.cfg.Cgroups.Pod(netns.PinName(p.cfg.Project, p.cfg.Service.Name, p.cfg.Replica), p.cfg.Service.Limits)
	if err != nil {
		return fmt.Errorf("pod %s: cgroup: %w", p.name, err)
	}
	p.update(func() { p.cg = cg })
	t1 := time.Now()
	if err := netns.Create(p.cfg.Network, p.cfg.Net); err != nil {
		return fmt.Errorf("pod %s: %w", p.name, err)
	}
	p.logApp.Notef("pod cgroup in %v, network (namespace, veth, address, firewall) in %v",
		t1.Sub(t0).Round(time.Microsecond), time.Since(t1).Round(time.Microsecond))
	return nil
}

func (p *Pod) hostsPath() string         { return filepath.Join(p.cfg.StateDir, "hosts") }
func (p *Pod) sidecarConfigPath() string { return filepath.Join(p.cfg.StateDir, "sidecar.yaml") }

// Remove deletes the pod's cgroup and network and closes its logs. Call it after Run has
// returned. A second Remove does nothing.
func (p *Pod) Remove(ctx context.Context) error {
	p.mu.Lock()
	cg := p.cg
	p.cg = nil
	already := p.st.status() == Removed
	p.mu.Unlock()
	if already {
		return nil
	}
	var errs []error
	if cg != nil {
		if err := cg.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := netns.Remove(p.cfg.Net); err != nil {
		errs = append(errs, err)
	}
	for _, l := range []*logs.File{p.logApp, p.logSidecar, p.logInit} {
		if l != nil {
			l.Close()
		}
	}
	_ = p.to(Removed)
	return errors.Join(errs...)
}

// run is one lifetime of a pod's processes.
type run struct {
	init    *initproc.Init
	sidecar *initproc.Proc
	app     *initproc.Proc
	ooms    uint64 // the cgroup's OOM kill count when the run began
}

// start brings up init, the sidecar (and waits for it to be ready) and the app.
func (p *Pod) start(ctx context.Context) (_ *run, err error) {
	r := &run{}
	defer func() {
		if err != nil {
			p.stopRun(r)
		}
	}()
	if st, err := p.cg.Stats(); err == nil {
		r.ooms = st.OOMKills
	}
	t0 := time.Now()
	var tInit, tSidecar, tReady time.Duration
	initW, initDone, err := p.logInit.Capture("stderr")
	if err != nil {
		return r, err
	}
	_ = initDone
	var mounts []initproc.Mount
	for _, v := range p.cfg.Service.Volumes {
		mounts = append(mounts, initproc.Mount{Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly})
	}
	r.init, err = initproc.Start(ctx, initproc.Config{
		Exe:   p.cfg.Exe,
		NetNS: p.cfg.Net.Pin,
		Setup: initproc.Setup{
			Hostname: p.name,
			Hosts:    p.hostsPath(),
			Mounts:   mounts,
			Keep:     p.keep(),
			Detach:   []string{netns.PinDir},
		},
		Place: func(pid int) error { return p.cg.Add("init", pid) },
		Log:   initW,
	})
	initW.Close()
	if err != nil {
		return r, err
	}
	p.update(func() { p.initPid = r.init.Pid() })
	tInit = time.Since(t0)

	if HasSidecar(p.cfg.Service) {
		var ready *os.File
		if r.sidecar, ready, err = p.spawnSidecar(ctx, r.init); err != nil {
			return r, err
		}
		tSidecar = time.Since(t0)
		if err := p.waitReady(ctx, r.sidecar, ready); err != nil {
			return r, err
		}
		tReady = time.Since(t0)
	}
	spec, err := p.appSpec("app", p.cfg.Service.Command)
	if err != nil {
		return r, err
	}
	if r.app, err = p.spawn(ctx, r.init, spec, nil, p.logApp, "app"); err != nil {
		return r, err
	}
	p.update(func() { p.pid = r.app.Pid })
	p.logApp.Notef("started pid %d in pod %s (%s) in %v: init %v, sidecar exec %v, sidecar ready %v, app exec %v",
		r.app.Pid, p.name, p.cfg.Net.Addr.Addr(), time.Since(t0).Round(time.Microsecond), tInit.Round(time.Microsecond),
		tSidecar.Round(time.Microsecond), tReady.Round(time.Microsecond), time.Since(t0).Round(time.Microsecond))
	return r, nil
}

// keep lists the host directories and files the pod must see even if they live under /tmp.
func (p *Pod) keep() []string {
	dirs := []string{p.cfg.Dir, p.cfg.StateDir}
	if p.cfg.SidecarBin != "" {
		dirs = append(dirs, filepath.Dir(p.cfg.SidecarBin))
	}
	if w := p.cfg.Service.WorkingDir; w != "" {
		dirs = append(dirs, w)
	}
	if c := firstAbs(p.cfg.Service.Command); c != "" {
		dirs = append(dirs, filepath.Dir(c))
	}
	// A program reached through a symlink needs its target too.
	for _, bin := range []string{p.cfg.SidecarBin, firstAbs(p.cfg.Service.Command)} {
		if bin == "" {
			continue
		}
		if real, err := filepath.EvalSymlinks(bin); err == nil && real != bin {
			dirs = append(dirs, real)
		}
	}
	var out []string
	seen := map[string]bool{}
	for _, d := range dirs {
		if d != "" && filepath.IsAbs(d) && !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}

func firstAbs(argv []string) string {
	if len(argv) > 0 && filepath.IsAbs(argv[0]) {
		return argv[0]
	}
	return ""
}

// appSpec is a program of the app's: the app itself or its healthcheck.
func (p *Pod) appSpec(name string, argv []string) (initproc.Spec, error) {
	svc := p.cfg.Service
	env := append([]string(nil), svc.Environment...)
	if !hasEnv(env, "PATH") {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if !hasEnv(env, "HOSTNAME") {
		env = append(env, "HOSTNAME="+p.name)
	}
	dir := svc.WorkingDir
	if dir == "" {
		dir = p.cfg.Dir
	}
	u, err := ResolveUser(svc.User)
	if err != nil {
		return initproc.Spec{}, fmt.Errorf("pod %s: user: %w", p.name, err)
	}
	return initproc.Spec{Name: name, Argv: argv, Env: env, Dir: dir, User: u}, nil
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

// spawnSidecar starts the sidecar as SidecarUID, its configuration file as its stdin and
// the write end of a pipe as its fd 3 (-ready-fd 3). It returns the read end, on which the
// sidecar says READY=1 once ready: waitReady reads it.
func (p *Pod) spawnSidecar(ctx context.Context, in *initproc.Init) (*initproc.Proc, *os.File, error) {
	conf, err := os.Open(p.sidecarConfigPath())
	if err != nil {
		return nil, nil, fmt.Errorf("pod %s: sidecar config: %w", p.name, err)
	}
	defer conf.Close()
	ready, notify, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("pod %s: sidecar readiness pipe: %w", p.name, err)
	}
	// Only the sidecar keeps a write end: its exit (or its close) ends the reader's wait.
	defer notify.Close()
	spec := initproc.Spec{
		Name:   "sidecar",
		Argv:   []string{p.cfg.SidecarBin, "-config", "/dev/stdin", "-ready-fd", "3"},
		Env:    []string{"PATH=" + os.Getenv("PATH"), "HOSTNAME=" + p.name},
		Dir:    "/",
		User:   SidecarUser(),
		Notify: true,
	}
	proc, err := p.spawnFiles(ctx, in, spec, initproc.Files{Stdin: conf, Notify: notify}, p.logSidecar, "sidecar")
	if err != nil {
		ready.Close()
		return nil, nil, err
	}
	return proc, ready, nil
}

// spawn starts a long-lived program with its output captured into l and stdin (nil:
// /dev/null) as its input.
func (p *Pod) spawn(ctx context.Context, in *initproc.Init, spec initproc.Spec, stdin *os.File, l *logs.File, child string) (*initproc.Proc, error) {
	return p.spawnFiles(ctx, in, spec, initproc.Files{Stdin: stdin}, l, child)
}

// spawnFiles is spawn with more descriptors: Stdout and Stderr of files are replaced by l's.
func (p *Pod) spawnFiles(ctx context.Context, in *initproc.Init, spec initproc.Spec, files initproc.Files, l *logs.File, child string) (*initproc.Proc, error) {
	out, _, err := l.Capture("stdout")
	if err != nil {
		return nil, err
	}
	defer out.Close()
	errw, _, err := l.Capture("stderr")
	if err != nil {
		return nil, err
	}
	defer errw.Close()
	files.Stdout, files.Stderr = out, errw
	return in.SpawnFiles(ctx, spec, files, func(pid int) error { return p.cg.Add(child, pid) })
}

// adminClient is an HTTP client for the sidecar's admin listener: its connections start
// inside the pod's network namespace, from sockets of the sidecar's user, which the pod's
// firewall lets through to it (an app's are refused).
func (p *Pod) adminClient(timeout time.Duration) *http.Client {
	pin := p.cfg.Net.Pin
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return netns.DialAs(ctx, pin, SidecarUID, network, addr)
			},
			DisableKeepAlives: true,
		},
	}
}

// waitReady waits for the sidecar to say READY=1 on its readiness pipe (see spawnSidecar),
// and closes the pipe. Nothing polls: the sidecar writes once its listeners, certificates,
// intentions and first discovery answers are in, which is when its /ready turns 200.
func (p *Pod) waitReady(ctx context.Context, sidecar *initproc.Proc, ready *os.File) error {
	defer ready.Close()
	got := make(chan error, 1)
	go func() { got <- ReadReady(ready) }()
	timer := time.NewTimer(p.cfg.ReadyTimeout)
	defer timer.Stop()
	select {
	case err := <-got:
		if err == nil {
			return nil
		}
		// A sidecar that closed its pipe on its way out: say how it ended.
		if waitDone(sidecar.Done(), time.Second) {
			return fmt.Errorf("pod %s: sidecar %s before it was ready", p.name, sidecar.Exit())
		}
		return fmt.Errorf("pod %s: sidecar not ready: %w", p.name, err)
	case <-timer.C:
		return fmt.Errorf("pod %s: sidecar not ready after %v: %s", p.name, p.cfg.ReadyTimeout, p.readyStatus())
	case <-ctx.Done():
		return fmt.Errorf("pod %s: waiting for the sidecar to be ready: %w", p.name, ctx.Err())
	case <-sidecar.Done():
		return fmt.Errorf("pod %s: sidecar %s before it was ready", p.name, sidecar.Exit())
	}
}

// ReadReady reads a sidecar's readiness pipe (its -ready-fd): nil once it said READY=1, an
// error when it said something else or closed the pipe first (it stopped, or failed).
func ReadReady(r io.Reader) error {
	line, err := bufio.NewReader(io.LimitReader(r, 256)).ReadString('\n')
	switch {
	case line == "READY=1\n":
		return nil
	case err == nil:
		return fmt.Errorf("it said %q on its readiness pipe", line)
	default:
		return errors.New("it closed its readiness pipe without saying it was ready")
	}
}

// readyStatus asks the sidecar's /ready once why it is not ready, for an error message.
func (p *Pod) readyStatus() string {
	resp, err := p.adminClient(time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d/ready", AdminPort))
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return fmt.Sprintf("/ready %s: %s", resp.Status, strings.TrimSpace(string(b)))
}

// supervise watches a run until it fails or ctx ends: process exits, health checks,
// registration and its TTL.
func (p *Pod) supervise(ctx context.Context, r *run) (failed bool, why string) {
	p.update(func() { p.health = HealthStarting })
	hc := newChecker(p, r)
	defer hc.stop()
	ttl := time.NewTicker(p.cfg.TTL / 3)
	defer ttl.Stop()
	registered := false
	var sidecarDone <-chan struct{}
	if r.sidecar != nil {
		sidecarDone = r.sidecar.Done()
	}
	// A sidecar that exits is restarted on its own while the app keeps running (its
	// outbound calls fail meanwhile, inbound ones are refused): sr is the restart under way.
	sr := &sidecarRestarter{p: p, r: r, waiter: backoff.Waiter{Min: sidecarRestartMin, Max: sidecarRestartMax, Factor: 2}}
	defer sr.cancel()
	sidecarUp, sidecarSince := true, time.Now()
	status := func() (string, string) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if !sidecarUp {
			return "critical", "sidecar restarting"
		}
		if p.health == HealthHealthy {
			return "passing", "healthy"
		}
		return "critical", p.health
	}
	for {
		select {
		case <-ctx.Done():
			return false, "stopped"
		case res := <-sr.results:
			if res.err != nil {
				p.logSidecar.Notef("restart: %v", res.err)
				sr.start(ctx)
				continue
			}
			r.sidecar, sidecarDone = res.proc, res.proc.Done()
			sidecarUp, sidecarSince = true, time.Now()
			p.logSidecar.Notef("restarted, pid %d, ready", res.proc.Pid)
			if registered {
				s, out := status()
				_ = p.cfg.Registry.SetHealth(ctx, p.name, s, out)
			}
		case <-r.app.Done():
			e := r.app.Exit()
			if p.oomKilled(r, e) {
				return true, "app OOMKilled"
			}
			return !e.OK(), "app " + e.String()
		case <-sidecarDone:
			why := "sidecar " + r.sidecar.Exit().String()
			if p.oomKilled(r, r.sidecar.Exit()) {
				why = "sidecar OOMKilled"
			}
			sidecarDone, sidecarUp = nil, false
			if time.Since(sidecarSince) >= sidecarStable {
				sr.waiter.Reset()
			}
			p.logSidecar.Notef("%s; restarting it alone, the app keeps running", why)
			p.cfg.Logf("pod %s: %s; restarting the sidecar", p.name, why)
			if registered {
				_ = p.cfg.Registry.SetHealth(ctx, p.name, "critical", why)
			}
			sr.start(ctx)
		case <-r.init.Done():
			return true, "init exited"
		case res := <-hc.results:
			if res.healthy {
				first := p.Info().Health != HealthHealthy
				p.update(func() { p.health = HealthHealthy })
				if first {
					p.logApp.Notef("healthy")
				}
				if !registered && p.Meshed() && p.cfg.Registry != nil {
					registered = p.register(ctx)
				}
			} else if res.unhealthy {
				p.update(func() { p.health = HealthUnhealthy })
				p.logApp.Notef("unhealthy: %s", res.output)
				if registered {
					_ = p.cfg.Registry.SetHealth(ctx, p.name, "critical", res.output)
				}
				return true, "app unhealthy: " + res.output
			}
		case <-ttl.C:
			p.noteOOMs(r)
			if registered {
				s, out := status()
				if err := p.cfg.Registry.SetHealth(ctx, p.name, s, out); err != nil {
					p.cfg.Logf("pod %s: update TTL: %v", p.name, err)
					if errors.Is(err, ErrNotRegistered) && s == "passing" {
						// A registry restarted without the instance: register again.
						registered = p.register(ctx)
					}
				}
			}
		}
	}
}

// Sidecar restarts (supervise): the first after sidecarRestartMin, doubling up to
// sidecarRestartMax while it keeps exiting, and back to the first once a sidecar has run
// for sidecarStable.
const (
	sidecarRestartMin = 100 * time.Millisecond
	sidecarRestartMax = 10 * time.Second
	sidecarStable     = 10 * time.Second
)

// sidecarRestarter restarts a run's sidecar in the background: after the backoff, spawn
// it through init and wait until it is ready. One restart at a time.
type sidecarRestarter struct {
	p       *Pod
	r       *run
	waiter  backoff.Waiter
	results chan sidecarResult
	stop    context.CancelFunc
	done    chan struct{}
}

type sidecarResult struct {
	proc *initproc.Proc
	err  error
}

func (sr *sidecarRestarter) start(ctx context.Context) {
	sr.cancel()
	ctx, sr.stop = context.WithCancel(ctx)
	sr.results, sr.done = make(chan sidecarResult, 1), make(chan struct{})
	wait := sr.waiter.Next()
	go func() {
		defer close(sr.done)
		if !sleep(ctx, sr.p.cfg.Clock, wait) {
			return
		}
		proc, ready, err := sr.p.spawnSidecar(ctx, sr.r.init)
		if err == nil {
			if err = sr.p.waitReady(ctx, proc, ready); err != nil {
				_ = sr.r.init.Signal("sidecar", syscall.SIGKILL)
				<-proc.Done()
			}
		}
		if ctx.Err() != nil && err == nil {
			// supervise is gone: hand the sidecar to stopRun through the run.
			sr.r.sidecar = proc
			return
		}
		sr.results <- sidecarResult{proc: proc, err: err}
	}()
}

// cancel ends a restart under way and waits for it; a sidecar it had already started is
// left in the run for stopRun.
func (sr *sidecarRestarter) cancel() {
	if sr.stop == nil {
		return
	}
	sr.stop()
	<-sr.done
	select {
	case res := <-sr.results:
		if res.err == nil {
			sr.r.sidecar = res.proc
		}
	default:
	}
	sr.stop = nil
}

// noteOOMs counts the OOM kills in the pod that ended neither the app nor the sidecar (a
// worker the app forked, a health check): they are recorded, and move the run's baseline,
// so a later SIGKILL of the app by anyone else is not taken for an OOM kill.
func (p *Pod) noteOOMs(r *run) {
	st, err := p.cg.Stats()
	if err != nil || st.OOMKills <= r.ooms {
		return
	}
	// The app or the sidecar may be the one killed, its exit not yet reported by init:
	// then its exit tells (oomKilled).
	var sidecarDone <-chan struct{}
	if r.sidecar != nil {
		sidecarDone = r.sidecar.Done()
	}
	t := time.NewTimer(200 * time.Millisecond)
	defer t.Stop()
	select {
	case <-r.app.Done():
		return
	case <-sidecarDone:
		return
	case <-t.C:
	}
	n := st.OOMKills - r.ooms
	r.ooms = st.OOMKills
	p.update(func() { p.ooms += int(n) })
	p.logApp.Notef("OOM killer: %d process(es) of the pod killed (memory limit %d bytes); the app goes on", n, p.cfg.Service.Limits.MemoryBytes)
}

// oomKilled reports (and records) whether a SIGKILLed process of the run was the kernel's
// OOM killer's work: the pod cgroup's OOM kill counter grew during the run.
func (p *Pod) oomKilled(r *run, e initproc.Exit) bool {
	if e.Signal != syscall.SIGKILL {
		return false
	}
	st, err := p.cg.Stats()
	if err != nil || st.OOMKills <= r.ooms {
		return false
	}
	r.ooms = st.OOMKills
	p.update(func() { p.ooms++ })
	p.logApp.Notef("OOM-killed: the pod exceeded its memory limit of %d bytes", p.cfg.Service.Limits.MemoryBytes)
	return true
}

func (p *Pod) register(ctx context.Context) bool {
	svc := p.cfg.Service
	meta := map[string]string{}
	for k, v := range svc.Mesh.Meta {
		meta[k] = v
	}
	proto := svc.Mesh.Protocol
	if proto == "" {
		proto = "http"
	}
	meta["protocol"] = proto
	meta["metrics_port"] = strconv.Itoa(MetricsPort)
	meta["pod"] = p.name
	reg := Registration{
		ID:      p.name,
		Name:    svc.Name,
		Address: p.cfg.Net.Addr.Addr().String(),
		Port:    InboundPort,
		Tags:    svc.Mesh.Tags,
		Meta:    meta,
		TTL:     p.cfg.TTL,
	}
	if err := p.cfg.Registry.Register(ctx, reg); err != nil {
		p.cfg.Logf("pod %s: register: %v", p.name, err)
		return false
	}
	p.logApp.Notef("registered %s at %s:%d", p.name, reg.Address, reg.Port)
	return true
}

// stopRun ends a run in order: deregister, drain the sidecar, stop the app (stop_signal,
// stop_grace_period, SIGKILL of the app cgroup), stop the sidecar, end init and anything
// left in the pod cgroup.
func (p *Pod) stopRun(r *run) {
	// A stop must finish even when the caller's context is already cancelled.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(context.TODO()), 2*time.Minute)
	defer cancel()
	if p.Meshed() && p.cfg.Registry != nil {
		if err := p.cfg.Registry.Deregister(ctx, p.name); err != nil {
			p.cfg.Logf("pod %s: deregister: %v", p.name, err)
		}
	}
	grace := p.cfg.Service.StopGracePeriod
	if r.sidecar != nil && r.app != nil && !closed(r.sidecar.Done()) {
		p.drain(ctx, grace)
	}
	if r.app != nil && !closed(r.app.Done()) {
		sig := p.cfg.Service.StopSignal
		if sig == 0 {
			sig = syscall.SIGTERM
		}
		_ = r.init.Signal("app", sig)
		if !waitDone(r.app.Done(), grace) {
			p.logApp.Notef("still running %v after %v; killing the app cgroup", sig, grace)
			if err := p.cg.Kill(ctx, "app"); err != nil {
				p.cfg.Logf("pod %s: kill app: %v", p.name, err)
			}
		}
		p.logApp.Notef("app %s", r.app.Exit())
	}
	if r.sidecar != nil && !closed(r.sidecar.Done()) {
		_ = r.init.Signal("sidecar", syscall.SIGTERM)
		if !waitDone(r.sidecar.Done(), p.cfg.SidecarGrace) {
			_ = p.cg.Kill(ctx, "sidecar")
		}
	}
	if r.init != nil {
		_ = r.init.Close(5 * time.Second)
	}
	if err := p.cg.Kill(ctx, ""); err != nil {
		p.cfg.Logf("pod %s: kill pod cgroup: %v", p.name, err)
	}
	p.update(func() { p.initPid = 0 })
}

// drain asks the sidecar to stop taking inbound requests and waits until its in-flight
// inbound requests are done (its answer), for at most grace.
func (p *Pod) drain(ctx context.Context, grace time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/drain", AdminPort), nil)
	resp, err := p.adminClient(grace).Do(req)
	if err != nil {
		p.logSidecar.Notef("drain: %v", err)
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		p.logSidecar.Notef("drain: %s", resp.Status)
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func waitDone(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}
