package pod

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/initproc"
	"github.com/podmesh/podmesh/launcher/netns"
	"github.com/podmesh/podmesh/sidecar"
	"gopkg.in/yaml.v3"
)

// SidecarUID is the user (and group) every pod's sidecar runs as: its own, neither root nor
// an app's, so the pod's firewall can tell its connections from the app's (netns.Guard):
// only the sidecar, and the launcher dialling as it, reach the registry relay and the
// sidecar's admin listener (/drain). It also keeps the sidecar's memory, and so its private
// key, out of reach of a compromised app. No app may run as it (CheckUsers). The sidecar
// reads its configuration from /dev/stdin, so the launcher's state directory need not be
// readable by it; its program must be.
const SidecarUID = 65533

// SidecarUser is SidecarUID as initproc runs it.
func SidecarUser() *initproc.User {
	return &initproc.User{UID: SidecarUID, GID: SidecarUID, Groups: []uint32{SidecarUID}}
}

// Guards are the destinations a pod's app may not reach: the relays (the gateway addresses
// and ports pods reach the registry and the trace collector at, and the launcher's metrics
// listener; invalid ones are skipped) and the sidecar's admin listener. The supervisor plans them into every pod's network.
func Guards(relays ...netip.AddrPort) []netns.Guard {
	g := []netns.Guard{{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), AdminPort), UID: SidecarUID}}
	for _, r := range relays {
		if r.IsValid() {
			g = append(g, netns.Guard{Addr: r, UID: SidecarUID})
		}
	}
	return g
}

// CheckUsers resolves the user of every service of the project, as the pods will: an
// unknown user or group, or the sidecars' own uid, is an error naming the service.
func CheckUsers(p *compose.Project) error {
	for i := range p.Services {
		svc := &p.Services[i]
		u, err := ResolveUser(svc.User)
		if err == nil && u.UID == SidecarUID {
			err = fmt.Errorf("uid %d is the sidecars' own (pod.SidecarUID): an app running as it would reach the registry relay and its sidecar's admin port", SidecarUID)
		}
		if err != nil {
			return &compose.FieldError{File: p.File, Path: "services." + svc.Name + ".user", Msg: err.Error()}
		}
	}
	return nil
}

// Ports of the sidecar inside every pod. Each pod has its own address, so the same numbers
// serve every pod.
const (
	InboundPort = 15001 // POD_IP:15001, what the registry lists for the instance
	AdminPort   = 15000 // 127.0.0.1:15000, /ready; reachable only inside the pod
	MetricsPort = 15090 // POD_IP:15090, /metrics for Prometheus (Meta metrics_port)
)

// SidecarConfig is the YAML the launcher writes for a sidecar and passes as
// `sidecar -config FILE`. Its keys are a subset of the sidecar's own (sidecar.Config),
// whose loader rejects unknown keys; the launcher's tests load it with that loader.
type SidecarConfig struct {
	Service  string `yaml:"service"`
	ID       string `yaml:"id"`
	Protocol string `yaml:"protocol,omitempty"`
	Inbound  string `yaml:"inbound,omitempty"` // "": outbound only (no x-podmesh.port)
	App      string `yaml:"app,omitempty"`
	Admin    string `yaml:"admin"`
	Metrics  string `yaml:"metrics,omitempty"`
	Registry string `yaml:"registry"`
	// TraceEndpoint is where the sidecar sends its spans (OTLP/HTTP): the launcher's trace
	// relay; "" = no tracing.
	TraceEndpoint string            `yaml:"trace_endpoint,omitempty"`
	Register      bool              `yaml:"register"` // false: the launcher registers the instance
	DrainTimeout  string            `yaml:"drain_timeout,omitempty"`
	Upstreams     []SidecarUpstream `yaml:"upstreams,omitempty"`
}

// SidecarUpstream is one upstream the app calls through the sidecar: its name, the local
// listener, and the compose file's per-upstream policy keys (compose.UpstreamPolicyKeys),
// written beside them as the sidecar expects.
type SidecarUpstream struct {
	Name   string         `yaml:"name"`
	Listen string         `yaml:"listen"`
	Policy map[string]any `yaml:",inline"`
}

// HasSidecar reports whether the service's pods run a sidecar: when it serves through the
// mesh (x-podmesh.port) or calls upstreams through it.
func HasSidecar(svc *compose.Service) bool {
	return svc.Mesh.Port > 0 || len(svc.Mesh.Upstreams) > 0
}

