package registry_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
)

func jsonKeys(t *testing.T, body string) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func hasKeys(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s lacks %q (has %v)", what, w, got)
		}
	}
}

// TestConnectShapes decodes every Connect endpoint with consul/api's structs and checks the raw
// JSON keys against what Consul 1.14 sends.
func TestConnectShapes(t *testing.T) {
	r := startRegistry(t)
	agent, connect := r.Client.Agent(), r.Client.Connect()

	roots, meta, err := agent.ConnectCARoots(nil)
	must(t, err)
	checkMeta(t, meta)
	if len(roots.Roots) != 1 || !roots.Roots[0].Active || roots.Roots[0].NotAfter == nil || roots.Roots[0].CreateIndex == 0 {
		t.Fatalf("roots %+v", roots.Roots[0])
	}
	_, h, body := r.do(t, "GET", "/v1/connect/ca/roots", "")
	hasKeys(t, "CARootList", jsonKeys(t, body), "ActiveRootID", "TrustDomain", "Roots")
	var raw struct{ Roots []json.RawMessage }
	must(t, json.Unmarshal([]byte(body), &raw))
	hasKeys(t, "CARoot", jsonKeys(t, string(raw.Roots[0])), "ID", "Name", "SerialNumber", "SigningKeyID", "ExternalTrustDomain",
		"NotBefore", "NotAfter", "RootCert", "IntermediateCerts", "Active", "PrivateKeyType", "PrivateKeyBits", "CreateIndex", "ModifyIndex")
	if h.Get("X-Consul-Index") != fmt.Sprint(meta.LastIndex) {
		t.Errorf("catalog and agent roots indexes differ: %s vs %d", h.Get("X-Consul-Index"), meta.LastIndex)
	}
	code, h, body := r.do(t, "GET", "/v1/connect/ca/roots?pem=true", "")
	if certs, err := pemCerts(body); code != 200 || h.Get("Content-Type") != "application/pem-certificate-chain" || err != nil || len(certs) != 1 {
		t.Fatalf("?pem=true: %d %q, %d certs (%v)", code, h.Get("Content-Type"), len(certs), err)
	}

	leaf, lmeta, err := agent.ConnectCALeaf("web", nil)
	must(t, err)
	if lmeta.CacheHit || lmeta.LastIndex != leaf.ModifyIndex {
		t.Fatalf("first leaf: cache hit %v, index %d vs ModifyIndex %d", lmeta.CacheHit, lmeta.LastIndex, leaf.ModifyIndex)
	}
	if _, lmeta2, err := agent.ConnectCALeaf("web", nil); err != nil || !lmeta2.CacheHit {
		t.Fatalf("second leaf: %v, cache hit %v", err, lmeta2 != nil && lmeta2.CacheHit)
	}
	must(t, verifyLeaf(leaf, rootPEMs(roots), time.Now()))
	_, _, body = r.do(t, "GET", "/v1/agent/connect/ca/leaf/web", "")
	hasKeys(t, "LeafCert", jsonKeys(t, body), "SerialNumber", "CertPEM", "PrivateKeyPEM", "Service", "ServiceURI",
		"ValidAfter", "ValidBefore", "CreateIndex", "ModifyIndex")

	cfg, _, err := connect.CAGetConfig(nil)
	must(t, err)
	if cfg.Provider != "consul" || cfg.Config["LeafCertTTL"] != "72h" || cfg.Config["PrivateKeyType"] != "ec" || cfg.ModifyIndex == 0 {
		t.Fatalf("CA config %+v", cfg)
	}
	// A client's round trip (read, change one key, write back) changes only that key.
	cfg.Config["LeafCertTTL"] = "2h"
	_, err = connect.CASetConfig(cfg, nil)
	must(t, err)
	cfg2, _, err := connect.CAGetConfig(nil)
	must(t, err)
	if cfg2.Config["LeafCertTTL"] != "2h" || cfg2.Config["RotationPeriod"] != cfg.Config["RotationPeriod"] || cfg2.ModifyIndex <= cfg.ModifyIndex {
		t.Fatalf("after setting LeafCertTTL: %+v", cfg2)
	}
	if after, _, _ := agent.ConnectCARoots(nil); after.ActiveRootID != roots.ActiveRootID {
		t.Fatal("a lifetime change rotated the root")
	}

	// Upserts through exact carry no ID or timestamps (Consul keeps them in config entries).
	_, err = connect.IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "db", Action: api.IntentionActionAllow}, nil)
	must(t, err)
	_, _, body = r.do(t, "GET", "/v1/connect/intentions/exact?source=web&destination=db", "")
	if keys := jsonKeys(t, body); slices.Contains(keys, "ID") || slices.Contains(keys, "CreatedAt") || slices.Contains(keys, "Hash") {
		t.Fatalf("exact intention shows %v", keys)
	}
	list, lm, err := connect.Intentions(&api.QueryOptions{Filter: `SourceName == "web"`})
	must(t, err)
	checkMeta(t, lm)
	if len(list) != 1 || list[0].DestinationName != "db" {
		t.Fatalf("filtered list %+v", list)
	}
	code, _, body = r.do(t, "GET", "/v1/connect/intentions/match?by=source&name=web&name=nobody", "")
	if code != 200 || body != "{\"nobody\":[],\"web\":[{\"SourceNS\":\"default\",\"SourceName\":\"web\",\"DestinationNS\":\"default\",\"DestinationName\":\"db\",\"SourceType\":\"consul\",\"Action\":\"allow\",\"Precedence\":9,"+
		fmt.Sprintf("\"CreateIndex\":%d,\"ModifyIndex\":%d}]}\n", list[0].CreateIndex, list[0].ModifyIndex) {
		t.Fatalf("match by source: %d %s", code, body)
	}

	// The default policy is on every response, writes and errors included.
	for _, req := range [][3]string{
		{"PUT", "/v1/connect/intentions/exact?source=a&destination=b", `{"Action":"allow"}`},
		{"PUT", "/v1/connect/intentions/exact?source=a&destination=b", `{"Action":"perhaps"}`},
		{"POST", "/v1/agent/connect/authorize", `{}`},
		{"GET", "/v1/nope", ``},
	} {
		if _, h, _ := r.do(t, req[0], req[1], req[2]); h.Get("X-Consul-Default-ACL-Policy") != "allow" {
			t.Errorf("%s %s: X-Consul-Default-ACL-Policy %q", req[0], req[1], h.Get("X-Consul-Default-ACL-Policy"))
		}
	}
	if code, h, _ := r.do(t, "PUT", "/v1/agent/connect/authorize", `{}`); code != 405 || !strings.Contains(h.Get("Allow"), "POST") {
		t.Fatalf("PUT authorize: %d, Allow %q", code, h.Get("Allow"))
	}
}

