package registry

import (
	"maps"
	"time"

	"github.com/podmesh/podmesh/registry/state"
)

// The response shapes, field for field as github.com/hashicorp/consul/api decodes them. Go
// field names equal the JSON names, so ?filter= selectors (Service.Tags, NodeMeta.rack, ...)
// are evaluated on these types. Lists and maps are never nil: Consul emits [] and {}, and
// some clients index into them.

// Node is api.Node.
type Node struct {
	ID              string
	Node            string
	Address         string
	Datacenter      string
	TaggedAddresses map[string]string
	Meta            map[string]string
	CreateIndex     uint64
	ModifyIndex     uint64
}

// ServiceAddress is api.ServiceAddress.
type ServiceAddress struct {
	Address string
	Port    int
}

// Weights is api.AgentWeights.
type Weights struct {
	Passing int
	Warning int
}

// AgentService is api.AgentService (the Service of a health entry, and agent/services).
type AgentService struct {
	Kind              string `json:",omitempty"`
	ID                string
	Service           string
	Tags              []string
	Meta              map[string]string
	Port              int
	Address           string
	SocketPath        string                    `json:",omitempty"`
	TaggedAddresses   map[string]ServiceAddress `json:",omitempty"`
	Weights           Weights
	EnableTagOverride bool
	CreateIndex       uint64 `json:",omitempty"`
	ModifyIndex       uint64 `json:",omitempty"`
	Datacenter        string `json:",omitempty"`
}

// HealthCheckDefinition is api.HealthCheckDefinition; durations are Go duration strings.
type HealthCheckDefinition struct {
	HTTP                           string
	Header                         map[string][]string
	Method                         string
	Body                           string
	TLSServerName                  string
	TLSSkipVerify                  bool
	TCP                            string
	Interval                       string
	Timeout                        string
	DeregisterCriticalServiceAfter string
}

// HealthCheck is api.HealthCheck.
type HealthCheck struct {
	Node        string
	CheckID     string
	Name        string
	Status      string
	Notes       string
	Output      string
	ServiceID   string
	ServiceName string
	ServiceTags []string
	Type        string
	ExposedPort int
	Definition  HealthCheckDefinition
	CreateIndex uint64
	ModifyIndex uint64
}

// AgentCheck is api.AgentCheck.
type AgentCheck struct {
	Node        string
	CheckID     string
	Name        string
	Status      string
	Notes       string
	Output      string
	ServiceID   string
	ServiceName string
	Type        string
	ExposedPort int
	Definition  HealthCheckDefinition
}

// ServiceEntry is api.ServiceEntry, one element of /v1/health/service/NAME.
type ServiceEntry struct {
	Node    *Node
	Service *AgentService
	Checks  []*HealthCheck
}

// CatalogService is api.CatalogService, one element of /v1/catalog/service/NAME; the
// /v1/catalog/services filter is evaluated on it too.
type CatalogService struct {
	ID                       string
	Node                     string
	Address                  string
	Datacenter               string
	TaggedAddresses          map[string]string
	NodeMeta                 map[string]string
	ServiceKind              string
	ServiceID                string
	ServiceName              string
	ServiceAddress           string
	ServiceTaggedAddresses   map[string]ServiceAddress
	ServiceTags              []string
	ServiceMeta              map[string]string
	ServicePort              int
	ServiceWeights           Weights
	ServiceEnableTagOverride bool
	CreateIndex              uint64
	ModifyIndex              uint64
}

// CatalogNode is api.CatalogNode (/v1/catalog/node/NAME).
type CatalogNode struct {
	Node     *Node
	Services map[string]*AgentService
}

// KVPair is api.KVPair.
type KVPair struct {
	Key         string
	CreateIndex uint64
	ModifyIndex uint64
	LockIndex   uint64
	Flags       uint64
	Value       []byte
}

func nonNilMap[V any](m map[string]V) map[string]V {
	if m == nil {
		return map[string]V{}
	}
	return m
}

