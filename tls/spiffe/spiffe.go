// Package spiffe parses and formats the SPIFFE identities of the mesh, in Consul's form, so
// that certificates issued by Podmesh's registry and by a Consul agent are interchangeable:
//
//	service:  spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>
//	          spiffe://<trust-domain>/ap/<partition>/ns/<namespace>/dc/<datacenter>/svc/<service>
//	signing:  spiffe://<trust-domain>
//
// The trust domain is "<cluster-id>.consul", lower-cased (Consul's SpiffeIDSigningForCluster).
// Parsing is strict: one scheme, a lower-case trust domain, no port, user, query, fragment or
// percent-encoding, and path segments from the SPIFFE character set; each error names the part
// that is wrong. A certificate's identity is its URI SAN only; the CN is ignored.
package spiffe

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// DefaultNamespace and DefaultPartition are the values Consul uses when none is given.
const (
	DefaultNamespace = "default"
	DefaultPartition = "default"
)

// MaxLength is the longest SPIFFE ID accepted, from the SPIFFE ID specification (2048 bytes).
const MaxLength = 2048

const scheme = "spiffe://"

// ServiceID is the identity of a service in the mesh. It is comparable, so it can key a map.
// Partition is "" for the default partition (Parse normalises "default" to ""); Namespace is
// always set ("default" unless another is named).
type ServiceID struct {
	TrustDomain string
	Partition   string
	Namespace   string
	Datacenter  string
	Service     string
}

// String returns the canonical URI: the /ap/ prefix appears only for a non-default partition,
// as Consul's SpiffeIDService.URI does.
func (id ServiceID) String() string {
	ns := id.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	var b strings.Builder
	b.Grow(len(scheme) + len(id.TrustDomain) + len(id.Partition) + len(ns) + len(id.Datacenter) + len(id.Service) + 20)
	b.WriteString(scheme)
	b.WriteString(id.TrustDomain)
	if id.Partition != "" && id.Partition != DefaultPartition {
		b.WriteString("/ap/")
		b.WriteString(id.Partition)
	}
	b.WriteString("/ns/")
	b.WriteString(ns)
	b.WriteString("/dc/")
	b.WriteString(id.Datacenter)
	b.WriteString("/svc/")
	b.WriteString(id.Service)
	return b.String()
}

// URI returns the identity as a *url.URL, for a certificate's URIs field.
func (id ServiceID) URI() *url.URL {
	u, err := url.Parse(id.String())
	if err != nil {
		// Unreachable for IDs that Validate accepts; fall back to the raw form.
		return &url.URL{Scheme: "spiffe", Host: id.TrustDomain}
	}
	return u
}

// PartitionOrDefault returns the partition, "default" when unset.
func (id ServiceID) PartitionOrDefault() string {
	if id.Partition == "" {
		return DefaultPartition
	}
	return id.Partition
}

// Validate reports whether every part of the identity is well formed, naming the first bad
// part. Parse only returns IDs that validate.
func (id ServiceID) Validate() error {
	if err := ValidateTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if id.Partition != "" {
		if err := validateSegment("partition", id.Partition); err != nil {
			return err
		}
	}
	if err := validateSegment("namespace", id.Namespace); err != nil {
		return err
	}
	if err := validateSegment("datacenter", id.Datacenter); err != nil {
		return err
	}
	return validateSegment("service", id.Service)
}

// SigningID is the identity of a CA: spiffe://<trust-domain>.
type SigningID struct {
	TrustDomain string
}

// String returns "spiffe://<trust-domain>".
func (id SigningID) String() string { return scheme + id.TrustDomain }

// URI returns the identity as a *url.URL.
func (id SigningID) URI() *url.URL { return &url.URL{Scheme: "spiffe", Host: id.TrustDomain} }

// CanSign reports whether a CA with this identity may sign a leaf for svc: the trust domains
// must be equal, compared case-insensitively as Consul's SpiffeIDSigning.CanSign does.
func (id SigningID) CanSign(svc ServiceID) bool {
	return id.TrustDomain != "" && strings.EqualFold(id.TrustDomain, svc.TrustDomain)
}

// TrustDomainFromClusterID returns "<cluster-id>.consul" lower-cased, Consul's trust domain
// for a cluster. The cluster ID is normally a UUID; anything that makes a valid trust domain
// is accepted.
func TrustDomainFromClusterID(clusterID string) (string, error) {
	if clusterID == "" {
		return "", errors.New("spiffe: cluster ID is empty")
	}
	td := strings.ToLower(clusterID) + ".consul"
	if err := ValidateTrustDomain(td); err != nil {
		return "", fmt.Errorf("spiffe: cluster ID %q: %w", clusterID, err)
	}
	return td, nil
}

// Parse parses a service identity. Either form is accepted (with or without /ap/); the
// partition "default" is normalised to "".
func Parse(s string) (ServiceID, error) {
	host, path, err := splitURI(s)
	if err != nil {
		return ServiceID{}, err
	}
	if path == "" {
		return ServiceID{}, fmt.Errorf("spiffe: parse %q: path is empty: a signing ID, not a service ID", s)
	}
	id, err := parseServicePath(path)
	if err != nil {
		return ServiceID{}, fmt.Errorf("spiffe: parse %q: %w", s, err)
	}
	id.TrustDomain = host
	return id, nil
}

// ParseSigning parses a signing (CA) identity: spiffe://<trust-domain> with no path.
func ParseSigning(s string) (SigningID, error) {
	host, path, err := splitURI(s)
	if err != nil {
		return SigningID{}, err
	}
	if path != "" {
		return SigningID{}, fmt.Errorf("spiffe: parse %q: signing ID must have no path, got %q", s, path)
	}
	return SigningID{TrustDomain: host}, nil
}

