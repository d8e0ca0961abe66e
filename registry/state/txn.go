package state

import (
	"slices"
	"strings"
	"time"

	"github.com/podmesh/podmesh/tls/authz"
)

// Txn is the overlay one commit group builds on top of the committed state. Each write of the
// group runs between begin and keep/rollback; rollback undoes only that write. Reads see the
// committed state plus the earlier writes of the group. The put and delete helpers keep rows'
// Create/ModifyIndex, skip writes that change nothing (so a repeated registration raises no
// index and wakes no watcher), and raise the modify index of every topic the change touches.
type Txn struct {
	base  *memState
	local string

	nodes    map[string]*Node // nil value: deleted
	services map[serviceKey]*Service
	checks   map[checkKey]*Check
	kv       map[string]*KVPair
	topics   map[string]uint64

	intentions map[string]*authz.Intention // by pair key; nil value: deleted
	ca         *caRecord                   // the CA's new record when caSet
	caSet      bool

	lastIndex uint64 // highest index used so far (committed or in this group)
	index     uint64 // index of the current write
	dirty     bool   // the current write changed something
	undo      []func()
}

func newTxn(base *memState, local string) *Txn {
	return &Txn{
		base:     base,
		local:    local,
		nodes:    map[string]*Node{},
		services: map[serviceKey]*Service{},
		checks:   map[checkKey]*Check{},
		kv:       map[string]*KVPair{},
		topics:   map[string]uint64{},

		intentions: map[string]*authz.Intention{},
		lastIndex:  base.index,
	}
}

func (tx *Txn) begin() {
	tx.index = tx.lastIndex + 1
	tx.dirty = false
	tx.undo = tx.undo[:0]
}

func (tx *Txn) keep() {
	if tx.dirty {
		tx.lastIndex = tx.index
	}
	tx.undo = tx.undo[:0]
}

func (tx *Txn) rollback() {
	for i := len(tx.undo) - 1; i >= 0; i-- {
		tx.undo[i]()
	}
	tx.undo = tx.undo[:0]
}

func (tx *Txn) empty() bool { return tx.lastIndex == tx.base.index }

// Index is the index the current write's changes get.
func (tx *Txn) Index() uint64 { return tx.index }

// LocalNode is the name of the local node.
func (tx *Txn) LocalNode() string { return tx.local }

// set stores v (nil: deleted) for k in the overlay map m, journaling the previous overlay
// entry so rollback can restore it.
func set[K comparable, V any](tx *Txn, m map[K]*V, k K, v *V) {
	prev, had := m[k]
	tx.undo = append(tx.undo, func() {
		if had {
			m[k] = prev
		} else {
			delete(m, k)
		}
	})
	m[k] = v
	tx.dirty = true
}

func get[K comparable, V any](over, base map[K]*V, k K) *V {
	if v, ok := over[k]; ok {
		return v
	}
	return base[k]
}

func (tx *Txn) bump(topic string) {
	prev, had := tx.topics[topic]
	tx.undo = append(tx.undo, func() {
		if had {
			tx.topics[topic] = prev
		} else {
			delete(tx.topics, topic)
		}
	})
	tx.topics[topic] = tx.index
}

func (tx *Txn) getNode(name string) *Node { return get(tx.nodes, tx.base.nodes, name) }

func (tx *Txn) getService(node, id string) *Service {
	return get(tx.services, tx.base.services, serviceKey{node, id})
}

func (tx *Txn) getCheck(node, id string) *Check {
	return get(tx.checks, tx.base.checks, checkKey{node, id})
}

func (tx *Txn) getKV(key string) *KVPair { return get(tx.kv, tx.base.kv, key) }

func (tx *Txn) getCA() *caRecord {
	if tx.caSet {
		return tx.ca
	}
	return tx.base.ca
}

// putCA replaces the CA's record.
func (tx *Txn) putCA(rec *caRecord) {
	prev, had := tx.ca, tx.caSet
	tx.undo = append(tx.undo, func() { tx.ca, tx.caSet = prev, had })
	tx.ca, tx.caSet = rec, true
	tx.dirty = true
}