// TestAuthorizeDenyPolicy: under -default-intention-policy deny a pair with no intention is
// denied, by authorize and check alike, and the header says deny.
func TestAuthorizeDenyPolicy(t *testing.T) {
	r := startRegistry(t, func(o *regOptions) { o.policy = "deny" })
	td := r.Store.TrustDomain()
	uri := "spiffe://" + td + "/ns/default/dc/dc1/svc/web"
	a, err := r.Client.Agent().ConnectAuthorize(&api.AgentAuthorizeParams{Target: "db", ClientCertURI: uri})
	must(t, err)
	if a.Authorized || a.Reason != "Default behavior configured by ACLs" {
		t.Fatalf("default deny: %+v", a)
	}
	ok, _, err := r.Client.Connect().IntentionCheck(&api.IntentionCheck{Source: "web", Destination: "db"}, nil)
	if err != nil || ok {
		t.Fatalf("check under deny: %v %v", ok, err)
	}
	_, meta, err := r.Client.Connect().IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{"db"}}, nil)
	must(t, err)
	if meta.DefaultACLPolicy != "deny" {
		t.Fatalf("DefaultACLPolicy %q", meta.DefaultACLPolicy)
	}
	_, err = r.Client.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "db", Action: api.IntentionActionAllow}, nil)
	must(t, err)
	a, err = r.Client.Agent().ConnectAuthorize(&api.AgentAuthorizeParams{Target: "db", ClientCertURI: uri})
	must(t, err)
	if !a.Authorized {
		t.Fatalf("allowed by intention: %+v", a)
	}
	// An L7 intention counts as deny for a connection.
	code, _, body := r.do(t, "PUT", "/v1/connect/intentions/exact?source=web&destination=db",
		`{"Permissions":[{"Action":"allow","HTTP":{"PathPrefix":"/api"}}]}`)
	if code != 200 {
		t.Fatalf("L7 upsert: %d %s", code, body)
	}
	a, err = r.Client.Agent().ConnectAuthorize(&api.AgentAuthorizeParams{Target: "db", ClientCertURI: uri})
	must(t, err)
	if a.Authorized || !strings.HasPrefix(a.Reason, "Matched L7 intention: default/web => default/db") {
		t.Fatalf("L7: %+v", a)
	}
}

