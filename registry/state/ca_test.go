package state

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podmesh/podmesh/tls/ca"
)

func roots(s *Store) (l *ca.RootList) {
	s.View(func(v *View) { l = v.CARoots() })
	return l
}

func caConfig(s *Store) (c *CAConfig) {
	s.View(func(v *View) { c = v.CAConfig() })
	return c
}

func leafSerial(t *testing.T, l *ca.LeafCert) uint64 {
	t.Helper()
	b, _ := pem.Decode([]byte(l.CertPEM))
	if b == nil {
		t.Fatal("leaf without PEM")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !c.SerialNumber.IsUint64() {
		t.Fatalf("serial %v", c.SerialNumber)
	}
	return c.SerialNumber.Uint64()
}

func newKeyPEM(t *testing.T, curve elliptic.Curve) (string, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})), k
}

// TestCAPersistsAcrossReopen: the CA is made once, with its cluster ID and leaf TTL, and
// comes back after a reopen with the same roots, configuration and indexes; serial numbers
// keep rising across the reopen.
func TestCAPersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, func(o *Options) {
		o.CA = CAOptions{ClusterID: "11111111-2222-3333-4444-555555555555", LeafCertTTL: 5 * time.Second}
	})
	l := roots(s)
	if l == nil || len(l.Roots) != 1 || !l.Roots[0].Active || l.ActiveRootID != l.Roots[0].ID || l.Roots[0].CreateIndex == 0 {
		t.Fatalf("initial roots %+v", l)
	}
	if l.TrustDomain != "11111111-2222-3333-4444-555555555555.consul" || s.TrustDomain() != l.TrustDomain {
		t.Fatalf("trust domain %q / %q", l.TrustDomain, s.TrustDomain())
	}
	if cfg := caConfig(s); cfg == nil || cfg.Provider != "consul" || cfg.Config["LeafCertTTL"] != "5s" || cfg.ModifyIndex == 0 {
		t.Fatalf("initial config %+v", cfg)
	}
	rootsTopic := topicIndex(s, TopicCARoots)
	var last uint64
	for range 3 {
		leaf, err := s.IssueLeaf(ctx(t), "web")
		if err != nil {
			t.Fatal(err)
		}
		sn := leafSerial(t, leaf)
		if sn <= last || leaf.ModifyIndex == 0 || leaf.CreateIndex != leaf.ModifyIndex {
			t.Fatalf("serial %d after %d, indexes %d/%d", sn, last, leaf.CreateIndex, leaf.ModifyIndex)
		}
		last = sn
	}
	if got := topicIndex(s, TopicCARoots); got != rootsTopic {
		t.Fatalf("issuing leaves raised the roots topic %d -> %d", rootsTopic, got)
	}
	cfgBefore := caConfig(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openStore(t, dir)
	l2 := roots(s2)
	if l2.ActiveRootID != l.ActiveRootID || len(l2.Roots) != 1 || l2.Roots[0].RootCert != l.Roots[0].RootCert ||
		l2.Roots[0].CreateIndex != l.Roots[0].CreateIndex || l2.Roots[0].ModifyIndex != l.Roots[0].ModifyIndex {
		t.Fatalf("roots after reopen %+v, before %+v", l2, l)
	}
	if got := topicIndex(s2, TopicCARoots); got != rootsTopic {
		t.Fatalf("roots topic %d after reopen, was %d", got, rootsTopic)
	}
	if c := caConfig(s2); c.ModifyIndex != cfgBefore.ModifyIndex || c.Config["LeafCertTTL"] != "5s" {
		t.Fatalf("config after reopen %+v", c)
	}
	leaf, err := s2.IssueLeaf(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if sn := leafSerial(t, leaf); sn <= last {
		t.Fatalf("serial %d after reopen, not above %d", sn, last)
	}
	if !strings.HasPrefix(leaf.ServiceURI, "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web") {
		t.Fatalf("ServiceURI %q", leaf.ServiceURI)
	}
	if _, err := s2.IssueLeaf(ctx(t), "bad name"); err == nil {
		t.Fatal("leaf for a name no certificate can carry was issued")
	}
}

func TestCAClusterIDCannotChange(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, func(o *Options) { o.CA.ClusterID = "aaaa" })
	s.Close()
	_, err := Open(ctx(t), Options{Dir: dir, NodeName: "node1", CA: CAOptions{ClusterID: "bbbb"}})
	if err == nil || !strings.Contains(err.Error(), "bbbb") || !strings.Contains(err.Error(), "aaaa") {
		t.Fatalf("reopen with another cluster ID: %v", err)
	}
	s2 := openStore(t, dir) // no ID given: the stored one
	if s2.ClusterID() != "aaaa" || s2.TrustDomain() != "aaaa.consul" {
		t.Fatalf("cluster %q trust domain %q", s2.ClusterID(), s2.TrustDomain())
	}
	// A generated ID is a UUID and sticks.
	s3 := openStore(t, t.TempDir())
	if len(s3.ClusterID()) != 36 {
		t.Fatalf("generated cluster ID %q", s3.ClusterID())
	}
}

