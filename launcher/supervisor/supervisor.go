// Package supervisor runs a Compose project as pods: `launcher up` (foreground or detached),
// `ps`, `logs` and `down`, and the crash recovery that lets `up` and `down` remove what a
// killed launcher left behind.
//
// One launcher process supervises one project. It holds an exclusive flock on
// <StateDir>/<project>/lock for as long as it runs (the kernel drops it when the process
// dies, however it dies), serves `ps` and `down` on <StateDir>/<project>/control.sock, and
// records in state.json every host object before it creates it: the bridge, the pod
// network namespaces and veths, the cgroup directory, the registry process, the ingress.
//
// The registry is cmd/registry, found beside the launcher binary (-registry-bin), started
// with -http ADDR -data DIR unless -registry names one already running (a Consul agent
// works). Services with x-podmesh.expose are reached from the host through the project's
// ingress, a sidecar in the host's network namespace (ingress.go).
//
// The launcher serves the metrics of docs/metrics.md's launcher table, read from each pod's
// cgroup files and state, on Config.MetricsAddr and registers itself there as
// podmesh-launcher (metrics.go); with a trace endpoint, the sidecars send their spans to it
// through a relay on the bridge's gateway, like the registry relay.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/logs"
	"github.com/podmesh/podmesh/launcher/netns"
	"github.com/podmesh/podmesh/launcher/pod"
	"golang.org/x/sys/unix"
)

// Defaults of a zero Config.
const (
	DefaultStateDir  = "/run/podmesh"
	DefaultLogDir    = "/var/log/podmesh"
	DefaultRelayPort = 8500
	DefaultTracePort = 4318 // OTLP/HTTP's own port, on the bridge's gateway address
)

// ErrRunning is returned by Up when a launcher already runs the project.
var ErrRunning = errors.New("supervisor: a launcher is already running this project")

// Config configures a launcher. The zero value means defaults.
type Config struct {
	StateDir    string // runtime state: pid lock, control socket, state.json, pod files
	LogDir      string // <LogDir>/<project>/<service>-<n>/{app,sidecar,init}.log
	LogPolicy   logs.Policy
	Exe         string // the launcher binary, re-executed as each pod's init; "" = /proc/self/exe
	SidecarBin  string // required for meshed services
	RegistryBin string // started when no registry URL is given (cmd/registry)
	// RegistryArgs builds the registry's arguments; default DefaultRegistryArgs, which suit
	// cmd/registry: -http ADDR -data DIR.
	RegistryArgs func(addr, dataDir string) []string
	RegistryURL  string // use this registry (a Consul agent works) instead of starting one
	RelayPort    int    // pods reach the registry at http://<gateway>:RelayPort
	// MetricsAddr is where the launcher serves its metrics (metrics.go), host:port, the host
	// GatewayHost standing for the bridge's gateway address; "" = none (the zero Config; the
	// command line's default is DefaultMetricsAddr). The launcher registers itself there.
	MetricsAddr string
	// TraceEndpoint is the trace collector (OTLP/HTTP: host:port or http://host:port) the
	// sidecars send spans to; "" = the compose file's x-podmesh.trace_endpoint, if any.
	// Pods reach it through a relay at http://<gateway>:TracePort.
	TraceEndpoint string
	TracePort     int
	Cgroups       CgroupSystem
	TTL           time.Duration // registry TTL checks; default 10s
	Logf          func(format string, args ...any)
}