// TestConnectACL: with a token, leaves, authorization, the CA configuration and intention
// writes need it; the trust bundle and intention reads do not.
func TestConnectACL(t *testing.T) {
	r := startRegistry(t, func(o *regOptions) { o.token = "s3cret" })
	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/v1/agent/connect/ca/leaf/web", "", 403},
		{"POST", "/v1/agent/connect/authorize", `{"Target":"db","ClientCertURI":"spiffe://x.consul/ns/default/dc/dc1/svc/web"}`, 403},
		{"GET", "/v1/connect/ca/configuration", "", 403},
		{"PUT", "/v1/connect/ca/configuration", `{"Provider":"consul"}`, 403},
		{"PUT", "/v1/connect/intentions/exact?source=a&destination=b", `{"Action":"allow"}`, 403},
		{"POST", "/v1/connect/intentions", `{"SourceName":"a","DestinationName":"b","Action":"allow"}`, 403},
		{"DELETE", "/v1/connect/intentions/exact?source=a&destination=b", ``, 403},
		{"GET", "/v1/connect/ca/roots", "", 200},
		{"GET", "/v1/agent/connect/ca/roots", "", 200},
		{"GET", "/v1/connect/intentions", "", 200},
		{"GET", "/v1/connect/intentions/match?by=destination&name=b", "", 200},
		{"GET", "/v1/connect/intentions/check?source=a&destination=b", "", 200},
	} {
		if code, _, body := r.do(t, tc.method, tc.path, tc.body); code != tc.want {
			t.Errorf("%s %s without token: %d (%s), want %d", tc.method, tc.path, code, body, tc.want)
		}
	}
	// The client carries the token.
	if _, _, err := r.Client.Agent().ConnectCALeaf("web", nil); err != nil {
		t.Fatalf("leaf with token: %v", err)
	}
}

// TestLeafRenewedBeforeExpiry: a blocked leaf query returns the next leaf at the renewal time,
// before the current leaf expires, and both verify against the bundle meanwhile.
func TestLeafRenewedBeforeExpiry(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := startRegistry(t, func(o *regOptions) { o.leafTTL = 3 * time.Second })
	agent := r.Client.Agent()
	roots, _, err := agent.ConnectCARoots(nil)
	must(t, err)
	asked := time.Now()
	leaf, meta, err := agent.ConnectCALeaf("web", nil)
	must(t, err)
	answered := time.Now()
	// The lifetime counts from the issue (only ValidAfter is backdated), rounded up to the
	// second.
	if life := leaf.ValidBefore.Sub(asked); life < 3*time.Second || leaf.ValidBefore.After(answered.Add(4*time.Second)) {
		t.Fatalf("leaf valid until %v, asked at %v: want 3s from its issue", leaf.ValidBefore, asked)
	}
	next, nmeta, err := agent.ConnectCALeaf("web", &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 10 * time.Second})
	must(t, err)
	got := time.Now()
	// Renewal comes at 60–90% of the leaf's life from its issue.
	if d := got.Sub(asked); d < 3*time.Second*6/10 {
		t.Fatalf("renewed %v after the issue, before 60%% of its 3s life", d)
	}
	if nmeta.LastIndex <= meta.LastIndex || next.SerialNumber == leaf.SerialNumber {
		t.Fatalf("blocked query returned index %d serial %s, was %d %s", nmeta.LastIndex, next.SerialNumber, meta.LastIndex, leaf.SerialNumber)
	}
	if !got.Before(leaf.ValidBefore) {
		t.Fatalf("new leaf arrived at %v, after the old one expired at %v", got, leaf.ValidBefore)
	}
	if !next.ValidBefore.After(leaf.ValidBefore) {
		t.Fatalf("new leaf valid until %v, not past the old %v", next.ValidBefore, leaf.ValidBefore)
	}
	must(t, verifyLeaf(leaf, rootPEMs(roots), got))
	must(t, verifyLeaf(next, rootPEMs(roots), got))
	t.Logf("leaf renewed %v before expiry", leaf.ValidBefore.Sub(got).Round(time.Millisecond))
}

