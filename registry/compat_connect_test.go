package registry_test

import (
	"crypto/sha1"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// exerciseConnect drives the Connect endpoints only through consul/api, so the same test runs
// against the registry and against a real Consul 1.14.0 dev agent (TestConsulAPICompat): the
// trust bundle, a leaf whose chain verifies against it with the service's SPIFFE ID as its
// only identity, intentions with precedence, authorization by intention and by default, and
// a root rotation by a new PrivateKey with the old and new roots both trusted.
func exerciseConnect(t *testing.T, c *api.Client) {
	agent, connect := c.Agent(), c.Connect()

	// The trust bundle, the same through the agent and the catalog endpoints.
	roots, meta, err := agent.ConnectCARoots(nil)
	must(t, err)
	checkMeta(t, meta)
	roots2, _, err := connect.CARoots(nil)
	must(t, err)
	active := activeRoot(roots)
	if active == nil || active.ID != roots.ActiveRootID || roots2.ActiveRootID != roots.ActiveRootID ||
		!strings.HasSuffix(roots.TrustDomain, ".consul") || len(roots.TrustDomain) != len("00000000-0000-0000-0000-000000000000.consul") {
		t.Fatalf("roots %+v (catalog endpoint %+v)", roots, roots2)
	}
	certs, err := pemCerts(active.RootCertPEM)
	must(t, err)
	if fp := fmt.Sprintf("% x", sha1.Sum(certs[0].Raw)); strings.ReplaceAll(fp, " ", ":") != active.ID {
		t.Fatalf("root ID %s is not the SHA-1 fingerprint %s", active.ID, fp)
	}
	if !certs[0].IsCA || len(certs[0].URIs) != 1 || certs[0].URIs[0].String() != "spiffe://"+roots.TrustDomain {
		t.Fatalf("root profile: CA %v URIs %v", certs[0].IsCA, certs[0].URIs)
	}
	cfg, _, err := connect.CAGetConfig(nil)
	must(t, err)
	if cfg.Provider != "consul" || cfg.Config["LeafCertTTL"] != "72h" {
		t.Fatalf("CA configuration %+v", cfg)
	}

	// A leaf for web: cached, so asked twice it is the same; blocking on its index waits.
	leaf, lmeta, err := agent.ConnectCALeaf("web", nil)
	must(t, err)
	wantURI := "spiffe://" + roots.TrustDomain + "/ns/default/dc/dc1/svc/web"
	if leaf.Service != "web" || leaf.ServiceURI != wantURI || lmeta.LastIndex != leaf.ModifyIndex || leaf.ModifyIndex == 0 {
		t.Fatalf("leaf %+v (index %d), want service web, URI %s", leaf, lmeta.LastIndex, wantURI)
	}
	if life := leaf.ValidBefore.Sub(leaf.ValidAfter); life < 71*time.Hour || life > 73*time.Hour {
		t.Fatalf("leaf lifetime %v, want 72h", life)
	}
	if err := verifyLeaf(leaf, rootPEMs(roots), time.Now()); err != nil {
		t.Fatalf("leaf does not verify against the roots: %v", err)
	}
	again, _, err := agent.ConnectCALeaf("web", nil)
	must(t, err)
	if again.SerialNumber != leaf.SerialNumber {
		t.Fatalf("second request got serial %s, want the cached %s", again.SerialNumber, leaf.SerialNumber)
	}
	start := time.Now()
	blocked, bmeta, err := agent.ConnectCALeaf("web", &api.QueryOptions{WaitIndex: lmeta.LastIndex, WaitTime: 500 * time.Millisecond})
	must(t, err)
	if waited := time.Since(start); waited < 400*time.Millisecond || blocked.SerialNumber != leaf.SerialNumber || bmeta.LastIndex != lmeta.LastIndex {
		t.Fatalf("blocking leaf query returned after %v with serial %s index %d; want the same leaf after the wait", waited, blocked.SerialNumber, bmeta.LastIndex)
	}

	// Intentions: the exact one outranks the wildcard.
	_, err = connect.IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "db", Action: api.IntentionActionAllow, Description: "app"}, nil)
	must(t, err)
	_, err = connect.IntentionUpsert(&api.Intention{SourceName: "*", DestinationName: "db", Action: api.IntentionActionDeny}, nil)
	must(t, err)
	x, _, err := connect.IntentionGetExact("web", "db", nil)
	must(t, err)
	if x == nil || x.Action != api.IntentionActionAllow || x.Precedence != 9 || x.SourceNS != "default" ||
		x.DestinationNS != "default" || x.SourceType != api.IntentionSourceConsul || x.Description != "app" || x.ModifyIndex == 0 {
		t.Fatalf("exact web->db: %+v", x)
	}
	if none, _, err := connect.IntentionGetExact("nobody", "db", nil); err != nil || none != nil {
		t.Fatalf("absent intention: %+v, %v", none, err)
	}
	matched, _, err := connect.IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{"db"}}, nil)
	must(t, err)
	if m := matched["db"]; len(m) != 2 || m[0].SourceName != "web" || m[0].Precedence != 9 || m[1].SourceName != "*" || m[1].Precedence != 8 {
		t.Fatalf("match db: %+v", m)
	}
	all, _, err := connect.Intentions(nil)
	must(t, err)
	if len(all) != 2 || all[0].SourceName != "web" || all[1].SourceName != "*" {
		t.Fatalf("intentions %+v", all)
	}
	for _, tc := range []struct {
		src, dst string
		want     bool
	}{{"web", "db", true}, {"other", "db", false}, {"other", "unrelated", true}} {
		ok, _, err := connect.IntentionCheck(&api.IntentionCheck{Source: tc.src, Destination: tc.dst}, nil)
		must(t, err)
		if ok != tc.want {
			t.Errorf("check %s -> %s = %v, want %v", tc.src, tc.dst, ok, tc.want)
		}
	}

	// Authorization: by the matching intention, then by the default (allow).
	otherURI := "spiffe://" + roots.TrustDomain + "/ns/default/dc/dc1/svc/other"
	for _, tc := range []struct {
		target, uri string
		want        bool
		reason      string
	}{
		{"db", leaf.ServiceURI, true, "Matched L4 intention: default/web => default/db (Precedence: 9, Action: ALLOW)"},
		{"db", otherURI, false, "Matched L4 intention: default/* => default/db (Precedence: 8, Action: DENY)"},
		{"unrelated", otherURI, true, "Default behavior configured by ACLs"},
	} {
		a, err := agent.ConnectAuthorize(&api.AgentAuthorizeParams{Target: tc.target, ClientCertURI: tc.uri, ClientCertSerial: leaf.SerialNumber})
		must(t, err)
		if a.Authorized != tc.want || a.Reason != tc.reason {
			t.Errorf("authorize %s -> %s = %v %q, want %v %q", tc.uri, tc.target, a.Authorized, a.Reason, tc.want, tc.reason)
		}
	}
	// Allow -> deny takes effect at once.
	_, err = connect.IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "db", Action: api.IntentionActionDeny}, nil)
	must(t, err)
	if ok, _, err := connect.IntentionCheck(&api.IntentionCheck{Source: "web", Destination: "db"}, nil); err != nil || ok {
		t.Fatalf("check web -> db after deny: %v, %v", ok, err)
	}

	// Root rotation: a new PrivateKey makes a new active root; the old one stays trusted, so
	// the leaf issued before still verifies against the new bundle, as does a new leaf.
	_, err = connect.CASetConfig(caConfigWithKey("72h", newRootKeyPEM(t)), nil)
	must(t, err)
	after, ameta, err := agent.ConnectCARoots(nil)
	must(t, err)
	if after.ActiveRootID == roots.ActiveRootID || len(after.Roots) < 2 || ameta.LastIndex <= meta.LastIndex {
		t.Fatalf("after rotation: active %s (was %s), %d roots, index %d (was %d)", after.ActiveRootID, roots.ActiveRootID, len(after.Roots), ameta.LastIndex, meta.LastIndex)
	}
	oldStill := false
	for _, r := range after.Roots {
		if r.ID == roots.ActiveRootID {
			oldStill = !r.Active
		}
	}
	if !oldStill {
		t.Fatal("the old root left the bundle (or stayed active) at rotation")
	}
	if err := verifyLeaf(leaf, rootPEMs(after), time.Now()); err != nil {
		t.Fatalf("pre-rotation leaf against the new bundle: %v", err)
	}
	fresh, _, err := agent.ConnectCALeaf("api", nil)
	must(t, err)
	if err := verifyLeaf(fresh, []string{activeRoot(after).RootCertPEM}, time.Now()); err != nil {
		t.Fatalf("post-rotation leaf is not signed by the new active root: %v", err)
	}

	// Cleanup through the API.
	for _, src := range []string{"web", "*"} {
		_, err := connect.IntentionDeleteExact(src, "db", nil)
		must(t, err)
	}
	if x, _, err := connect.IntentionGetExact("web", "db", nil); err != nil || x != nil {
		t.Fatalf("after delete: %+v, %v", x, err)
	}
}
