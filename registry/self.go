package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/podmesh/podmesh/registry/state"
)

// SelfService is the service name the registry registers itself under (RegisterSelf), so
// that Prometheus' consul_sd_configs finds the registry's own /metrics like every other
// target (docs/metrics.md).
const SelfService = "podmesh-registry"

// MetricsPortMeta is the service meta key that marks an instance whose process serves
// Prometheus metrics on that port of its address; the scrape configuration in
// deploy/prometheus keeps only targets that have it.
const MetricsPortMeta = "metrics_port"

// SelfServiceID is the ID of the registry's own instance on node: podmesh-registry-<node>.
func SelfServiceID(node string) string { return SelfService + "-" + node }

// RegisterSelf registers the registry as an agent service of its own node: service
// SelfService, ID SelfServiceID(node), at the address clients and Prometheus reach its
// HTTP API at: host, an IP address or a name, and port), with meta metrics_port = port, where
// GET /metrics answers. It has no
// check: a registry that answers the catalog query is up. Registering again replaces the
// instance, so a restart on another port moves it.
func RegisterSelf(ctx context.Context, store *state.Store, host string, port int) error {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if host == "" || port <= 0 || port > 65535 {
		return fmt.Errorf("registry: register self at %q: need a host and a port", addr)
	}
	svc := &state.Service{
		ID: SelfServiceID(store.LocalNode()), Service: SelfService,
		Address: host, Port: port,
		Meta:    map[string]string{MetricsPortMeta: strconv.Itoa(port)},
		Weights: state.Weights{Passing: 1, Warning: 1},
	}
	if err := store.RegisterAgentService(ctx, svc, nil, true); err != nil {
		return fmt.Errorf("registry: register self as %s at %s: %w", svc.ID, addr, err)
	}
	return nil
}

// DeregisterSelf removes the instance RegisterSelf made, if there is one (a registry started
// without self-registration after one with it).
func DeregisterSelf(ctx context.Context, store *state.Store) error {
	id := SelfServiceID(store.LocalNode())
	err := store.DeregisterAgentService(ctx, id)
	if nf := (*state.NotFoundError)(nil); errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("registry: deregister self %s: %w", id, err)
	}
	return nil
}
