package pod

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ConsulRegistry registers pods through the Consul HTTP API: the project's registry or a
// real Consul agent.
type ConsulRegistry struct {
	client *api.Client
}

// NewConsulRegistry returns a Registry talking to the agent API at addr ("http://host:port").
func NewConsulRegistry(addr string) (*ConsulRegistry, error) {
	cfg := api.DefaultConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("pod: registry client for %s: %w", addr, err)
	}
	return &ConsulRegistry{client: c}, nil
}

// CheckID is the TTL check of an instance.
func CheckID(id string) string { return "podmesh:" + id }

// Register adds the instance with a TTL check that starts passing: a pod registers only
// once its app is healthy.
func (r *ConsulRegistry) Register(ctx context.Context, reg Registration) error {
	err := r.client.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{
		ID:      reg.ID,
		Name:    reg.Name,
		Address: reg.Address,
		Port:    reg.Port,
		Tags:    reg.Tags,
		Meta:    reg.Meta,
		Check: &api.AgentServiceCheck{
			CheckID: CheckID(reg.ID),
			Name:    "podmesh launcher health of " + reg.ID,
			TTL:     reg.TTL.String(),
			Status:  api.HealthPassing,
			// A safety net for a launcher that dies without deregistering: the registry
			// drops the instance a minute after its TTL lapsed.
			DeregisterCriticalServiceAfter: "1m",
			Notes:                          "kept passing by the launcher from the app's healthcheck",
		},
	}, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("pod: register %s: %w", reg.ID, err)
	}
	return nil
}

// SetHealth updates the instance's TTL check.
func (r *ConsulRegistry) SetHealth(ctx context.Context, id, status, output string) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	if err := r.client.Agent().UpdateTTLOpts(CheckID(id), output, status, q); err != nil {
		var se api.StatusError
		if errors.As(err, &se) && (se.Code == http.StatusNotFound || strings.Contains(se.Body, "Unknown check")) {
			return fmt.Errorf("pod: set %s %s: %w: %w", CheckID(id), status, ErrNotRegistered, err)
		}
		return fmt.Errorf("pod: set %s %s: %w", CheckID(id), status, err)
	}
	return nil
}

// Deregister removes the instance (and its check). An instance the registry does not know
// (a pod stopped before it was ever healthy) is not an error.
func (r *ConsulRegistry) Deregister(ctx context.Context, id string) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	if err := r.client.Agent().ServiceDeregisterOpts(id, q); err != nil {
		var se api.StatusError
		if errors.As(err, &se) && se.Code == http.StatusNotFound {
			return nil
		}
		return fmt.Errorf("pod: deregister %s: %w", id, err)
	}
	return nil
}

var _ Registry = (*ConsulRegistry)(nil)
