package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podmesh/podmesh/tls/spiffe"
)

const clusterID = "11111111-2222-3333-4444-555555555555"

var (
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidNameConstraints  = asn1.ObjectIdentifier{2, 5, 29, 30}
	oidSAN              = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidEKU              = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidSKID             = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidAKID             = asn1.ObjectIdentifier{2, 5, 29, 35}
)

// fakeClock is a settable clock for the CA.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newCA(t *testing.T, cfg Config) *CA {
	t.Helper()
	c, err := New(clusterID, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func ext(t *testing.T, c *x509.Certificate, oid asn1.ObjectIdentifier) (critical, ok bool) {
	t.Helper()
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e.Critical, true
		}
	}
	return false, false
}

func mustCert(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	c, err := parseCertPEM(s)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	return c
}

// chain splits a PEM bundle into certificates.
func chain(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("parse chain: %v", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatal("empty chain")
	}
	return out
}

// verify checks a leaf's chain (leaf then intermediates, as a TLS peer presents it) against
// the given roots at time at, for both client and server use.
func verify(t *testing.T, leaf *LeafCert, roots []Root, at time.Time) error {
	t.Helper()
	certs := chain(t, leaf.CertPEM)
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(mustCert(t, r.RootCert))
	}
	ims := x509.NewCertPool()
	for _, c := range certs[1:] {
		ims.AddCert(c)
	}
	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: ims, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
			return err
		}
	}
	return nil
}