// servicesOfNode returns the services on node, sorted by ID.
func (tx *Txn) servicesOfNode(node string) []*Service {
	m := map[string]*Service{}
	for id, v := range tx.base.byNode[node] {
		m[id] = v
	}
	for k, v := range tx.services {
		if k.Node != node {
			continue
		}
		if v == nil {
			delete(m, k.ID)
		} else {
			m[k.ID] = v
		}
	}
	out := make([]*Service, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *Service) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// checksOfNode returns every check on node (node-level and service checks), sorted by ID.
func (tx *Txn) checksOfNode(node string) []*Check {
	m := map[string]*Check{}
	for id, v := range tx.base.checksByNode[node] {
		m[id] = v
	}
	for k, v := range tx.checks {
		if k.Node != node {
			continue
		}
		if v == nil {
			delete(m, k.ID)
		} else {
			m[k.ID] = v
		}
	}
	out := make([]*Check, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *Check) int { return strings.Compare(a.CheckID, b.CheckID) })
	return out
}

// checksOfService returns the checks bound to service id on node ("" for node-level checks),
// sorted by ID.
func (tx *Txn) checksOfService(node, id string) []*Check {
	m := map[string]*Check{}
	for cid, v := range tx.base.checksBySvc[serviceKey{node, id}] {
		m[cid] = v
	}
	for k, v := range tx.checks {
		if k.Node != node {
			continue
		}
		switch {
		case v != nil && v.ServiceID == id:
			m[k.ID] = v
		case m[k.ID] != nil:
			delete(m, k.ID) // deleted, or moved to another service
		}
	}
	out := make([]*Check, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *Check) int { return strings.Compare(a.CheckID, b.CheckID) })
	return out
}

// criticalSince returns when check c (as this transaction sees it) turned critical, zero if
// it is not critical: the committed time, unless this group of writes made it critical, in
// which case now.
func (tx *Txn) criticalSince(c *Check, now time.Time) time.Time {
	if c.Status != HealthCritical {
		return time.Time{}
	}
	k := checkKey{c.Node, c.CheckID}
	if base := tx.base.checks[k]; base == nil || base.Status != HealthCritical {
		return now
	}
	return tx.base.criticalSince[k]
}