// NewSidecarConfig derives a replica's sidecar configuration from its service.
func NewSidecarConfig(svc *compose.Service, id string, podAddr netip.Addr, registryURL string) (SidecarConfig, error) {
	c := SidecarConfig{
		Service:  svc.Name,
		ID:       id,
		Protocol: svc.Mesh.Protocol,
		Inbound:  netip.AddrPortFrom(podAddr, InboundPort).String(),
		App:      fmt.Sprintf("127.0.0.1:%d", svc.Mesh.Port),
		Admin:    fmt.Sprintf("127.0.0.1:%d", AdminPort),
		Metrics:  netip.AddrPortFrom(podAddr, MetricsPort).String(),
		Registry: registryURL,
	}
	if c.Protocol == "" {
		c.Protocol = compose.DefaultProtocol
	}
	if svc.StopGracePeriod > 0 {
		// The inbound drain ends within the time the launcher gives the app to stop.
		c.DrainTimeout = svc.StopGracePeriod.String()
	}
	if svc.Mesh.Port == 0 {
		// Outbound only: the service name is its identity towards its upstreams; no inbound
		// listener, nothing registered.
		c.Protocol, c.Inbound, c.App, c.Metrics = "", "", "", ""
	}
	for i, u := range svc.Mesh.Upstreams {
		addr, err := UpstreamAddr(i)
		if err != nil {
			return c, fmt.Errorf("pod: sidecar config for %s: %w", id, err)
		}
		c.Upstreams = append(c.Upstreams, SidecarUpstream{Name: u.Name, Listen: addr.String(), Policy: u.Policy})
	}
	return c, nil
}

// IngressService is the registry name, and so the identity, of a project's ingress sidecar.
func IngressService(project string) string { return project + "-ingress" }

// NewIngressConfig is the configuration of the sidecar the launcher runs in the host's
// network namespace for a project's exposed services (x-podmesh.expose): one upstream per
// exposed service, listening on the exposed host address; no inbound side, not registered.
// Services are taken in the order given.
func NewIngressConfig(project string, services []*compose.Service, admin netip.AddrPort, registryURL string) SidecarConfig {
	c := SidecarConfig{
		Service:      IngressService(project),
		ID:           IngressService(project),
		Admin:        admin.String(),
		Registry:     registryURL,
		DrainTimeout: (5 * time.Second).String(),
	}
	for _, svc := range services {
		if svc.Mesh.Expose.IsValid() {
			// The protocol is known here: until the registry lists an instance, a request
			// gets an HTTP 503 rather than a reset connection.
			proto := svc.Mesh.Protocol
			if proto == "" {
				proto = compose.DefaultProtocol
			}
			c.Upstreams = append(c.Upstreams, SidecarUpstream{Name: svc.Name, Listen: svc.Mesh.Expose.String(),
				Policy: map[string]any{"protocol": proto}})
		}
	}
	return c
}

// Marshal renders the configuration as YAML.
func (c SidecarConfig) Marshal() ([]byte, error) {
	b, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("pod: encode sidecar config for %s: %w", c.ID, err)
	}
	return b, nil
}

// Check loads the configuration with the sidecar's own loader and validation, as
// `sidecar -config` will: a policy value the sidecar rejects (lb: fancy) fails here, before
// anything starts, instead of in a pod's sidecar log.
func (c SidecarConfig) Check() error {
	b, err := c.Marshal()
	if err != nil {
		return err
	}
	f, err := os.CreateTemp("", "podmesh-sidecar-*.yaml")
	if err != nil {
		return fmt.Errorf("pod: check sidecar config for %s: %w", c.ID, err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pod: check sidecar config for %s: %w", c.ID, err)
	}
	none := func(string) string { return "" }
	if _, err := sidecar.Parse([]string{"-config", f.Name()}, none, io.Discard); err != nil {
		return fmt.Errorf("pod: the sidecar rejects the configuration of %s: %w", c.ID, err)
	}
	return nil
}

// CheckSidecars checks the sidecar configuration of every service of the project that has
// one, and the ingress's when a service is exposed, with placeholder addresses; the errors
// name the service.
func CheckSidecars(p *compose.Project) error {
	names := make([]string, 0, len(p.Services))
	for i := range p.Services {
		names = append(names, p.Services[i].Name)
	}
	sort.Strings(names)
	for _, name := range names {
		svc, _ := p.Service(name)
		if !HasSidecar(svc) {
			continue
		}
		switch svc.Mesh.Port {
		case AdminPort, InboundPort, MetricsPort:
			return &compose.FieldError{File: p.File, Path: "services." + name + ".x-podmesh.port",
				Msg: fmt.Sprintf("%d is a port of the pod's sidecar (admin %d, inbound %d, metrics %d); the app must use another",
					svc.Mesh.Port, AdminPort, InboundPort, MetricsPort)}
		}
		c, err := NewSidecarConfig(svc, svc.Name+"-1", netip.MustParseAddr("10.89.0.2"), "http://10.89.0.1:8500")
		if err == nil {
			err = c.Check()
		}
		if err != nil {
			return &compose.FieldError{File: p.File, Path: "services." + name + ".x-podmesh", Msg: err.Error()}
		}
	}
	var exposed []*compose.Service
	for i := range p.Services {
		if p.Services[i].Mesh.Expose.IsValid() {
			exposed = append(exposed, &p.Services[i])
		}
	}
	if len(exposed) > 0 {
		c := NewIngressConfig(p.Name, exposed, netip.MustParseAddrPort("127.0.0.1:15000"), "http://127.0.0.1:8500")
		if err := c.Check(); err != nil {
			return &compose.FieldError{File: p.File, Path: "services." + exposed[0].Name + ".x-podmesh.expose", Msg: err.Error()}
		}
	}
	return nil
}
