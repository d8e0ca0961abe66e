// Package ca is the mesh's certificate authority, compatible with Consul's built-in Connect CA
// provider: ECDSA P-256 roots with a SPIFFE signing URI and a DNS name constraint on the trust
// domain, and leaves whose only identity is a SPIFFE service URI SAN.
//
// # Rotation
//
// Rotate makes a new root the active one and does two things so that no connection fails
// while the mesh catches up:
//
//  1. The old root stays in the trust bundle (RootList) until no leaf it signed can still be
//     valid: Prune drops an inactive root only 2 × LeafCertTTL after it was rotated out (as
//     Consul does) and never before the last leaf it signed has expired. So a peer that has
//     the new bundle still accepts old leaves.
//  2. The new root is cross-signed by the old root's key, and that certificate travels as an
//     intermediate after every new leaf (LeafCert.CertPEM, like Consul's). So a peer that has
//     not yet fetched the new bundle, and trusts only the old root, still accepts new leaves:
//     leaf → new root (cross-signed) → old root.
//
// Either alone leaves a window: without (1) old leaves fail at peers that already switched;
// without (2) new leaves fail at peers whose blocking query on the roots has not returned
// yet, which the registry cannot rule out because it hands out a leaf the moment a sidecar
// asks. With both, every pairing of {old, new} leaf and {old, new} bundle verifies.
//
// # Persistence
//
// Marshal returns the whole state (roots with their PEM-encoded keys, the active root, trust
// domain, serial counter and configuration) for the registry's store; Load restores it. Every
// method that issues or changes something (IssueLeaf, SignCSR, Rotate, Prune, SetConfig)
// changes that state, and the registry should persist it before publishing the result so that
// serial numbers are never reused after a restart.
package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/podmesh/podmesh/tls/spiffe"
)

// The key type every root and leaf uses.
const (
	PrivateKeyType = "ec"
	PrivateKeyBits = 256
)

// RootName is the CARoot.Name of every root, mirroring Consul's "Consul CA Primary Cert".
const RootName = "Podmesh CA Primary Cert"

// CA is the certificate authority. It is safe for concurrent use.
type CA struct {
	mu          sync.Mutex
	cfg         Config
	clusterID   string
	trustDomain string
	serial      uint64 // last serial number used
	roots       []*root
	active      *root
}

// root is one CA root with its key.
type root struct {
	id            string // SHA-1 fingerprint of the DER, colon-hex
	serial        uint64
	cert          *x509.Certificate
	certPEM       string
	key           *ecdsa.PrivateKey
	keyPEM        string
	keyID         []byte
	intermediates []string // PEM; cross-signed copies of this root (by the previous root)
	rotatedOutAt  time.Time
	lastLeafAfter time.Time // NotAfter of the last leaf this root signed
}

// New creates a CA for the cluster with the given ID (normally a UUID; the trust domain is
// "<id>.consul"), with a fresh root.
func New(clusterID string, cfg Config) (*CA, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	td, err := spiffe.TrustDomainFromClusterID(clusterID)
	if err != nil {
		return nil, fmt.Errorf("ca: new: %w", err)
	}
	c := &CA{cfg: cfg.withDefaults(), clusterID: clusterID, trustDomain: td}
	r, err := c.newRootLocked(nil)
	if err != nil {
		return nil, err
	}
	c.roots = []*root{r}
	c.active = r
	return c, nil
}

// TrustDomain returns "<cluster-id>.consul".
func (c *CA) TrustDomain() string { return c.trustDomain } // immutable after New/Load

// ClusterID returns the cluster ID the trust domain was derived from.
func (c *CA) ClusterID() string { return c.clusterID }

// Config returns the configuration with defaults applied.
func (c *CA) Config() Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}

// SetConfig replaces the configuration (a new LeafCertTTL applies to leaves issued from now
// on). The clock is kept unless cfg sets one.
func (c *CA) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cfg.Now == nil {
		cfg.Now = c.cfg.Now
	}
	c.cfg = cfg.withDefaults()
	return nil
}

// ServiceID returns the identity this CA issues for a service in a datacenter, in the default
// namespace and partition.
func (c *CA) ServiceID(datacenter, service string) spiffe.ServiceID {
	return spiffe.ServiceID{TrustDomain: c.trustDomain, Namespace: spiffe.DefaultNamespace, Datacenter: datacenter, Service: service}
}

// ActiveRootID returns the ID of the root that signs new leaves.
func (c *CA) ActiveRootID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active.id
}

// RotationDue reports whether the active root is older than RotationPeriod. A root's age
// counts from when it was made, not from its NotBefore, which is backdated by ClockSkew (so a
// RotationPeriod shorter than the skew does not make every new root due at once).
func (c *CA) RotationDue() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg.RotationPeriod < 0 {
		return false
	}
	made := c.active.cert.NotBefore.Add(c.cfg.ClockSkew)
	return c.cfg.Now().Sub(made) >= c.cfg.RotationPeriod
}