// FromURI parses a service identity from a certificate's URI SAN, which crypto/x509 has
// already split into parts. It applies the same rules as Parse.
func FromURI(u *url.URL) (ServiceID, error) {
	if u == nil {
		return ServiceID{}, errors.New("spiffe: nil URI")
	}
	if u.Scheme != "spiffe" || u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery ||
		u.Fragment != "" || u.RawFragment != "" || u.RawPath != "" || u.OmitHost {
		return Parse(u.String()) // the slow path produces the precise error
	}
	if len(u.Host)+len(u.Path)+len(scheme) > MaxLength {
		return ServiceID{}, fmt.Errorf("spiffe: parse URI: longer than %d bytes", MaxLength)
	}
	if err := ValidateTrustDomain(u.Host); err != nil {
		return ServiceID{}, fmt.Errorf("spiffe: parse %q: %w", u.String(), err)
	}
	if u.Path == "" {
		return ServiceID{}, fmt.Errorf("spiffe: parse %q: path is empty: a signing ID, not a service ID", u.String())
	}
	id, err := parseServicePath(u.Path)
	if err != nil {
		return ServiceID{}, fmt.Errorf("spiffe: parse %q: %w", u.String(), err)
	}
	id.TrustDomain = u.Host
	return id, nil
}

// splitURI checks the scheme, length and trust domain and returns the trust domain and the
// path ("" or starting with "/").
func splitURI(s string) (host, path string, err error) {
	if len(s) > MaxLength {
		return "", "", fmt.Errorf("spiffe: parse %.40q...: longer than %d bytes", s, MaxLength)
	}
	if !strings.HasPrefix(s, scheme) {
		return "", "", fmt.Errorf("spiffe: parse %q: scheme must be %q", s, scheme)
	}
	rest := s[len(scheme):]
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		return "", "", fmt.Errorf("spiffe: parse %q: query or fragment %q not allowed", s, rest[i:])
	}
	host, path = rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		host, path = rest[:i], rest[i:]
	}
	if err := ValidateTrustDomain(host); err != nil {
		return "", "", fmt.Errorf("spiffe: parse %q: %w", s, err)
	}
	if path == "/" {
		return "", "", fmt.Errorf("spiffe: parse %q: path %q: trailing slash", s, path)
	}
	return host, path, nil
}

// parseServicePath parses "/ns/N/dc/D/svc/S" or "/ap/P/ns/N/dc/D/svc/S" without allocating.
func parseServicePath(path string) (ServiceID, error) {
	var id ServiceID
	rest := path
	next := func() (string, bool) {
		if len(rest) == 0 || rest[0] != '/' {
			return "", false
		}
		rest = rest[1:]
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			seg := rest
			rest = ""
			return seg, true
		}
		seg := rest[:i]
		rest = rest[i:]
		return seg, true
	}
	// want reads the literal key then its value, checking the value as the named part.
	want := func(key, part string) (string, error) {
		k, ok := next()
		if !ok || k != key {
			return "", fmt.Errorf("path %q: expected segment %q, got %q", path, key, k)
		}
		v, ok := next()
		if !ok {
			return "", fmt.Errorf("path %q: %s is missing", path, part)
		}
		if err := validateSegment(part, v); err != nil {
			return "", err
		}
		return v, nil
	}
	if strings.HasPrefix(path, "/ap/") {
		p, err := want("ap", "partition")
		if err != nil {
			return id, err
		}
		if p != DefaultPartition {
			id.Partition = p
		}
	}
	var err error
	if id.Namespace, err = want("ns", "namespace"); err != nil {
		return id, err
	}
	if id.Datacenter, err = want("dc", "datacenter"); err != nil {
		return id, err
	}
	if id.Service, err = want("svc", "service"); err != nil {
		return id, err
	}
	if rest != "" {
		return id, fmt.Errorf("path %q: unexpected %q after the service", path, rest)
	}
	return id, nil
}

// ValidateTrustDomain checks a trust domain against the SPIFFE rules: non-empty, at most 255
// bytes, only lower-case letters, digits, '.', '-' and '_'.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return errors.New("trust domain is empty")
	}
	if len(td) > 255 {
		return fmt.Errorf("trust domain %.40q...: longer than 255 bytes", td)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '-', c == '_':
		case c >= 'A' && c <= 'Z':
			return fmt.Errorf("trust domain %q: upper-case %q not allowed (trust domains are lower case)", td, c)
		case c == ':':
			return fmt.Errorf("trust domain %q: port not allowed", td)
		case c == '@':
			return fmt.Errorf("trust domain %q: user info not allowed", td)
		default:
			return fmt.Errorf("trust domain %q: invalid character %q", td, c)
		}
	}
	return nil
}

// validateSegment checks one path value (a partition, namespace, datacenter or service name):
// non-empty, not "." or "..", only letters, digits, '.', '-' and '_' (the SPIFFE path
// character set; percent-encoding is not accepted).
func validateSegment(part, v string) error {
	if v == "" {
		return fmt.Errorf("%s is empty", part)
	}
	if v == "." || v == ".." {
		return fmt.Errorf("%s %q: dot segments not allowed", part, v)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-', c == '_':
		case c == '%':
			return fmt.Errorf("%s %q: percent-encoding not allowed", part, v)
		default:
			return fmt.Errorf("%s %q: invalid character %q", part, v, c)
		}
	}
	return nil
}