// TestConcurrentLeavesUniqueSerials: leaves issued concurrently (committed in groups) never
// share a serial number, and the stored counter is above all of them.
func TestConcurrentLeavesUniqueSerials(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var max uint64
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			leaf, err := s.IssueLeaf(ctx(t), "svc"+string(rune('a'+i%5)))
			if err != nil {
				t.Error(err)
				return
			}
			sn := leafSerial(t, leaf)
			mu.Lock()
			defer mu.Unlock()
			if seen[sn] {
				t.Errorf("serial %d issued twice", sn)
			}
			seen[sn] = true
			max = maxU(max, sn)
		}()
	}
	wg.Wait()
	s.Close()
	s2 := openStore(t, dir)
	leaf, err := s2.IssueLeaf(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if sn := leafSerial(t, leaf); sn <= max {
		t.Fatalf("serial after reopen %d, not above %d", sn, max)
	}
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// TestSetCAConfigRotation: like Consul's built-in provider, only a change of the operator's
// root key rotates; lifetimes apply to new leaves without touching the roots.
func TestSetCAConfigRotation(t *testing.T) {
	s := openStore(t, t.TempDir())
	r0 := roots(s)
	rootsTopic, cfgTopic := topicIndex(s, TopicCARoots), topicIndex(s, TopicCAConfig)

	rotated, err := s.SetCAConfig(ctx(t), &CAConfigUpdate{Config: ca.Config{LeafCertTTL: time.Hour}})
	if err != nil || rotated != "" {
		t.Fatalf("TTL change: rotated %q, err %v", rotated, err)
	}
	if topicIndex(s, TopicCARoots) != rootsTopic || topicIndex(s, TopicCAConfig) <= cfgTopic {
		t.Fatal("a TTL change must raise the config topic only")
	}
	if c := caConfig(s); c.Config["LeafCertTTL"] != "1h" || c.Config["RotationPeriod"] != "2160h" {
		t.Fatalf("config %+v", c.Config)
	}
	leaf, err := s.IssueLeaf(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if life := leaf.ValidBefore.Sub(leaf.IssuedAt); life < time.Hour || life >= time.Hour+time.Second {
		t.Fatalf("leaf lifetime %v from its issue after setting 1h", life)
	}
	// The same configuration again changes nothing at all.
	before := globalIndex(s)
	if _, err := s.SetCAConfig(ctx(t), &CAConfigUpdate{Config: ca.Config{LeafCertTTL: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	if got := globalIndex(s); got != before {
		t.Fatalf("setting the same configuration wrote: index %d -> %d", before, got)
	}

	// A PrivateKey rotates to a root over that key.
	pemKey, key := newKeyPEM(t, elliptic.P256())
	rotated, err = s.SetCAConfig(ctx(t), &CAConfigUpdate{Config: ca.Config{LeafCertTTL: time.Hour}, PrivateKey: pemKey, Key: key})
	if err != nil || rotated == "" {
		t.Fatalf("PrivateKey: rotated %q, err %v", rotated, err)
	}
	r1 := roots(s)
	if r1.ActiveRootID != rotated || len(r1.Roots) != 2 || r1.Roots[0].ID != r0.ActiveRootID || r1.Roots[0].Active ||
		r1.Roots[0].ModifyIndex <= r0.Roots[0].ModifyIndex || r1.Roots[0].CreateIndex != r0.Roots[0].CreateIndex {
		t.Fatalf("roots after rotation %+v", r1)
	}
	if topicIndex(s, TopicCARoots) <= rootsTopic {
		t.Fatal("rotation did not raise the roots topic")
	}
	b, _ := pem.Decode([]byte(r1.Roots[1].RootCert))
	cert, _ := x509.ParseCertificate(b.Bytes)
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		t.Fatal("new root not over the configured key")
	}
	if c := caConfig(s); c.PrivateKey != pemKey || c.Config["PrivateKey"] != pemKey {
		t.Fatal("configured PrivateKey not shown")
	}
	// Same key, other TTL: no rotation. Key removed: rotation to a generated key.
	if rotated, err = s.SetCAConfig(ctx(t), &CAConfigUpdate{Config: ca.Config{LeafCertTTL: 2 * time.Hour}, PrivateKey: pemKey, Key: key}); err != nil || rotated != "" {
		t.Fatalf("same key: rotated %q, err %v", rotated, err)
	}
	if rotated, err = s.SetCAConfig(ctx(t), &CAConfigUpdate{Config: ca.Config{LeafCertTTL: 2 * time.Hour}}); err != nil || rotated == "" {
		t.Fatalf("key removed: rotated %q, err %v", rotated, err)
	}
	if n := len(roots(s).Roots); n != 3 {
		t.Fatalf("%d roots after two rotations", n)
	}
}

// TestFailedCACommitRestores: a rotation whose commit fails leaves the CA as it was, and a
// later write does not publish the half-done rotation.
func TestFailedCACommitRestores(t *testing.T) {
	s := openStore(t, t.TempDir())
	r0 := roots(s)
	s.commitHook = func() error { return errors.New("disk on fire") }
	if _, err := s.RotateCA(ctx(t)); err == nil {
		t.Fatal("rotation succeeded despite a failing commit")
	}
	pemKey, key := newKeyPEM(t, elliptic.P256())
	if _, err := s.SetCAConfig(ctx(t), &CAConfigUpdate{PrivateKey: pemKey, Key: key}); err == nil {
		t.Fatal("config change succeeded despite a failing commit")
	}
	s.commitHook = nil
	leaf, err := s.IssueLeaf(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if r := roots(s); r.ActiveRootID != r0.ActiveRootID || len(r.Roots) != 1 || leaf.RootID != r0.ActiveRootID {
		t.Fatalf("after failed rotations: roots %+v, leaf from %s", r, leaf.RootID)
	}
	if c := caConfig(s); c.PrivateKey != "" {
		t.Fatal("failed config change was published")
	}
}

// TestMaintainCA: RotationPeriod rotates, old roots are pruned after 2 × LeafCertTTL, and a
// maintenance pass with nothing to do writes nothing.
func TestMaintainCA(t *testing.T) {
	clk := &fakeClock{now: time.Now()}
	s := openStore(t, t.TempDir(), func(o *Options) { o.Clock = clk })
	if _, err := s.SetCAConfig(ctx(t), &CAConfigUpdate{Config: ca.Config{LeafCertTTL: 2 * time.Second, RotationPeriod: 10 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	first := roots(s).ActiveRootID
	before := globalIndex(s)
	if rot, removed, err := s.MaintainCA(ctx(t)); err != nil || rot != "" || len(removed) != 0 {
		t.Fatalf("fresh CA: rotated %q removed %v err %v", rot, removed, err)
	}
	if globalIndex(s) != before {
		t.Fatal("an idle maintenance pass wrote")
	}
	if _, err := s.IssueLeaf(ctx(t), "web"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(11 * time.Second)
	rot, _, err := s.MaintainCA(ctx(t))
	if err != nil || rot == "" {
		t.Fatalf("after RotationPeriod: rotated %q err %v", rot, err)
	}
	if l := roots(s); len(l.Roots) != 2 || l.ActiveRootID != rot {
		t.Fatalf("roots %+v", l)
	}
	clk.Advance(3 * time.Second) // < 2 × TTL after the rotation
	if _, removed, _ := s.MaintainCA(ctx(t)); len(removed) != 0 {
		t.Fatalf("pruned %v too early", removed)
	}
	clk.Advance(2 * time.Second)
	_, removed, err := s.MaintainCA(ctx(t))
	if err != nil || len(removed) != 1 || removed[0] != first {
		t.Fatalf("pruned %v (err %v), want the first root %s", removed, err, first)
	}
	if l := roots(s); len(l.Roots) != 1 || l.ActiveRootID != rot {
		t.Fatalf("roots after pruning %+v", l)
	}
}

func TestParseCAPrivateKey(t *testing.T) {
	good, _ := newKeyPEM(t, elliptic.P256())
	p384, _ := newKeyPEM(t, elliptic.P384())
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	pkcs8 := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	for _, tc := range []struct {
		in, wantErr string
	}{
		{good, ""},
		{pkcs8, ""},
		{p384, "P-384"},
		{"garbage", "no PEM"},
		{string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{1}})), "RSA PRIVATE KEY"},
		{string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: big.NewInt(5).Bytes()})), "parse"},
	} {
		_, err := ParseCAPrivateKey(tc.in)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%.30q: %v", tc.in, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%.30q: err %v, want %q", tc.in, err, tc.wantErr)
		}
	}
}