// IssueLeaf generates a P-256 key and signs a leaf for id, which must be a service in this
// CA's trust domain. The result carries the private key.
func (c *CA) IssueLeaf(id spiffe.ServiceID) (*LeafCert, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("ca: issue leaf for %q: %w", id.String(), err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: issue leaf for %q: generate key: %w", id.String(), err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ca: issue leaf for %q: encode key: %w", id.String(), err)
	}
	leaf, err := c.sign(id, &key.PublicKey)
	if err != nil {
		return nil, err
	}
	leaf.PrivateKeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	return leaf, nil
}

// SignCSR signs a leaf for a certificate request. The request must be correctly self-signed,
// carry an ECDSA P-256 key and exactly one SAN, a URI naming a service in this CA's trust
// domain (Consul's CanSign rule). The result has no private key.
func (c *CA) SignCSR(csr *x509.CertificateRequest) (*LeafCert, error) {
	if csr == nil {
		return nil, errors.New("ca: sign CSR: nil request")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("ca: sign CSR: signature: %w", err)
	}
	if n := len(csr.URIs); n != 1 {
		return nil, fmt.Errorf("ca: sign CSR: want exactly one URI SAN, got %d", n)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return nil, fmt.Errorf("ca: sign CSR for %q: only a URI SAN is allowed, got DNS %q IP %v email %q",
			csr.URIs[0], csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	id, err := spiffe.FromURI(csr.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("ca: sign CSR: URI SAN is not a service ID: %w", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("ca: sign CSR for %q: key must be ECDSA P-256, got %s", id.String(), keyDesc(csr.PublicKey))
	}
	return c.sign(id, pub)
}

// ParseCSR decodes a PEM "CERTIFICATE REQUEST".
func ParseCSR(pemData string) (*x509.CertificateRequest, error) {
	b, _ := pem.Decode([]byte(pemData))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("ca: parse CSR: no PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca: parse CSR: %w", err)
	}
	return csr, nil
}

func keyDesc(pub any) string {
	if k, ok := pub.(*ecdsa.PublicKey); ok {
		return "ECDSA " + k.Curve.Params().Name
	}
	return fmt.Sprintf("%T", pub)
}

// sign issues a leaf for id over pub with the active root.
func (c *CA) sign(id spiffe.ServiceID, pub *ecdsa.PublicKey) (*LeafCert, error) {
	if id.TrustDomain != c.trustDomain {
		return nil, fmt.Errorf("ca: sign %q: trust domain %q is not this CA's %q", id.String(), id.TrustDomain, c.trustDomain)
	}
	pkix, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("ca: sign %q: encode public key: %w", id.String(), err)
	}
	skid := keyID(pkix)

	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.active
	now := c.cfg.Now()
	// Only NotBefore is backdated (for peers with slow clocks); the lifetime counts from
	// now. Certificates hold whole seconds: NotBefore rounds down (further back), NotAfter
	// up, so the leaf lives at least LeafCertTTL from now.
	notBefore := now.Add(-c.cfg.skew()).Truncate(time.Second)
	notAfter := ceilSecond(now.Add(c.cfg.LeafCertTTL))
	if notAfter.After(r.cert.NotAfter) {
		notAfter = r.cert.NotAfter
	}
	c.serial++
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).SetUint64(c.serial),
		Subject:               pkixName(id.Service),
		URIs:                  []*url.URL{id.URI()},
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
		BasicConstraintsValid: true,
		IsCA:                  false,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment |
			x509.KeyUsageDataEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		NotBefore:      notBefore,
		NotAfter:       notAfter,
		SubjectKeyId:   skid,
		AuthorityKeyId: r.keyID,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, pub, r.key)
	if err != nil {
		c.serial--
		return nil, fmt.Errorf("ca: sign %q: %w", id.String(), err)
	}
	if notAfter.After(r.lastLeafAfter) {
		r.lastLeafAfter = notAfter
	}
	var chain strings.Builder
	chain.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	for _, im := range r.intermediates {
		chain.WriteString(im)
	}
	return &LeafCert{
		SerialNumber: HexString(tmpl.SerialNumber.Bytes()),
		CertPEM:      chain.String(),
		Service:      id.Service,
		ServiceURI:   id.String(),
		ValidAfter:   notBefore.UTC(),
		ValidBefore:  notAfter.UTC(),
		IssuedAt:     now,
		Namespace:    id.Namespace,
		RootID:       r.id,
	}, nil
}

// ceilSecond rounds t up to a whole second.
func ceilSecond(t time.Time) time.Time {
	if d := t.Truncate(time.Second); !d.Equal(t) {
		return d.Add(time.Second)
	}
	return t
}

// Rotate makes a new root, cross-signed by the current one, the active root and returns its
// ID. The old root stays trusted until Prune removes it.
func (c *CA) Rotate() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rotateLocked(nil)
}

