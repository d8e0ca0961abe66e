package state

import (
	"maps"
	"slices"
	"time"
)

// Health states a check can be in, as Consul spells them.
const (
	HealthPassing  = "passing"
	HealthWarning  = "warning"
	HealthCritical = "critical"
)

// Identifiers of the checks the registry itself owns.
const (
	// SerfCheckID is the permanent passing node check of the local node, as Consul's agent has.
	SerfCheckID = "serfHealth"
	// NodeMaintCheckID is the node maintenance check (PUT /v1/agent/maintenance).
	NodeMaintCheckID = "_node_maintenance"
	// ServiceMaintPrefix prefixes a service maintenance check's ID, followed by the service ID.
	ServiceMaintPrefix = "_service_maintenance:"
)

// ValidStatus reports whether s is one of passing, warning or critical.
func ValidStatus(s string) bool {
	return s == HealthPassing || s == HealthWarning || s == HealthCritical
}

// Node is a catalog node: the registry's own node, or an external one registered through
// /v1/catalog/register. Rows are immutable once stored; writers store a modified copy.
type Node struct {
	ID              string
	Node            string
	Address         string
	Datacenter      string
	TaggedAddresses map[string]string `json:",omitempty"`
	Meta            map[string]string `json:",omitempty"`
	CreateIndex     uint64
	ModifyIndex     uint64
}

// equalContent reports whether two nodes are the same apart from their indexes.
func (n *Node) equalContent(o *Node) bool {
	return n.ID == o.ID && n.Node == o.Node && n.Address == o.Address && n.Datacenter == o.Datacenter &&
		maps.Equal(n.TaggedAddresses, o.TaggedAddresses) && maps.Equal(n.Meta, o.Meta)
}

// ServiceAddress is one tagged address of a service.
type ServiceAddress struct {
	Address string
	Port    int
}

// Weights are a service's DNS/load-balancing weights by health state.
type Weights struct {
	Passing int
	Warning int
}

// Service is one service instance on a node.
type Service struct {
	Node              string
	Kind              string `json:",omitempty"`
	ID                string
	Service           string
	Tags              []string                  `json:",omitempty"`
	Address           string                    `json:",omitempty"`
	TaggedAddresses   map[string]ServiceAddress `json:",omitempty"`
	Meta              map[string]string         `json:",omitempty"`
	Port              int
	SocketPath        string `json:",omitempty"`
	Weights           Weights
	EnableTagOverride bool `json:",omitempty"`
	// Agent marks a service registered through /v1/agent/service/register on the local node:
	// its checks are run by the registry and DeregisterCriticalServiceAfter applies to it.
	Agent       bool `json:",omitempty"`
	CreateIndex uint64
	ModifyIndex uint64
}

func (s *Service) equalContent(o *Service) bool {
	return s.Node == o.Node && s.Kind == o.Kind && s.ID == o.ID && s.Service == o.Service &&
		slices.Equal(s.Tags, o.Tags) && s.Address == o.Address &&
		maps.Equal(s.TaggedAddresses, o.TaggedAddresses) && maps.Equal(s.Meta, o.Meta) &&
		s.Port == o.Port && s.SocketPath == o.SocketPath && s.Weights == o.Weights &&
		s.EnableTagOverride == o.EnableTagOverride && s.Agent == o.Agent
}

// CheckDefinition says how the registry runs a check (for agent checks) or, for checks
// registered through the catalog, only describes it (Consul does not run those either).
type CheckDefinition struct {
	HTTP          string              `json:",omitempty"`
	Header        map[string][]string `json:",omitempty"`
	Method        string              `json:",omitempty"`
	Body          string              `json:",omitempty"`
	TLSServerName string              `json:",omitempty"`
	TLSSkipVerify bool                `json:",omitempty"`
	TCP           string              `json:",omitempty"`
	// TTL is set for TTL checks: the check turns critical when no update arrives within it.
	TTL                            time.Duration `json:",omitempty"`
	Interval                       time.Duration `json:",omitempty"`
	Timeout                        time.Duration `json:",omitempty"`
	DeregisterCriticalServiceAfter time.Duration `json:",omitempty"`
	SuccessBeforePassing           int           `json:",omitempty"`
	FailuresBeforeWarning          int           `json:",omitempty"`
	FailuresBeforeCritical         int           `json:",omitempty"`
}

// Equal reports whether two definitions are identical.
func (d *CheckDefinition) Equal(o *CheckDefinition) bool {
	return d.HTTP == o.HTTP && maps.EqualFunc(d.Header, o.Header, slices.Equal) && d.Method == o.Method &&
		d.Body == o.Body && d.TLSServerName == o.TLSServerName && d.TLSSkipVerify == o.TLSSkipVerify &&
		d.TCP == o.TCP && d.TTL == o.TTL && d.Interval == o.Interval && d.Timeout == o.Timeout &&
		d.DeregisterCriticalServiceAfter == o.DeregisterCriticalServiceAfter &&
		d.SuccessBeforePassing == o.SuccessBeforePassing && d.FailuresBeforeWarning == o.FailuresBeforeWarning &&
		d.FailuresBeforeCritical == o.FailuresBeforeCritical
}

// Check types, as Consul reports them in HealthCheck.Type.
const (
	CheckTypeTTL         = "ttl"
	CheckTypeHTTP        = "http"
	CheckTypeTCP         = "tcp"
	CheckTypeMaintenance = "maintenance"
)

// Check is a health check on a node, optionally bound to one of the node's services.
type Check struct {
	Node        string
	CheckID     string
	Name        string
	Status      string
	Notes       string   `json:",omitempty"`
	Output      string   `json:",omitempty"`
	ServiceID   string   `json:",omitempty"`
	ServiceName string   `json:",omitempty"`
	ServiceTags []string `json:",omitempty"`
	// Type is "ttl", "http", "tcp", "maintenance", or empty for catalog and node checks.
	Type       string `json:",omitempty"`
	Definition CheckDefinition
	// Managed marks an agent check the registry runs (TTL, HTTP, TCP).
	Managed     bool `json:",omitempty"`
	CreateIndex uint64
	ModifyIndex uint64
}

func (c *Check) equalContent(o *Check) bool {
	return c.Node == o.Node && c.CheckID == o.CheckID && c.Name == o.Name && c.Status == o.Status &&
		c.Notes == o.Notes && c.Output == o.Output && c.ServiceID == o.ServiceID &&
		c.ServiceName == o.ServiceName && slices.Equal(c.ServiceTags, o.ServiceTags) && c.Type == o.Type &&
		c.Definition.Equal(&o.Definition) && c.Managed == o.Managed
}

// KVPair is one key in the key/value store.
type KVPair struct {
	Key         string
	CreateIndex uint64
	ModifyIndex uint64
	LockIndex   uint64
	Flags       uint64
	Value       []byte
}

// serviceKey identifies a service instance: service IDs are unique per node.
type serviceKey struct{ Node, ID string }

// checkKey identifies a check: check IDs are unique per node.
type checkKey struct{ Node, ID string }