func (c *Config) withDefaults() {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.LogDir == "" {
		c.LogDir = DefaultLogDir
	}
	if c.RelayPort == 0 {
		c.RelayPort = DefaultRelayPort
	}
	if c.TracePort == 0 {
		c.TracePort = DefaultTracePort
	}
	if c.RegistryArgs == nil {
		c.RegistryArgs = DefaultRegistryArgs
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// DefaultRegistryArgs are cmd/registry's arguments to serve the Consul HTTP API on addr
// with its durable state in dataDir.
func DefaultRegistryArgs(addr, dataDir string) []string {
	return []string{"-http", addr, "-data", dataDir}
}

// CgroupSystem hands out the cgroups of one project.
type CgroupSystem interface {
	// Project opens the project's pod cgroups: under dirs when given (ProjectCgroups.Dirs
	// of an earlier launcher, recorded in its state), else under this process's cgroup.
	Project(name string, dirs []string) (ProjectCgroups, error)
}

// ProjectCgroups are the pod cgroups of one project.
type ProjectCgroups interface {
	pod.Cgroups
	// Cleanup kills the processes of every pod cgroup of the project and removes them.
	Cleanup(ctx context.Context) error
	// Dirs are the absolute directories holding the project's pods, one per hierarchy.
	Dirs() []string
	Close() error
}

// CgroupName is the directory, under the launcher's own cgroup, holding a project's pods.
func CgroupName(project string) string { return netns.Prefix + "-" + project }

func projectDir(cfg Config, project string) string { return filepath.Join(cfg.StateDir, project) }

// Supervisor is one running project.
type Supervisor struct {
	cfg     Config
	project *compose.Project
	dir     string
	state   *stateFile
	cg      ProjectCgroups

	bridgeLock   *os.File      // netns.LockBridge, held until teardown ends
	registry     *registryProc // guarded by mu: superviseRegistry replaces it
	regWatch     chan struct{} // closed when superviseRegistry has returned
	stopRegWatch context.CancelFunc
	relay        *relay
	relayAddr    netip.AddrPort // where pods reach the relay; invalid without a registry
	regClient    pod.Registry
	registryURL  string // as pods see it
	hostReg      string // as the host sees it (the ingress)

	traceRelay *relay         // nil: no tracing
	traceAddr  netip.AddrPort // where pods reach traceRelay
	traceURL   string         // as sidecars are given it
	traceHost  string         // the collector as the host reaches it (the ingress)
	metrics    *metricsServer // nil: no metrics
	registered bool           // the launcher's own instance (LauncherID) is; guarded by mu
	selfAt     netip.AddrPort // where it is registered; guarded by mu

	ingress     *ingress // nil: nothing exposed
	stopIngress context.CancelFunc

	mu       sync.Mutex
	stopping bool // set by teardown: no pod is launched after it
	services []*service
	samples  map[string]cpuSample

	stop context.CancelFunc
}

type service struct {
	wg     sync.WaitGroup // pods whose Run was launched
	svc    *compose.Service
	pods   []*pod.Pod
	cancel context.CancelFunc
	ctx    context.Context
}

type cpuSample struct {
	cpu time.Duration
	at  time.Time
}

// Up runs project until ctx ends or `launcher down` asks it to stop, then stops every
// service in reverse dependency order and removes what it created. ready is called once
// every service has been started (nil) or the start failed (the error); it may be nil.
func Up(ctx context.Context, cfg Config, project *compose.Project, ready func(error)) (err error) {
	cfg.withDefaults()
	if ready == nil {
		ready = func(error) {}
	}
	// Every sidecar configuration the file leads to must load in the sidecar: checked
	// before anything is created, so a bad policy value starts nothing.
	if err := pod.CheckSidecars(project); err != nil {
		ready(err)
		return err
	}
	if err := pod.CheckUsers(project); err != nil {
		ready(err)
		return err
	}
	dir := projectDir(cfg, project.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		ready(err)
		return fmt.Errorf("supervisor: state dir: %w", err)
	}
	lock, err := lockProject(dir)
	if err != nil {
		ready(err)
		return err
	}
	defer lock.Close()
	// A state file without a live launcher is a killed launcher's: remove what it left.
	if st, err := readState(filepath.Join(dir, "state.json")); err == nil {
		cfg.Logf("removing what the last launcher of %s (pid %d) left behind", project.Name, st.Pid)
		if err := cleanup(ctx, cfg, st); err != nil {
			ready(err)
			return err
		}
	}
	s := &Supervisor{cfg: cfg, project: project, dir: dir, samples: map[string]cpuSample{}}
	ctx, s.stop = context.WithCancel(ctx)
	defer s.stop()
	// The control socket outlives the teardown, so `ps` shows pods stopping.
	srv, err := s.serveControl()
	if err != nil {
		ready(err)
		return err
	}
	defer srv.Close()
	defer func() {
		if terr := s.teardown(); terr != nil {
			err = errors.Join(err, terr)
		}
	}()
	if err := s.start(ctx); err != nil {
		ready(err)
		return err
	}
	if err := s.startObservability(ctx); err != nil {
		ready(err)
		return err
	}
	go s.sample(ctx)
	if err := s.startServices(ctx); err != nil {
		ready(err)
		return err
	}
	if err := s.startIngress(ctx); err != nil {
		ready(err)
		return err
	}
	s.waitStarted(ctx, startedWait)
	ready(nil)
	<-ctx.Done()
	cfg.Logf("stopping %s", project.Name)
	return nil
}

// startedWait bounds how long `up` waits, before it reports the project started, for every
// pod to have been through its first start (a dependency never healthy must not hold it).
const startedWait = 60 * time.Second

// waitStarted waits until every pod has been through its first start (running, exited or
// backing off after a failed start), at most d.
func (s *Supervisor) waitStarted(ctx context.Context, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	s.mu.Lock()
	services := s.services
	s.mu.Unlock()
	var waiting []string
	for _, sv := range services {
		for _, p := range sv.pods {
			err := p.WaitFor(ctx, func(i pod.Info) bool { return i.Status != pod.Created && i.Status != pod.Starting })
			if err != nil {
				waiting = append(waiting, p.Name())
			}
		}
	}
	if len(waiting) > 0 && ctx.Err() != nil && !errors.Is(ctx.Err(), context.Canceled) {
		s.cfg.Logf("still starting after %v: %s", d, strings.Join(waiting, ", "))
	}
}

// start records the state and creates the shared pieces: bridge, cgroup, registry, relay.
func (s *Supervisor) start(ctx context.Context) error {
	p := s.project
	network := netns.Network{Bridge: p.Mesh.Bridge, Subnet: p.Mesh.Subnet}
	if network.Bridge == "" {
		network.Bridge = netns.Prefix + "0"
	}
	if !network.Subnet.IsValid() {
		network.Subnet = netip.MustParsePrefix("10.89.0.0/16")
	}
	if err := network.Validate(); err != nil {
		return err
	}
	s.state = &stateFile{path: filepath.Join(s.dir, "state.json"), st: State{
		Project: p.Name, Pid: os.Getpid(), Started: time.Now(), Network: network, Cgroup: CgroupName(p.Name),
	}}
	// One launcher per bridge, for as long as it runs (teardown releases it last).
	lock, err := netns.LockBridge(network.Bridge, p.Name)
	if err != nil {
		return err
	}
	s.bridgeLock = lock
	// Record what EnsureBridge is about to create before it does: a crash in between must
	// not leave it unrecorded. The real outcome replaces this right after.
	intent, err := netns.BridgeIntent(network)
	if err != nil {
		return err
	}
	if err := s.state.update(func(st *State) { st.Bridge = intent }); err != nil {
		return err
	}
	bst, err := netns.EnsureBridge(network)
	if uerr := s.state.update(func(st *State) { st.Bridge = bst }); uerr != nil && err == nil {
		err = uerr
	}
	if err != nil {
		return err
	}
	if s.cfg.Cgroups == nil {
		return errors.New("supervisor: no cgroup system configured")
	}
	if s.cg, err = s.cfg.Cgroups.Project(CgroupName(p.Name), nil); err != nil {
		return fmt.Errorf("supervisor: cgroups: %w", err)
	}
	// Where they are, absolutely, before any is created: a `down` run from another cgroup
	// than this launcher's finds them there.
	if err := s.state.update(func(st *State) { st.CgroupDirs = s.cg.Dirs() }); err != nil {
		return err
	}
	regURL := s.cfg.RegistryURL
	if regURL == "" {
		regURL = p.Mesh.Registry
	}
	if regURL == "" && s.needsRegistry() {
		if s.cfg.RegistryBin == "" {
			return errors.New("supervisor: meshed services need a registry: give -registry URL or a registry binary")
		}
		if _, err := os.Stat(s.cfg.RegistryBin); err != nil {
			return fmt.Errorf("supervisor: meshed services need a registry: no registry program (%w); build it (make build) or give -registry-bin PATH or -registry URL", err)
		}
		reg, err := startRegistry(ctx, s.cfg, s.dir, s.state, p.Mesh.DefaultPolicy, "")
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.registry = reg
		s.mu.Unlock()
		regURL = "http://" + reg.addr
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx)) // teardown ends it
		s.regWatch = make(chan struct{})
		s.stopRegWatch = cancel
		go func() {
			defer close(s.regWatch)
			s.superviseRegistry(wctx, p.Mesh.DefaultPolicy)
		}()
	}
	if regURL != "" {
		s.hostReg = regURL
		if err := s.state.update(func(st *State) { st.RegistryURL = regURL }); err != nil {
			return err
		}
		target, err := hostPort(regURL)
		if err != nil {
			return err
		}
		gw := netip.AddrPortFrom(network.Gateway(), uint16(s.cfg.RelayPort))
		if s.relay, err = startRelay(gw.String(), target); err != nil {
			return err
		}
		s.relayAddr = gw
		s.registryURL = "http://" + gw.String()
		if s.regClient, err = pod.NewConsulRegistry(regURL); err != nil {
			return err
		}
		// The declared edges are allowed before any sidecar asks; under default_policy
		// deny they are the only calls that are.
		if err := s.allowEdges(ctx, regURL); err != nil {
			if p.Mesh.DefaultPolicy == compose.PolicyDeny {
				return err
			}
			s.cfg.Logf("%v (default policy allow: the call is allowed anyway)", err)
		}
	}
	return nil
}

