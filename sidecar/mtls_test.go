package sidecar

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/discovery/consultest"
	"github.com/podmesh/podmesh/internal/meshtest"
	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/proxy"
	"github.com/podmesh/podmesh/tls/ca"
)

// The mutual TLS tests of issue 4 run real sidecars (in-process, or the built binary) with
// -tls=true against a registry with a Connect CA: Podmesh's registry (the package's shared
// one, or one of a test's own where the test changes the CA), a real Consul v1.14.0 dev agent
// where Consul compatibility is the point (TestMTLSWithAgent), or meshtest's fake CA where a
// test needs the CA's key (to forge certificates) or a registry that is not there yet.

// runMTLS runs an in-process sidecar with mutual TLS and waits until it is ready (leaf,
// bundle and intentions loaded).
func runMTLS(t *testing.T, registry string, args ...string) *running {
	t.Helper()
	return runSidecar(t, registry, nil, append(args, "-tls=true")...)
}

// scrape returns the admin /metrics text of a sidecar.
func scrape(t testing.TB, admin string) string {
	t.Helper()
	res, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// metricValue returns the value of one series, written as the exposition format writes it
// (labels in name order), or 0 when it is absent.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// waitMetric waits until a series reaches at least want.
func waitMetric(t testing.TB, admin, series string, want float64) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if v := metricValue(scrape(t, admin), series); v < want {
			return fmt.Errorf("%s = %v, want at least %v", series, v, want)
		}
		return nil
	})
}

// leafPair issues a leaf for service from c, with its chain.
func leafPair(t testing.TB, c *ca.CA, service string) (tls.Certificate, *ca.LeafCert) {
	t.Helper()
	l, err := c.IssueLeaf(c.ServiceID(meshtest.Datacenter, service))
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair([]byte(l.CertPEM), []byte(l.PrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	return pair, l
}

// forge signs a client leaf with parent's key for the SPIFFE URI, valid in [notBefore,
// notAfter].
func forge(t testing.TB, parent *x509.Certificate, key *ecdsa.PrivateKey, uri string, notBefore, notAfter time.Time) (tls.Certificate, string, string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    notBefore, NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:        []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &k.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(k)
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}, certPEM, keyPEM
}

// tlsGet sends one HTTP/1.1 request over TLS 1.3 to a sidecar's inbound port, presenting
// cert (none when nil) and not checking the server (the client under test is the one being
// judged).
func tlsGet(addr string, cert *tls.Certificate) (*http.Response, string, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{proxy.ALPNHTTP1}}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	res, err := c.Get("https://" + addr + "/")
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b), nil
}

// readsNothing connects with raw bytes (plaintext) and reports whether the server closed
// the connection without sending anything back.
func readsNothing(t *testing.T, addr string, send string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, send)
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("plaintext %q: connection left open", send)
	}
	// A TLS server answers garbage with at most an alert record (content type 21), never
	// with application data.
	if len(b) > 0 && b[0] != 21 {
		t.Fatalf("plaintext %q: got %q", send, b)
	}
}

