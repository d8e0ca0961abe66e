package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/tls/authz"
	"github.com/podmesh/podmesh/tls/ca"
	"github.com/podmesh/podmesh/tls/spiffe"
)

const clusterID = "11111111-2222-3333-4444-555555555555"

func newMeshCA(t testing.TB, cfg ca.Config) *ca.CA {
	t.Helper()
	c, err := ca.New(clusterID, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewValidates(t *testing.T) {
	client, _ := api.NewClient(api.DefaultConfig())
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Service: "web"}, "Client is required"},
		{Config{Client: client}, "Service is required"},
		{Config{Client: client, Service: "a/b"}, "Service \"a/b\""},
		{Config{Client: client, Service: "web", DefaultPolicy: "maybe"}, "DefaultPolicy"},
		{Config{Client: client, Service: "web", WaitTime: -1}, "WaitTime"},
	}
	for _, tc := range tests {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want error containing %q", tc.cfg, err, tc.want)
		}
	}
}

func TestHandshakeAndPeerIdentity(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := newFake(t, newMeshCA(t, ca.Config{}))
	web := startSource(t, f.client(), "web")
	db := startSource(t, f.client(), "db")

	srv := startEcho(t, db.ServerConfig([]string{"h2", "http/1.1"}))
	c, err := dial(srv.addr, web.ClientConfig("db", []string{"h2"}))
	if err != nil {
		t.Fatalf("mTLS handshake web → db: %v", err)
	}
	defer c.Close()
	cs := c.ConnectionState()
	if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != "h2" {
		t.Errorf("version %x ALPN %q, want TLS 1.3 and h2", cs.Version, cs.NegotiatedProtocol)
	}
	peer, err := web.PeerIdentity(cs)
	if err != nil || peer.Service != "db" || peer.TrustDomain != clusterID+".consul" || peer.Datacenter != "dc1" {
		t.Errorf("client sees peer %+v, %v", peer, err)
	}
	scs := <-srv.peers
	caller, err := db.PeerIdentity(scs)
	if err != nil || caller.Service != "web" {
		t.Errorf("server sees caller %+v, %v", caller, err)
	}
	if ok, reason := db.Authorize(caller); !ok || reason != authz.ReasonDefaultACLs {
		t.Errorf("Authorize(web) under the default allow = %v, %q", ok, reason)
	}
	if id, ok := web.Identity(); !ok || id.Service != "web" {
		t.Errorf("Identity = %+v, %v", id, ok)
	}
	st := web.Stats()
	if st.RootUpdates != 1 || st.LeafUpdates != 1 || st.IntentionUpdates != 1 || st.TrustDomain != clusterID+".consul" ||
		st.ActiveRootID == "" || st.LeafNotAfter.IsZero() || !st.LeafNotAfter.Equal(web.LeafExpiry()) {
		t.Errorf("stats %+v", st)
	}
	// A second connection resumes the session, and is verified again.
	c2, err := dial(srv.addr, web.ClientConfig("db", nil))
	if err != nil {
		t.Fatalf("second connection: %v", err)
	}
	defer c2.Close()
	if !c2.ConnectionState().DidResume {
		t.Error("second connection did not resume the session")
	}
	if p, err := web.PeerIdentity(c2.ConnectionState()); err != nil || p.Service != "db" {
		t.Errorf("resumed connection peer %+v, %v", p, err)
	}
	if _, err := web.PeerIdentity(tls.ConnectionState{}); !errors.Is(err, ErrNoPeerCert) {
		t.Errorf("PeerIdentity(no certs) = %v", err)
	}
}

