package authz

import (
	"fmt"

	"github.com/podmesh/podmesh/tls/spiffe"
)

// MatchType says which end of an intention a match query names.
type MatchType string

// The match types of GET /v1/connect/intentions/match?by=...
const (
	BySource      MatchType = "source"
	ByDestination MatchType = "destination"
)

// Default is the decision when no intention matches. The zero value denies, so a table built
// without a policy fails closed.
type Default uint8

// The default policies. DefaultAllow and DefaultDeny come from the registry's (or Consul's
// ACL) default policy; DefaultAllowACLsDisabled is Consul's behaviour with ACLs off and only
// changes the reason text.
const (
	DefaultDeny Default = iota
	DefaultAllow
	DefaultAllowACLsDisabled
)

// The reasons Consul gives for a default decision (agent/connect_auth.go). Consul v1.14.0
// reports ReasonDefaultACLs even with ACLs disabled.
const (
	ReasonDefaultACLs         = "Default behavior configured by ACLs"
	ReasonDefaultACLsDisabled = "ACLs disabled, access is allowed by default"
)

// ParseDefault reads the X-Consul-Default-ACL-Policy header value, "allow" or "deny".
func ParseDefault(s string) (Default, error) {
	switch s {
	case "allow":
		return DefaultAllow, nil
	case "deny":
		return DefaultDeny, nil
	}
	return DefaultDeny, fmt.Errorf("authz: default policy %q: want \"allow\" or \"deny\"", s)
}

// Allowed reports the default decision.
func (d Default) Allowed() bool { return d == DefaultAllow || d == DefaultAllowACLsDisabled }

// Reason is Consul's reason text for the default decision.
func (d Default) Reason() string {
	if d == DefaultAllowACLsDisabled {
		return ReasonDefaultACLsDisabled
	}
	return ReasonDefaultACLs
}

// String is the header form: "allow" or "deny".
func (d Default) String() string {
	if d.Allowed() {
		return "allow"
	}
	return "deny"
}

// matches reports whether an intention end (partition, namespace, name) covers a concrete
// service. Wildcards cover anything in their place; partitions must be equal.
func matches(ixnPartition, ixnNS, ixnName, partition, ns, name string) bool {
	if normPartition(ixnPartition) != normPartition(partition) {
		return false
	}
	if ixnNS == "" {
		ixnNS = DefaultNamespace
	}
	if ns == "" {
		ns = DefaultNamespace
	}
	if ixnNS != Wildcard && ixnNS != ns {
		return false
	}
	return ixnName == Wildcard || ixnName == name
}

func normPartition(p string) string {
	if p == DefaultPartition {
		return ""
	}
	return p
}

// Match returns the intentions whose source (by BySource) or destination (by ByDestination)
// covers the named service ("name", "ns/name" or "partition/ns/name"), in evaluation order,
// as GET /v1/connect/intentions/match returns them for one name.
func Match(ixns []*Intention, by MatchType, name string) ([]*Intention, error) {
	p, ns, n, err := ParseServiceName(name)
	if err != nil {
		return nil, err
	}
	out := make([]*Intention, 0, len(ixns))
	for _, x := range ixns {
		var ok bool
		switch by {
		case BySource:
			ok = x.SourcePeer == "" && matches(x.SourcePartition, x.SourceNS, x.SourceName, p, ns, n)
		case ByDestination:
			ok = matches(x.DestinationPartition, x.DestinationNS, x.DestinationName, p, ns, n)
		default:
			return nil, fmt.Errorf("authz: match by %q: want %q or %q", by, BySource, ByDestination)
		}
		if ok {
			out = append(out, x)
		}
	}
	Sort(out)
	return out, nil
}

// sourceMatches is Consul's SpiffeIDService.Authorize match test: the intention's source
// covers the identity (namespace, name and partition; peered sources never match a local
// identity).
func sourceMatches(x *Intention, src spiffe.ServiceID) bool {
	if x.SourcePeer != "" || (x.SourceType != "" && x.SourceType != SourceConsul) {
		return false
	}
	return matches(x.SourcePartition, x.SourceNS, x.SourceName, src.Partition, src.Namespace, src.Service)
}

// decide is the decision an intention makes for a matching source, with Consul's reason.
func decide(x *Intention) (bool, string) {
	if x.IsL7() {
		return false, "Matched L7 intention: " + x.String()
	}
	return x.Action == Allow, "Matched L4 intention: " + x.String()
}

// Authorize decides whether source may connect to destination ("name", "ns/name" or
// "partition/ns/name") under ixns, as Consul's ConnectAuthorize does: the first intention in
// evaluation order whose destination and source match decides (L7 counts as deny), else the
// default. The trust domain and datacenter of the source are not considered (Consul does not
// check them here; the TLS layer has already verified the certificate). For the per-connection
// hot path, build a Table instead.
func Authorize(ixns []*Intention, source spiffe.ServiceID, destination string, def Default) (bool, string, error) {
	matched, err := Match(ixns, ByDestination, destination)
	if err != nil {
		return false, "", err
	}
	for _, x := range matched {
		if sourceMatches(x, source) {
			ok, reason := decide(x)
			return ok, reason, nil
		}
	}
	return def.Allowed(), def.Reason(), nil
}

// Check answers GET /v1/connect/intentions/check: whether source (a service name, "ns/name" or
// "partition/ns/name") may reach destination; L7 intentions count as deny.
func Check(ixns []*Intention, source, destination string, def Default) (bool, error) {
	p, ns, n, err := ParseServiceName(source)
	if err != nil {
		return false, err
	}
	ok, _, err := Authorize(ixns, spiffe.ServiceID{Partition: p, Namespace: ns, Service: n}, destination, def)
	return ok, err
}
