package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
)

// gatedSec is mtls whose Authorize answer the test switches, and which records every
// decision it was asked for and every handshake outcome it was told about.
type gatedSec struct {
	mtls
	deny atomic.Bool

	mu         sync.Mutex
	asked      []Peer
	handshakes []string // "dir service ok" or "dir service err"
}

func newGatedSec(t *testing.T) *gatedSec {
	return &gatedSec{mtls: mtls{pki: newTestPKI(t), seen: make(chan string, 1000)}}
}

func (g *gatedSec) Authorize(_ context.Context, p Peer) (bool, string) {
	g.mu.Lock()
	g.asked = append(g.asked, p)
	g.mu.Unlock()
	if p.TLS == nil || len(p.TLS.PeerCertificates) == 0 {
		return false, "no client certificate"
	}
	if g.deny.Load() {
		return false, "Matched L4 intention: client => backend (Precedence: 9)"
	}
	return true, ""
}

func (g *gatedSec) HandshakeDone(dir, service string, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "err"
	}
	g.mu.Lock()
	g.handshakes = append(g.handshakes, dir+" "+service+" "+outcome)
	g.mu.Unlock()
}

func (g *gatedSec) count(what string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, h := range g.handshakes {
		if h == what {
			n++
		}
	}
	return n
}

func (g *gatedSec) askedCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.asked)
}

// An HTTP request the Security denies gets a 403 with the reason in X-Podmesh-Denied and a
// short body, and never reaches the app; the decision is taken again for every request, so
// flipping it applies to the pooled HTTP/2 connection between the sidecars at once, without
// a new handshake.
func TestDeniedHTTPRequestGets403(t *testing.T) {
	testutil.CheckGoroutines(t)
	sec := newGatedSec(t)
	app := startApp(t, "backend", nil)
	inAddr, _ := startInbound(t, InboundConfig{Service: "backend", Protocol: HTTP, App: app.addr, Security: sec})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "backend", Security: sec}, []lb.Endpoint{endpoint("b1", inAddr, HTTP)})
	c := client()
	get := func() (*http.Response, string) {
		t.Helper()
		res, err := c.Get("http://" + upAddr + "/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res, string(b)
	}

	// Enough requests for the pool to have made its connections to the peer.
	for range 10 {
		if res, _ := get(); res.StatusCode != 200 {
			t.Fatalf("allowed: %d", res.StatusCode)
		}
	}
	// The pool grows in the background: wait until it has stopped dialling.
	handshakes := -1
	for n := sec.count("inbound backend ok"); n != handshakes; n = sec.count("inbound backend ok") {
		handshakes = n
		time.Sleep(200 * time.Millisecond)
	}
	asked := sec.askedCount()

	sec.deny.Store(true)
	hits := app.hits.Load()
	res, body := get()
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("denied: status %d, want 403", res.StatusCode)
	}
	if got := res.Header.Get(HeaderDenied); got != "Matched L4 intention: client => backend (Precedence: 9)" {
		t.Errorf("%s: %q", HeaderDenied, got)
	}
	if !strings.Contains(body, "not authorized") || !strings.Contains(body, "Matched L4 intention") || len(body) > 200 {
		t.Errorf("body %q", body)
	}
	// An Upgrade tunnel travels over its own HTTP/1.1 connection (TLS, through the guard):
	// it is asked about too.
	cfg := sec.ClientTLS("backend").Clone()
	cfg.NextProtos = []string{ALPNHTTP1}
	tc, err := tls.Dial("tcp", inAddr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(tc, "GET /ws HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	head := make([]byte, 12)
	_, err = io.ReadFull(tc, head)
	tc.Close()
	if err != nil || string(head) != "HTTP/1.1 403" {
		t.Errorf("denied upgrade: %q %v", head, err)
	}
	if app.hits.Load() != hits {
		t.Error("a denied request reached the app")
	}
	sec.deny.Store(false)
	if res, _ := get(); res.StatusCode != 200 {
		t.Fatalf("allowed again: %d", res.StatusCode)
	}
	if n := sec.count("inbound backend ok"); n != handshakes+1 { // +1: the upgrade's own
		t.Errorf("%d inbound handshakes after the flips, %d before: decisions should apply on the open connection", n, handshakes)
	}
	if n := sec.askedCount(); n != asked+3 {
		t.Errorf("Authorize asked %d times for 3 requests", n-asked)
	}
	sec.mu.Lock()
	last := sec.asked[len(sec.asked)-1]
	sec.mu.Unlock()
	if last.TLS == nil || last.TLS.NegotiatedProtocol != ALPNHTTP2 || last.RemoteAddr == "" {
		t.Errorf("per-request peer: %+v", last)
	}
}

// An app cannot make its caller believe the mesh denied a request.
func TestAppCannotSetDeniedHeader(t *testing.T) {
	sec := newGatedSec(t)
	app := startApp(t, "backend", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderDenied, "forged")
		w.WriteHeader(http.StatusForbidden)
	})
	inAddr, _ := startInbound(t, InboundConfig{Service: "backend", Protocol: HTTP, App: app.addr, Security: sec})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "backend", Security: sec}, []lb.Endpoint{endpoint("b1", inAddr, HTTP)})
	res, err := client().Get("http://" + upAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 403 || res.Header.Get(HeaderDenied) != "" {
		t.Errorf("app's 403: status %d, %s %q", res.StatusCode, HeaderDenied, res.Header.Get(HeaderDenied))
	}
}