func (s *Supervisor) needsRegistry() bool {
	for i := range s.project.Services {
		svc := &s.project.Services[i]
		if pod.HasSidecar(svc) && svc.Replicas > 0 {
			return true
		}
	}
	return false
}

// startServices plans every pod (addresses, names) into the state, then starts each
// service once its dependencies meet their conditions.
func (s *Supervisor) startServices(ctx context.Context) error {
	st := s.state.get()
	used := map[netip.Addr]bool{}
	var planned []netns.Pod
	var instances []string
	s.mu.Lock()
	for i := range s.project.Services {
		svc := &s.project.Services[i]
		// Not cancelled with ctx: teardown cancels the services one by one, in reverse
		// dependency order.
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		sv := &service{svc: svc, ctx: sctx, cancel: cancel}
		for r := 1; r <= svc.Replicas; r++ {
			addr, err := netns.Allocate(st.Network.Subnet, used)
			if err != nil {
				s.mu.Unlock()
				return err
			}
			used[addr] = true
			np := netns.Plan(netns.PinName(s.project.Name, svc.Name, r), addr, st.Network)
			if svc.Mesh.Port > 0 {
				np.Open = []uint16{pod.InboundPort, pod.MetricsPort}
			}
			// The relays and the sidecar's admin listener: for the sidecar only.
			np.Guard = pod.Guards(s.relayAddr, s.traceAddr, s.metricsGuard())
			planned = append(planned, np)
			name := fmt.Sprintf("%s-%d", svc.Name, r)
			if svc.Mesh.Port > 0 {
				instances = append(instances, name)
			}
			sv.pods = append(sv.pods, pod.New(pod.Config{
				Project:     s.project.Name,
				Service:     svc,
				Dir:         s.project.Dir,
				Replica:     r,
				Network:     st.Network,
				Net:         np,
				StateDir:    filepath.Join(s.dir, "pods", name),
				LogDir:      filepath.Join(s.cfg.LogDir, s.project.Name, name),
				LogPolicy:   s.cfg.LogPolicy,
				Exe:         s.cfg.Exe,
				SidecarBin:  s.cfg.SidecarBin,
				RegistryURL: s.registryURL,
				TraceURL:    s.traceURL,
				Cgroups:     s.cg,
				Registry:    s.regClient,
				TTL:         s.cfg.TTL,
				Logf:        s.cfg.Logf,
			}))
		}
		s.services = append(s.services, sv)
	}
	services := s.services
	s.mu.Unlock()
	if err := s.state.update(func(st *State) { st.Pods, st.Instances = planned, instances }); err != nil {
		return err
	}
	for _, sv := range services {
		if pod.HasSidecar(sv.svc) && s.cfg.SidecarBin == "" && len(sv.pods) > 0 {
			return fmt.Errorf("supervisor: service %s has a sidecar but no sidecar binary is configured", sv.svc.Name)
		}
	}
	for _, sv := range services {
		go s.runService(sv)
	}
	return nil
}

