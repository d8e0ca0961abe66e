package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
)

// testPKI is a CA and one leaf for "backend", enough to run mutual TLS between sidecars.
type testPKI struct {
	pool *x509.CertPool
	leaf tls.Certificate
}

func newTestPKI(t testing.TB) testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "backend"},
		DNSNames: []string{"backend"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return testPKI{pool: pool, leaf: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

// mtls is a Security with one identity for everybody; Authorize admits peers that
// presented a verified certificate and records the ALPN protocols it saw.
type mtls struct {
	pki  testPKI
	seen chan string
}

func (m *mtls) ServerTLS() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{m.pki.leaf}, ClientCAs: m.pki.pool,
		ClientAuth: tls.RequireAndVerifyClientCert}
}

func (m *mtls) ClientTLS(service string) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{m.pki.leaf}, RootCAs: m.pki.pool, ServerName: service}
}

func (m *mtls) Authorize(_ context.Context, p Peer) (bool, string) {
	if p.TLS == nil || len(p.TLS.PeerCertificates) == 0 {
		return false, "no client certificate"
	}
	select {
	case m.seen <- p.TLS.NegotiatedProtocol:
	default:
	}
	return true, ""
}

// With a Security in place everything between the sidecars runs over TLS 1.3, with the
// inbound listener dispatching on ALPN: h2 for requests, http/1.1 for Upgrade tunnels,
// podmesh-tcp for raw TCP.
func TestTLSBetweenSidecars(t *testing.T) {
	testutil.CheckGoroutines(t)
	sec := &mtls{pki: newTestPKI(t), seen: make(chan string, 100)}
	app := startApp(t, "backend", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "websocket" {
			websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }).ServeHTTP(w, r)
			return
		}
		io.WriteString(w, "over tls")
	})
	inAddr, _ := startInbound(t, InboundConfig{Service: "backend", Protocol: HTTP, App: app.addr, Security: sec})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "backend", Security: sec}, []lb.Endpoint{endpoint("b1", inAddr, HTTP)})

	code, body, _ := do(t, client(), "GET", "http://"+upAddr+"/", "")
	if code != 200 || body != "over tls" {
		t.Fatalf("request: %d %q", code, body)
	}
	ws, err := websocket.Dial("ws://"+upAddr+"/ws", "", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	websocket.Message.Send(ws, "ping")
	var got string
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := websocket.Message.Receive(ws, &got); err != nil || got != "ping" {
		t.Fatalf("websocket: %q %v", got, err)
	}
	ws.Close()

	// Raw TCP to a TCP service over TLS.
	echo := startEcho(t)
	tcpIn, _ := startInbound(t, InboundConfig{Service: "backend", Protocol: TCP, App: echo, Security: sec})
	tcpUp, _ := startUpstream(t, UpstreamConfig{Name: "backend", Security: sec}, []lb.Endpoint{endpoint("t1", tcpIn, TCP)})
	c, err := net.Dial("tcp", tcpUp)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "raw")
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	raw, _ := io.ReadAll(c)
	c.Close()
	if string(raw) != "echo:raw" {
		t.Fatalf("tcp over tls: %q", raw)
	}

	close(sec.seen)
	var protos []string
	for p := range sec.seen {
		protos = append(protos, p)
	}
	all := strings.Join(protos, ",")
	for _, want := range []string{ALPNHTTP2, ALPNHTTP1, ALPNTCP} {
		if !strings.Contains(all, want) {
			t.Errorf("no %s connection seen by the inbound listener (saw %s)", want, all)
		}
	}

	// A plaintext peer, or one without a certificate, gets nowhere.
	if _, _, err := get1(inAddr); err == nil {
		t.Error("plaintext request to a TLS inbound succeeded")
	}
	conf := sec.ClientTLS("backend")
	conf.Certificates = nil
	conf.NextProtos = []string{ALPNHTTP1}
	tc, err := tls.Dial("tcp", inAddr, conf)
	if err == nil {
		tc.SetDeadline(time.Now().Add(2 * time.Second))
		io.WriteString(tc, "GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
		if n, _ := tc.Read(make([]byte, 1)); n > 0 {
			t.Error("a peer without a client certificate got an answer")
		}
		tc.Close()
	}
}

func get1(addr string) (int, string, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	res, err := c.Get("http://" + addr + "/")
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), nil
}