// A raw TCP connection the Security denies is closed right after the handshake: the app
// never sees it.
func TestDeniedTCPConnectionClosed(t *testing.T) {
	testutil.CheckGoroutines(t)
	sec := newGatedSec(t)
	var appConns atomic.Int64
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			appConns.Add(1)
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	inAddr, _ := startInbound(t, InboundConfig{Service: "backend", Protocol: TCP, App: ln.Addr().String(), Security: sec})
	sec.deny.Store(true)

	cfg := sec.ClientTLS("backend").Clone()
	cfg.NextProtos = []string{ALPNTCP}
	tc, err := tls.Dial("tcp", inAddr, cfg)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(tc, "hello")
	n, err := tc.Read(make([]byte, 10))
	if n != 0 || err == nil {
		t.Fatalf("denied TCP peer read %d bytes, err %v", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("denied TCP connection was left open")
	}
	if appConns.Load() != 0 {
		t.Error("the app saw a denied connection")
	}
	sec.mu.Lock()
	asked := append([]Peer(nil), sec.asked...)
	sec.mu.Unlock()
	if len(asked) != 1 || asked[0].Addr == nil || asked[0].TLS == nil || asked[0].TLS.NegotiatedProtocol != ALPNTCP {
		t.Errorf("asked about %+v", asked)
	}
}

// The proxy tells an observing Security about every handshake, inbound and outbound, and
// about failures: a plaintext client on the TLS inbound, an outbound dial to a peer whose
// certificate the client does not trust.
func TestHandshakeObserver(t *testing.T) {
	testutil.CheckGoroutines(t)
	sec := newGatedSec(t)
	app := startApp(t, "backend", nil)
	inAddr, _ := startInbound(t, InboundConfig{Service: "backend", Protocol: HTTP, App: app.addr, Security: sec})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "backend", Security: sec}, []lb.Endpoint{endpoint("b1", inAddr, HTTP)})
	if code, _, _ := do(t, client(), "GET", "http://"+upAddr+"/", ""); code != 200 {
		t.Fatalf("request: %d", code)
	}
	if sec.count("inbound backend ok") == 0 || sec.count("outbound backend ok") == 0 {
		t.Errorf("handshakes seen: %v", sec.handshakes)
	}

	// Plaintext HTTP on the TLS port.
	if _, _, err := get1(inAddr); err == nil {
		t.Error("plaintext request to the TLS inbound succeeded")
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if sec.count("inbound backend err") == 0 {
			return errors.New("plaintext connection not reported as a failed handshake")
		}
		return nil
	})

	// An upstream whose instance presents a certificate from another CA.
	other := &gatedSec{mtls: mtls{pki: newTestPKI(t), seen: make(chan string, 100)}}
	otherIn, _ := startInbound(t, InboundConfig{Service: "backend", Protocol: HTTP, App: app.addr, Security: other})
	up2, _ := startUpstream(t, UpstreamConfig{Name: "backend", Security: sec, Policy: Policy{Retries: -1}},
		[]lb.Endpoint{endpoint("o1", otherIn, HTTP)})
	if code, _, _ := do(t, client(), "GET", "http://"+up2+"/", ""); code != http.StatusServiceUnavailable {
		t.Errorf("request to an untrusted peer: %d, want 503", code)
	}
	if sec.count("outbound backend err") == 0 {
		t.Errorf("failed outbound handshake not reported: %v", sec.handshakes)
	}
}