// openssl runs openssl s_client against addr with an HTTP/1.1 request, optionally with a
// client certificate, and returns everything it printed.
func openssl(t *testing.T, addr, certPEM, keyPEM string) string {
	t.Helper()
	bin := testutil.Tool(t, "openssl")
	args := []string{"s_client", "-connect", addr, "-tls1_3", "-alpn", proxy.ALPNHTTP1, "-quiet"}
	if certPEM != "" {
		dir := t.TempDir()
		cf, kf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		if err := os.WriteFile(cf, []byte(certPEM), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(kf, []byte(keyPEM), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-cert", cf, "-key", kf)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader("GET / HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\n\r\n")
	out, _ := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("openssl s_client did not finish: %s", out)
	}
	return string(out)
}

// Acceptance 1: a real sidecar's inbound port refuses a client with no certificate, a
// certificate from another CA, an expired certificate, a certificate whose SPIFFE ID names
// another trust domain, and a valid certificate of a caller an intention denies (HTTP: 403
// with the reason; raw TCP: closed after the handshake); plaintext gets nowhere; every
// refusal is counted. A valid, allowed caller gets through, so the refusals are the
// certificates' doing. The fake CA is used for its key, to forge the bad certificates.
func TestInboundRefuses(t *testing.T) {
	testutil.CheckGoroutines(t)
	reg := meshtest.Start(t, "", 0)
	db := startTestApp(t, "acc1-db", nil)
	sc := runMTLS(t, reg.URL(), "-service", "acc1-db", "-protocol", "http", "-inbound", "127.0.0.1:0",
		"-app", db.addr, "-register=false")
	inbound, admin := sc.addrs.Inbound, sc.addrs.Admin
	var echoHits atomic.Int64
	echo := startEchoApp(t, &echoHits)
	tcp := runMTLS(t, reg.URL(), "-service", "acc1-tcp", "-protocol", "tcp", "-inbound", "127.0.0.1:0",
		"-app", echo, "-register=false")
	client := reg.Client()
	for _, dst := range []string{"acc1-db", "acc1-tcp"} {
		if _, err := client.Connect().IntentionUpsert(&api.Intention{SourceName: "acc1-evil", DestinationName: dst,
			Action: api.IntentionActionDeny}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Consul's reason text: the intention that decided.
	wantReason := "Matched L4 intention: default/acc1-evil => default/acc1-db ("
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if sc.sc.ident.Stats().Intentions != 1 || tcp.sc.ident.Stats().Intentions != 1 {
			return errors.New("intentions not loaded yet")
		}
		return nil
	})

	rootCert, rootKey := reg.RootKey()
	td := reg.TrustDomain()
	web, _ := leafPair(t, reg.CA(), "acc1-web")
	evil, evilLeaf := leafPair(t, reg.CA(), "acc1-evil")
	otherCA, err := ca.New("11111111-2222-3333-4444-555555555555", ca.Config{})
	if err != nil {
		t.Fatal(err)
	}
	foreign, foreignLeaf := leafPair(t, otherCA, "acc1-web")
	expired, _, _ := forge(t, rootCert, rootKey, "spiffe://"+td+"/ns/default/dc/dc1/svc/acc1-web",
		time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	otherTD, _, _ := forge(t, rootCert, rootKey, "spiffe://22222222-3333-4444-5555-666666666666.consul/ns/default/dc/dc1/svc/acc1-web",
		time.Now().Add(-time.Minute), time.Now().Add(time.Hour))

	failures := func(reason string) string {
		return `podmesh_tls_handshake_failures_total{direction="inbound",reason="` + reason + `"}`
	}
	refused := func(t *testing.T, cert *tls.Certificate, reason string) {
		t.Helper()
		before := metricValue(scrape(t, admin), failures(reason))
		hits := db.hits.Load()
		res, body, err := tlsGet(inbound, cert)
		if err == nil {
			t.Fatalf("accepted: %d %q", res.StatusCode, body)
		}
		t.Logf("refused: %v", err)
		waitMetric(t, admin, failures(reason), before+1)
		if db.hits.Load() != hits {
			t.Error("the app saw the request")
		}
	}

	t.Run("allowed caller", func(t *testing.T) {
		res, body, err := tlsGet(inbound, &web)
		if err != nil || res.StatusCode != 200 || body != "hello from acc1-db" {
			t.Fatalf("valid caller: %v %v %q", res, err, body)
		}
		waitMetric(t, admin, `podmesh_authz_allowed_total{destination="acc1-db",source="acc1-web"}`, 1)
	})
	t.Run("no certificate", func(t *testing.T) { refused(t, nil, "no_certificate") })
	t.Run("another CA", func(t *testing.T) { refused(t, &foreign, "unknown_ca") })
	t.Run("expired", func(t *testing.T) { refused(t, &expired, "expired") })
	t.Run("another trust domain", func(t *testing.T) { refused(t, &otherTD, "trust_domain") })
	t.Run("denied by intention", func(t *testing.T) {
		hits := db.hits.Load()
		res, body, err := tlsGet(inbound, &evil)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != http.StatusForbidden || !strings.HasPrefix(res.Header.Get(proxy.HeaderDenied), wantReason) ||
			!strings.Contains(body, wantReason) {
			t.Fatalf("denied caller: %d %s=%q %q", res.StatusCode, proxy.HeaderDenied, res.Header.Get(proxy.HeaderDenied), body)
		}
		if db.hits.Load() != hits {
			t.Error("the app saw a denied request")
		}
		waitMetric(t, admin, `podmesh_authz_denied_total{destination="acc1-db",source="acc1-evil"}`, 1)
	})
	t.Run("denied by intention, tcp", func(t *testing.T) {
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
			NextProtos: []string{proxy.ALPNTCP}, Certificates: []tls.Certificate{evil}}
		c, err := tls.Dial("tcp", tcp.addrs.Inbound, cfg)
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "hello\n")
		n, err := c.Read(make([]byte, 16))
		var ne net.Error
		if n > 0 || err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("denied TCP caller: read %d, %v", n, err)
		}
		if echoHits.Load() != 0 {
			t.Error("the app saw a denied connection")
		}
		waitMetric(t, tcp.addrs.Admin, `podmesh_authz_denied_total{destination="acc1-tcp",source="acc1-evil"}`, 1)
	})
	t.Run("plaintext", func(t *testing.T) {
		before := metricValue(scrape(t, admin), failures("protocol"))
		readsNothing(t, inbound, "GET / HTTP/1.1\r\nHost: acc1-db\r\n\r\n")
		readsNothing(t, inbound, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
		readsNothing(t, tcp.addrs.Inbound, "hello\n")
		waitMetric(t, admin, failures("protocol"), before+2)
	})

	// The same with openssl s_client.
	t.Run("openssl no certificate", func(t *testing.T) {
		out := openssl(t, inbound, "", "")
		if strings.Contains(out, "HTTP/1.1") || !strings.Contains(out, "alert") {
			t.Fatalf("openssl without a certificate:\n%s", out)
		}
	})
	t.Run("openssl another CA", func(t *testing.T) {
		out := openssl(t, inbound, foreignLeaf.CertPEM, foreignLeaf.PrivateKeyPEM)
		if strings.Contains(out, "HTTP/1.1") || !strings.Contains(out, "alert") {
			t.Fatalf("openssl with another CA's certificate:\n%s", out)
		}
	})
	t.Run("openssl denied by intention", func(t *testing.T) {
		out := openssl(t, inbound, evilLeaf.CertPEM, evilLeaf.PrivateKeyPEM)
		if !strings.Contains(out, "HTTP/1.1 403 Forbidden") || !strings.Contains(out, proxy.HeaderDenied+": "+wantReason) {
			t.Fatalf("openssl as a denied caller:\n%s", out)
		}
	})
	// Under the registry's default policy deny, a caller no intention names gets nothing;
	// an allow intention lets it in.
	t.Run("default deny", func(t *testing.T) {
		reg.SetDefaultPolicy("deny")
		other, _ := leafPair(t, reg.CA(), "acc1-other")
		testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
			res, _, err := tlsGet(inbound, &other)
			if err != nil {
				return err
			}
			if res.StatusCode != 403 || res.Header.Get(proxy.HeaderDenied) != "Default behavior configured by ACLs" {
				return fmt.Errorf("under default deny: %d %q", res.StatusCode, res.Header.Get(proxy.HeaderDenied))
			}
			return nil
		})
		if _, err := client.Connect().IntentionUpsert(&api.Intention{SourceName: "acc1-other", DestinationName: "acc1-db",
			Action: api.IntentionActionAllow}, nil); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
			res, _, err := tlsGet(inbound, &other)
			if err != nil || res.StatusCode != 200 {
				return fmt.Errorf("allowed by intention under default deny: %v %v", res, err)
			}
			return nil
		})
	})
	text := scrape(t, admin)
	t.Logf("inbound handshakes %v; failures: no_certificate %v, unknown_ca %v, expired %v, trust_domain %v, protocol %v",
		metricValue(text, `podmesh_tls_handshakes_total{direction="inbound"}`),
		metricValue(text, failures("no_certificate")), metricValue(text, failures("unknown_ca")),
		metricValue(text, failures("expired")), metricValue(text, failures("trust_domain")), metricValue(text, failures("protocol")))
}