// kvKeysWithPrefix returns the live keys under prefix, sorted.
func (tx *Txn) kvKeysWithPrefix(prefix string) []string {
	keys := tx.base.kvKeys
	i, _ := slices.BinarySearch(keys, prefix)
	var out []string
	for ; i < len(keys) && strings.HasPrefix(keys[i], prefix); i++ {
		if v, ok := tx.kv[keys[i]]; ok && v == nil {
			continue
		}
		out = append(out, keys[i])
	}
	for k, v := range tx.kv {
		if v != nil && strings.HasPrefix(k, prefix) && tx.base.kv[k] == nil {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// bumpNodeServices raises the health (and, with catalog, the catalog) topics of every service
// on node: node rows and node-level checks are part of those services' results.
func (tx *Txn) bumpNodeServices(node string, catalog bool) {
	for _, sv := range tx.servicesOfNode(node) {
		tx.bump(TopicHealthService(sv.Service))
		if catalog {
			tx.bump(TopicCatalogService(sv.Service))
		}
	}
}

func (tx *Txn) bumpAllCheckStates() {
	for _, st := range []string{"any", HealthPassing, HealthWarning, HealthCritical} {
		tx.bump(TopicChecks(st))
	}
}

// putNode stores n (a fresh value the caller no longer mutates); it reports whether anything
// changed.
func (tx *Txn) putNode(n *Node) bool {
	old := tx.getNode(n.Node)
	if old != nil && old.equalContent(n) {
		return false
	}
	n.CreateIndex, n.ModifyIndex = tx.index, tx.index
	if old != nil {
		n.CreateIndex = old.CreateIndex
	}
	set(tx, tx.nodes, n.Node, n)
	tx.bump(TopicNodes)
	tx.bump(TopicNode(n.Node))
	tx.bump(TopicNodeChecks(n.Node))
	tx.bump(TopicServices)
	tx.bumpAllCheckStates()
	tx.bumpNodeServices(n.Node, true)
	return true
}

// deleteNode removes the node with all its services and checks.
func (tx *Txn) deleteNode(name string) bool {
	if tx.getNode(name) == nil {
		return false
	}
	for _, c := range tx.checksOfNode(name) {
		tx.deleteCheck(name, c.CheckID)
	}
	for _, sv := range tx.servicesOfNode(name) {
		tx.deleteService(name, sv.ID)
	}
	set(tx, tx.nodes, name, nil)
	tx.bump(TopicNodes)
	tx.bump(TopicNode(name))
	tx.bump(TopicNodeChecks(name))
	tx.bump(TopicServices)
	tx.bumpAllCheckStates()
	return true
}

func (tx *Txn) putService(sv *Service) bool {
	k := serviceKey{sv.Node, sv.ID}
	old := tx.getService(sv.Node, sv.ID)
	if old != nil && old.equalContent(sv) {
		return false
	}
	sv.CreateIndex, sv.ModifyIndex = tx.index, tx.index
	if old != nil {
		sv.CreateIndex = old.CreateIndex
		if old.Service != sv.Service {
			tx.bump(TopicHealthService(old.Service))
			tx.bump(TopicCatalogService(old.Service))
		}
	}
	set(tx, tx.services, k, sv)
	tx.bump(TopicHealthService(sv.Service))
	tx.bump(TopicCatalogService(sv.Service))
	tx.bump(TopicServices)
	tx.bump(TopicNode(sv.Node))
	return true
}

// deleteService removes the service row only; callers remove its checks.
func (tx *Txn) deleteService(node, id string) bool {
	old := tx.getService(node, id)
	if old == nil {
		return false
	}
	set(tx, tx.services, serviceKey{node, id}, nil)
	tx.bump(TopicHealthService(old.Service))
	tx.bump(TopicCatalogService(old.Service))
	tx.bump(TopicServices)
	tx.bump(TopicNode(node))
	return true
}

// bumpCheck raises the topics whose results include check c. A service check is part of the
// health results of the name its service has now: the ServiceName stored on the check may be
// older, because renaming a service through the catalog leaves its other checks as they are
// (as in Consul).
func (tx *Txn) bumpCheck(c *Check) {
	tx.bump(TopicNodeChecks(c.Node))
	tx.bump(TopicChecks("any"))
	tx.bump(TopicChecks(c.Status))
	if c.ServiceID == "" {
		tx.bumpNodeServices(c.Node, false)
		return
	}
	name := c.ServiceName
	if sv := tx.getService(c.Node, c.ServiceID); sv != nil {
		name = sv.Service
	}
	tx.bump(TopicHealthService(name))
}

// putCheck stores c (a fresh value the caller no longer mutates); it reports whether
// anything changed. A service check gets its service's current name and tags, as Consul's
// check writes do.
func (tx *Txn) putCheck(c *Check) bool {
	k := checkKey{c.Node, c.CheckID}
	if c.ServiceID != "" {
		if sv := tx.getService(c.Node, c.ServiceID); sv != nil {
			c.ServiceName, c.ServiceTags = sv.Service, sv.Tags
		}
	}
	old := tx.getCheck(c.Node, c.CheckID)
	if old != nil && old.equalContent(c) {
		return false
	}
	c.CreateIndex, c.ModifyIndex = tx.index, tx.index
	if old != nil {
		c.CreateIndex = old.CreateIndex
		tx.bumpCheck(old)
	}
	set(tx, tx.checks, k, c)
	tx.bumpCheck(c)
	if c.Managed || (old != nil && old.Managed) {
		if old == nil || old.Managed != c.Managed || !old.Definition.Equal(&c.Definition) ||
			old.ServiceID != c.ServiceID {
			tx.bump(TopicAgentChecks)
		}
	}
	return true
}

func (tx *Txn) deleteCheck(node, id string) bool {
	old := tx.getCheck(node, id)
	if old == nil {
		return false
	}
	set(tx, tx.checks, checkKey{node, id}, nil)
	tx.bumpCheck(old)
	if old.Managed {
		tx.bump(TopicAgentChecks)
	}
	return true
}

func (tx *Txn) putKV(p *KVPair) {
	old := tx.getKV(p.Key)
	p.CreateIndex, p.ModifyIndex = tx.index, tx.index
	if old != nil {
		p.CreateIndex = old.CreateIndex
	}
	set(tx, tx.kv, p.Key, p)
	tx.bump(TopicKV(p.Key))
}

func (tx *Txn) deleteKV(key string) bool {
	if tx.getKV(key) == nil {
		return false
	}
	set(tx, tx.kv, key, nil)
	tx.bump(TopicKV(key))
	return true
}