// RotateWithKey is Rotate with a root key chosen by the operator (the PrivateKey of Consul's
// built-in provider configuration) instead of a generated one. The key must be ECDSA P-256.
func (c *CA) RotateWithKey(key *ecdsa.PrivateKey) (string, error) {
	if key == nil || key.Curve != elliptic.P256() {
		desc := "nil"
		if key != nil {
			desc = "ECDSA " + key.Curve.Params().Name
		}
		return "", fmt.Errorf("ca: rotate: root key must be ECDSA P-256, got %s", desc)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rotateLocked(key)
}

func (c *CA) rotateLocked(key *ecdsa.PrivateKey) (string, error) {
	old := c.active
	nr, err := c.newRootLocked(key)
	if err != nil {
		return "", err
	}
	now := c.cfg.Now()
	// The cross-signed copy is needed only while peers may trust the old root alone and new
	// leaves are being checked; after 2 × LeafCertTTL the old root is pruned and it is useless.
	xc := *nr.cert
	c.serial++
	xc.SerialNumber = new(big.Int).SetUint64(c.serial)
	xc.NotBefore = now.Add(-c.cfg.ClockSkew).Truncate(time.Second)
	xc.NotAfter = now.Add(2*c.cfg.LeafCertTTL + c.cfg.ClockSkew).Truncate(time.Second)
	if xc.NotAfter.After(old.cert.NotAfter) {
		xc.NotAfter = old.cert.NotAfter
	}
	xc.AuthorityKeyId = old.keyID
	xc.SignatureAlgorithm = x509.ECDSAWithSHA256
	der, err := x509.CreateCertificate(rand.Reader, &xc, old.cert, &nr.key.PublicKey, old.key)
	if err != nil {
		c.serial--
		return "", fmt.Errorf("ca: rotate: cross-sign new root: %w", err)
	}
	nr.intermediates = []string{string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	old.rotatedOutAt = now
	c.roots = append(c.roots, nr)
	c.active = nr
	return nr.id, nil
}

// Prune removes the inactive roots that no valid leaf can chain to any more: rotated out more
// than 2 × LeafCertTTL ago and past the expiry of the last leaf they signed. It also drops
// expired cross-signed intermediates. It returns the IDs of the roots removed.
func (c *CA) Prune() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	var removed []string
	kept := c.roots[:0]
	for _, r := range c.roots {
		if r != c.active && !r.rotatedOutAt.IsZero() &&
			now.After(r.rotatedOutAt.Add(2*c.cfg.LeafCertTTL)) && now.After(r.lastLeafAfter) {
			removed = append(removed, r.id)
			continue
		}
		kept = append(kept, r)
	}
	for i := len(kept); i < len(c.roots); i++ {
		c.roots[i] = nil
	}
	c.roots = kept
	for _, r := range c.roots {
		ims := r.intermediates[:0]
		for _, im := range r.intermediates {
			if cert, err := parseCertPEM(im); err == nil && now.Before(cert.NotAfter) {
				ims = append(ims, im)
			}
		}
		if len(ims) == 0 {
			ims = nil
		}
		r.intermediates = ims
	}
	return removed
}

// newRootLocked makes a self-signed root with the next serial number over key, generating
// the key when it is nil.
func (c *CA) newRootLocked(key *ecdsa.PrivateKey) (*root, error) {
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, fmt.Errorf("ca: new root: generate key: %w", err)
		}
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("ca: new root: encode public key: %w", err)
	}
	kid := keyID(pub)
	now := c.cfg.Now()
	serial := c.serial + 1
	tmpl := &x509.Certificate{
		SerialNumber:                new(big.Int).SetUint64(serial),
		Subject:                     pkixName(fmt.Sprintf("Podmesh CA %d", serial)),
		URIs:                        []*url.URL{spiffe.SigningID{TrustDomain: c.trustDomain}.URI()},
		SignatureAlgorithm:          x509.ECDSAWithSHA256,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		NotBefore:                   now.Add(-c.cfg.ClockSkew).Truncate(time.Second),
		NotAfter:                    now.Add(c.cfg.RootCertTTL).Truncate(time.Second),
		SubjectKeyId:                kid,
		AuthorityKeyId:              kid,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         []string{c.trustDomain},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("ca: new root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: new root: parse: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ca: new root: encode key: %w", err)
	}
	c.serial = serial
	return &root{
		id:      Fingerprint(der),
		serial:  serial,
		cert:    cert,
		certPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		key:     key,
		keyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})),
		keyID:   kid,
	}, nil
}

func pkixName(cn string) pkix.Name { return pkix.Name{CommonName: cn} }

// keyID is Consul's connect.KeyId: the SHA-256 of the PKIX DER of the public key.
func keyID(pkixDER []byte) []byte {
	sum := sha256.Sum256(pkixDER)
	return sum[:]
}

// Fingerprint is Consul's CalculateCertFingerprint: the SHA-1 of a certificate's DER,
// lower-case colon-hex. It is a root's ID.
func Fingerprint(der []byte) string {
	sum := sha1.Sum(der)
	return HexString(sum[:])
}

// HexString formats bytes as lower-case colon-separated hex ("0a:ff"), as Consul's
// connect.HexString does for serial numbers and key IDs.
func HexString(b []byte) string {
	if len(b) == 0 {
		return "00"
	}
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 3*len(b)-1)
	for i, v := range b {
		if i > 0 {
			out = append(out, ':')
		}
		out = append(out, digits[v>>4], digits[v&0xf])
	}
	return string(out)
}

func parseCertPEM(s string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(b.Bytes)
}