// startEchoApp is a TCP app that echoes lines, counting connections.
func startEchoApp(t *testing.T, conns *atomic.Int64) string {
	t.Helper()
	return testutil.ServeTCP(t, func(c net.Conn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, "echo:"+line); err != nil {
				return
			}
		}
	})
}

// tcpEcho opens a connection to a local upstream listener and does one line round trip.
func tcpEcho(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "echo:"+msg+"\n" {
		return fmt.Errorf("echo %q", line)
	}
	return nil
}

// sample is one request of a load loop: when it started and what it got.
type sample struct {
	start time.Time
	code  int
}

// sequentialLoad sends GETs to url one after another until stop (at most max), recording
// each start and status (0 for a transport error).
func sequentialLoad(url string, max int, stop <-chan struct{}) (func() []sample, *sync.WaitGroup) {
	var mu sync.Mutex
	var out []sample
	var wg sync.WaitGroup
	c := httpClient()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range max {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			code, _, err := get(c, url)
			if err != nil {
				code = 0
			}
			mu.Lock()
			out = append(out, sample{start, code})
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() []sample {
		mu.Lock()
		defer mu.Unlock()
		return append([]sample(nil), out...)
	}, &wg
}

// Acceptance 2: under a steady stream of requests through a caller's sidecar, changing the
// intention from allow to deny stops new requests within 1 s (they get 403), and changing it
// back lets them through within 1 s; the requests travel over the pooled HTTP/2 connection
// between the sidecars, which stays open throughout. Against the shared registry.
func TestIntentionChangeWithin1s(t *testing.T) {
	needAgent(t)
	testutil.CheckGoroutines(t)
	app := startTestApp(t, "acc2-db", nil)
	runMTLS(t, agent.URL(), "-service", "acc2-db", "-id", "acc2-db-1", "-protocol", "http",
		"-inbound", "127.0.0.1:0", "-app", app.addr)
	client := runMTLS(t, agent.URL(), "-service", "acc2-web", "-inbound", "127.0.0.1:0", "-app", "127.0.0.1:9",
		"-register=false", "-upstream", "acc2-db=127.0.0.1:0")
	waitEndpoints(t, client, "acc2-db", 1)
	connect := agent.Client().Connect()
	set := func(action api.IntentionAction) {
		t.Helper()
		if _, err := connect.IntentionUpsert(&api.Intention{SourceName: "acc2-web", DestinationName: "acc2-db", Action: action}, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = connect.IntentionDeleteExact("acc2-web", "acc2-db", nil) })
	set(api.IntentionActionAllow)
	url := "http://" + client.addrs.Upstreams["acc2-db"] + "/"
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if code, _, err := get(httpClient(), url); err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})

	stop := make(chan struct{})
	results, wg := sequentialLoad(url, 50000, stop)
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(200 * time.Millisecond)

	// change applies action and returns how long after the call started new requests got
	// want, checking that none got anything else from then on.
	change := func(step string, action api.IntentionAction, want int) time.Duration {
		t.Helper()
		t0 := time.Now()
		set(action)
		var first time.Time
		testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
			first = time.Time{}
			for _, s := range results() {
				if s.start.Before(t0) {
					continue
				}
				if s.code == want && first.IsZero() {
					first = s.start
				}
				if !first.IsZero() && s.code != want {
					return fmt.Errorf("%s: a request started %v after the change got %d after one got %d",
						step, s.start.Sub(t0), s.code, want)
				}
			}
			if first.IsZero() || time.Since(first) < 300*time.Millisecond {
				return fmt.Errorf("%s: not in effect yet", step)
			}
			return nil
		})
		for _, s := range results() {
			if !s.start.Before(t0) && s.code != want && s.code != 200 && s.code != 403 {
				t.Errorf("%s: a request got %d", step, s.code)
			}
		}
		d := first.Sub(t0)
		t.Logf("%s: new requests get %d %v after the change was sent", step, want, d.Round(time.Millisecond))
		if d > time.Second {
			t.Errorf("%s took %v, want at most 1s", step, d)
		}
		return d
	}
	change("allow → deny", api.IntentionActionDeny, http.StatusForbidden)
	change("deny → allow", api.IntentionActionAllow, http.StatusOK)
	change("allow → deny again", api.IntentionActionDeny, http.StatusForbidden)

	code, _, err := get(httpClient(), url)
	if err != nil || code != 403 {
		t.Fatalf("denied: %d %v", code, err)
	}
	if n := client.sc.Snapshot().Upstreams[0].Balancer.Hosts; len(n) != 1 {
		t.Errorf("hosts %+v", n)
	}
}