func TestClientRejectsWrongServiceAndTrustDomain(t *testing.T) {
	testutil.CheckGoroutines(t)
	meshCA := newMeshCA(t, ca.Config{})
	f := newFake(t, meshCA)
	web := startSource(t, f.client(), "web")
	db := startSource(t, f.client(), "db")

	srv := startEcho(t, db.ServerConfig(nil))
	if _, err := dial(srv.addr, web.ClientConfig("api", nil)); !errors.Is(err, ErrWrongService) {
		t.Errorf("dialing db as api: %v, want ErrWrongService", err)
	}

	root, key := rootKey(t, meshCA)
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		want error
	}{
		{"other trust domain, signed by our root", forge(t, root, key, "spiffe://99999999-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/db"), ErrTrustDomain},
		{"other namespace", forge(t, root, key, "spiffe://"+clusterID+".consul/ns/ops/dc/dc1/svc/db"), ErrWrongService},
		{"other CA", leafPair(t, mustLeaf(t, newMeshCA(t, ca.Config{}), "db")), nil},
		{"no SPIFFE ID", forge(t, root, key, ""), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := startEcho(t, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{tc.cert}, ClientAuth: tls.RequireAnyClientCert})
			_, err := dial(bad.addr, web.ClientConfig("db", nil))
			if err == nil {
				t.Fatal("client accepted the server")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func mustLeaf(t testing.TB, c *ca.CA, svc string) *ca.LeafCert {
	t.Helper()
	l, err := c.IssueLeaf(c.ServiceID("dc1", svc))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestServerRejectsBadClients is issue 4's acceptance 1 at the TLS layer: the inbound
// configuration refuses a client with no certificate, a certificate from another CA, an
// expired certificate and one naming another trust domain (and a few more).
func TestServerRejectsBadClients(t *testing.T) {
	testutil.CheckGoroutines(t)
	clk := &settable{}
	meshCA := newMeshCA(t, ca.Config{Now: clk.Now})
	f := newFake(t, meshCA)
	db := startSource(t, f.client(), "db")
	web := startSource(t, f.client(), "web")
	srv := startEcho(t, db.ServerConfig(nil))

	root, key := rootKey(t, meshCA)
	clk.Set(-10 * 24 * time.Hour)
	expired := leafPair(t, mustLeaf(t, meshCA, "web")) // 72h leaf issued ten days ago
	clk.Set(0)
	otherTD := forge(t, root, key, "spiffe://99999999-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web")
	noURI := forge(t, root, key, "")
	outsideConstraint := forge(t, root, key, "dns:")
	otherCA := leafPair(t, mustLeaf(t, newMeshCA(t, ca.Config{}), "web"))
	good := leafPair(t, mustLeaf(t, meshCA, "web"))
	tls12 := clientWith(&good)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	tests := []struct {
		name string
		cfg  *tls.Config
		want string // in the server's handshake error
	}{
		{"no certificate", clientWith(nil), "certificate"},
		{"certificate from another CA", clientWith(&otherCA), "unknown authority"},
		{"expired certificate", clientWith(&expired), "expired"},
		{"other trust domain", clientWith(&otherTD), ErrTrustDomain.Error()},
		{"no SPIFFE ID", clientWith(&noURI), "URI SANs"},
		{"DNS name outside the root's name constraint", clientWith(&outsideConstraint), "not permitted"},
		{"TLS 1.2", tls12, "version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dial(srv.addr, tc.cfg)
			if err == nil {
				c.Close()
				t.Fatal("server accepted the client")
			}
			if serr := serverErr(t, srv); !strings.Contains(serr.Error(), tc.want) {
				t.Fatalf("server error %q, want it to mention %q", serr, tc.want)
			}
		})
	}
	// The same server accepts a good client, and a real Source client.
	c, err := dial(srv.addr, clientWith(&good))
	if err != nil {
		t.Fatalf("good client refused: %v", err)
	}
	c.Close()
	c, err = dial(srv.addr, web.ClientConfig("db", nil))
	if err != nil {
		t.Fatalf("Source client refused: %v", err)
	}
	c.Close()
}

func TestIntentionChangeReflectedWithinOneSecond(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := newFake(t, newMeshCA(t, ca.Config{}))
	db := startSource(t, f.client(), "db")
	web := spiffe.ServiceID{TrustDomain: clusterID + ".consul", Namespace: "default", Datacenter: "dc1", Service: "web"}

	for i, step := range []struct {
		policy  string
		ixns    []*authz.Intention
		allowed bool
		reason  string
	}{
		{"allow", []*authz.Intention{{SourceName: "web", DestinationName: "db", Action: authz.Deny}}, false, "Matched L4 intention: default/web => default/db (Precedence: 9, Action: DENY)"},
		{"allow", []*authz.Intention{{SourceName: "web", DestinationName: "db", Action: authz.Allow}}, true, "Matched L4 intention: default/web => default/db (Precedence: 9, Action: ALLOW)"},
		{"deny", nil, false, authz.ReasonDefaultACLs},
		{"allow", nil, true, authz.ReasonDefaultACLs},
		{"deny", []*authz.Intention{{SourceName: "*", DestinationName: "db", Action: authz.Allow}, {SourceName: "web", DestinationName: "*", Action: authz.Deny}}, true, "Matched L4 intention: default/* => default/db (Precedence: 8, Action: ALLOW)"},
		{"allow", []*authz.Intention{{SourceName: "web", DestinationName: "db", Permissions: []*authz.Permission{{Action: authz.Allow, HTTP: &authz.HTTPPermission{PathPrefix: "/"}}}}}, false, "Matched L7 intention: default/web => default/db (Precedence: 9, Permissions: 1)"},
	} {
		start := time.Now()
		f.SetIntentions(step.policy, step.ixns...)
		deadline := start.Add(time.Second)
		for {
			ok, reason := db.Authorize(web)
			if ok == step.allowed && reason == step.reason {
				t.Logf("step %d reflected after %v", i, time.Since(start).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("step %d not reflected within 1s: Authorize = (%v, %q), want (%v, %q)", i, ok, reason, step.allowed, step.reason)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func TestDefaultPolicyFallback(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := newFake(t, newMeshCA(t, ca.Config{}))
	f.SetIntentions("", nil...) // the registry sends no default policy header
	web := spiffe.ServiceID{TrustDomain: clusterID + ".consul", Namespace: "default", Datacenter: "dc1", Service: "web"}
	denyByDefault := startSource(t, f.client(), "db")
	if ok, _ := denyByDefault.Authorize(web); ok {
		t.Error("no header and no DefaultPolicy: allowed, want deny")
	}
	allow := startSource(t, f.client(), "db", func(c *Config) { c.DefaultPolicy = "allow" })
	if ok, _ := allow.Authorize(web); !ok {
		t.Error("DefaultPolicy allow without a header: denied")
	}
}

func TestAuthorizeBeforeLoadDeniesAndDoesNotAllocate(t *testing.T) {
	client, _ := api.NewClient(api.DefaultConfig())
	s, err := New(Config{Client: client, Service: "db"})
	if err != nil {
		t.Fatal(err)
	}
	web := spiffe.ServiceID{TrustDomain: "t", Namespace: "default", Datacenter: "dc1", Service: "web"}
	if ok, reason := s.Authorize(web); ok || reason != reasonNotLoaded {
		t.Errorf("before load: %v %q", ok, reason)
	}
	tb, err := authz.NewTable([]*authz.Intention{{SourceName: "web", DestinationName: "db", Action: authz.Allow, SourceNS: "default", DestinationNS: "default"}}, "db", authz.DefaultDeny)
	if err != nil {
		t.Fatal(err)
	}
	s.table.Store(tb)
	if allocs := testing.AllocsPerRun(200, func() { s.Authorize(web) }); allocs != 0 {
		t.Errorf("Authorize allocates %v times", allocs)
	}
	if ok, _ := s.Authorize(web); !ok {
		t.Error("intention not applied")
	}
}

func BenchmarkAuthorize(b *testing.B) {
	client, _ := api.NewClient(api.DefaultConfig())
	s, err := New(Config{Client: client, Service: "db"})
	if err != nil {
		b.Fatal(err)
	}
	tb, _ := authz.NewTable([]*authz.Intention{{SourceName: "web", DestinationName: "db", Action: authz.Allow, SourceNS: "default", DestinationNS: "default"}}, "db", authz.DefaultDeny)
	s.table.Store(tb)
	web := spiffe.ServiceID{TrustDomain: "t", Namespace: "default", Datacenter: "dc1", Service: "web"}
	b.ReportAllocs()
	for b.Loop() {
		s.Authorize(web)
	}
}

// TestLeafRotationKeepsConnections: a new leaf is used for new handshakes while an
// established connection keeps working.
func TestLeafRotationKeepsConnections(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := newFake(t, newMeshCA(t, ca.Config{LeafCertTTL: time.Hour}))
	web := startSource(t, f.client(), "web")
	db := startSource(t, f.client(), "db")
	srv := startEcho(t, db.ServerConfig(nil))
	noResume := web.ClientConfig("db", nil)
	noResume.ClientSessionCache = nil

	long, err := dial(srv.addr, noResume)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	before := long.ConnectionState().PeerCertificates[0].SerialNumber

	next := f.IssueLeaf("db")
	eventually(t, "db picked up its new leaf", func() bool { return db.Stats().LeafUpdates == 2 })
	if err := roundTrip(long, "still here"); err != nil {
		t.Fatalf("established connection broke on leaf rotation: %v", err)
	}
	fresh, err := dial(srv.addr, noResume)
	if err != nil {
		t.Fatalf("new handshake after rotation: %v", err)
	}
	defer fresh.Close()
	after := fresh.ConnectionState().PeerCertificates[0].SerialNumber
	if after.Cmp(before) == 0 || ca.HexString(after.Bytes()) != next.SerialNumber {
		t.Errorf("new handshake presented serial %x, want the new leaf %s (old %x)", after, next.SerialNumber, before)
	}
	if !db.LeafExpiry().Equal(next.ValidBefore) {
		t.Errorf("LeafExpiry %v, want %v", db.LeafExpiry(), next.ValidBefore)
	}
}

// TestRootRotationUnderLoad is issue 4's acceptance 3 at the TLS layer: handshakes run
// continuously while the root rotates, in the worst order (new leaves before the new bundle
// reaches anyone), then the bundle, then the other leaf, then the old root is pruned. No
// handshake may fail, and an established connection survives throughout.
func TestRootRotationUnderLoad(t *testing.T) {
	testutil.CheckGoroutines(t)
	clk := &settable{}
	ttl := time.Hour
	meshCA := newMeshCA(t, ca.Config{LeafCertTTL: ttl, Now: clk.Now})
	f := newFake(t, meshCA)
	web := startSource(t, f.client(), "web", func(c *Config) { c.Now = clk.Now })
	db := startSource(t, f.client(), "db", func(c *Config) { c.Now = clk.Now })
	srv := startEcho(t, db.ServerConfig(nil))
	oldRoot := web.Stats().ActiveRootID

	long, err := dial(srv.addr, web.ClientConfig("db", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var curPhase atomic.Value
	curPhase.Store("start")
	// The fake clock jumps by tens of minutes; a jump in the middle of a handshake could pass
	// a certificate's expiry between Go's session check and ours, which real time never does
	// at this scale. Jumps therefore happen between handshakes.
	var jump sync.RWMutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		full := web.ClientConfig("db", nil)
		full.ClientSessionCache = nil // every other handshake is a full one
		resumed := web.ClientConfig("db", nil)
		deadline := time.Now().Add(60 * time.Second)
		for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			cfg := full
			if i%2 == 1 {
				cfg = resumed
			}
			jump.RLock()
			c, err := dial(srv.addr, cfg)
			jump.RUnlock()
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Errorf("handshake %d (resumable %v) in phase %q: %w", i, i%2 == 1, curPhase.Load(), err))
				continue
			}
			c.Close()
			ok.Add(1)
		}
	}()
	phase := func(name string) {
		t.Helper()
		curPhase.Store(name)
		n := ok.Load()
		eventually(t, "handshakes continue: "+name, func() bool { return ok.Load() >= n+20 })
		if err := roundTrip(long, name); err != nil {
			t.Fatalf("%s: established connection broke: %v", name, err)
		}
	}
	phase("before rotation")

	newRoot, err := meshCA.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	// 1. The server gets a leaf from the new root while everyone still trusts only the old
	//    root: the cross-signed intermediate carries it.
	f.IssueLeaf("db")
	eventually(t, "db has a new-root leaf", func() bool { return db.Stats().LeafUpdates == 2 })
	phase("new server leaf, old bundle everywhere")
	// 2. The bundle with both roots reaches everyone; web still presents its old leaf.
	f.PublishRoots()
	eventually(t, "both see the new bundle", func() bool {
		return web.Stats().ActiveRootID == newRoot && db.Stats().ActiveRootID == newRoot
	})
	phase("old client leaf, new bundle")
	// 3. web gets its new-root leaf.
	f.IssueLeaf("web")
	eventually(t, "web has a new-root leaf", func() bool { return web.Stats().LeafUpdates == 2 })
	phase("all new")
	// 4. Time passes: leaves are renewed before they expire, and 2 × TTL after the rotation
	//    the old root is pruned and the bundle shrinks to the new root. Sessions cached with
	//    old-root certificates are not resumed by then, because those certificates expired.
	for _, off := range []time.Duration{50 * time.Minute, 100 * time.Minute, 2*ttl + time.Minute} {
		jump.Lock()
		clk.Set(off)
		jump.Unlock()
		wantWeb, wantDB := web.Stats().LeafUpdates+1, db.Stats().LeafUpdates+1
		f.IssueLeaf("db")
		f.IssueLeaf("web")
		eventually(t, "leaves renewed", func() bool {
			return web.Stats().LeafUpdates == wantWeb && db.Stats().LeafUpdates == wantDB
		})
		phase(fmt.Sprintf("renewed at +%v", off))
	}
	if removed := meshCA.Prune(); len(removed) != 1 || removed[0] != oldRoot {
		t.Fatalf("Prune removed %v, want [%s]", removed, oldRoot)
	}
	f.PublishRoots()
	eventually(t, "both see the pruned bundle", func() bool { return web.Stats().RootUpdates == 3 && db.Stats().RootUpdates == 3 })
	phase("after prune")

	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d handshakes failed during root rotation; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	t.Logf("%d handshakes, none failed", ok.Load())
}

// TestStaticStability: while the registry fails, the last good material stays in use and
// errors are counted; when it recovers, updates flow again.
func TestStaticStability(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := newFake(t, newMeshCA(t, ca.Config{}))
	var events sync.Map
	web := startSource(t, f.client(), "web")
	db := startSource(t, f.client(), "db", func(c *Config) {
		c.OnEvent = func(e Event) {
			v, _ := events.LoadOrStore(e.Kind, new(atomic.Int64))
			v.(*atomic.Int64).Add(1)
		}
	})
	srv := startEcho(t, db.ServerConfig(nil))
	caller := spiffe.ServiceID{TrustDomain: clusterID + ".consul", Namespace: "default", Datacenter: "dc1", Service: "web"}

	f.fail.Store(true)
	f.SetIntentions("allow") // wakes the blocked queries into failures
	eventually(t, "errors counted", func() bool {
		st := db.Stats()
		return st.RootErrors > 0 && st.LeafErrors > 0 && st.IntentionErrors > 0
	})
	if c, err := dial(srv.addr, web.ClientConfig("db", nil)); err != nil {
		t.Fatalf("handshake during registry outage: %v", err)
	} else {
		c.Close()
	}
	if ok, _ := db.Authorize(caller); !ok {
		t.Error("authorization lost during registry outage")
	}

	f.fail.Store(false)
	f.SetIntentions("allow", &authz.Intention{SourceName: "web", DestinationName: "db", Action: authz.Deny})
	eventually(t, "update after recovery", func() bool { ok, _ := db.Authorize(caller); return !ok })

	// A leaf the registry serves for the wrong service is refused and the old one kept.
	before := db.Stats()
	f.SetLeaf("db", mustLeaf(t, f.ca, "api"))
	eventually(t, "bad leaf refused", func() bool { return db.Stats().LeafErrors > before.LeafErrors })
	if id, _ := db.Identity(); id.Service != "db" {
		t.Errorf("identity became %v", id)
	}
	for _, k := range []EventKind{RootsUpdated, LeafUpdated, IntentionsUpdated, FetchFailed} {
		if v, ok := events.Load(k); !ok || v.(*atomic.Int64).Load() == 0 {
			t.Errorf("no %v event", k)
		}
	}
}

func TestRunLifecycle(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := newFake(t, newMeshCA(t, ca.Config{}))
	s, err := New(Config{Client: f.client(), Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.Ready()
	if err := s.Run(ctx); err == nil {
		t.Error("second Run succeeded")
	}
	cancel()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v after cancel", err)
		}
	case <-timer.C:
		t.Fatal("Run did not return after cancel")
	}
}

func TestIndexGoingBackwardsResets(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := newFake(t, newMeshCA(t, ca.Config{}))
	s := startSource(t, f.client(), "db", func(c *Config) { c.WaitTime = 200 * time.Millisecond })
	for range 5 {
		f.SetIntentions("allow") // move the index well above 1
	}
	eventually(t, "index followed", func() bool { return s.Stats().IntentionUpdates >= 2 })
	// A registry restart: the index drops below what the Source holds. Its blocked query
	// returns at the wait timeout with a lower index; the Source must start over rather than
	// keep waiting for an index the registry will take long to reach again.
	f.mu.Lock()
	f.index = 0
	f.mu.Unlock()
	f.SetIntentions("allow", &authz.Intention{SourceName: "web", DestinationName: "db", Action: authz.Deny})
	web := spiffe.ServiceID{TrustDomain: clusterID + ".consul", Namespace: "default", Datacenter: "dc1", Service: "web"}
	eventually(t, "change seen after the index went backwards", func() bool { ok, _ := s.Authorize(web); return !ok })
	f.SetIntentions("allow")
	eventually(t, "next change seen too", func() bool { ok, _ := s.Authorize(web); return ok })
}

// BenchmarkHandshake measures one mTLS connection (handshake and one echo) between two
// Sources over loopback, with a full handshake and with session resumption.
func BenchmarkHandshake(b *testing.B) {
	f := newFake(b, newMeshCA(b, ca.Config{}))
	web := startSource(b, f.client(), "web")
	db := startSource(b, f.client(), "db")
	srv := startEcho(b, db.ServerConfig(nil))
	full := web.ClientConfig("db", nil)
	full.ClientSessionCache = nil
	for _, bc := range []struct {
		name string
		cfg  *tls.Config
	}{{"full", full}, {"resumed", web.ClientConfig("db", nil)}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c, err := dial(srv.addr, bc.cfg)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