func TestRootProfile(t *testing.T) {
	clk := newClock()
	c := newCA(t, Config{Now: clk.Now})
	td := clusterID + ".consul"
	if c.TrustDomain() != td {
		t.Fatalf("TrustDomain = %q, want %q", c.TrustDomain(), td)
	}
	l := c.Roots()
	if len(l.Roots) != 1 || !l.Roots[0].Active || l.ActiveRootID != l.Roots[0].ID || l.TrustDomain != td {
		t.Fatalf("roots %+v", l)
	}
	r := l.Roots[0]
	cert := mustCert(t, r.RootCert)

	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		t.Errorf("IsCA %v BasicConstraintsValid %v", cert.IsCA, cert.BasicConstraintsValid)
	}
	if crit, ok := ext(t, cert, oidBasicConstraints); !ok || !crit {
		t.Errorf("BasicConstraints present %v critical %v, want critical", ok, crit)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign | x509.KeyUsageCRLSign; cert.KeyUsage != want {
		t.Errorf("KeyUsage %b, want %b", cert.KeyUsage, want)
	}
	if crit, ok := ext(t, cert, oidKeyUsage); !ok || !crit {
		t.Errorf("KeyUsage present %v critical %v, want critical", ok, crit)
	}
	if len(cert.ExtKeyUsage) != 0 {
		t.Errorf("root has EKU %v", cert.ExtKeyUsage)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://"+td {
		t.Errorf("URIs %v, want [spiffe://%s]", cert.URIs, td)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		t.Errorf("root has other SANs: %v %v %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
	}
	if crit, ok := ext(t, cert, oidNameConstraints); !ok || !crit {
		t.Errorf("NameConstraints present %v critical %v, want critical", ok, crit)
	}
	if !cert.PermittedDNSDomainsCritical || len(cert.PermittedDNSDomains) != 1 || cert.PermittedDNSDomains[0] != td {
		t.Errorf("PermittedDNSDomains %v critical %v, want [%s] critical", cert.PermittedDNSDomains, cert.PermittedDNSDomainsCritical, td)
	}
	if cert.Subject.CommonName != fmt.Sprintf("Podmesh CA %d", r.SerialNumber) {
		t.Errorf("CN %q, serial %d", cert.Subject.CommonName, r.SerialNumber)
	}
	if cert.SerialNumber.Uint64() != r.SerialNumber {
		t.Errorf("cert serial %v, view %d", cert.SerialNumber, r.SerialNumber)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Errorf("key %T sig %v, want ECDSA P-256 with SHA-256", cert.PublicKey, cert.SignatureAlgorithm)
	}
	pkixDER, _ := x509.MarshalPKIXPublicKey(pub)
	wantKID := sha256.Sum256(pkixDER)
	if string(cert.SubjectKeyId) != string(wantKID[:]) || string(cert.AuthorityKeyId) != string(wantKID[:]) {
		t.Errorf("SKID %x AKID %x, want both %x", cert.SubjectKeyId, cert.AuthorityKeyId, wantKID)
	}
	for _, oid := range []asn1.ObjectIdentifier{oidSKID, oidAKID} {
		if _, ok := ext(t, cert, oid); !ok {
			t.Errorf("extension %v missing", oid)
		}
	}
	sum := sha1.Sum(cert.Raw)
	if r.ID != colonHex(sum[:]) {
		t.Errorf("ID %q, want SHA-1 of DER %q", r.ID, colonHex(sum[:]))
	}
	if r.SigningKeyID != colonHex(wantKID[:]) {
		t.Errorf("SigningKeyID %q, want %q", r.SigningKeyID, colonHex(wantKID[:]))
	}
	if r.Name != RootName || r.PrivateKeyType != "ec" || r.PrivateKeyBits != 256 || r.ExternalTrustDomain != clusterID {
		t.Errorf("view fields %+v", r)
	}
	if !r.NotBefore.Equal(cert.NotBefore) || !r.NotAfter.Equal(cert.NotAfter) {
		t.Errorf("view validity %v..%v, cert %v..%v", r.NotBefore, r.NotAfter, cert.NotBefore, cert.NotAfter)
	}
	if life := cert.NotAfter.Sub(clk.Now()); life < DefaultRootCertTTL-time.Second || life > DefaultRootCertTTL {
		t.Errorf("root lifetime from now %v, want %v", life, DefaultRootCertTTL)
	}
	if r.IntermediateCerts != nil {
		t.Errorf("fresh root has intermediates")
	}
}

// colonHex is written independently of HexString, as the test's oracle.
func colonHex(b []byte) string {
	h := hex.EncodeToString(b)
	var parts []string
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

func TestLeafProfile(t *testing.T) {
	clk := newClock()
	c := newCA(t, Config{Now: clk.Now})
	id := c.ServiceID("dc1", "web")
	leaf, err := c.IssueLeaf(id)
	if err != nil {
		t.Fatal(err)
	}
	certs := chain(t, leaf.CertPEM)
	if len(certs) != 1 {
		t.Fatalf("chain of %d certificates before any rotation, want 1", len(certs))
	}
	cert := certs[0]
	root := mustCert(t, c.Roots().Roots[0].RootCert)

	if cert.Subject.CommonName != "web" {
		t.Errorf("CN %q, want web", cert.Subject.CommonName)
	}
	wantURI := "spiffe://" + clusterID + ".consul/ns/default/dc/dc1/svc/web"
	if len(cert.URIs) != 1 || cert.URIs[0].String() != wantURI {
		t.Errorf("URIs %v, want [%s]", cert.URIs, wantURI)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		t.Errorf("leaf has other SANs: %v %v %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
	}
	if _, ok := ext(t, cert, oidSAN); !ok {
		t.Error("SAN extension missing")
	}
	wantKU := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageKeyAgreement
	if cert.KeyUsage != wantKU {
		t.Errorf("KeyUsage %b, want %b", cert.KeyUsage, wantKU)
	}
	if crit, ok := ext(t, cert, oidKeyUsage); !ok || !crit {
		t.Errorf("KeyUsage present %v critical %v, want critical", ok, crit)
	}
	if len(cert.ExtKeyUsage) != 2 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || cert.ExtKeyUsage[1] != x509.ExtKeyUsageServerAuth {
		t.Errorf("EKU %v, want [clientAuth serverAuth]", cert.ExtKeyUsage)
	}
	if _, ok := ext(t, cert, oidEKU); !ok {
		t.Error("EKU extension missing")
	}
	if !cert.BasicConstraintsValid || cert.IsCA {
		t.Errorf("BasicConstraintsValid %v IsCA %v, want CA:FALSE", cert.BasicConstraintsValid, cert.IsCA)
	}
	if crit, ok := ext(t, cert, oidBasicConstraints); !ok || !crit {
		t.Errorf("BasicConstraints present %v critical %v, want critical", ok, crit)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Errorf("key %T sig %v", cert.PublicKey, cert.SignatureAlgorithm)
	}
	if string(cert.AuthorityKeyId) != string(root.SubjectKeyId) {
		t.Errorf("AKID %x, want root SKID %x", cert.AuthorityKeyId, root.SubjectKeyId)
	}
	pkixDER, _ := x509.MarshalPKIXPublicKey(pub)
	if kid := sha256.Sum256(pkixDER); string(cert.SubjectKeyId) != string(kid[:]) {
		t.Errorf("SKID %x, want %x", cert.SubjectKeyId, kid)
	}
	if err := cert.CheckSignatureFrom(root); err != nil {
		t.Errorf("not signed by the root: %v", err)
	}
	now := clk.Now()
	if life := cert.NotAfter.Sub(now); life < DefaultLeafCertTTL || life >= DefaultLeafCertTTL+time.Second {
		t.Errorf("lifetime from issue %v, want %v (rounded up to the second)", life, DefaultLeafCertTTL)
	}
	if !leaf.IssuedAt.Equal(now) {
		t.Errorf("IssuedAt %v, want %v", leaf.IssuedAt, now)
	}
	if back := now.Sub(cert.NotBefore); back < DefaultClockSkew || back > DefaultClockSkew+time.Second {
		t.Errorf("NotBefore backdated by %v, want about %v", back, DefaultClockSkew)
	}
	if err := verify(t, leaf, c.Roots().Roots, now); err != nil {
		t.Errorf("leaf does not verify: %v", err)
	}

	// The LeafCert view.
	if leaf.SerialNumber != colonHex(cert.SerialNumber.Bytes()) {
		t.Errorf("SerialNumber %q, cert %x", leaf.SerialNumber, cert.SerialNumber)
	}
	if leaf.Service != "web" || leaf.ServiceURI != wantURI || leaf.Namespace != "default" {
		t.Errorf("view %+v", leaf)
	}
	if !leaf.ValidAfter.Equal(cert.NotBefore) || !leaf.ValidBefore.Equal(cert.NotAfter) {
		t.Errorf("validity %v..%v, cert %v..%v", leaf.ValidAfter, leaf.ValidBefore, cert.NotBefore, cert.NotAfter)
	}
	if leaf.RootID != c.ActiveRootID() {
		t.Errorf("RootID %q, active %q", leaf.RootID, c.ActiveRootID())
	}
	kp, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		t.Fatalf("private key does not match the certificate: %v", err)
	}
	if !strings.HasPrefix(leaf.PrivateKeyPEM, "-----BEGIN EC PRIVATE KEY-----") || kp.PrivateKey == nil {
		t.Errorf("private key PEM %.40q", leaf.PrivateKeyPEM)
	}

	// Serial numbers increase and are never reused.
	leaf2, err := c.IssueLeaf(id)
	if err != nil {
		t.Fatal(err)
	}
	if chain(t, leaf2.CertPEM)[0].SerialNumber.Cmp(cert.SerialNumber) <= 0 {
		t.Errorf("second serial %s not above first %s", leaf2.SerialNumber, leaf.SerialNumber)
	}
}

func TestShortLeafTTL(t *testing.T) {
	clk := newClock()
	c := newCA(t, Config{LeafCertTTL: 10 * time.Second, Now: clk.Now})
	leaf, err := c.IssueLeaf(c.ServiceID("dc1", "web"))
	if err != nil {
		t.Fatal(err)
	}
	cert := chain(t, leaf.CertPEM)[0]
	if life := cert.NotAfter.Sub(clk.Now()); life < 10*time.Second || life >= 11*time.Second {
		t.Errorf("lifetime from issue %v, want 10s (rounded up to the second)", life)
	}
	// Backdate is capped at a tenth of the lifetime so that the leaf is still usable.
	if back := clk.Now().Sub(cert.NotBefore); back > time.Second+time.Second {
		t.Errorf("backdated by %v with a 10s lifetime", back)
	}
	if err := verify(t, leaf, c.Roots().Roots, clk.Now()); err != nil {
		t.Errorf("fresh short leaf does not verify: %v", err)
	}
	if err := verify(t, leaf, c.Roots().Roots, leaf.ValidBefore.Add(time.Second)); err == nil {
		t.Error("short leaf still verifies after its lifetime")
	}
}

// A leaf's lifetime counts from when it is issued: only NotBefore is backdated (by a tenth of
// a 5s lifetime here), so renewing at 60–90% of the lifetime from the issue leaves the
// sidecar at least a tenth of it, 0.5s, to fetch its next leaf. Counting from the backdated,
// rounded-down NotBefore left a 5s leaf living as little as 3.5s.
func TestLeafLifetimeCountsFromIssue(t *testing.T) {
	const ttl = 5 * time.Second
	for _, frac := range []time.Duration{0, 1, 400 * time.Millisecond, 999 * time.Millisecond} {
		clk := &fakeClock{now: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC).Add(frac)}
		c := newCA(t, Config{LeafCertTTL: ttl, Now: clk.Now})
		leaf, err := c.IssueLeaf(c.ServiceID("dc1", "web"))
		if err != nil {
			t.Fatal(err)
		}
		issued := clk.Now()
		cert := chain(t, leaf.CertPEM)[0]
		if life := cert.NotAfter.Sub(issued); life < ttl || life >= ttl+time.Second {
			t.Errorf("issued at +%v: lives %v from its issue, want %v (rounded up to the second)", frac, life, ttl)
		}
		if back := issued.Sub(cert.NotBefore); back < ttl/10 || back >= ttl/10+time.Second {
			t.Errorf("issued at +%v: NotBefore %v before the issue, want %v (rounded down to the second)", frac, back, ttl/10)
		}
		if !leaf.IssuedAt.Equal(issued) || !leaf.ValidBefore.Equal(cert.NotAfter) || !leaf.ValidAfter.Equal(cert.NotBefore) {
			t.Errorf("view %v %v..%v, cert %v..%v", leaf.IssuedAt, leaf.ValidAfter, leaf.ValidBefore, cert.NotBefore, cert.NotAfter)
		}
		life := leaf.ValidBefore.Sub(issued)
		for _, rnd := range []float64{0, 1} {
			renew := RenewalTime(leaf.IssuedAt, leaf.ValidBefore, func() float64 { return rnd })
			if from := renew.Sub(issued); from < ttl*6/10 || from > life*9/10 {
				t.Errorf("issued at +%v, rnd %v: renewal %v after the issue, want 60–90%% of %v", frac, rnd, from, life)
			}
			if left := leaf.ValidBefore.Sub(renew); left < ttl/10 {
				t.Errorf("issued at +%v, rnd %v: renewal only %v before expiry", frac, rnd, left)
			}
		}
	}
}

func TestIssueLeafRejects(t *testing.T) {
	c := newCA(t, Config{})
	tests := []struct {
		id   spiffe.ServiceID
		want string
	}{
		{spiffe.ServiceID{TrustDomain: "99999999-2222-3333-4444-555555555555.consul", Namespace: "default", Datacenter: "dc1", Service: "web"}, "trust domain"},
		{c.ServiceID("dc1", ""), "service is empty"},
		{c.ServiceID("", "web"), "datacenter is empty"},
		{c.ServiceID("dc1", "a/b"), "service \"a/b\""},
	}
	for _, tc := range tests {
		if _, err := c.IssueLeaf(tc.id); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("IssueLeaf(%+v) = %v, want error containing %q", tc.id, err, tc.want)
		}
	}
}