// startIngress starts the ingress sidecar when the project exposes a service; it runs
// until teardown stops it, before the services.
func (s *Supervisor) startIngress(ctx context.Context) error {
	in, err := newIngress(s.cfg, s.project, s.dir, s.cg, s.state, s.hostReg, s.traceHost)
	if err != nil || in == nil {
		return err
	}
	ictx, cancel := context.WithCancel(context.WithoutCancel(ctx)) // teardown stops it first
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		cancel()
		return nil
	}
	s.ingress, s.stopIngress = in, cancel
	s.mu.Unlock()
	go in.run(ictx)
	return nil
}

// runService waits for the service's dependencies, then runs its replicas.
func (s *Supervisor) runService(sv *service) {
	for _, dep := range sv.svc.DependsOn {
		d := s.service(dep.Service)
		if d == nil {
			continue
		}
		s.cfg.Logf("%s waits for %s (%s)", sv.svc.Name, dep.Service, dep.Condition)
		for _, p := range d.pods {
			if err := p.WaitFor(sv.ctx, conditionMet(dep.Condition)); err != nil {
				return
			}
		}
	}
	// Launch under s.mu unless teardown has begun, so teardown knows every pod it must
	// wait for.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping || sv.ctx.Err() != nil {
		return
	}
	for _, p := range sv.pods {
		sv.wg.Add(1)
		go func() {
			defer sv.wg.Done()
			if err := p.Run(sv.ctx); err != nil {
				s.cfg.Logf("pod %s: %v", p.Name(), err)
			}
		}()
	}
}

