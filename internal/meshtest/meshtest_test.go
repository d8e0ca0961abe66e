package meshtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
)

// The fake answers as a Consul agent does through consul/api: a blocking leaf query returns
// a new leaf before the old one expires; a CA configuration with a new PrivateKey rotates the
// root (old root kept, then pruned); intentions are matched and the default policy is sent.
func TestFakeConnectCA(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := Start(t, "", 0)
	c := r.Client()
	if _, err := c.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{"LeafCertTTL": "2s"}}, nil); err != nil {
		t.Fatal(err)
	}
	asked := time.Now()
	leaf, meta, err := c.Agent().ConnectCALeaf("web", nil)
	if err != nil {
		t.Fatal(err)
	}
	// 2s from the issue (rounded up to the second); only ValidAfter is backdated.
	if leaf.ServiceURI != "spiffe://"+r.TrustDomain()+"/ns/default/dc/dc1/svc/web" ||
		leaf.ValidBefore.Sub(asked) < 2*time.Second || leaf.ValidBefore.Sub(asked) > 4*time.Second {
		t.Fatalf("leaf %+v", leaf)
	}
	start := time.Now()
	next, meta2, err := c.Agent().ConnectCALeaf("web", &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if next.SerialNumber == leaf.SerialNumber || meta2.LastIndex <= meta.LastIndex || !time.Now().Before(leaf.ValidBefore) {
		t.Fatalf("renewal after %v: serial %s → %s, index %d → %d", time.Since(start), leaf.SerialNumber, next.SerialNumber, meta.LastIndex, meta2.LastIndex)
	}

	roots, rmeta, err := c.Agent().ConnectCARoots(nil)
	if err != nil || len(roots.Roots) != 1 {
		t.Fatalf("roots %+v %v", roots, err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(k)
	if _, err := c.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{
		"LeafCertTTL": "2s", "PrivateKey": string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))}}, nil); err != nil {
		t.Fatal(err)
	}
	rotated, _, err := c.Agent().ConnectCARoots(&api.QueryOptions{WaitIndex: rmeta.LastIndex, WaitTime: 5 * time.Second})
	if err != nil || len(rotated.Roots) != 2 || rotated.ActiveRootID == roots.ActiveRootID {
		t.Fatalf("after rotation: %+v %v", rotated, err)
	}
	testutil.Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		l, _, err := c.Agent().ConnectCALeaf("web", nil)
		if err != nil {
			return err
		}
		if l.SerialNumber == next.SerialNumber {
			return errTest("leaf not re-issued after the rotation")
		}
		return nil
	})
	testutil.Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		rs, _, err := c.Agent().ConnectCARoots(nil)
		if err != nil || len(rs.Roots) != 1 || rs.ActiveRootID != rotated.ActiveRootID {
			return errTest("old root not pruned")
		}
		return nil
	})

	r.SetDefaultPolicy("deny")
	if _, err := c.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "db", Action: api.IntentionActionAllow}, nil); err != nil {
		t.Fatal(err)
	}
	m, qm, err := c.Connect().IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{"db"}}, nil)
	if err != nil || len(m["db"]) != 1 || m["db"][0].SourceName != "web" || m["db"][0].Precedence != 9 || qm.DefaultACLPolicy != "deny" {
		t.Fatalf("match: %+v %+v %v", m, qm, err)
	}
	if _, err := c.Connect().IntentionDeleteExact("web", "db", nil); err != nil {
		t.Fatal(err)
	}
	if m, _, _ := c.Connect().IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{"db"}}, nil); len(m["db"]) != 0 {
		t.Fatalf("after delete: %+v", m)
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }
