// Package authz is the mesh's authorization: intentions (which service may call which), in
// the JSON shape of Consul's /v1/connect/intentions API, with Consul's validation, precedence
// and evaluation rules, and an immutable precomputed Table for the sidecar's per-connection
// check.
//
// Evaluation follows Consul's ConnectAuthorize: of the intentions whose destination matches,
// highest precedence first, the first whose source matches decides. An L4 intention allows or
// denies by its Action; an L7 intention (one with Permissions) counts as deny at this layer.
// With no match the default policy decides.
package authz

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Wildcard matches any namespace or service name. Only a whole value may be a wildcard.
const Wildcard = "*"

// DefaultNamespace and DefaultPartition are the values used when none is given.
const (
	DefaultNamespace = "default"
	DefaultPartition = "default"
)

// Size limits, Consul's (metaValueMaxLength, metaMaxKeyPairs, metaKeyMaxLength).
const (
	MaxDescriptionLength = 512
	MaxMetaPairs         = 64
	MaxMetaKeyLength     = 128
	MaxMetaValueLength   = 512
)

// Action is what an intention does with a matching connection.
type Action string

// The actions.
const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

// SourceType is the kind of source an intention names; only Consul services exist.
type SourceType string

// SourceConsul is a service in the catalog.
const SourceConsul SourceType = "consul"

// Intention allows or denies connections from a source service to a destination service. Its
// JSON is that of Consul's Intention (github.com/hashicorp/consul/api.Intention), with zero
// timestamps omitted as the Consul server omits them for intentions kept in config entries.
type Intention struct {
	ID                   string     `json:",omitempty"`
	Description          string     `json:",omitempty"`
	SourceNS             string     //
	SourceName           string     //
	DestinationNS        string     //
	DestinationName      string     //
	SourcePartition      string     `json:",omitempty"`
	DestinationPartition string     `json:",omitempty"`
	SourcePeer           string     `json:",omitempty"`
	SourceSamenessGroup  string     `json:",omitempty"`
	SourceType           SourceType //
	Action               Action     `json:",omitempty"`
	// Permissions make the intention L7: evaluated per HTTP request by the proxy. For a
	// connection-level decision an L7 intention counts as deny.
	Permissions []*Permission     `json:",omitempty"`
	Meta        map[string]string `json:",omitempty"`
	// Precedence is computed (UpdatePrecedence); higher is evaluated first.
	Precedence  int
	CreatedAt   time.Time `json:",omitzero"`
	UpdatedAt   time.Time `json:",omitzero"`
	Hash        []byte    `json:",omitempty"`
	CreateIndex uint64
	ModifyIndex uint64
}

// Permission is one L7 rule of an intention.
type Permission struct {
	Action Action
	HTTP   *HTTPPermission `json:",omitempty"`
	JWT    *JWTRequirement `json:",omitempty"`
}

// HTTPPermission matches HTTP requests by path, headers and method.
type HTTPPermission struct {
	PathExact  string                 `json:",omitempty"`
	PathPrefix string                 `json:",omitempty"`
	PathRegex  string                 `json:",omitempty"`
	Header     []HTTPHeaderPermission `json:",omitempty"`
	Methods    []string               `json:",omitempty"`
}

// HTTPHeaderPermission matches one request header.
type HTTPHeaderPermission struct {
	Name       string
	Present    bool   `json:",omitempty"`
	Exact      string `json:",omitempty"`
	Prefix     string `json:",omitempty"`
	Suffix     string `json:",omitempty"`
	Contains   string `json:",omitempty"`
	Regex      string `json:",omitempty"`
	Invert     bool   `json:",omitempty"`
	IgnoreCase bool   `json:",omitempty"`
}

// JWTRequirement requires a JWT from one of the providers.
type JWTRequirement struct {
	Providers []*JWTProvider `json:",omitempty"`
}

// JWTProvider names a jwt-provider config entry and claims to verify.
type JWTProvider struct {
	Name         string                  `json:",omitempty"`
	VerifyClaims []*JWTClaimVerification `json:",omitempty"`
}

// JWTClaimVerification is one claim a JWT must carry.
type JWTClaimVerification struct {
	Path  []string `json:",omitempty"`
	Value string   `json:",omitempty"`
}

// IsL7 reports whether the intention has L7 permissions.
func (x *Intention) IsL7() bool { return len(x.Permissions) > 0 }

// SetDefaults fills what a client may leave out: namespaces "default", SourceType "consul";
// a partition spelled "default" becomes "" (as Consul's API shows it). It then computes the
// precedence. Timestamps and IDs are the store's business.
func (x *Intention) SetDefaults() {
	if x.SourceNS == "" {
		x.SourceNS = DefaultNamespace
	}
	if x.DestinationNS == "" {
		x.DestinationNS = DefaultNamespace
	}
	if x.SourceType == "" {
		x.SourceType = SourceConsul
	}
	if x.SourcePartition == DefaultPartition {
		x.SourcePartition = ""
	}
	if x.DestinationPartition == DefaultPartition {
		x.DestinationPartition = ""
	}
	x.UpdatePrecedence()
}

// UpdatePrecedence sets Precedence from the exactness of the source and destination, Consul's
// rule: the destination's exact parts (2 for ns/name, 1 for ns/*, 0 for */*) give a ceiling
// of 9, 6 or 3, and each wildcard part of the source takes one off. So web→db is 9, *→db 8,
// web→* 6, *→* 5, and */*→*/* 1.
func (x *Intention) UpdatePrecedence() {
	var ceiling int
	switch countExact(x.DestinationNS, x.DestinationName) {
	case 2:
		ceiling = 9
	case 1:
		ceiling = 6
	default:
		ceiling = 3
	}
	x.Precedence = ceiling - (2 - countExact(x.SourceNS, x.SourceName))
}

// countExact counts the exact (non-wildcard) parts of a namespace and name. An empty
// namespace counts as the default one.
func countExact(ns, name string) int {
	if ns == Wildcard {
		return 0
	}
	if name == Wildcard {
		return 1
	}
	return 2
}

// String describes the intention as Consul's server does in authorization reasons:
// "default/web => default/db (ID: <id>, Precedence: 9, Action: ALLOW)", with "Permissions: N"
// in place of the action for an L7 intention and no ID part when there is no ID.
func (x *Intention) String() string {
	var b strings.Builder
	b.WriteString(qualified(x.SourcePartition, x.SourceNS, x.SourceName))
	b.WriteString(" => ")
	b.WriteString(qualified(x.DestinationPartition, x.DestinationNS, x.DestinationName))
	b.WriteString(" (")
	if x.ID != "" {
		b.WriteString("ID: ")
		b.WriteString(x.ID)
		b.WriteString(", ")
	}
	b.WriteString("Precedence: ")
	b.WriteString(strconv.Itoa(x.Precedence))
	if x.IsL7() {
		b.WriteString(", Permissions: ")
		b.WriteString(strconv.Itoa(len(x.Permissions)))
	} else {
		b.WriteString(", Action: ")
		b.WriteString(strings.ToUpper(string(x.Action)))
	}
	b.WriteByte(')')
	return b.String()
}

func qualified(partition, ns, name string) string {
	if ns == "" {
		ns = DefaultNamespace
	}
	if partition != "" && partition != DefaultPartition {
		return partition + "/" + ns + "/" + name
	}
	return ns + "/" + name
}

// FieldError is one failed validation check: the field, its value and what is wrong.
type FieldError struct {
	Field string
	Value string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return "authz: intention: " + e.Field + ": " + e.Msg
	}
	return fmt.Sprintf("authz: intention: %s %q: %s", e.Field, e.Value, e.Msg)
}