// Acceptance 4: the sidecar binary, unchanged, gets its leaf and the roots from a real
// Consul v1.14.0 dev agent (Connect is on in -dev) and authorizes callers against Consul's
// intentions: two sidecars carry HTTP and raw TCP over mTLS, a caller dialling an instance
// that is not the service it meant refuses it, an intention deny blocks (403 and closed
// connections) and an allow restores. Its point is Consul compatibility, so it runs against
// Consul, not Podmesh's registry.
func TestMTLSWithAgent(t *testing.T) {
	agent := consultest.StartConsul(t)
	roots, _, err := agent.Client().Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatalf("the agent's Connect CA: %v", err)
	}
	app := startTestApp(t, "acc4-db", nil)
	var echoConns atomic.Int64
	echo := startEchoApp(t, &echoConns)
	db := startSidecarProc(t, "-service", "acc4-db", "-id", "acc4-db-1", "-protocol", "http", "-app", app.addr,
		"-registry", agent.URL(), "-tls=true")
	tcpSvc := startSidecarProc(t, "-service", "acc4-tcp", "-id", "acc4-tcp-1", "-protocol", "tcp", "-app", echo,
		"-registry", agent.URL(), "-tls=true")
	// An instance registered under the wrong name: the address is acc4-db's sidecar.
	agent.Register(t, "acc4-imposter", "acc4-imposter-1", db.inbound, map[string]string{"protocol": "http"})
	t.Cleanup(func() { agent.Deregister(t, "acc4-imposter-1") })
	up := map[string]string{"acc4-db": testutil.FreePort(t), "acc4-tcp": testutil.FreePort(t), "acc4-imposter": testutil.FreePort(t)}
	args := []string{"-service", "acc4-web", "-register=false", "-app", "127.0.0.1:9", "-registry", agent.URL(), "-tls=true"}
	for name, addr := range up {
		args = append(args, "-upstream", name+"="+addr)
	}
	web := startSidecarProc(t, args...)
	connect := agent.Client().Connect()
	t.Cleanup(func() {
		_, _ = connect.IntentionDeleteExact("acc4-web", "acc4-db", nil)
		_, _ = connect.IntentionDeleteExact("acc4-web", "acc4-tcp", nil)
	})

	httpOK := func() error {
		code, app, err := get(httpClient(), "http://"+up["acc4-db"]+"/")
		if err != nil || code != 200 || app != "acc4-db" {
			return fmt.Errorf("HTTP through mTLS: %d %q %v", code, app, err)
		}
		return nil
	}
	tcpOK := func() error { return tcpEcho(up["acc4-tcp"], "over mtls") }
	testutil.Eventually(t, 15*time.Second, 50*time.Millisecond, func() error { return errors.Join(httpOK(), tcpOK()) })

	// The identity is Consul's: its trust domain, a leaf that expires in the future.
	var snap struct {
		TLS *TLSState `json:"tls"`
	}
	res, err := http.Get("http://" + web.admin + "/config")
	if err != nil {
		t.Fatal(err)
	}
	if err := jsonDecode(res, &snap); err != nil {
		t.Fatal(err)
	}
	if snap.TLS == nil || !snap.TLS.Ready || snap.TLS.TrustDomain != roots.TrustDomain ||
		snap.TLS.Identity != "spiffe://"+roots.TrustDomain+"/ns/default/dc/dc1/svc/acc4-web" {
		t.Errorf("/config tls: %+v, Consul's trust domain %s", snap.TLS, roots.TrustDomain)
	}
	webMetrics, dbMetrics := scrape(t, web.admin), scrape(t, db.admin)
	if v := metricValue(webMetrics, `podmesh_tls_cert_expiry_timestamp_seconds{service="acc4-web"}`); v < float64(time.Now().Unix()) {
		t.Errorf("cert expiry gauge %v", v)
	}
	if metricValue(webMetrics, `podmesh_tls_handshakes_total{direction="outbound"}`) < 2 ||
		metricValue(dbMetrics, `podmesh_tls_handshakes_total{direction="inbound"}`) < 1 ||
		metricValue(scrape(t, tcpSvc.admin), `podmesh_tls_handshakes_total{direction="inbound"}`) < 1 {
		t.Errorf("handshakes not counted:\n%s", grepLines(webMetrics+dbMetrics, "podmesh_tls_handshakes_total"))
	}

	// Dialling "acc4-imposter" reaches a sidecar whose certificate says acc4-db: refused.
	if code, _, err := get(httpClient(), "http://"+up["acc4-imposter"]+"/"); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("request to the imposter: %d %v, want 503", code, err)
	}
	waitMetric(t, web.admin, `podmesh_tls_handshake_failures_total{direction="outbound",reason="wrong_service"}`, 1)

	// Deny, then allow, through Consul's intentions.
	for _, dst := range []string{"acc4-db", "acc4-tcp"} {
		if _, err := connect.IntentionUpsert(&api.Intention{SourceName: "acc4-web", DestinationName: dst,
			Action: api.IntentionActionDeny}, nil); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
		req, _ := http.NewRequest("GET", "http://"+up["acc4-db"]+"/", nil)
		res, err := httpClient().Do(req)
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != 403 || !strings.HasPrefix(res.Header.Get(proxy.HeaderDenied), "Matched L4 intention: default/acc4-web => default/acc4-db") {
			return fmt.Errorf("HTTP not denied yet: %d %q", res.StatusCode, res.Header.Get(proxy.HeaderDenied))
		}
		if tcpOK() == nil {
			return errors.New("TCP not denied yet")
		}
		return nil
	})
	before := echoConns.Load()
	if tcpOK() == nil || echoConns.Load() != before {
		t.Error("a denied TCP connection reached the app")
	}
	waitMetric(t, db.admin, `podmesh_authz_denied_total{destination="acc4-db",source="acc4-web"}`, 1)
	waitMetric(t, tcpSvc.admin, `podmesh_authz_denied_total{destination="acc4-tcp",source="acc4-web"}`, 1)
	for _, dst := range []string{"acc4-db", "acc4-tcp"} {
		if _, err := connect.IntentionUpsert(&api.Intention{SourceName: "acc4-web", DestinationName: dst,
			Action: api.IntentionActionAllow}, nil); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() error { return errors.Join(httpOK(), tcpOK()) })
	t.Logf("%s: web outbound handshakes %v, db inbound handshakes %v", agent.Kind(),
		metricValue(scrape(t, web.admin), `podmesh_tls_handshakes_total{direction="outbound"}`),
		metricValue(scrape(t, db.admin), `podmesh_tls_handshakes_total{direction="inbound"}`))
}