type leafResult struct {
	leaf *api.LeafCert
	meta *api.QueryMeta
	err  error
	at   time.Time
}

// TestRootRotationWakesLeavesAndRoots: a rotation through the CA configuration wakes blocked
// leaf and roots queries at once; new leaves chain to the new root, old leaves still verify
// during the overlap, and new leaves verify at a peer that has only the old root (the
// cross-signed intermediate travels with them).
func TestRootRotationWakesLeavesAndRoots(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := startRegistry(t)
	agent := r.Client.Agent()
	roots, rmeta, err := agent.ConnectCARoots(nil)
	must(t, err)
	const n = 20 // sidecars of two services
	leaves := map[string]*api.LeafCert{}
	idx := map[string]uint64{}
	for _, svc := range []string{"web", "api"} {
		l, m, err := agent.ConnectCALeaf(svc, nil)
		must(t, err)
		leaves[svc], idx[svc] = l, m.LastIndex
	}
	res := make(chan leafResult, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range n {
		svc := []string{"web", "api"}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, m, err := agent.ConnectCALeaf(svc, &api.QueryOptions{WaitIndex: idx[svc], WaitTime: 20 * time.Second})
			res <- leafResult{l, m, err, time.Now()}
		}()
	}
	rootsRes := make(chan time.Time, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, m, err := agent.ConnectCARoots(&api.QueryOptions{WaitIndex: rmeta.LastIndex, WaitTime: 20 * time.Second})
		if err != nil || m.LastIndex <= rmeta.LastIndex {
			t.Errorf("roots watch: %v, index %v", err, m)
		}
		rootsRes <- time.Now()
	}()
	r.waitBlocked(t, 1) // all of them wait on the trust bundle's topic
	time.Sleep(100 * time.Millisecond)
	select {
	case x := <-res:
		t.Fatalf("a leaf query returned before the rotation: %+v", x)
	default:
	}

	_, err = r.Client.Connect().CASetConfig(caConfigWithKey("72h", newRootKeyPEM(t)), nil)
	must(t, err)
	ack := time.Now()
	after, _, err := agent.ConnectCARoots(nil)
	must(t, err)
	newRoot := activeRoot(after)
	if after.ActiveRootID == roots.ActiveRootID || len(after.Roots) != 2 {
		t.Fatalf("after rotation: %+v", after)
	}
	serials := map[string]string{}
	for range n {
		x := <-res
		must(t, x.err)
		if lat := x.at.Sub(ack); lat > 500*time.Millisecond {
			t.Errorf("blocked leaf returned %v after the rotation", lat)
		}
		if prev, ok := serials[x.leaf.Service]; ok && prev != x.leaf.SerialNumber {
			t.Errorf("watchers of %s got different leaves %s and %s", x.leaf.Service, prev, x.leaf.SerialNumber)
		}
		serials[x.leaf.Service] = x.leaf.SerialNumber
		if x.leaf.SerialNumber == leaves[x.leaf.Service].SerialNumber || x.meta.LastIndex <= idx[x.leaf.Service] {
			t.Fatalf("%s: same leaf after rotation", x.leaf.Service)
		}
		must(t, verifyLeaf(x.leaf, []string{newRoot.RootCertPEM}, time.Now()))
		// A peer that has not fetched the new bundle yet still accepts the new leaf.
		must(t, verifyLeaf(x.leaf, rootPEMs(roots), time.Now()))
	}
	if at := <-rootsRes; at.Sub(ack) > 500*time.Millisecond {
		t.Errorf("roots watch returned %v after the rotation", at.Sub(ack))
	}
	for _, l := range leaves {
		must(t, verifyLeaf(l, rootPEMs(after), time.Now())) // old leaves, new bundle
	}
}

