package pod

import (
	"fmt"
	"net/netip"

	"github.com/podmesh/podmesh/launcher/compose"
	"gopkg.in/yaml.v3"
)

// Ports of the sidecar inside every pod. Each pod has its own address, so the same numbers
// serve every pod.
const (
	InboundPort = 15001 // POD_IP:15001, what the registry lists for the instance
	AdminPort   = 15000 // 127.0.0.1:15000, /ready; reachable only inside the pod
	MetricsPort = 15090 // POD_IP:15090, /metrics for Prometheus (Meta metrics_port)
)

// SidecarConfig is the YAML the launcher writes for a replica's sidecar and passes as
// `sidecar -config FILE`. It carries the same fields as the sidecar's flags.
type SidecarConfig struct {
	Service   string            `yaml:"service"`
	ID        string            `yaml:"id"`
	Protocol  string            `yaml:"protocol"`
	Inbound   string            `yaml:"inbound"`
	App       string            `yaml:"app"`
	Admin     string            `yaml:"admin"`
	Metrics   string            `yaml:"metrics"`
	Registry  string            `yaml:"registry"`
	Register  bool              `yaml:"register"` // false: the launcher registers the instance
	Upstreams []SidecarUpstream `yaml:"upstreams"`
}

// SidecarUpstream is one upstream the app calls through the sidecar.
type SidecarUpstream struct {
	Name   string         `yaml:"name"`
	Listen string         `yaml:"listen"`
	Policy map[string]any `yaml:"policy,omitempty"`
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
		c.Protocol = "http"
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

// Marshal renders the configuration as YAML.
func (c SidecarConfig) Marshal() ([]byte, error) {
	b, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("pod: encode sidecar config for %s: %w", c.ID, err)
	}
	return b, nil
}