func grepLines(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func jsonDecode(res *http.Response, v any) error {
	defer res.Body.Close()
	return json.NewDecoder(res.Body).Decode(v)
}

// caRegistry is "a registry with a Connect CA" for the rotation test: anything that serves
// the Consul CA endpoints, accepts a leaf TTL of seconds through PUT
// /v1/connect/ca/configuration (Consul refuses less than an hour), and rotates its root
// when that PUT carries a new Config.PrivateKey (as Consul does). Everything the test does
// to it goes through consul/api.
type caRegistry struct {
	name string
	url  string
}

// caRegistries returns the registries the rotation test runs against: Podmesh's registry,
// one of the test's own (the test shortens the leaf lifetime and rotates the root). Consul
// refuses leaves that live seconds; meshtest's fake CA, which allowed them before the
// registry had a CA, would only repeat the same 15 s test.
func caRegistries() map[string]func(t *testing.T) caRegistry {
	return map[string]func(t *testing.T) caRegistry{"registry": func(t *testing.T) caRegistry {
		a := consultest.StartRegistry(t)
		return caRegistry{name: a.Kind(), url: a.URL()}
	}}
}

func (r caRegistry) client(t testing.TB) *api.Client {
	t.Helper()
	u, _ := url.Parse(r.url)
	c, err := api.NewClient(&api.Config{Address: u.Host})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setCA sets the leaf lifetime, and with rotate a new root key, through the Consul API.
func (r caRegistry) setCA(t testing.TB, leafTTL time.Duration, rotate bool) {
	t.Helper()
	cfg := map[string]any{"LeafCertTTL": leafTTL.String()}
	if rotate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.MarshalECPrivateKey(k)
		cfg["PrivateKey"] = string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	}
	if _, err := r.client(t).Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: cfg}, nil); err != nil {
		t.Fatalf("%s: set CA configuration (LeafCertTTL %v, new root %v): %v", r.name, leafTTL, rotate, err)
	}
}