func nonNilSlice[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func durString(d time.Duration) string { return d.String() }

func toNode(n *state.Node) *Node {
	return &Node{
		ID: n.ID, Node: n.Node, Address: n.Address, Datacenter: n.Datacenter,
		TaggedAddresses: nonNilMap(n.TaggedAddresses), Meta: nonNilMap(n.Meta),
		CreateIndex: n.CreateIndex, ModifyIndex: n.ModifyIndex,
	}
}

func toTaggedAddresses(m map[string]state.ServiceAddress) map[string]ServiceAddress {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]ServiceAddress, len(m))
	for k, v := range m {
		out[k] = ServiceAddress(v)
	}
	return out
}

func toAgentService(s *state.Service) *AgentService {
	return &AgentService{
		Kind: s.Kind, ID: s.ID, Service: s.Service, Tags: nonNilSlice(s.Tags), Meta: nonNilMap(s.Meta),
		Port: s.Port, Address: s.Address, SocketPath: s.SocketPath,
		TaggedAddresses: toTaggedAddresses(s.TaggedAddresses), Weights: Weights(s.Weights),
		EnableTagOverride: s.EnableTagOverride, CreateIndex: s.CreateIndex, ModifyIndex: s.ModifyIndex,
	}
}

func toDefinition(d *state.CheckDefinition) HealthCheckDefinition {
	interval := d.Interval
	if d.TTL > 0 {
		interval = 0
	}
	return HealthCheckDefinition{
		HTTP: d.HTTP, Header: maps.Clone(d.Header), Method: d.Method, Body: d.Body,
		TLSServerName: d.TLSServerName, TLSSkipVerify: d.TLSSkipVerify, TCP: d.TCP,
		Interval: durString(interval), Timeout: durString(d.Timeout),
		DeregisterCriticalServiceAfter: durString(d.DeregisterCriticalServiceAfter),
	}
}

func toHealthCheck(c *state.Check) *HealthCheck {
	return &HealthCheck{
		Node: c.Node, CheckID: c.CheckID, Name: c.Name, Status: c.Status, Notes: c.Notes,
		Output: c.Output, ServiceID: c.ServiceID, ServiceName: c.ServiceName,
		ServiceTags: nonNilSlice(c.ServiceTags), Type: c.Type, Definition: toDefinition(&c.Definition),
		CreateIndex: c.CreateIndex, ModifyIndex: c.ModifyIndex,
	}
}

func toAgentCheck(c *state.Check) *AgentCheck {
	return &AgentCheck{
		Node: c.Node, CheckID: c.CheckID, Name: c.Name, Status: c.Status, Notes: c.Notes,
		Output: c.Output, ServiceID: c.ServiceID, ServiceName: c.ServiceName, Type: c.Type,
		Definition: toDefinition(&c.Definition),
	}
}

func toCatalogService(n *state.Node, s *state.Service) *CatalogService {
	return &CatalogService{
		ID: n.ID, Node: n.Node, Address: n.Address, Datacenter: n.Datacenter,
		TaggedAddresses: nonNilMap(n.TaggedAddresses), NodeMeta: nonNilMap(n.Meta),
		ServiceKind: s.Kind, ServiceID: s.ID, ServiceName: s.Service, ServiceAddress: s.Address,
		ServiceTaggedAddresses: nonNilMap(toTaggedAddresses(s.TaggedAddresses)),
		ServiceTags:            nonNilSlice(s.Tags), ServiceMeta: nonNilMap(s.Meta), ServicePort: s.Port,
		ServiceWeights: Weights(s.Weights), ServiceEnableTagOverride: s.EnableTagOverride,
		CreateIndex: s.CreateIndex, ModifyIndex: s.ModifyIndex,
	}
}

func toKVPair(p *state.KVPair) *KVPair {
	return &KVPair{Key: p.Key, CreateIndex: p.CreateIndex, ModifyIndex: p.ModifyIndex,
		LockIndex: p.LockIndex, Flags: p.Flags, Value: p.Value}
}