func makeCSR(t *testing.T, key any, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func TestSignCSR(t *testing.T) {
	c := newCA(t, Config{})
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := c.ServiceID("dc1", "api")
	good := makeCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URI()}})

	leaf, err := c.SignCSR(good)
	if err != nil {
		t.Fatalf("SignCSR: %v", err)
	}
	cert := chain(t, leaf.CertPEM)[0]
	if !cert.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Error("leaf is not for the CSR's key")
	}
	if leaf.PrivateKeyPEM != "" {
		t.Error("leaf from a CSR carries a private key")
	}
	if leaf.Service != "api" || cert.Subject.CommonName != "api" || cert.URIs[0].String() != id.String() {
		t.Errorf("leaf %+v CN %q URIs %v", leaf, cert.Subject.CommonName, cert.URIs)
	}
	// Round trip through PEM.
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good.Raw})
	if parsed, err := ParseCSR(string(csrPEM)); err != nil || parsed.URIs[0].String() != id.String() {
		t.Errorf("ParseCSR: %v", err)
	}
	if _, err := ParseCSR("nope"); err == nil {
		t.Error("ParseCSR accepted garbage")
	}

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	other := spiffe.ServiceID{TrustDomain: "99999999-2222-3333-4444-555555555555.consul", Namespace: "default", Datacenter: "dc1", Service: "api"}
	signing, _ := url.Parse("spiffe://" + c.TrustDomain())
	tampered := *good
	tampered.Signature = append([]byte(nil), good.Signature...)
	tampered.Signature[len(tampered.Signature)-3] ^= 0xff

	tests := []struct {
		name string
		csr  *x509.CertificateRequest
		want string
	}{
		{"nil", nil, "nil request"},
		{"bad signature", &tampered, "signature"},
		{"no URI", makeCSR(t, key, &x509.CertificateRequest{DNSNames: []string{"api"}}), "exactly one URI"},
		{"two URIs", makeCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URI(), id.URI()}}), "exactly one URI"},
		{"DNS SAN", makeCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URI()}, DNSNames: []string{"api.example"}}), "only a URI SAN"},
		{"IP SAN", makeCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URI()}, IPAddresses: []net.IP{{127, 0, 0, 1}}}), "only a URI SAN"},
		{"other trust domain", makeCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{other.URI()}}), "trust domain"},
		{"signing ID", makeCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{signing}}), "not a service ID"},
		{"P-384 key", makeCSR(t, p384, &x509.CertificateRequest{URIs: []*url.URL{id.URI()}}), "P-256"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leaf, err := c.SignCSR(tc.csr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("SignCSR = %+v, %v; want error containing %q", leaf, err, tc.want)
			}
		})
	}
}