// Acceptance 3: leaves that live 3 s rotate several times, then the root rotates (and the
// old one is pruned from the bundle), all while HTTP requests (over pooled HTTP/2) and raw
// TCP sessions (a new mTLS handshake each) run continuously between two sidecars: no
// request fails. It takes about 15 s: the leaves must live long enough to be replaced a few
// times, and the old root is pruned only 2 × the leaf lifetime after the rotation.
func TestRotationUnderLoad(t *testing.T) {
	for name, start := range caRegistries() {
		t.Run(name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			reg := start(t)
			const ttl = 3 * time.Second
			reg.setCA(t, ttl, false)
			app := startTestApp(t, "acc3-db", nil)
			var echoConns atomic.Int64
			echo := startEchoApp(t, &echoConns)
			db := runMTLS(t, reg.url, "-service", "acc3-db", "-id", "acc3-db-1", "-protocol", "http",
				"-inbound", "127.0.0.1:0", "-app", app.addr)
			tcpSvc := runMTLS(t, reg.url, "-service", "acc3-tcp", "-id", "acc3-tcp-1", "-protocol", "tcp",
				"-inbound", "127.0.0.1:0", "-app", echo)
			web := runMTLS(t, reg.url, "-service", "acc3-web", "-inbound", "127.0.0.1:0", "-app", "127.0.0.1:9",
				"-register=false", "-upstream", "acc3-db=127.0.0.1:0", "-upstream", "acc3-tcp=127.0.0.1:0")
			waitEndpoints(t, web, "acc3-db", 1)
			waitEndpoints(t, web, "acc3-tcp", 1)
			sidecars := []*running{db, tcpSvc, web}

			stop := make(chan struct{})
			httpResult, httpWG := load("http://"+web.addrs.Upstreams["acc3-db"]+"/", 4, 100000, stop)
			var tcpN atomic.Int64
			var tcpMu sync.Mutex
			var tcpFailures []string
			var tcpWG sync.WaitGroup
			for w := range 2 {
				tcpWG.Add(1)
				go func() {
					defer tcpWG.Done()
					for i := range 20000 {
						select {
						case <-stop:
							return
						default:
						}
						tcpN.Add(1)
						if err := tcpEcho(web.addrs.Upstreams["acc3-tcp"], fmt.Sprint("w", w, "-", i)); err != nil {
							tcpMu.Lock()
							tcpFailures = append(tcpFailures, fmt.Sprintf("tcp worker %d #%d: %v", w, i, err))
							tcpMu.Unlock()
						}
						time.Sleep(5 * time.Millisecond)
					}
				}()
			}
			stopped := false
			stopLoad := func() {
				if !stopped {
					stopped = true
					close(stop)
					httpWG.Wait()
					tcpWG.Wait()
				}
			}
			defer stopLoad()

			leaves := func() []uint64 {
				var n []uint64
				for _, s := range sidecars {
					n = append(n, s.sc.ident.Stats().LeafUpdates)
				}
				return n
			}
			// Every sidecar replaces its leaf at least twice.
			testutil.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
				for i, n := range leaves() {
					if n < 3 {
						return fmt.Errorf("sidecar %d: %d leaves so far", i, n)
					}
				}
				return nil
			})
			before := leaves()
			oldRoot := web.sc.ident.Stats().ActiveRootID
			rotatedAt := time.Now()
			reg.setCA(t, ttl, true)
			// Every sidecar moves to the new root and a leaf it signed; the bundle then drops the
			// old root again.
			testutil.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
				for i, s := range sidecars {
					st := s.sc.ident.Stats()
					if st.ActiveRootID == oldRoot || st.LeafUpdates <= before[i] {
						return fmt.Errorf("sidecar %d: %+v", i, st)
					}
				}
				return nil
			})
			t.Logf("%s: every sidecar on the new root with a new leaf %v after the rotation", reg.name, time.Since(rotatedAt).Round(time.Millisecond))
			testutil.Eventually(t, 20*time.Second, 100*time.Millisecond, func() error {
				roots, _, err := reg.client(t).Agent().ConnectCARoots(nil)
				if err != nil || len(roots.Roots) != 1 {
					return fmt.Errorf("old root still in the bundle: %v", err)
				}
				for i, s := range sidecars {
					if s.sc.ident.Stats().RootUpdates < 3 {
						return fmt.Errorf("sidecar %d has not seen the pruned bundle", i)
					}
				}
				return nil
			})
			n := tcpN.Load()
			time.Sleep(500 * time.Millisecond) // traffic with the pruned bundle
			if tcpN.Load() == n {
				t.Fatal("the TCP load stopped")
			}
			stopLoad()

			httpTotal, httpFailures := httpResult()
			t.Logf("%s: %d HTTP requests and %d TCP sessions (each a new handshake) across leaf and root rotations; "+
				"leaves per sidecar %v; handshakes: web outbound %v, db inbound %v, tcp inbound %v",
				reg.name, httpTotal, tcpN.Load(), leaves(),
				metricValue(scrape(t, web.addrs.Admin), `podmesh_tls_handshakes_total{direction="outbound"}`),
				metricValue(scrape(t, db.addrs.Admin), `podmesh_tls_handshakes_total{direction="inbound"}`),
				metricValue(scrape(t, tcpSvc.addrs.Admin), `podmesh_tls_handshakes_total{direction="inbound"}`))
			if len(httpFailures) > 0 {
				t.Errorf("%d of %d HTTP requests failed, first: %s", len(httpFailures), httpTotal, httpFailures[0])
			}
			if len(tcpFailures) > 0 {
				t.Errorf("%d of %d TCP sessions failed, first: %s", len(tcpFailures), tcpN.Load(), tcpFailures[0])
			}
			if f := grepLines(scrape(t, web.addrs.Admin), "podmesh_tls_handshake_failures_total"); strings.Contains(f, "} 1") ||
				strings.Contains(f, "} 2") {
				t.Logf("web handshake failures:\n%s", f)
			}
			if v := metricValue(scrape(t, web.addrs.Admin), `podmesh_tls_rotations_total{kind="roots"}`); v < 2 {
				t.Errorf("root rotations counted: %v", v)
			}
		})
	}
}

