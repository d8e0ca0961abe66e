package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// registry is the discovery service the sidecars use: our registry when $BIN/registry
// exists, else a Consul dev agent.
type registry struct {
	Kind string // "podmesh registry" or "consul dev agent"
	URL  string // http://host:port
	proc *Proc
}

func startRegistry(ctx context.Context, c Config, dir string) (*registry, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &registry{URL: "http://" + addr}
	drop := []string{"CONSUL_*"}
	switch {
	case existing(c.Registry) != "":
		r.Kind = "podmesh registry (" + c.Registry + ")"
		data := filepath.Join(dir, "registry-data")
		if err := os.MkdirAll(data, 0o755); err != nil {
			return nil, fmt.Errorf("bench: registry data dir: %w", err)
		}
		args := append([]string{c.Registry}, expand(c.RegistryFlags, map[string]string{"http": addr, "data": data})...)
		r.proc, err = startProc("registry", c.PinSUT, nil, drop, args...)
	case c.Consul != "":
		r.Kind = "consul dev agent (" + c.Consul + ")"
		var ports []string
		for range 3 {
			p, perr := freePort()
			if perr != nil {
				return nil, perr
			}
			ports = append(ports, p[strings.LastIndexByte(p, ':')+1:])
		}
		r.proc, err = startProc("consul", c.PinSUT, nil, drop, c.Consul, "agent", "-dev",
			"-bind", "127.0.0.1", "-client", "127.0.0.1", "-node", "podmesh-bench",
			"-http-port", addr[strings.LastIndexByte(addr, ':')+1:],
			"-serf-lan-port", ports[0], "-serf-wan-port", ports[1], "-server-port", ports[2],
			"-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }", "-log-level", "warn")
	default:
		return nil, fmt.Errorf("no registry: neither %s nor PODMESH_CONSUL_BIN exists", orNone(c.Registry, "registry"))
	}
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: time.Second}
	err = waitFor(ctx, 30*time.Second, r.proc.Exited, func() error {
		resp, err := client.Get(r.URL + "/v1/status/leader")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.Trim(strings.TrimSpace(string(b)), `"`) == "" {
			return fmt.Errorf("GET /v1/status/leader: %d %q", resp.StatusCode, b)
		}
		return nil
	})
	if err != nil {
		r.proc.Stop(3 * time.Second)
		return nil, fmt.Errorf("%s at %s: %w", r.Kind, r.URL, err)
	}
	return r, nil
}

// deregister removes a service instance, in case a sidecar left it behind.
func (r *registry) deregister(id string) {
	req, err := http.NewRequest(http.MethodPut, r.URL+"/v1/agent/service/deregister/"+id, nil)
	if err != nil {
		return
	}
	client := &http.Client{Timeout: 2 * time.Second}
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
	}
}

func (r *registry) stop() {
	if r != nil && r.proc != nil {
		r.proc.Stop(5 * time.Second)
	}
}

// orNone names a program from $BIN, or says that BIN is unset.
func orNone(path, name string) string {
	if path == "" {
		return "$BIN/" + name + " (BIN unset)"
	}
	return path
}
