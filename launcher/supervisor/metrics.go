package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/pod"
)

// DefaultMetricsAddr is where `launcher up` serves its metrics unless told otherwise: port
// DefaultMetricsPort of the bridge's gateway address, which is an address of the host (so
// Prometheus on the host scrapes it) and is the project's own (one launcher per bridge).
const (
	DefaultMetricsPort = 15091
	DefaultMetricsAddr = GatewayHost + ":15091"
	// GatewayHost, as the host of Config.MetricsAddr, stands for the bridge's gateway address.
	GatewayHost = "gateway"
)

// LauncherService is the registry name of every launcher's own instance (its metrics).
const LauncherService = "podmesh-launcher"

// LauncherID is the registry ID of the launcher of project.
func LauncherID(project string) string { return LauncherService + "-" + project }

// The launcher's metrics (docs/metrics.md, "Launcher"), read when scraped: from the cgroup
// files of each pod, and from the pods' state. Only the pods of this project that exist are
// listed, so a pod that is gone leaves no series.
var (
	descCPU = prometheus.NewDesc("podmesh_launcher_cpu_seconds_total",
		"CPU time used by the pod (member pod) or by its app or sidecar, from the cgroup files.",
		[]string{"service", "replica", "member"}, nil)
	descMem = prometheus.NewDesc("podmesh_launcher_memory_bytes",
		"Memory charged to the pod (member pod) or to its app or sidecar, from the cgroup files.",
		[]string{"service", "replica", "member"}, nil)
	descMemLimit = prometheus.NewDesc("podmesh_launcher_memory_limit_bytes",
		"The pod's memory limit as its cgroup says (0: unlimited).", []string{"service", "replica"}, nil)
	descCPULimit = prometheus.NewDesc("podmesh_launcher_cpu_limit_cores",
		"The pod's CPU limit as its cgroup says, in cores (0: unlimited).", []string{"service", "replica"}, nil)
	descOOM = prometheus.NewDesc("podmesh_launcher_oom_kills_total",
		"Processes of the pod the kernel's OOM killer killed (the cgroup's count).", []string{"service", "replica"}, nil)
	descRestarts = prometheus.NewDesc("podmesh_launcher_restarts_total",
		"Times the launcher restarted the pod.", []string{"service", "replica"}, nil)
	descState = prometheus.NewDesc("podmesh_launcher_pod_state",
		"1 for the pod's current state, 0 for the others.", []string{"service", "replica", "state"}, nil)
	descPods = prometheus.NewDesc("podmesh_launcher_pods",
		"Running pods of the service.", []string{"service"}, nil)
)

// PodStates are the values of podmesh_launcher_pod_state's state label.
var PodStates = []string{"starting", "running", "unhealthy", "restarting", "stopping", "exited"}

// stateLabel maps a pod's lifecycle status and health to PodStates.
func stateLabel(i pod.Info) string {
	switch i.Status {
	case pod.Created, pod.Starting:
		return "starting"
	case pod.Running:
		if i.Health == pod.HealthUnhealthy {
			return "unhealthy"
		}
		return "running"
	case pod.BackOff:
		return "restarting"
	case pod.Exited:
		return "exited"
	default:
		return "stopping"
	}
}

// metricPod is what the metrics read of a pod (*pod.Pod; a fake in tests).
type metricPod interface {
	Info() pod.Info
	Usage() (pod.Usage, error)
}

// metricService is one service of the project and its pods.
type metricService struct {
	name string
	pods []metricPod
}

// collector reads the metrics of the project's pods when scraped.
type collector struct{ services func() []metricService }

// metricServices lists the supervisor's services and pods.
func (s *Supervisor) metricServices() []metricService {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]metricService, 0, len(s.services))
	for _, sv := range s.services {
		ms := metricService{name: sv.svc.Name}
		for _, p := range sv.pods {
			ms.pods = append(ms.pods, p)
		}
		out = append(out, ms)
	}
	return out
}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCPU, descMem, descMemLimit, descCPULimit, descOOM, descRestarts, descState, descPods} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, sv := range c.services() {
		running := 0
		for _, p := range sv.pods {
			info := p.Info()
			if info.Status == pod.Removed {
				continue
			}
			if info.Status == pod.Running {
				running++
			}
			svc, rep := info.Service, strconv.Itoa(info.Replica)
			ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(info.Restarts), svc, rep)
			cur := stateLabel(info)
			for _, st := range PodStates {
				v := 0.0
				if st == cur {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, svc, rep, st)
			}
			u, err := p.Usage()
			if err != nil {
				// No cgroup yet (waiting for a dependency) or gone: nothing read, and the OOM
				// kills the pod saw itself.
				ch <- prometheus.MustNewConstMetric(descOOM, prometheus.CounterValue, float64(info.OOMKills), svc, rep)
				continue
			}
			ch <- prometheus.MustNewConstMetric(descOOM, prometheus.CounterValue, float64(max(u.OOMKills, uint64(info.OOMKills))), svc, rep)
			ch <- prometheus.MustNewConstMetric(descMemLimit, prometheus.GaugeValue, float64(u.MemoryLimit), svc, rep)
			ch <- prometheus.MustNewConstMetric(descCPULimit, prometheus.GaugeValue, u.CPULimit, svc, rep)
			ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, u.CPU.Seconds(), svc, rep, "pod")
			ch <- prometheus.MustNewConstMetric(descMem, prometheus.GaugeValue, float64(u.Memory), svc, rep, "pod")
			for _, m := range []string{"app", "sidecar"} {
				if ms, ok := u.Members[m]; ok {
					ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, ms.CPU.Seconds(), svc, rep, m)
					ch <- prometheus.MustNewConstMetric(descMem, prometheus.GaugeValue, float64(ms.Memory), svc, rep, m)
				}
			}
		}
		ch <- prometheus.MustNewConstMetric(descPods, prometheus.GaugeValue, float64(running), sv.name)
	}
}

