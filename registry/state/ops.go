package state

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// InvalidError is a write rejected because of its content; Field names the offending field.
type InvalidError struct {
	Field string
	Msg   string
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Msg }

// NotFoundError is a write naming a service, check or node that does not exist.
type NotFoundError struct {
	Kind string // "service", "check", "node"
	ID   string
}

func (e *NotFoundError) Error() string { return fmt.Sprintf("%s %q not found", e.Kind, e.ID) }

// Is makes errors.Is(err, ErrNotFound) true.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// ValidateName rejects a node name, service name or ID, or check name or ID that the store
// cannot keep: one that is not valid UTF-8 or holds a control character. Rows are stored
// under their node and ID joined by a NUL, so a NUL in either would let two rows share a key
// (and one vanish at the next restart); other control characters have no place in a name
// either. Consul accepts them; this is one of the registry's documented differences.
func ValidateName(field, v string) error {
	if !utf8.ValidString(v) {
		return invalid(field, "%q is not valid UTF-8", v)
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return invalid(field, "%q contains the control character %U; names and IDs must be printable", v, r)
		}
	}
	return nil
}

// validateNames runs ValidateName over field/value pairs.
func validateNames(pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if err := ValidateName(pairs[i], pairs[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// ReservedCheckID reports whether id belongs to a check the registry owns (serfHealth and
// the maintenance checks), which registrations may not use.
func ReservedCheckID(id string) bool {
	return id == SerfCheckID || id == NodeMaintCheckID || strings.HasPrefix(id, ServiceMaintPrefix)
}

// RegisterAgentService registers (or replaces) a service on the local node with its checks,
// as PUT /v1/agent/service/register. A check whose ID already exists keeps its status and
// output, as Consul does, so re-registering does not flap. Without replaceExistingChecks the
// service's other checks stay; with it they are removed (maintenance checks stay either way).
// svc and checks are copied.
func (s *Store) RegisterAgentService(ctx context.Context, svc *Service, checks []*Check, replaceExistingChecks bool) error {
	if svc.ID == "" || svc.Service == "" {
		return invalid("Name", "service name and ID must not be empty")
	}
	if err := validateNames("Name", svc.Service, "ID", svc.ID); err != nil {
		return err
	}
	seen := map[string]bool{}
	for i, c := range checks {
		field := fmt.Sprintf("Checks[%d]", i)
		if c.CheckID == "" {
			return invalid(field+".CheckID", "must not be empty")
		}
		if err := validateNames(field+".CheckID", c.CheckID, field+".Name", c.Name); err != nil {
			return err
		}
		if ReservedCheckID(c.CheckID) {
			return invalid(fmt.Sprintf("Checks[%d].CheckID", i), "%q is reserved", c.CheckID)
		}
		if seen[c.CheckID] {
			return invalid(fmt.Sprintf("Checks[%d].CheckID", i), "duplicate check ID %q", c.CheckID)
		}
		seen[c.CheckID] = true
	}
	return s.write(ctx, func(tx *Txn) error {
		node := tx.local
		ns := *svc
		ns.Node = node
		ns.Agent = true
		prev := tx.checksOfService(node, ns.ID)
		tx.putService(&ns)
		for _, c := range checks {
			nc := *c
			nc.Node = node
			nc.ServiceID = ns.ID
			nc.ServiceName = ns.Service
			nc.ServiceTags = ns.Tags
			if old := tx.getCheck(node, nc.CheckID); old != nil {
				nc.Status, nc.Output = old.Status, old.Output
			} else if nc.Status == "" {
				nc.Status = HealthCritical
			}
			tx.putCheck(&nc)
		}
		for _, c := range prev {
			if seen[c.CheckID] {
				continue
			}
			if replaceExistingChecks && !strings.HasPrefix(c.CheckID, ServiceMaintPrefix) {
				tx.deleteCheck(node, c.CheckID)
				continue
			}
			if c.ServiceName != ns.Service || !slices.Equal(c.ServiceTags, ns.Tags) {
				nc := *c
				nc.ServiceName, nc.ServiceTags = ns.Service, ns.Tags
				tx.putCheck(&nc)
			}
		}
		return nil
	})
}

// DeregisterAgentService removes a service of the local node and all its checks.
func (s *Store) DeregisterAgentService(ctx context.Context, id string) error {
	return s.write(ctx, func(tx *Txn) error {
		if tx.getService(tx.local, id) == nil {
			return &NotFoundError{Kind: "service", ID: id}
		}
		for _, c := range tx.checksOfService(tx.local, id) {
			tx.deleteCheck(tx.local, c.CheckID)
		}
		tx.deleteService(tx.local, id)
		return nil
	})
}

// Reapable reports whether check c, critical since since (zero: not critical), makes its
// service due for removal at now: it is a managed service check with a
// DeregisterCriticalServiceAfter, and has been critical for longer than that (at least
// minAfter), as Consul's agent reaps.
func Reapable(c *Check, since, now time.Time, minAfter time.Duration) bool {
	after := c.Definition.DeregisterCriticalServiceAfter
	if !c.Managed || after <= 0 || c.ServiceID == "" || c.Status != HealthCritical || since.IsZero() {
		return false
	}
	return now.Sub(since) > max(after, minAfter)
}

// ReapAgentService removes the local service id and its checks, as DeregisterAgentService
// does, but only if one of its checks is Reapable at the time of the write: a check that
// turned passing after the caller looked saves the service. reaped reports whether it was
// removed.
func (s *Store) ReapAgentService(ctx context.Context, id string, minAfter time.Duration) (reaped bool, err error) {
	err = s.write(ctx, func(tx *Txn) error {
		reaped = false
		if tx.getService(tx.local, id) == nil {
			return nil
		}
		now := s.opts.Clock.Now()
		due := false
		cs := tx.checksOfService(tx.local, id)
		for _, c := range cs {
			if Reapable(c, tx.criticalSince(c, now), now, minAfter) {
				due = true
				break
			}
		}
		if !due {
			return nil
		}
		for _, c := range cs {
			tx.deleteCheck(tx.local, c.CheckID)
		}
		tx.deleteService(tx.local, id)
		reaped = true
		return nil
	})
	return reaped, err
}

// RegisterAgentCheck registers (or replaces) a check on the local node, bound to the service
// c.ServiceID when it is set. An existing check with the same ID keeps its status and output.
func (s *Store) RegisterAgentCheck(ctx context.Context, c *Check) error {
	if c.CheckID == "" {
		return invalid("CheckID", "must not be empty")
	}
	if ReservedCheckID(c.CheckID) {
		return invalid("CheckID", "%q is reserved", c.CheckID)
	}
	if err := validateNames("CheckID", c.CheckID, "Name", c.Name, "ServiceID", c.ServiceID); err != nil {
		return err
	}
	return s.write(ctx, func(tx *Txn) error {
		nc := *c
		nc.Node = tx.local
		if nc.ServiceID != "" {
			sv := tx.getService(tx.local, nc.ServiceID)
			if sv == nil {
				return invalid("ServiceID", "service %q is not registered on this agent", nc.ServiceID)
			}
			nc.ServiceName, nc.ServiceTags = sv.Service, sv.Tags
		}
		if old := tx.getCheck(tx.local, nc.CheckID); old != nil {
			nc.Status, nc.Output = old.Status, old.Output
		} else if nc.Status == "" {
			nc.Status = HealthCritical
		}
		tx.putCheck(&nc)
		return nil
	})
}

// DeregisterAgentCheck removes a check of the local node.
func (s *Store) DeregisterAgentCheck(ctx context.Context, id string) error {
	if id == SerfCheckID {
		return invalid("CheckID", "%q is the registry's own node check", id)
	}
	return s.write(ctx, func(tx *Txn) error {
		if !tx.deleteCheck(tx.local, id) {
			return &NotFoundError{Kind: "check", ID: id}
		}
		return nil
	})
}

// UpdateCheck sets a check's status and output. A change of status is written and published
// at once. A change of output alone is written at most once per CheckUpdateInterval per check
// (as Consul's check_update_interval): until then it is held in memory and only the latest one
// is written, so a check whose output carries a timestamp does not raise indexes and wake
// watchers at every run.
//
// Whether the update changes anything is decided in the committer, against the state that
// includes every write queued before it: an update that returns nil is never undone by a
// write that was already on its way (a TTL expiry committing while a pass arrives).
func (s *Store) UpdateCheck(ctx context.Context, node, id, status, output string) error {
	if !ValidStatus(status) {
		return invalid("Status", "%q is not one of passing, warning, critical", status)
	}
	k := checkKey{node, id}
	return s.write(ctx, func(tx *Txn) error { return s.updateCheckTx(tx, k, status, output, nil) })
}

// deferredOut is an output-only change waiting for CheckUpdateInterval. Its fields are
// guarded by Store.outMu.
type deferredOut struct {
	status, output string
	stop           func() bool
}

func (s *Store) dropDeferredLocked(k checkKey) {
	if d := s.deferred[k]; d != nil {
		d.stop()
		delete(s.deferred, k)
	}
}

// updateCheckTx applies an update of check k inside a write. flush is the deferred output
// being written (the timer's call), or nil for an update from UpdateCheck. Deferring, and
// dropping a deferred output that a newer update supersedes, happen here too, so that every
// decision about a check's status and output is taken in commit order.
func (s *Store) updateCheckTx(tx *Txn, k checkKey, status, output string, flush *deferredOut) error {
	c := tx.getCheck(k.Node, k.ID)
	s.outMu.Lock()
	defer s.outMu.Unlock()
	if flush != nil {
		if s.deferred[k] != flush {
			return nil // superseded by a later update, or dropped
		}
		delete(s.deferred, k)
		status, output = flush.status, flush.output
		if c == nil || c.Status != status {
			return nil // the status changed meanwhile; that write carried its own output
		}
	}
	if c == nil {
		s.dropDeferredLocked(k)
		delete(s.lastOut, k)
		return &NotFoundError{Kind: "check", ID: k.ID}
	}
	if c.Status == status && c.Output == output {
		s.dropDeferredLocked(k)
		return nil
	}
	if c.Status == status && flush == nil {
		interval := s.opts.CheckUpdateInterval
		last, now := s.lastOut[k], s.opts.Clock.Now()
		if interval > 0 && !last.IsZero() && now.Sub(last) < interval {
			d := s.deferred[k]
			if d == nil {
				d = &deferredOut{}
				s.deferred[k] = d
				d.stop = s.opts.Clock.AfterFunc(last.Add(interval).Sub(now), func() { s.flushDeferred(k, d) })
			}
			d.status, d.output = status, output
			return nil
		}
	}
	s.dropDeferredLocked(k)
	nc := *c
	nc.Status, nc.Output = status, output
	tx.putCheck(&nc)
	s.lastOut[k] = s.opts.Clock.Now()
	return nil
}

// flushDeferred writes the deferred output d of check k, unless a later update superseded it.
func (s *Store) flushDeferred(k checkKey, d *deferredOut) {
	err := s.write(s.ctx, func(tx *Txn) error { return s.updateCheckTx(tx, k, "", "", d) })
	if err != nil && !errors.Is(err, ErrClosed) {
		s.log.Warn("writing deferred check output failed", "node", k.Node, "check", k.ID, "err", err)
	}
}

const (
	defaultServiceMaintReason = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
	defaultNodeMaintReason    = "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
)

// SetServiceMaintenance puts a local service into maintenance (a critical check
// "_service_maintenance:<id>") or takes it out.
func (s *Store) SetServiceMaintenance(ctx context.Context, id string, enable bool, reason string) error {
	return s.write(ctx, func(tx *Txn) error {
		sv := tx.getService(tx.local, id)
		if sv == nil {
			return &NotFoundError{Kind: "service", ID: id}
		}
		cid := ServiceMaintPrefix + id
		if !enable {
			tx.deleteCheck(tx.local, cid)
			return nil
		}
		if reason == "" {
			reason = defaultServiceMaintReason
		}
		tx.putCheck(&Check{
			Node: tx.local, CheckID: cid, Name: "Service Maintenance Mode", Status: HealthCritical,
			Notes: reason, ServiceID: sv.ID, ServiceName: sv.Service, ServiceTags: sv.Tags,
			Type: CheckTypeMaintenance,
		})
		return nil
	})
}

// SetNodeMaintenance puts the local node into maintenance (a critical check
// "_node_maintenance") or takes it out.
func (s *Store) SetNodeMaintenance(ctx context.Context, enable bool, reason string) error {
	return s.write(ctx, func(tx *Txn) error {
		if !enable {
			tx.deleteCheck(tx.local, NodeMaintCheckID)
			return nil
		}
		if reason == "" {
			reason = defaultNodeMaintReason
		}
		tx.putCheck(&Check{
			Node: tx.local, CheckID: NodeMaintCheckID, Name: "Node Maintenance Mode",
			Status: HealthCritical, Notes: reason, Type: CheckTypeMaintenance,
		})
		return nil
	})
}

// CatalogRegistration is a validated PUT /v1/catalog/register.
type CatalogRegistration struct {
	Node           Node
	SkipNodeUpdate bool
	Service        *Service // optional
	Checks         []*Check
	// CheckFields names each check as the request did ("Check", "Checks[0]"), for errors;
	// without it checks are named Checks[i].
	CheckFields []string
}

// CatalogRegister registers a node, optionally with a service and checks, as Consul's catalog
// endpoint does. Checks registered this way are stored, not run.
func (s *Store) CatalogRegister(ctx context.Context, r *CatalogRegistration) error {
	if r.Node.Node == "" {
		return invalid("Node", "must not be empty")
	}
	if r.Node.Address == "" {
		return invalid("Address", "must not be empty")
	}
	if err := ValidateName("Node", r.Node.Node); err != nil {
		return err
	}
	if sv := r.Service; sv != nil {
		if err := validateNames("Service.Service", sv.Service, "Service.ID", sv.ID); err != nil {
			return err
		}
	}
	for i, c := range r.Checks {
		field := fmt.Sprintf("Checks[%d]", i)
		if i < len(r.CheckFields) {
			field = r.CheckFields[i]
		}
		if err := validateNames(field+".CheckID", c.CheckID, field+".Name", c.Name, field+".ServiceID", c.ServiceID); err != nil {
			return err
		}
	}
	return s.write(ctx, func(tx *Txn) error {
		name := r.Node.Node
		// Validate everything against the state before changing anything.
		var svc *Service
		if r.Service != nil {
			cp := *r.Service
			svc = &cp
			svc.Node = name
			if old := tx.getService(name, svc.ID); old != nil {
				svc.Agent = old.Agent
			}
		}
		for i, c := range r.Checks {
			field := fmt.Sprintf("Checks[%d]", i)
			if i < len(r.CheckFields) {
				field = r.CheckFields[i]
			}
			if c.Node != "" && c.Node != name {
				return invalid(field+".Node", "check node %q differs from the registration's node %q", c.Node, name)
			}
			if name == tx.local && c.CheckID == SerfCheckID {
				return invalid(field+".CheckID", "%q is the registry's own node check", c.CheckID)
			}
			if c.ServiceID != "" && (svc == nil || svc.ID != c.ServiceID) && tx.getService(name, c.ServiceID) == nil {
				return invalid(field+".ServiceID", "service %q is not registered on node %q", c.ServiceID, name)
			}
		}
		old := tx.getNode(name)
		if old == nil || !r.SkipNodeUpdate {
			n := r.Node
			n.TaggedAddresses = maps.Clone(n.TaggedAddresses)
			n.Meta = maps.Clone(n.Meta)
			if n.ID == "" && old != nil {
				n.ID = old.ID
			}
			if n.Datacenter == "" {
				n.Datacenter = s.opts.Datacenter
			}
			tx.putNode(&n)
		}
		if svc != nil {
			tx.putService(svc)
		}
		for _, c := range r.Checks {
			nc := *c
			nc.Node = name
			nc.Managed = false
			if nc.Status == "" {
				nc.Status = HealthCritical
			}
			nc.ServiceName, nc.ServiceTags = "", nil
			if nc.ServiceID != "" {
				sv := tx.getService(name, nc.ServiceID)
				nc.ServiceName, nc.ServiceTags = sv.Service, sv.Tags
			}
			tx.putCheck(&nc)
		}
		return nil
	})
}

// CatalogDeregister removes a check (checkID set), a service and its checks (serviceID set),
// or a whole node with its services and checks. Removing something absent is not an error,
// as in Consul. The registry's own node and its serfHealth check cannot be removed.
func (s *Store) CatalogDeregister(ctx context.Context, node, serviceID, checkID string) error {
	if node == "" {
		return invalid("Node", "must not be empty")
	}
	return s.write(ctx, func(tx *Txn) error {
		switch {
		case checkID != "":
			if node == tx.local && checkID == SerfCheckID {
				return invalid("CheckID", "%q is the registry's own node check", checkID)
			}
			tx.deleteCheck(node, checkID)
		case serviceID != "":
			for _, c := range tx.checksOfService(node, serviceID) {
				tx.deleteCheck(node, c.CheckID)
			}
			tx.deleteService(node, serviceID)
		default:
			if node == tx.local {
				return invalid("Node", "%q is the registry's own node; deregister its services instead", node)
			}
			tx.deleteNode(node)
		}
		return nil
	})
}

// KVPut stores value under key. With cas set, the write happens only if the key's
// ModifyIndex equals *cas (0: only if the key does not exist); ok reports whether it happened.
func (s *Store) KVPut(ctx context.Context, key string, value []byte, flags uint64, cas *uint64) (ok bool, err error) {
	if key == "" {
		return false, invalid("key", "must not be empty")
	}
	if !utf8.ValidString(key) {
		// JSON cannot carry it: every listing would show U+FFFD instead, a key no one can
		// address again.
		return false, invalid("key", "%q is not valid UTF-8", key)
	}
	value = slices.Clone(value)
	err = s.write(ctx, func(tx *Txn) error {
		old := tx.getKV(key)
		if cas != nil {
			switch {
			case *cas == 0 && old != nil, *cas != 0 && (old == nil || old.ModifyIndex != *cas):
				ok = false
				return nil
			}
		}
		tx.putKV(&KVPair{Key: key, Flags: flags, Value: value})
		ok = true
		return nil
	})
	return ok, err
}

// KVDelete deletes key, or with recurse every key under the prefix key. With cas set (not
// with recurse) it deletes only if the key's ModifyIndex equals *cas. Deleting a missing key
// succeeds.
func (s *Store) KVDelete(ctx context.Context, key string, recurse bool, cas *uint64) (ok bool, err error) {
	if recurse && cas != nil {
		return false, invalid("cas", "cannot be combined with recurse")
	}
	err = s.write(ctx, func(tx *Txn) error {
		if recurse {
			for _, k := range tx.kvKeysWithPrefix(key) {
				tx.deleteKV(k)
			}
			ok = true
			return nil
		}
		// As Consul: a CAS delete of a missing key succeeds.
		if old := tx.getKV(key); cas != nil && old != nil && old.ModifyIndex != *cas {
			ok = false
			return nil
		}
		tx.deleteKV(key)
		ok = true
		return nil
	})
	return ok, err
}
