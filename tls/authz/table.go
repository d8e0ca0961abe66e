package authz

import (
	"github.com/podmesh/podmesh/tls/spiffe"
)

// Table is an immutable, precomputed authorization table for one destination service: the
// sidecar's answer to "may this caller connect to me?". Authorize is a few map lookups and
// never allocates. Build a new Table when the intentions change and swap it in through an
// atomic.Pointer.
//
// For a source (partition P, namespace N, name S) the decision is that of the first intention
// in evaluation order whose source covers it. Intentions can name a source only as P/N/S,
// P/N/* or P/*/*, so the table keeps, for every exact P/N/S any intention names, the first
// match computed over the whole list; for every P/N any intention names, the first match among
// intentions with a wildcard name; and for each partition the first match among intentions
// with a wildcard namespace. A source not named exactly can only be covered by the latter two.
type Table struct {
	destination string
	def         decision
	exact       map[sourceKey]*decision
	byNS        map[nsKey]*decision
	anyNS       map[string]*decision // by partition
	n           int
}

type sourceKey struct{ partition, ns, name string }

type nsKey struct{ partition, ns string }

type decision struct {
	allowed bool
	reason  string
}

// NewTable builds the table for destination ("name", "ns/name" or "partition/ns/name") from
// any list of intentions; those whose destination does not cover it are ignored, as are
// peered and non-Consul sources, which never match a mesh identity.
func NewTable(ixns []*Intention, destination string, def Default) (*Table, error) {
	matched, err := Match(ixns, ByDestination, destination)
	if err != nil {
		return nil, err
	}
	list := matched[:0]
	for _, x := range matched {
		if x.SourcePeer == "" && (x.SourceType == "" || x.SourceType == SourceConsul) {
			list = append(list, x)
		}
	}
	t := &Table{
		destination: destination,
		def:         decision{allowed: def.Allowed(), reason: def.Reason()},
		exact:       map[sourceKey]*decision{},
		byNS:        map[nsKey]*decision{},
		anyNS:       map[string]*decision{},
		n:           len(list),
	}
	decisions := make([]decision, len(list))
	for i, x := range list {
		decisions[i].allowed, decisions[i].reason = decide(x)
	}
	// firstMatch returns the decision of the first intention (in evaluation order) whose
	// source covers src. The placeholder "\x00" never equals a real name, so it stands for
	// "a namespace or name that no intention spells out": only wildcards cover it.
	firstMatch := func(src spiffe.ServiceID) *decision {
		for i, x := range list {
			if sourceMatches(x, src) {
				return &decisions[i]
			}
		}
		return nil
	}
	const unnamed = "\x00"
	for _, x := range list {
		p, ns := normPartition(x.SourcePartition), x.SourceNS
		if ns == "" {
			ns = DefaultNamespace
		}
		switch {
		case ns == Wildcard:
			if _, ok := t.anyNS[p]; !ok {
				t.anyNS[p] = firstMatch(spiffe.ServiceID{Partition: p, Namespace: unnamed, Service: unnamed})
			}
		case x.SourceName == Wildcard:
			if k := (nsKey{p, ns}); t.byNS[k] == nil {
				t.byNS[k] = firstMatch(spiffe.ServiceID{Partition: p, Namespace: ns, Service: unnamed})
			}
		default:
			if k := (sourceKey{p, ns, x.SourceName}); t.exact[k] == nil {
				t.exact[k] = firstMatch(spiffe.ServiceID{Partition: p, Namespace: ns, Service: x.SourceName})
			}
		}
	}
	return t, nil
}

// Authorize decides whether src may connect to the table's destination, with Consul's
// reason. It never allocates.
func (t *Table) Authorize(src spiffe.ServiceID) (bool, string) {
	d := t.lookup(src)
	return d.allowed, d.reason
}

func (t *Table) lookup(src spiffe.ServiceID) *decision {
	p := src.Partition
	if p == DefaultPartition {
		p = ""
	}
	ns := src.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	if d, ok := t.exact[sourceKey{p, ns, src.Service}]; ok {
		return d
	}
	if d, ok := t.byNS[nsKey{p, ns}]; ok {
		return d
	}
	if d, ok := t.anyNS[p]; ok {
		return d
	}
	return &t.def
}

// Destination returns the destination the table was built for.
func (t *Table) Destination() string { return t.destination }

// Len returns how many intentions apply to the destination.
func (t *Table) Len() int { return t.n }

// Default reports whether the table's default decision allows.
func (t *Table) DefaultAllows() bool { return t.def.allowed }
