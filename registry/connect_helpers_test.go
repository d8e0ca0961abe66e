package registry_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// pemCerts parses every CERTIFICATE block of a PEM bundle.
func pemCerts(s string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no certificate in %.40q", s)
	}
	return out, nil
}

// verifyLeaf checks a leaf the way a peer sidecar would: its chain (the leaf, then any
// intermediates it carries) verifies at `at` against the given root PEMs for client and
// server use; its only identity is the SPIFFE URI SAN equal to ServiceURI; and its private key
// belongs to the certificate.
func verifyLeaf(leaf *api.LeafCert, rootPEMs []string, at time.Time) error {
	chain, err := pemCerts(leaf.CertPEM)
	if err != nil {
		return fmt.Errorf("leaf CertPEM: %w", err)
	}
	cert := chain[0]
	if len(cert.URIs) != 1 || cert.URIs[0].String() != leaf.ServiceURI || len(cert.DNSNames)+len(cert.IPAddresses) != 0 {
		return fmt.Errorf("leaf SANs: URIs %v DNS %v IPs %v, want only %s", cert.URIs, cert.DNSNames, cert.IPAddresses, leaf.ServiceURI)
	}
	b, _ := pem.Decode([]byte(leaf.PrivateKeyPEM))
	if b == nil {
		return fmt.Errorf("leaf PrivateKeyPEM has no PEM block")
	}
	key, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		return fmt.Errorf("leaf private key: %w", err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return fmt.Errorf("leaf private key does not match its certificate")
	}
	pool := x509.NewCertPool()
	for _, r := range rootPEMs {
		cs, err := pemCerts(r)
		if err != nil {
			return fmt.Errorf("root: %w", err)
		}
		for _, c := range cs {
			pool.AddCert(c)
		}
	}
	ims := x509.NewCertPool()
	for _, c := range chain[1:] {
		ims.AddCert(c)
	}
	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: ims, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
			return err
		}
	}
	return nil
}

func rootPEMs(l *api.CARootList) []string {
	out := make([]string, 0, len(l.Roots))
	for _, r := range l.Roots {
		out = append(out, r.RootCertPEM)
	}
	return out
}

func activeRoot(l *api.CARootList) *api.CARoot {
	for _, r := range l.Roots {
		if r.Active {
			return r
		}
	}
	return nil
}

// newRootKeyPEM makes an ECDSA P-256 key in PEM, for a CA configuration's PrivateKey: setting
// a new one rotates the root, in Consul as in the registry.
func newRootKeyPEM(t testing.TB) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
}

// caConfigWithKey is the CA configuration that rotates to a root over key, keeping the leaf
// lifetime.
func caConfigWithKey(leafTTL, key string) *api.CAConfig {
	return &api.CAConfig{Provider: "consul", Config: map[string]any{"LeafCertTTL": leafTTL, "PrivateKey": key}}
}