// TestRotation checks every pairing of leaf and trust bundle that can meet during a root
// rotation, then pruning.
func TestRotation(t *testing.T) {
	clk := newClock()
	ttl := time.Hour
	c := newCA(t, Config{LeafCertTTL: ttl, Now: clk.Now})
	id := c.ServiceID("dc1", "web")

	oldBundle := c.Roots().Roots
	oldRootID := c.ActiveRootID()
	oldLeaf, err := c.IssueLeaf(id)
	if err != nil {
		t.Fatal(err)
	}

	clk.Advance(10 * time.Minute)
	newRootID, err := c.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if newRootID == oldRootID || c.ActiveRootID() != newRootID {
		t.Fatalf("Rotate returned %q, active %q, old %q", newRootID, c.ActiveRootID(), oldRootID)
	}
	l := c.Roots()
	if len(l.Roots) != 2 || l.ActiveRootID != newRootID {
		t.Fatalf("after rotation: %d roots, active %q", len(l.Roots), l.ActiveRootID)
	}
	active := 0
	for _, r := range l.Roots {
		if r.Active {
			active++
			if r.ID != newRootID || len(r.IntermediateCerts) != 1 {
				t.Errorf("active root %s has %d intermediates, want the cross-signed one", r.ID, len(r.IntermediateCerts))
			}
		}
	}
	if active != 1 {
		t.Fatalf("%d active roots", active)
	}
	newRoot := mustCert(t, l.Roots[1].RootCert)
	cross := mustCert(t, l.Roots[1].IntermediateCerts[0])
	oldRoot := mustCert(t, oldBundle[0].RootCert)
	if err := cross.CheckSignatureFrom(oldRoot); err != nil {
		t.Errorf("cross-signed root not signed by the old root: %v", err)
	}
	if string(cross.RawSubject) != string(newRoot.RawSubject) || !cross.PublicKey.(*ecdsa.PublicKey).Equal(newRoot.PublicKey) ||
		string(cross.SubjectKeyId) != string(newRoot.SubjectKeyId) || string(cross.AuthorityKeyId) != string(oldRoot.SubjectKeyId) {
		t.Error("cross-signed certificate is not the new root's subject and key under the old root")
	}
	if newRoot.Subject.CommonName == oldRoot.Subject.CommonName {
		t.Errorf("new root has the old root's name %q", newRoot.Subject.CommonName)
	}

	newLeaf, err := c.IssueLeaf(id)
	if err != nil {
		t.Fatal(err)
	}
	if newLeaf.RootID != newRootID || len(chain(t, newLeaf.CertPEM)) != 2 {
		t.Fatalf("new leaf RootID %q, chain of %d", newLeaf.RootID, len(chain(t, newLeaf.CertPEM)))
	}
	now := clk.Now()
	newBundle := c.Roots().Roots
	for _, tc := range []struct {
		name   string
		leaf   *LeafCert
		bundle []Root
	}{
		{"old leaf, old bundle", oldLeaf, oldBundle},
		{"old leaf, new bundle", oldLeaf, newBundle},
		{"new leaf, old bundle (peer not yet updated)", newLeaf, oldBundle},
		{"new leaf, new bundle", newLeaf, newBundle},
		{"new leaf, new root alone", newLeaf, newBundle[1:]},
	} {
		if err := verify(t, tc.leaf, tc.bundle, now); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// A leaf without the cross-signed intermediate would not verify against the old bundle:
	// the intermediate is what makes that case work.
	bare := *newLeaf
	bare.CertPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain(t, newLeaf.CertPEM)[0].Raw}))
	if err := verify(t, &bare, oldBundle, now); err == nil {
		t.Error("new leaf without the intermediate verified against the old root alone")
	}

	// Prune keeps the old root while its leaves may be valid: 2 × TTL after rotation.
	clk.Advance(2*ttl - time.Minute)
	if removed := c.Prune(); len(removed) != 0 {
		t.Fatalf("pruned %v before 2 × LeafCertTTL", removed)
	}
	clk.Advance(2 * time.Minute)
	removed := c.Prune()
	if len(removed) != 1 || removed[0] != oldRootID {
		t.Fatalf("Prune removed %v, want [%s]", removed, oldRootID)
	}
	l = c.Roots()
	if len(l.Roots) != 1 || l.Roots[0].ID != newRootID || !l.Roots[0].Active {
		t.Fatalf("after prune: %+v", l.Roots)
	}
	if l.Roots[0].IntermediateCerts != nil {
		t.Errorf("expired cross-signed intermediate kept after prune")
	}
	leaf3, err := c.IssueLeaf(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain(t, leaf3.CertPEM)) != 1 {
		t.Error("leaf issued after prune still carries the expired intermediate")
	}
	if err := verify(t, leaf3, l.Roots, clk.Now()); err != nil {
		t.Errorf("leaf after prune: %v", err)
	}
}