// TestRotationPeriodAndPruning: with a short RotationPeriod the registry rotates on its own;
// the old root is listed until no leaf it signed can be valid, then pruned; each change wakes
// the roots watchers.
func TestRotationPeriodAndPruning(t *testing.T) {
	r := startRegistry(t)
	agent := r.Client.Agent()
	_, err := r.Client.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{"LeafCertTTL": "1s", "RotationPeriod": "1500ms"}}, nil)
	must(t, err)
	roots, meta, err := agent.ConnectCARoots(nil)
	must(t, err)
	first := roots.ActiveRootID
	leaf, _, err := agent.ConnectCALeaf("web", nil)
	must(t, err)

	// First change: a rotation, with both roots listed.
	start := time.Now()
	rot, meta2, err := agent.ConnectCARoots(&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 10 * time.Second})
	must(t, err)
	if rot.ActiveRootID == first || len(rot.Roots) != 2 || time.Since(start) > 3*time.Second {
		t.Fatalf("after %v: active %s (first %s), %d roots", time.Since(start), rot.ActiveRootID, first, len(rot.Roots))
	}
	// The leaf (1s, maybe expired by now) still chains to the bundle: check it within its life.
	must(t, verifyLeaf(leaf, rootPEMs(rot), leaf.ValidBefore.Add(-time.Millisecond)))
	// Then the first root leaves the bundle once 2 × LeafCertTTL has passed (meanwhile more
	// rotations may come; the first root must not go before its time).
	rotatedAt := time.Now()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		l, m, err := agent.ConnectCARoots(&api.QueryOptions{WaitIndex: meta2.LastIndex, WaitTime: 5 * time.Second})
		if err != nil {
			return err
		}
		meta2 = m
		for _, x := range l.Roots {
			if x.ID == first {
				return fmt.Errorf("first root still listed")
			}
		}
		if since := time.Since(rotatedAt); since < time.Second {
			t.Fatalf("first root pruned %v after its rotation, before 2 × LeafCertTTL", since)
		}
		return nil
	})
}