// Validate checks the intention as Consul does for a write (after SetDefaults), returning
// every failed check joined, each a *FieldError naming the field and value.
func (x *Intention) Validate() error {
	var errs []error
	bad := func(field, value, msg string) { errs = append(errs, &FieldError{Field: field, Value: value, Msg: msg}) }

	for _, f := range []struct{ field, v string }{
		{"SourceNS", x.SourceNS}, {"SourceName", x.SourceName},
		{"DestinationNS", x.DestinationNS}, {"DestinationName", x.DestinationName},
	} {
		switch {
		case f.v == "":
			bad(f.field, "", "must be set")
		case f.v == Wildcard:
		case strings.Contains(f.v, Wildcard):
			bad(f.field, f.v, "wildcard character '*' cannot be used with partial values")
		default:
			if err := checkName(f.v); err != "" {
				bad(f.field, f.v, err)
			}
		}
	}
	if x.SourceNS == Wildcard && x.SourceName != Wildcard && x.SourceName != "" {
		bad("SourceName", x.SourceName, "exact value cannot follow wildcard namespace")
	}
	if x.DestinationNS == Wildcard && x.DestinationName != Wildcard && x.DestinationName != "" {
		bad("DestinationName", x.DestinationName, "exact value cannot follow wildcard namespace")
	}
	for _, f := range []struct{ field, v string }{{"SourcePartition", x.SourcePartition}, {"DestinationPartition", x.DestinationPartition}} {
		switch f.v {
		case "", DefaultPartition:
		case Wildcard:
			bad(f.field, f.v, "cannot be a wildcard")
		default:
			bad(f.field, f.v, "only the default partition is supported")
		}
	}
	if x.SourcePeer != "" {
		bad("SourcePeer", x.SourcePeer, "cluster peering is not supported")
	}
	if x.SourceSamenessGroup != "" {
		bad("SourceSamenessGroup", x.SourceSamenessGroup, "sameness groups are not supported")
	}
	if x.SourceType != SourceConsul {
		bad("SourceType", string(x.SourceType), "must be set to 'consul'")
	}
	if len(x.Permissions) == 0 {
		if x.Action != Allow && x.Action != Deny {
			bad("Action", string(x.Action), "must be set to 'allow' or 'deny'")
		}
	} else {
		if x.Action != "" {
			bad("Action", string(x.Action), "must be omitted if Permissions are specified")
		}
		for i, p := range x.Permissions {
			validatePermission(fmt.Sprintf("Permissions[%d]", i), p, bad)
		}
	}
	if len(x.Description) > MaxDescriptionLength {
		bad("Description", "", fmt.Sprintf("exceeds maximum length %d", MaxDescriptionLength))
	}
	if len(x.Meta) > MaxMetaPairs {
		bad("Meta", "", fmt.Sprintf("exceeds maximum element count %d", MaxMetaPairs))
	}
	keys := make([]string, 0, len(x.Meta))
	for k := range x.Meta {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic error order
	for _, k := range keys {
		switch {
		case k == "":
			bad("Meta", "", "key cannot be blank")
		case len(k) > MaxMetaKeyLength:
			bad("Meta key", k, fmt.Sprintf("exceeds maximum length %d", MaxMetaKeyLength))
		}
		if len(x.Meta[k]) > MaxMetaValueLength {
			bad("Meta value for key", k, fmt.Sprintf("exceeds maximum length %d", MaxMetaValueLength))
		}
	}
	return errors.Join(errs...)
}

// checkName returns why a namespace or service name cannot appear in a SPIFFE identity, or "".
// Names that no certificate can carry would never match, so they are rejected.
func checkName(v string) string {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Sprintf("invalid character %q (allowed: letters, digits, '.', '-', '_')", c)
		}
	}
	if v == "." || v == ".." {
		return "dot names are not allowed"
	}
	return ""
}

var validMethods = map[string]bool{
	"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true,
	"DELETE": true, "CONNECT": true, "OPTIONS": true, "TRACE": true,
}