func conditionMet(condition string) func(pod.Info) bool {
	switch condition {
	case compose.ConditionHealthy:
		return func(i pod.Info) bool { return i.Status == pod.Running && i.Health == pod.HealthHealthy }
	case compose.ConditionCompleted:
		return func(i pod.Info) bool { return i.Status == pod.Exited && strings.HasSuffix(i.LastExit, "exited 0") }
	default:
		return func(i pod.Info) bool { return i.Status == pod.Running || i.Status == pod.Exited }
	}
}

func (s *Supervisor) service(name string) *service {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sv := range s.services {
		if sv.svc.Name == name {
			return sv
		}
	}
	return nil
}

// teardown stops the services in reverse dependency order, then removes the shared pieces.
func (s *Supervisor) teardown() error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(context.TODO()), 5*time.Minute)
	defer cancel()
	var errs []error
	s.mu.Lock()
	s.stopping = true
	services := s.services
	in, stopIngress := s.ingress, s.stopIngress
	s.mu.Unlock()
	// The way in from the host closes first: no new request while the services stop.
	if in != nil {
		stopIngress()
		<-in.done
		if err := in.remove(ctx); err != nil {
			errs = append(errs, err)
		}
		_ = s.state.update(func(st *State) { st.Ingress = nil })
	}
	for i := len(services) - 1; i >= 0; i-- {
		sv := services[i]
		sv.cancel()
		sv.wg.Wait()
		var wg sync.WaitGroup
		var emu sync.Mutex
		for _, p := range sv.pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p.Remove(ctx); err != nil {
					emu.Lock()
					errs = append(errs, err)
					emu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	if s.relay != nil {
		s.relay.Close()
	}
	if s.traceRelay != nil {
		s.traceRelay.Close()
	}
	s.mu.Lock()
	registered := s.registered
	s.mu.Unlock()
	if registered {
		if err := deregisterLauncher(ctx, s.hostReg, s.project.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if s.metrics != nil {
		s.metrics.close(ctx)
	}
	if s.state != nil {
		st := s.state.get()
		if err := removeIntentions(ctx, st.RegistryURL, st.Intentions); err != nil {
			errs = append(errs, err)
		} else {
			_ = s.state.update(func(st *State) { st.Intentions = nil })
		}
	}
	if s.stopRegWatch != nil {
		s.stopRegWatch()
		<-s.regWatch
	}
	s.mu.Lock()
	reg := s.registry
	s.mu.Unlock()
	if reg != nil {
		if err := reg.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.cg != nil {
		if err := s.cg.Cleanup(ctx); err != nil {
			errs = append(errs, err)
		}
		s.cg.Close()
	}
	if s.state != nil {
		st := s.state.get()
		for _, np := range st.Pods {
			if err := netns.Remove(np); err != nil {
				errs = append(errs, err)
			}
		}
		if s.bridgeLock != nil {
			if err := netns.RemoveBridge(st.Network, st.Bridge); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) == 0 {
			removeState(s.dir)
		}
	}
	if s.bridgeLock != nil {
		s.bridgeLock.Close()
	}
	return errors.Join(errs...)
}

func removeState(dir string) {
	_ = os.RemoveAll(filepath.Join(dir, "pods"))
	_ = os.RemoveAll(filepath.Join(dir, "registry"))
	_ = os.RemoveAll(filepath.Join(dir, "ingress"))
	for _, f := range []string{"state.json", "state.json.tmp", "control.sock"} {
		_ = os.Remove(filepath.Join(dir, f))
	}
}

// cleanup removes what a launcher that is no longer running left: processes (through the
// project's cgroups), cgroups, the registry it started, netns pins, veths and the bridge.
func cleanup(ctx context.Context, cfg Config, st State) error {
	var errs []error
	if cfg.Cgroups != nil && st.Cgroup != "" {
		cg, err := cfg.Cgroups.Project(st.Cgroup, st.CgroupDirs)
		if err == nil {
			err = cg.Cleanup(ctx)
			cg.Close()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("supervisor: clean up cgroups %s: %w", st.Cgroup, err))
		}
	}
	// Instances registered with a registry that outlives the launcher would otherwise stay
	// listed (critical once their TTL runs out). Best effort: the registry may be gone.
	if st.RegistryURL != "" && st.Registry == nil && len(st.Instances) > 0 {
		if reg, err := pod.NewConsulRegistry(st.RegistryURL); err == nil {
			for _, id := range st.Instances {
				dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_ = reg.Deregister(dctx, id)
				cancel()
			}
		}
	}
	// The intentions it created there, and the launcher's own instance, likewise; a
	// registry the launcher started goes with its data.
	if st.RegistryURL != "" && st.Registry == nil {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_ = deregisterLauncher(dctx, st.RegistryURL, st.Project)
		cancel()
		if err := removeIntentions(ctx, st.RegistryURL, st.Intentions); err != nil {
			errs = append(errs, err)
		}
	}
	if st.Registry != nil {
		if err := killOrphan(st.Registry.Pid, st.Registry.Exe, st.Registry.Start, 5*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if st.Ingress != nil {
		if err := killOrphan(st.Ingress.Pid, st.Ingress.Exe, st.Ingress.Start, 5*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, np := range st.Pods {
		if err := netns.Remove(np); err != nil {
			errs = append(errs, err)
		}
	}
	if st.Network.Bridge != "" {
		// Unless another launcher has taken the bridge since: then it is that one's.
		lock, err := netns.LockBridge(st.Network.Bridge, st.Project)
		switch {
		case errors.Is(err, netns.ErrBridgeBusy):
			cfg.Logf("bridge %s left in place: %v", st.Network.Bridge, err)
		case err != nil:
			errs = append(errs, err)
		default:
			if err := netns.RemoveBridge(st.Network, st.Bridge); err != nil {
				errs = append(errs, err)
			}
			lock.Close()
		}
	}
	if len(errs) == 0 {
		removeState(projectDir(cfg, st.Project))
	}
	return errors.Join(errs...)
}

// lockProject takes the project's lock, or returns ErrRunning.
func lockProject(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("supervisor: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrRunning
		}
		return nil, fmt.Errorf("supervisor: lock %s: %w", dir, err)
	}
	return f, nil
}

// Running reports whether a launcher holds the project's lock.
func Running(cfg Config, project string) bool {
	cfg.withDefaults()
	dir := projectDir(cfg, project)
	if _, err := os.Stat(dir); err != nil {
		return false
	}
	f, err := lockProject(dir)
	if err != nil {
		return errors.Is(err, ErrRunning)
	}
	f.Close()
	return false
}

// Down stops the project: through the running launcher when there is one (waiting for it
// to finish), otherwise by removing whatever a killed launcher left. A launcher that dies
// while it stops leaves its state file: Down then removes what is left itself. Down gives
// up when ctx ends (the launcher goes on stopping).
func Down(ctx context.Context, cfg Config, project string) error {
	cfg.withDefaults()
	dir := projectDir(cfg, project)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	statePath := filepath.Join(dir, "state.json")
	var running State
	asked := false
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		lock, err := lockProject(dir)
		if err == nil {
			defer lock.Close()
			if asked {
				// The launcher releases the lock when it has stopped everything, then exits.
				waitExited(ctx, running.Pid, 10*time.Second)
			}
			st, err := readState(statePath)
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			if asked {
				cfg.Logf("the launcher of %s (pid %d) ended before it had removed everything; removing the rest", project, running.Pid)
			}
			return cleanup(ctx, cfg, st)
		}
		if !errors.Is(err, ErrRunning) {
			return err
		}
		if !asked {
			running, _ = readState(statePath)
			if err := controlDo(ctx, dir, http.MethodPost, "/down", nil); err != nil {
				if ctx.Err() != nil || Running(cfg, project) {
					return err
				}
				continue // it has just ended: its lock is free
			}
			asked = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("supervisor: waiting for the launcher of %s to stop: %w", project, ctx.Err())
		case <-t.C:
		}
	}
}

// waitExited waits, at most d, until process pid has exited (gone, or a zombie its parent
// has not reaped yet), so that `down` returns once the launcher is over, not just its lock.
func waitExited(ctx context.Context, pid int, d time.Duration) {
	if pid <= 0 || pid == os.Getpid() {
		return
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && strings.HasPrefix(string(b[i:]), ") Z") {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hostPort extracts host:port from a registry URL.
func hostPort(u string) (string, error) {
	rest, ok := strings.CutPrefix(u, "http://")
	if !ok {
		return "", fmt.Errorf("supervisor: registry URL %q: want http://host:port", u)
	}
	rest, _, _ = strings.Cut(rest, "/")
	if _, _, err := net.SplitHostPort(rest); err != nil {
		return "", fmt.Errorf("supervisor: registry URL %q: %w", u, err)
	}
	return rest, nil
}