// TestIntentionWatchIsolation: a change to the intentions of destination db wakes the
// watchers of db (match and exact) and of the list, not those of another destination, nor
// catalog, health or KV watchers; catalog and KV changes wake no intention watcher. A
// wildcard destination concerns every destination.
func TestIntentionWatchIsolation(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := startRegistry(t)
	connect := r.Client.Connect()
	must(t, r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web1", Name: "web"}))
	up := func(src, dst string, a api.IntentionAction) {
		t.Helper()
		_, err := connect.IntentionUpsert(&api.Intention{SourceName: src, DestinationName: dst, Action: a}, nil)
		must(t, err)
	}
	up("web", "db", api.IntentionActionAllow)
	up("web", "cache", api.IntentionActionAllow)

	const (
		matchDB    = "/v1/connect/intentions/match?by=destination&name=db"
		matchCache = "/v1/connect/intentions/match?by=destination&name=cache"
		exactDB    = "/v1/connect/intentions/exact?source=web&destination=db"
		list       = "/v1/connect/intentions"
		health     = "/v1/health/service/web"
		kv         = "/v1/kv/k"
	)
	idx := map[string]uint64{}
	for _, p := range []string{matchDB, matchCache, exactDB, list, health, kv} {
		idx[p] = r.index(t, p)
	}
	block := func(p string) <-chan blockResult { return r.block(t, p, idx[p], "10s") }

	// Catalog and KV changes wake no intention watcher.
	chDB, chCache, chExact, chList := block(matchDB), block(matchCache), block(exactDB), block(list)
	r.waitBlocked(t, 4)
	must(t, r.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web2", Name: "web"}))
	_, err := r.Client.KV().Put(&api.KVPair{Key: "k", Value: []byte("v")}, nil)
	must(t, err)
	expectNoReturn(t, chDB, 200*time.Millisecond, "catalog and KV changes")
	for _, ch := range []<-chan blockResult{chCache, chExact, chList} {
		expectNoReturn(t, ch, 10*time.Millisecond, "catalog and KV changes")
	}
	for _, p := range []string{health, kv} {
		idx[p] = r.index(t, p)
	}

	// A change for cache wakes cache and the list only.
	chHealth, chKV := block(health), block(kv)
	r.waitBlocked(t, 6)
	up("web", "cache", api.IntentionActionDeny)
	ack := time.Now()
	expectReturn(t, chCache, ack, 100*time.Millisecond)
	expectReturn(t, chList, ack, 100*time.Millisecond)
	expectNoReturn(t, chDB, 200*time.Millisecond, "a change to cache's intentions")
	expectNoReturn(t, chExact, 10*time.Millisecond, "a change to cache's intentions")
	expectNoReturn(t, chHealth, 10*time.Millisecond, "an intention change")
	expectNoReturn(t, chKV, 10*time.Millisecond, "an intention change")
	if got := r.index(t, matchDB); got != idx[matchDB] {
		t.Fatalf("db's match index moved %d -> %d on a change for cache", idx[matchDB], got)
	}

	// A wildcard destination concerns db too; the exact web->db pair is not touched.
	up("*", "*", api.IntentionActionDeny)
	ack = time.Now()
	res := expectReturn(t, chDB, ack, 100*time.Millisecond)
	if !strings.Contains(res.body, `"DestinationName":"*"`) {
		t.Fatalf("match after the wildcard intention: %s", res.body)
	}
	expectNoReturn(t, chExact, 100*time.Millisecond, "a wildcard intention")

	// The exact pair's own change wakes it.
	up("web", "db", api.IntentionActionDeny)
	res = expectReturn(t, chExact, time.Now(), 100*time.Millisecond)
	if !strings.Contains(res.body, `"Action":"deny"`) || res.index <= idx[exactDB] {
		t.Fatalf("exact after change: %d %s", res.index, res.body)
	}
	// Release the health and KV watchers.
	must(t, r.Client.Agent().ServiceDeregister("web2"))
	_, err = r.Client.KV().Delete("k", nil)
	must(t, err)
	<-chHealth
	<-chKV
}

func TestConnectMetrics(t *testing.T) {
	r := startRegistry(t)
	agent := r.Client.Agent()
	_, _, err := agent.ConnectCALeaf("web", nil)
	must(t, err)
	_, err = r.Client.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "db", Action: api.IntentionActionDeny}, nil)
	must(t, err)
	uri := "spiffe://" + r.Store.TrustDomain() + "/ns/default/dc/dc1/svc/web"
	for _, target := range []string{"db", "other", "other"} {
		_, err := agent.ConnectAuthorize(&api.AgentAuthorizeParams{Target: target, ClientCertURI: uri})
		must(t, err)
	}
	_, err = r.Client.Connect().CASetConfig(caConfigWithKey("72h", newRootKeyPEM(t)), nil)
	must(t, err)
	_, _, body := r.do(t, "GET", "/metrics", "")
	for _, want := range []string{
		"podmesh_registry_connect_leaf_certs_issued_total 1\n",
		`podmesh_registry_connect_authorize_total{decision="allow"} 2`,
		`podmesh_registry_connect_authorize_total{decision="deny"} 1`,
		`podmesh_registry_connect_root_rotations_total{reason="config"} 1`,
		"podmesh_registry_connect_intentions 1\n",
		"podmesh_registry_connect_ca_roots 2\n",
		`podmesh_registry_http_requests_total{code="200",method="GET",route="GET /v1/agent/connect/ca/leaf/{service...}"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