func validatePermission(prefix string, p *Permission, bad func(field, value, msg string)) {
	if p == nil {
		bad(prefix, "", "must not be null")
		return
	}
	if p.Action != Allow && p.Action != Deny {
		bad(prefix+".Action", string(p.Action), "must be set to 'allow' or 'deny'")
	}
	if p.HTTP == nil && p.JWT == nil {
		bad(prefix, "", "HTTP or JWT is required")
	}
	if h := p.HTTP; h != nil {
		paths := 0
		for _, f := range []struct{ field, v string }{{"PathExact", h.PathExact}, {"PathPrefix", h.PathPrefix}, {"PathRegex", h.PathRegex}} {
			if f.v == "" {
				continue
			}
			paths++
			if f.field == "PathRegex" {
				if _, err := regexp.Compile(f.v); err != nil {
					bad(prefix+".HTTP.PathRegex", f.v, "invalid regular expression: "+err.Error())
				}
			} else if !strings.HasPrefix(f.v, "/") {
				bad(prefix+".HTTP."+f.field, f.v, "should be a path starting with '/'")
			}
		}
		if paths > 1 {
			bad(prefix+".HTTP", "", "should only contain at most one of PathExact, PathPrefix, or PathRegex")
		}
		for j, hd := range h.Header {
			hp := fmt.Sprintf("%s.HTTP.Header[%d]", prefix, j)
			if hd.Name == "" {
				bad(hp, "", "missing required Name field")
			}
			n := 0
			for _, set := range []bool{hd.Present, hd.Exact != "", hd.Prefix != "", hd.Suffix != "", hd.Contains != "", hd.Regex != ""} {
				if set {
					n++
				}
			}
			if n != 1 {
				bad(hp, hd.Name, "should only contain one of Present, Exact, Prefix, Suffix, Contains, or Regex")
			}
			if hd.Regex != "" {
				if _, err := regexp.Compile(hd.Regex); err != nil {
					bad(hp+".Regex", hd.Regex, "invalid regular expression: "+err.Error())
				}
			}
		}
		seen := map[string]bool{}
		for _, m := range h.Methods {
			if !validMethods[m] {
				bad(prefix+".HTTP.Methods", m, "is not a valid HTTP method")
			} else if seen[m] {
				bad(prefix+".HTTP.Methods", m, "appears more than once")
			}
			seen[m] = true
		}
		if paths == 0 && len(h.Header) == 0 && len(h.Methods) == 0 {
			bad(prefix+".HTTP", "", "should not be empty")
		}
	}
	if j := p.JWT; j != nil {
		for k, pr := range j.Providers {
			if pr == nil || pr.Name == "" {
				bad(fmt.Sprintf("%s.JWT.Providers[%d].Name", prefix, k), "", "is required")
			}
		}
	}
}

// Less orders intentions for evaluation: higher precedence first, then lexicographically by
// (SourceNS, SourceName, DestinationNS, DestinationName) so the order is deterministic.
func Less(a, b *Intention) bool {
	if a.Precedence != b.Precedence {
		return a.Precedence > b.Precedence
	}
	if a.SourceNS != b.SourceNS {
		return a.SourceNS < b.SourceNS
	}
	if a.SourceName != b.SourceName {
		return a.SourceName < b.SourceName
	}
	if a.DestinationNS != b.DestinationNS {
		return a.DestinationNS < b.DestinationNS
	}
	return a.DestinationName < b.DestinationName
}

// Sort sorts intentions into evaluation order (see Less), stably.
func Sort(ixns []*Intention) {
	slices.SortStableFunc(ixns, func(a, b *Intention) int {
		switch {
		case Less(a, b):
			return -1
		case Less(b, a):
			return 1
		}
		return 0
	})
}

// ParseServiceName splits "name", "ns/name" or "partition/ns/name", as the intentions API
// accepts for source, destination and match names. Missing parts are the defaults; the
// partition "default" is returned as "".
func ParseServiceName(s string) (partition, namespace, name string, err error) {
	parts := strings.Split(s, "/")
	switch len(parts) {
	case 1:
		namespace, name = DefaultNamespace, parts[0]
	case 2:
		namespace, name = parts[0], parts[1]
	case 3:
		partition, namespace, name = parts[0], parts[1], parts[2]
	default:
		return "", "", "", fmt.Errorf("authz: service name %q: at most two '/' allowed (partition/namespace/name)", s)
	}
	if name == "" || namespace == "" {
		return "", "", "", fmt.Errorf("authz: service name %q: empty namespace or name", s)
	}
	if partition == DefaultPartition {
		partition = ""
	}
	return partition, namespace, name, nil
}