// TestPruneWaitsForLongLivedLeaves: lowering LeafCertTTL after issuing long leaves must not
// prune a root that still has valid leaves.
func TestPruneWaitsForLongLivedLeaves(t *testing.T) {
	clk := newClock()
	c := newCA(t, Config{LeafCertTTL: 10 * time.Hour, Now: clk.Now})
	if _, err := c.IssueLeaf(c.ServiceID("dc1", "web")); err != nil {
		t.Fatal(err)
	}
	if err := c.SetConfig(Config{LeafCertTTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rotate(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(3 * time.Hour)
	if removed := c.Prune(); len(removed) != 0 {
		t.Fatalf("pruned %v while a 10h leaf is still valid", removed)
	}
	clk.Advance(8 * time.Hour)
	if removed := c.Prune(); len(removed) != 1 {
		t.Fatalf("pruned %v after the last leaf expired, want one root", removed)
	}
}

func TestRotationDue(t *testing.T) {
	clk := newClock()
	c := newCA(t, Config{RotationPeriod: 24 * time.Hour, Now: clk.Now})
	if c.RotationDue() {
		t.Fatal("fresh root due for rotation")
	}
	clk.Advance(24 * time.Hour)
	if !c.RotationDue() {
		t.Fatal("root older than RotationPeriod not due")
	}
	if _, err := c.Rotate(); err != nil {
		t.Fatal(err)
	}
	if c.RotationDue() {
		t.Fatal("due right after rotation")
	}
	never := newCA(t, Config{RotationPeriod: -1, Now: clk.Now})
	clk.Advance(1000 * time.Hour)
	if never.RotationDue() {
		t.Fatal("negative RotationPeriod still rotates")
	}
}

// TestRotationDueShortPeriod: a root's NotBefore is backdated by ClockSkew (1m); a
// RotationPeriod shorter than that must still count from when the root was made, not make
// every fresh root due at once.
func TestRotationDueShortPeriod(t *testing.T) {
	clk := newClock()
	c := newCA(t, Config{LeafCertTTL: time.Second, RotationPeriod: 10 * time.Second, Now: clk.Now})
	if c.RotationDue() {
		t.Fatal("fresh root due for rotation with a 10s period")
	}
	clk.Advance(9 * time.Second)
	if c.RotationDue() {
		t.Fatal("9s-old root due with a 10s period")
	}
	clk.Advance(2 * time.Second)
	if !c.RotationDue() {
		t.Fatal("11s-old root not due with a 10s period")
	}
	if _, err := c.Rotate(); err != nil {
		t.Fatal(err)
	}
	if c.RotationDue() {
		t.Fatal("due right after rotation")
	}
}

// TestRotateWithKey: the new root is made over the operator's key, cross-signed by the old
// root, and leaves it signs verify against either root; a key of another curve is refused.
func TestRotateWithKey(t *testing.T) {
	clk := newClock()
	c := newCA(t, Config{LeafCertTTL: time.Hour, Now: clk.Now})
	oldRoots := c.Roots().Roots
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.RotateWithKey(key)
	if err != nil {
		t.Fatal(err)
	}
	l := c.Roots()
	if l.ActiveRootID != id || len(l.Roots) != 2 {
		t.Fatalf("after RotateWithKey: active %s, %d roots", l.ActiveRootID, len(l.Roots))
	}
	active := l.Roots[1]
	if !active.Active || active.ID != id {
		t.Fatalf("new root %+v not active", active)
	}
	if pub, ok := mustCert(t, active.RootCert).PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		t.Fatal("new root is not over the given key")
	}
	leaf, err := c.IssueLeaf(c.ServiceID("dc1", "web"))
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(t, leaf, oldRoots, clk.Now()); err != nil {
		t.Fatalf("new leaf against the old root only: %v", err)
	}
	if err := verify(t, leaf, l.Roots[1:], clk.Now()); err != nil {
		t.Fatalf("new leaf against the new root: %v", err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RotateWithKey(p384); err == nil || !strings.Contains(err.Error(), "P-384") {
		t.Fatalf("RotateWithKey(P-384) = %v, want an error naming the curve", err)
	}
	if _, err := c.RotateWithKey(nil); err == nil {
		t.Fatal("RotateWithKey(nil) succeeded")
	}
	if got := c.ActiveRootID(); got != id {
		t.Fatalf("a refused rotation changed the active root to %s", got)
	}
}

func TestMarshalLoadRoundTrip(t *testing.T) {
	clk := newClock()
	c := newCA(t, Config{LeafCertTTL: 2 * time.Hour, RotationPeriod: 48 * time.Hour, Now: clk.Now})
	id := c.ServiceID("dc1", "web")
	leafBefore, err := c.IssueLeaf(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rotate(); err != nil {
		t.Fatal(err)
	}
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "BEGIN EC PRIVATE KEY") {
		t.Error("serialized state has no PEM key")
	}
	c2, err := Load(b, clk.Now)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c2.TrustDomain() != c.TrustDomain() || c2.ClusterID() != clusterID {
		t.Errorf("trust domain %q cluster %q", c2.TrustDomain(), c2.ClusterID())
	}
	r1, r2 := c.Roots(), c2.Roots()
	if fmt.Sprintf("%+v", r1) != fmt.Sprintf("%+v", r2) {
		t.Errorf("roots differ after load:\n%+v\n%+v", r1, r2)
	}
	cfg1, cfg2 := c.Config(), c2.Config()
	if cfg1.LeafCertTTL != cfg2.LeafCertTTL || cfg1.RotationPeriod != cfg2.RotationPeriod || cfg1.RootCertTTL != cfg2.RootCertTTL ||
		cfg1.ClockSkew != cfg2.ClockSkew || cfg1.IntermediateCertTTL != cfg2.IntermediateCertTTL {
		t.Errorf("config %+v, loaded %+v", cfg1, cfg2)
	}
	// The loaded CA signs with the same active key and never reuses a serial number.
	leafAfter, err := c2.IssueLeaf(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(t, leafAfter, r1.Roots, clk.Now()); err != nil {
		t.Errorf("leaf from the loaded CA does not verify against the original bundle: %v", err)
	}
	if err := verify(t, leafBefore, r2.Roots, clk.Now()); err != nil {
		t.Errorf("leaf from before does not verify against the loaded bundle: %v", err)
	}
	seen := map[string]bool{leafBefore.SerialNumber: true}
	for _, r := range r1.Roots {
		seen[colonHex(mustCert(t, r.RootCert).SerialNumber.Bytes())] = true
		for _, im := range r.IntermediateCerts {
			seen[colonHex(mustCert(t, im).SerialNumber.Bytes())] = true
		}
	}
	if seen[leafAfter.SerialNumber] {
		t.Errorf("serial %s reused after Load", leafAfter.SerialNumber)
	}
	// Pruning state survives too: the old root goes at the same time it would have.
	b2, _ := c2.Marshal()
	if string(b2) == "" {
		t.Fatal("empty marshal")
	}
	clk.Advance(4*time.Hour + time.Minute)
	if got := c2.Prune(); len(got) != 1 {
		t.Errorf("loaded CA pruned %v, want the old root", got)
	}
}

func TestLoadRejects(t *testing.T) {
	c := newCA(t, Config{})
	good, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	other := newCA(t, Config{})
	otherState, _ := other.Marshal()
	otherKey := between(string(otherState), `"key_pem":"`, `"`)
	otherCert := between(string(otherState), `"cert_pem":"`, `"`)
	myKey := between(string(good), `"key_pem":"`, `"`)
	myCert := between(string(good), `"cert_pem":"`, `"`)
	myID := between(string(good), `"id":"`, `"`)

	tests := []struct {
		name string
		data string
		want string
	}{
		{"garbage", "{", "load state"},
		{"unknown field", strings.Replace(string(good), `"version":1`, `"version":1,"extra":1`, 1), "unknown field"},
		{"version", strings.Replace(string(good), `"version":1`, `"version":2`, 1), "version 2"},
		{"cluster", strings.Replace(string(good), `"cluster_id":"`+clusterID, `"cluster_id":"99999999-2222-3333-4444-555555555555`, 1), "does not match cluster ID"},
		{"key mismatch", strings.Replace(string(good), myKey, otherKey, 1), "key does not match"},
		{"id mismatch", strings.Replace(string(good), myCert, otherCert, 1), "fingerprint"},
		{"no active", strings.Replace(string(good), `"active_root_id":"`+myID, `"active_root_id":"00`, 1), "not among the roots"},
		{"bad ttl", strings.Replace(string(good), `"leaf_cert_ttl":"72h0m0s"`, `"leaf_cert_ttl":"soon"`, 1), "leaf_cert_ttl"},
		{"serial behind", strings.Replace(string(good), `"serial":1,`, `"serial":0,`, 1), "serial counter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.data == string(good) {
				t.Fatal("mutation did not apply")
			}
			_, err := Load([]byte(tc.data), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load = %v, want error containing %q", err, tc.want)
			}
		})
	}
	if _, err := Load(good, nil); err != nil {
		t.Fatalf("good state: %v", err)
	}
}

func between(s, start, end string) string {
	i := strings.Index(s, start)
	if i < 0 {
		return "\x00missing"
	}
	s = s[i+len(start):]
	j := strings.Index(s, end)
	return s[:j]
}

func TestConcurrentIssueUniqueSerials(t *testing.T) {
	c := newCA(t, Config{})
	id := c.ServiceID("dc1", "web")
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				l, err := c.IssueLeaf(id)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[l.SerialNumber] {
					t.Errorf("serial %s issued twice", l.SerialNumber)
				}
				seen[l.SerialNumber] = true
				mu.Unlock()
				_ = c.Roots()
			}
		}()
	}
	wg.Wait()
}