// /ready stays 503 until the leaf, the bundle and the intentions have come from the
// registry, however long that takes (no ready timeout for them): until then the inbound
// port refuses every handshake (reason not_ready). Once the registry answers, it is ready.
func TestNotReadyWithoutCA(t *testing.T) {
	testutil.CheckGoroutines(t)
	reg, gate, open := gatedRegistry(t)
	app := startTestApp(t, "nr-db", nil)
	cfg, err := Parse([]string{"-service", "nr-db", "-protocol", "http", "-inbound", "127.0.0.1:0", "-app", app.addr,
		"-register=false", "-admin", "127.0.0.1:0", "-registry", gate}, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ReadyTimeout = Duration(10 * time.Millisecond) // applies to discovery, not to the certificates
	sc, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if sc.Addrs().Admin == "" || sc.Addrs().Inbound == "" {
			return errors.New("not listening")
		}
		return nil
	})
	a := sc.Addrs()
	ready := func() (int, string) {
		res, err := http.Get("http://" + a.Admin + "/ready")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res.StatusCode, string(b)
	}
	time.Sleep(300 * time.Millisecond) // well past the ready timeout
	if code, body := ready(); code != 503 || !strings.Contains(body, "Connect CA") {
		t.Fatalf("/ready without a CA: %d %q", code, body)
	}
	web, _ := leafPair(t, reg.CA(), "nr-web")
	if res, _, err := tlsGet(a.Inbound, &web); err == nil {
		t.Fatalf("served without a leaf: %d", res.StatusCode)
	}
	waitMetric(t, a.Admin, `podmesh_tls_handshake_failures_total{direction="inbound",reason="not_ready"}`, 1)
	if v := metricValue(scrape(t, a.Admin), "podmesh_tls_ready"); v != 0 {
		t.Errorf("podmesh_tls_ready %v before the material", v)
	}

	open()
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, body := ready(); code != 200 {
			return fmt.Errorf("/ready %d %q", code, body)
		}
		return nil
	})
	if res, body, err := tlsGet(a.Inbound, &web); err != nil || res.StatusCode != 200 {
		t.Fatalf("once ready: %v %q %v", res, body, err)
	}
	if v := metricValue(scrape(t, a.Admin), "podmesh_tls_ready"); v != 1 {
		t.Errorf("podmesh_tls_ready %v", v)
	}
}
