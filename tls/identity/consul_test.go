package identity

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/tls/ca"
	"github.com/podmesh/podmesh/tls/spiffe"
)

// One Consul dev agent is shared by the tests of this package (starting one takes seconds);
// TestMain stops it. Tests that change its intentions clean them up.
var consulAgent struct {
	once sync.Once
	addr string
	err  error
	cmd  *exec.Cmd
	dir  string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if c := consulAgent.cmd; c != nil {
		_ = c.Process.Kill()
		_ = c.Wait()
		_ = os.RemoveAll(consulAgent.dir)
	}
	os.Exit(code)
}

// consul returns a client for the shared Consul v1.14.0 dev agent, starting it on first use
// (skipped, or failed under PODMESH_REQUIRE_TOOLS=1, when the binary is missing).
func consul(t *testing.T) *api.Client {
	t.Helper()
	bin := testutil.Tool(t, "consul")
	consulAgent.once.Do(func() { consulAgent.addr, consulAgent.err = startConsul(t, bin) })
	if consulAgent.err != nil {
		t.Fatalf("consul dev agent: %v", consulAgent.err)
	}
	c, err := api.NewClient(&api.Config{Address: consulAgent.addr})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func port(t *testing.T) string {
	_, p, _ := net.SplitHostPort(testutil.FreePort(t))
	return p
}

func startConsul(t *testing.T, bin string) (string, error) {
	dir, err := os.MkdirTemp("", "podmesh-consul-")
	if err != nil {
		return "", err
	}
	consulAgent.dir = dir
	log, err := os.Create(filepath.Join(dir, "consul.log"))
	if err != nil {
		return "", err
	}
	httpPort := port(t)
	cmd := exec.Command(bin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", httpPort, "-serf-lan-port", port(t), "-serf-wan-port", port(t), "-server-port", port(t),
		"-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }", "-node", "podmesh-identity-test")
	cmd.Stdout, cmd.Stderr = log, log
	// The agent dies with the test binary even if TestMain never gets to stop it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	consulAgent.cmd = cmd
	addr := "127.0.0.1:" + httpPort
	c, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		return "", err
	}
	// Wait for a leader and an initialised Connect CA.
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, lerr := c.Status().Leader()
		roots, _, rerr := c.Connect().CARoots(nil)
		if lerr == nil && leader != "" && rerr == nil && roots != nil && len(roots.Roots) > 0 {
			return addr, nil
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(log.Name())
			return "", fmt.Errorf("no leader and CA after 30s (leader %q %v, roots %v); log:\n%s", leader, lerr, rerr, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestConsulHandshake is issue 4's acceptance 4 at the library level: two Sources get their
// leaves and the roots from a real Consul agent, unchanged, and complete an mTLS handshake.
func TestConsulHandshake(t *testing.T) {
	client := consul(t)
	testutil.CheckGoroutines(t)
	web := startSource(t, client, "web")
	db := startSource(t, client, "db")

	roots, _, err := client.Connect().CARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := web.Stats(); st.TrustDomain != roots.TrustDomain || st.ActiveRootID != roots.ActiveRootID {
		t.Errorf("Source sees %+v; Consul has trust domain %q active %q", st, roots.TrustDomain, roots.ActiveRootID)
	}
	srv := startEcho(t, db.ServerConfig([]string{"h2"}))
	c, err := dial(srv.addr, web.ClientConfig("db", []string{"h2"}))
	if err != nil {
		t.Fatalf("mTLS web → db with Consul's certificates: %v", err)
	}
	defer c.Close()
	peer, err := web.PeerIdentity(c.ConnectionState())
	if err != nil || peer.Service != "db" || peer.TrustDomain != roots.TrustDomain {
		t.Errorf("client sees %+v, %v", peer, err)
	}
	caller, err := db.PeerIdentity(<-srv.peers)
	if err != nil || caller.Service != "web" {
		t.Errorf("server sees %+v, %v", caller, err)
	}
	if c.ConnectionState().Version != 0x0304 {
		t.Errorf("TLS version %x", c.ConnectionState().Version)
	}

	// The wrong service is refused: web dialing db while wanting "api".
	if _, err := dial(srv.addr, web.ClientConfig("api", nil)); !errors.Is(err, ErrWrongService) {
		t.Errorf("dialing db as api: %v, want ErrWrongService", err)
	}

	// Clients that must be refused by a server whose material came from Consul.
	otherCA := leafPair(t, mustLeaf(t, newMeshCA(t, ca.Config{}), "web"))
	for name, cfg := range map[string]*tls.Config{"no certificate": clientWith(nil), "another CA": clientWith(&otherCA)} {
		if c, err := dial(srv.addr, cfg); err == nil {
			c.Close()
			t.Errorf("%s: accepted", name)
		} else if serr := serverErr(t, srv); serr == nil {
			t.Errorf("%s: no server error", name)
		}
	}
}

// TestConsulJSONShape compares the JSON keys of the CA views in tls/ca with what the agent
// really sends, so the registry can serve them as Consul does.
func TestConsulJSONShape(t *testing.T) {
	consul(t)
	get := func(path string) map[string]json.RawMessage {
		resp, err := http.Get("http://" + consulAgent.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v: %s", path, err, b)
		}
		return m
	}
	keys := func(m map[string]json.RawMessage) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	ours := func(v any) map[string]json.RawMessage {
		b, _ := json.Marshal(v)
		var m map[string]json.RawMessage
		_ = json.Unmarshal(b, &m)
		return m
	}
	meshCA := newMeshCA(t, ca.Config{})
	list := get("/v1/agent/connect/ca/roots")
	var consulRoots []map[string]json.RawMessage
	if err := json.Unmarshal(list["Roots"], &consulRoots); err != nil {
		t.Fatal(err)
	}
	if got, want := keys(ours(meshCA.Roots())), keys(list); !reflect.DeepEqual(got, want) {
		t.Errorf("root list keys %v, Consul %v", got, want)
	}
	if got, want := keys(ours(meshCA.Roots().Roots[0])), keys(consulRoots[0]); !reflect.DeepEqual(got, want) {
		t.Errorf("root keys %v, Consul %v", got, want)
	}
	leaf := get("/v1/agent/connect/ca/leaf/web")
	ourLeaf := ours(mustLeaf(t, meshCA, "web"))
	for _, k := range keys(leaf) {
		if _, ok := ourLeaf[k]; !ok {
			t.Errorf("Consul's leaf has %q, ours does not", k)
		}
	}
	// Consul v1.14.0 CE omits Namespace from the leaf; the API documentation's sample has it.
	for _, k := range keys(ourLeaf) {
		if _, ok := leaf[k]; !ok && k != "Namespace" {
			t.Errorf("our leaf has %q, Consul's does not", k)
		}
	}
}

// TestConsulIntentionChange is issue 4's acceptance 2 at the library level: an intention
// changed through consul/api is reflected by Authorize within 1 s, and each decision and
// reason equals Consul's own POST /v1/agent/connect/authorize answer.
func TestConsulIntentionChange(t *testing.T) {
	client := consul(t)
	testutil.CheckGoroutines(t)
	db := startSource(t, client, "db")
	roots, _, err := client.Connect().CARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	web := spiffe.ServiceID{TrustDomain: roots.TrustDomain, Namespace: "default", Datacenter: "dc1", Service: "web"}
	t.Cleanup(func() {
		_, _ = client.Connect().IntentionDeleteExact("web", "db", nil)
		_, _ = client.Connect().IntentionDeleteExact("*", "db", nil)
	})

	check := func(step string, change func() error, want bool) {
		t.Helper()
		start := time.Now()
		if err := change(); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		var ok bool
		var reason string
		for {
			ok, reason = db.Authorize(web)
			if ok == want {
				break
			}
			if time.Since(start) > time.Second {
				t.Fatalf("%s: not reflected within 1s: Authorize = (%v, %q)", step, ok, reason)
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("%s: reflected after %v", step, time.Since(start).Round(time.Millisecond))
		theirs, err := client.Agent().ConnectAuthorize(&api.AgentAuthorizeParams{Target: "db", ClientCertURI: web.String()})
		if err != nil {
			t.Fatal(err)
		}
		if theirs.Authorized != ok || theirs.Reason != reason {
			t.Errorf("%s: we say (%v, %q), Consul says (%v, %q)", step, ok, reason, theirs.Authorized, theirs.Reason)
		}
	}
	upsert := func(src string, action api.IntentionAction) func() error {
		return func() error {
			_, err := client.Connect().IntentionUpsert(&api.Intention{SourceName: src, DestinationName: "db", Action: action}, nil)
			return err
		}
	}
	check("deny web → db", upsert("web", api.IntentionActionDeny), false)
	check("allow web → db", upsert("web", api.IntentionActionAllow), true)
	check("deny * → db, web → db still allowed", upsert("*", api.IntentionActionDeny), true)
	check("delete web → db, * → db denies", func() error {
		_, err := client.Connect().IntentionDeleteExact("web", "db", nil)
		return err
	}, false)
	check("delete * → db, default allow", func() error {
		_, err := client.Connect().IntentionDeleteExact("*", "db", nil)
		return err
	}, true)
}

// TestConsulRootRotation: Consul rotates its root (a CA configuration change makes it
// generate a new, cross-signed root) while handshakes run continuously; none may fail, and
// both Sources end up on leaves from the new root. Consul re-issues agent leaves after a
// root change with a random delay of up to 30 s, which is why this test can take that long.
func TestConsulRootRotation(t *testing.T) {
	client := consul(t)
	testutil.CheckGoroutines(t)
	web := startSource(t, client, "web")
	db := startSource(t, client, "db")
	srv := startEcho(t, db.ServerConfig(nil))
	oldRoot := web.Stats().ActiveRootID
	webLeaves, dbLeaves := web.Stats().LeafUpdates, db.Stats().LeafUpdates

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		full := web.ClientConfig("db", nil)
		full.ClientSessionCache = nil
		deadline := time.Now().Add(90 * time.Second)
		for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			c, err := dial(srv.addr, full)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				continue
			}
			c.Close()
			ok.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()

	cfg, _, err := client.Connect().CAGetConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	bits := 384
	if fmt.Sprint(cfg.Config["PrivateKeyBits"]) == "384" {
		bits = 256
	}
	if _, err := client.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{
		"LeafCertTTL": "72h", "PrivateKeyType": "ec", "PrivateKeyBits": bits,
	}}, nil); err != nil {
		t.Fatalf("rotate Consul's root: %v", err)
	}
	testutil.Eventually(t, 60*time.Second, 50*time.Millisecond, func() error {
		w, d := web.Stats(), db.Stats()
		if w.ActiveRootID == oldRoot || d.ActiveRootID == oldRoot || w.LeafUpdates == webLeaves || d.LeafUpdates == dbLeaves {
			return fmt.Errorf("web %+v db %+v", w, d)
		}
		return nil
	})
	n := ok.Load()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if ok.Load() < n+10 {
			return errors.New("no handshakes after rotation")
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d handshakes failed during Consul's root rotation; first: %v", f, f+ok.Load(), firstErr.Load())
	}
	t.Logf("%d handshakes across Consul's root rotation, none failed", ok.Load())
	if strings.Contains(web.Stats().ActiveRootID, oldRoot) {
		t.Error("still on the old root")
	}
}