func TestRenewalTime(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	end := start.Add(100 * time.Hour)
	tests := []struct {
		rnd  float64
		want time.Duration
	}{
		{0, 60 * time.Hour},
		{0.5, 75 * time.Hour},
		{0.999999999, 90 * time.Hour},
		{1, 90 * time.Hour},
		{-1, 60 * time.Hour},
		{7, 90 * time.Hour},
	}
	for _, tc := range tests {
		got := RenewalTime(start, end, func() float64 { return tc.rnd })
		if d := got.Sub(start); d < tc.want-time.Millisecond || d > tc.want+time.Millisecond {
			t.Errorf("rnd %v: renew after %v, want %v", tc.rnd, d, tc.want)
		}
	}
	if got := RenewalTime(end, start, nil); !got.Equal(end) {
		t.Errorf("inverted validity: %v", got)
	}
	for range 100 {
		d := RenewalTime(start, end, nil).Sub(start)
		if d < 60*time.Hour || d > 90*time.Hour {
			t.Fatalf("random renewal %v outside 60%%..90%%", d)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{}, ""},
		{Config{LeafCertTTL: time.Second}, ""},
		{Config{LeafCertTTL: 500 * time.Millisecond}, "LeafCertTTL 500ms"},
		{Config{LeafCertTTL: 400 * 24 * time.Hour}, "LeafCertTTL 9600h0m0s: must be at most"},
		{Config{RootCertTTL: time.Minute}, "RootCertTTL 1m0s"},
		{Config{LeafCertTTL: 100 * time.Hour, RootCertTTL: 150 * time.Hour}, "more than twice LeafCertTTL"},
		{Config{ClockSkew: -time.Second}, "ClockSkew -1s"},
		{Config{IntermediateCertTTL: -time.Second}, "IntermediateCertTTL -1s"},
	}
	for _, tc := range tests {
		err := tc.cfg.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", tc.cfg, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want error containing %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := New(clusterID, Config{LeafCertTTL: -1}); err == nil {
		t.Error("New accepted a bad config")
	}
	if _, err := New("", Config{}); err == nil {
		t.Error("New accepted an empty cluster ID")
	}
}