// metricsServer is the launcher's /metrics listener.
type metricsServer struct {
	srv  *http.Server
	addr netip.AddrPort // where it listens
	done chan struct{}
}

// resolveMetricsAddr turns Config.MetricsAddr into a listen address: GatewayHost stands for
// gw.
func resolveMetricsAddr(addr string, gw netip.Addr) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("supervisor: -metrics %q: want host:port: %w", addr, err)
	}
	if host == GatewayHost {
		host = gw.String()
	}
	return net.JoinHostPort(host, port), nil
}

// startMetrics serves the supervisor's metrics (and the Go runtime's and the process's) on
// addr, on a registry of its own.
func (s *Supervisor) startMetrics(addr string) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{services: s.metricServices},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("supervisor: metrics listener on %s: %w", addr, err)
	}
	ap, err := netip.ParseAddrPort(l.Addr().String())
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("supervisor: metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	m := &metricsServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()),
		done: make(chan struct{}),
	}
	go func() {
		defer close(m.done)
		_ = m.srv.Serve(l)
	}()
	return m, nil
}

// metricsGuard is the launcher's metrics listener as the pods could reach it (on the
// gateway address), so that their apps cannot: it is for Prometheus on the host. Invalid
// when there is none or the pods cannot reach it.
func (s *Supervisor) metricsGuard() netip.AddrPort {
	if s.metrics == nil {
		return netip.AddrPort{}
	}
	gw := s.state.get().Network.Gateway()
	if a := s.metrics.addr.Addr(); a != gw && !a.IsUnspecified() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(gw, s.metrics.addr.Port())
}

// close stops the listener and waits for its server to end: at most 2s for the scrapes
// under way.
func (m *metricsServer) close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := m.srv.Shutdown(ctx); err != nil {
		_ = m.srv.Close()
	}
	<-m.done
}

// registerLauncher registers the launcher's own instance (service LauncherService, ID
// LauncherID) at its metrics address, with meta metrics_port, so that Prometheus finds it
// like every other target. It has no check: a launcher that answers is up, and one that
// ends deregisters it (down after a killed launcher too).
func registerLauncher(ctx context.Context, registryURL, project string, at netip.AddrPort) error {
	c, err := launcherAgent(registryURL)
	if err != nil {
		return err
	}
	port := strconv.Itoa(int(at.Port()))
	err = c.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{
		ID: LauncherID(project), Name: LauncherService,
		Address: at.Addr().String(), Port: int(at.Port()),
		Meta: map[string]string{"metrics_port": port, "project": project},
	}, api.ServiceRegisterOpts{}.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("supervisor: register %s at %s: %w", LauncherID(project), at, err)
	}
	return nil
}

// deregisterLauncher removes what registerLauncher made; one the registry does not know is
// no error.
func deregisterLauncher(ctx context.Context, registryURL, project string) error {
	c, err := launcherAgent(registryURL)
	if err != nil {
		return err
	}
	err = c.Agent().ServiceDeregisterOpts(LauncherID(project), (&api.QueryOptions{}).WithContext(ctx))
	var se api.StatusError
	if err != nil && !(errors.As(err, &se) && se.Code == http.StatusNotFound) {
		return fmt.Errorf("supervisor: deregister %s: %w", LauncherID(project), err)
	}
	return nil
}

func launcherAgent(registryURL string) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = registryURL
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("supervisor: registry client for %s: %w", registryURL, err)
	}
	return c, nil
}

// startObservability starts, once the bridge exists, the trace relay the sidecars send
// their spans through (when a trace endpoint is configured) and the metrics listener, and
// registers the launcher's own instance with the registry.
func (s *Supervisor) startObservability(ctx context.Context) error {
	gw := s.state.get().Network.Gateway()
	endpoint := s.cfg.TraceEndpoint
	if endpoint == "" {
		endpoint = s.project.Mesh.TraceEndpoint
	}
	if endpoint != "" {
		target, err := compose.TraceTarget(endpoint)
		if err != nil {
			return fmt.Errorf("supervisor: -trace-endpoint: %w", err)
		}
		at := netip.AddrPortFrom(gw, uint16(s.cfg.TracePort))
		if s.traceRelay, err = startRelay(at.String(), target); err != nil {
			return err
		}
		s.traceAddr, s.traceURL, s.traceHost = at, "http://"+at.String(), "http://"+target
		s.cfg.Logf("sidecars send spans to %s through %s", target, at)
	}
	if s.cfg.MetricsAddr == "" {
		return nil
	}
	addr, err := resolveMetricsAddr(s.cfg.MetricsAddr, gw)
	if err != nil {
		return err
	}
	if s.metrics, err = s.startMetrics(addr); err != nil {
		return err
	}
	s.cfg.Logf("metrics on http://%s/metrics", s.metrics.addr)
	if s.hostReg == "" {
		return nil // no registry: nothing meshed
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	at := s.metrics.addr
	if at.Addr().IsUnspecified() {
		at = netip.AddrPortFrom(gw, at.Port()) // all addresses: the gateway's is one of them
	}
	if err := registerLauncher(rctx, s.hostReg, s.project.Name, at); err != nil {
		return err
	}
	s.mu.Lock()
	s.registered, s.selfAt = true, at
	s.mu.Unlock()
	return nil
}
