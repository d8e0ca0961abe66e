package sidecar

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
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

	"github.com/podmesh/podmesh/internal/meshtest"
	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/proxy"
	"github.com/podmesh/podmesh/tls/ca"
)

// The mutual TLS tests of issue 4 run real sidecars (in-process, or the built binary) with
// -tls=true against a registry with a Connect CA: the shared agent (Consul v1.14.0, or
// Podmesh's registry with PODMESH_TEST_REGISTRY_BIN), or meshtest's fake CA in front of it
// where a test needs what Consul does not allow (leaves living seconds, the CA's key to forge
// certificates).

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
	text := scrape(t, admin)
	t.Logf("inbound handshakes %v; failures: no_certificate %v, unknown_ca %v, expired %v, trust_domain %v, protocol %v",
		metricValue(text, `podmesh_tls_handshakes_total{direction="inbound"}`),
		metricValue(text, failures("no_certificate")), metricValue(text, failures("unknown_ca")),
		metricValue(text, failures("expired")), metricValue(text, failures("trust_domain")), metricValue(text, failures("protocol")))
}

// startEchoApp is a TCP app that echoes lines, counting connections.
func startEchoApp(t *testing.T, conns *atomic.Int64) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			mu.Lock()
			open[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(open, c)
					mu.Unlock()
					c.Close()
				}()
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
			}()
		}
	}()
	return ln.Addr().String()
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