func TestProviderConfig(t *testing.T) {
	got := Config{}.ProviderConfig()
	want := map[string]any{"LeafCertTTL": "72h", "RootCertTTL": "87600h", "RotationPeriod": "2160h",
		"IntermediateCertTTL": "8760h", "PrivateKeyType": "ec", "PrivateKeyBits": 256}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ProviderConfig = %v, want %v", got, want)
	}
	base := Config{}.withDefaults()
	tests := []struct {
		raw  map[string]any
		want string // error substring; "" means success
		leaf time.Duration
	}{
		{map[string]any{"LeafCertTTL": "1h"}, "", time.Hour},
		{map[string]any{"leaf_cert_ttl": float64(2 * time.Hour)}, "", 2 * time.Hour},
		{map[string]any{"LeafCertTTL": "24h", "PrivateKeyType": "ec", "PrivateKeyBits": float64(256), "CSRMaxPerSecond": 50.0}, "", 24 * time.Hour},
		{map[string]any{"LeafCertTTL": "soon"}, "LeafCertTTL soon", 0},
		{map[string]any{"LeafCertTTL": true}, "want a duration", 0},
		{map[string]any{"PrivateKeyType": "rsa"}, "PrivateKeyType rsa", 0},
		{map[string]any{"PrivateKeyBits": 2048.0}, "PrivateKeyBits 2048", 0},
		{map[string]any{"PrivateKey": "-----BEGIN..."}, "PrivateKey: bringing your own", 0},
		{map[string]any{"Bogus": 1}, "unknown key \"Bogus\"", 0},
		{map[string]any{"LeafCertTTL": "100ms"}, "LeafCertTTL 100ms", 0},
	}
	for _, tc := range tests {
		got, err := ParseProviderConfig(tc.raw, base)
		if tc.want != "" {
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%v: %v, want error containing %q", tc.raw, err, tc.want)
			}
			continue
		}
		if err != nil || got.LeafCertTTL != tc.leaf || got.RootCertTTL != base.RootCertTTL {
			t.Errorf("%v: %+v, %v", tc.raw, got, err)
		}
	}
	for d, want := range map[time.Duration]string{72 * time.Hour: "72h", 90 * time.Minute: "1h30m", 5 * time.Second: "5s", time.Hour + time.Second: "1h0m1s", 30 * time.Minute: "30m"} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
	c := newCA(t, Config{LeafCertTTL: 3 * time.Hour})
	if v := c.Configuration(); v.Provider != "consul" || v.Config["LeafCertTTL"] != "3h" {
		t.Errorf("Configuration = %+v", v)
	}
}

func TestRootListPEM(t *testing.T) {
	c := newCA(t, Config{})
	if _, err := c.Rotate(); err != nil {
		t.Fatal(err)
	}
	l := c.Roots()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(l.PEM())) {
		t.Fatal("PEM bundle does not parse")
	}
	if n := strings.Count(l.PEM(), "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("bundle has %d certificates, want 2 roots", n)
	}
}

func BenchmarkIssueLeaf(b *testing.B) {
	c, err := New(clusterID, Config{})
	if err != nil {
		b.Fatal(err)
	}
	id := c.ServiceID("dc1", "web")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.IssueLeaf(id); err != nil {
			b.Fatal(err)
		}
	}
}
