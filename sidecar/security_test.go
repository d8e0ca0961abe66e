package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/podmesh/podmesh/internal/meshtest"
	"github.com/podmesh/podmesh/proxy"
	"github.com/podmesh/podmesh/tls/identity"
	"github.com/podmesh/podmesh/tls/spiffe"
)

// Mutual TLS is on unless switched off by the flag or the file; the flag wins over the
// file; a sidecar without a service has no identity and must say -tls=false.
func TestParseTLS(t *testing.T) {
	svc := []string{"-service", "web", "-inbound", "127.0.0.1:21000", "-app", "127.0.0.1:8080"}
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := "service: web\ninbound: 127.0.0.1:21000\napp: 127.0.0.1:8080\n"
	off := file("off.yaml", base+"tls:\n  enabled: false\n")
	on := file("on.yaml", base+"tls: {enabled: true}\n")
	for _, tc := range []struct {
		name string
		args []string
		want bool
	}{
		{"default", svc, true},
		{"flag off", append(svc, "-tls=false"), false},
		{"flag on", append(svc, "-tls"), true},
		{"file off", []string{"-config", off}, false},
		{"file on", []string{"-config", on}, true},
		{"flag wins over file", []string{"-config", off, "-tls=true"}, true},
		{"flag off wins over file", []string{"-config", on, "-tls=false"}, false},
		{"upstream only, plaintext", []string{"-upstream", "db=127.0.0.1:1", "-tls=false"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.args, env(), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.TLS.Enabled == nil || *c.TLS.Enabled != tc.want || c.TLS.On() != tc.want {
				t.Errorf("tls.enabled = %v, want %v", c.TLS.Enabled, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"upstream only with tls", []string{"-upstream", "db=127.0.0.1:1"},
			"config: service: \"\": required with tls (the sidecar's identity towards its upstreams): set -service (an outbound-only sidecar needs no -inbound nor -app), or -tls=false where no sidecar uses mTLS"},
		{"bad value", append(svc, "-tls=maybe"), "invalid boolean value \"maybe\" for -tls: parse error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args, env(), io.Discard)
			if err == nil || err.Error() != tc.want {
				t.Errorf("got: %v\nwant: %s", err, tc.want)
			}
		})
	}
	if _, err := LoadYAML([]byte("tls:\n  enable: false\n")); err == nil || !strings.Contains(err.Error(), "field enable not found") {
		t.Errorf("misspelt tls key: %v", err)
	}
	var usage strings.Builder
	if _, err := Parse([]string{"-h"}, env(), &usage); !errors.Is(err, ErrHelp) {
		t.Fatal(err)
	}
	if !strings.Contains(usage.String(), "-tls=false sends plaintext") {
		t.Errorf("-h does not say how to turn mTLS off:\n%s", usage.String())
	}
}

// Every handshake error maps to one bounded reason.
func TestHandshakeFailureReasons(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("identity: verify peer certificate: %w", err) }
	for _, tc := range []struct {
		err  error
		want string
	}{
		{identity.ErrNoPeerCert, failNoCertificate},
		{errors.New("tls: client didn't provide a certificate"), failNoCertificate},
		{wrap(x509.UnknownAuthorityError{}), failUnknownCA},
		{wrap(x509.CertificateInvalidError{Reason: x509.Expired}), failExpired},
		{wrap(x509.CertificateInvalidError{Reason: x509.IncompatibleUsage}), failBadCertificate},
		{fmt.Errorf("%w: spiffe://x", identity.ErrTrustDomain), failTrustDomain},
		{fmt.Errorf("%w: got db", identity.ErrWrongService), failWrongService},
		{errors.New(`identity: peer certificate: certificate "x" has 0 URI SANs, want 1`), failBadCertificate},
		{identity.ErrNoLeaf, failNotReady},
		{identity.ErrNoRoots, failNotReady},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, failPeerRejected},
		{tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, failProtocol},
		{fmt.Errorf("%w: peer negotiated ALPN \"\", want \"h2\"", proxy.ErrALPN), failProtocol},
		{errors.New("tls: client offered only unsupported versions: [303]"), failProtocol},
		{io.EOF, failClosed},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, failClosed},
		{context.DeadlineExceeded, failTimeout},
		{errors.New("boom"), failOther},
	} {
		if got := handshakeFailure(tc.err); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.err, got, tc.want)
		}
	}
}

// The source label is bounded: past maxSourceLabels calling services, decisions are
// counted as "other"; callers outside the default namespace are written in full.
func TestSourceLabelsBounded(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	src, err := identity.New(identity.Config{Client: client, Service: "db"})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := newSecurityMetrics(reg, "db", src)
	if err != nil {
		t.Fatal(err)
	}
	for i := range maxSourceLabels + 50 {
		m.denied(spiffe.ServiceID{Namespace: "default", Service: fmt.Sprint("svc", i)}).Inc()
	}
	m.allowed(spiffe.ServiceID{Namespace: "default", Service: "svc0"}).Inc()
	text := expose(reg)
	if n := strings.Count(text, "\npodmesh_authz_denied_total{"); n != maxSourceLabels+1 {
		t.Errorf("%d denied series, want %d", n, maxSourceLabels+1)
	}
	if v := metricValue(text, `podmesh_authz_denied_total{destination="db",source="other"}`); v != 50 {
		t.Errorf("other: %v", v)
	}
	reg2 := prometheus.NewRegistry()
	m2, err := newSecurityMetrics(reg2, "db", src)
	if err != nil {
		t.Fatal(err)
	}
	m2.allowed(spiffe.ServiceID{Partition: "p1", Namespace: "team", Service: "web"}).Inc()
	if v := metricValue(expose(reg2), `podmesh_authz_allowed_total{destination="db",source="p1/team/web"}`); v != 1 {
		t.Errorf("qualified source: %v", v)
	}
	// Counting a known caller allocates nothing.
	id := spiffe.ServiceID{Namespace: "default", Service: "svc1"}
	if a := testing.AllocsPerRun(100, func() { m.allowed(id).Inc() }); a != 0 {
		t.Errorf("%v allocations per decision", a)
	}
}

// The log limiter lets a burst through, then one line per interval, and reports what it
// held back.
func TestLogLimiter(t *testing.T) {
	l := logLimiter{every: 50 * time.Millisecond, burst: 3}
	for i := range 3 {
		if ok, n := l.allow(); !ok || n != 0 {
			t.Fatalf("burst line %d: %v %d", i, ok, n)
		}
	}
	for range 5 {
		if ok, _ := l.allow(); ok {
			t.Fatal("past the burst")
		}
	}
	time.Sleep(60 * time.Millisecond)
	if ok, n := l.allow(); !ok || n != 5 {
		t.Fatalf("after the interval: %v, %d suppressed, want 5", ok, n)
	}
}

// expose renders a registry in the text exposition format.
func expose(reg *prometheus.Registry) string {
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// authorizeFixture is a security over a Source loaded from the fake CA, and the connection
// state of a caller "web" with a leaf from it.
func authorizeFixture(tb testing.TB) (*security, *tls.ConnectionState) {
	tb.Helper()
	reg := meshtest.Start(tb, "", 0)
	src, err := identity.New(identity.Config{Client: reg.Client(), Service: "db"})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case <-src.Ready():
	case <-timer.C:
		tb.Fatal("source not ready")
	}
	m, err := newSecurityMetrics(prometheus.NewRegistry(), "db", src)
	if err != nil {
		tb.Fatal(err)
	}
	sec := newSecurity(src, "db", m, slog.New(slog.DiscardHandler))
	pair, _ := leafPair(tb, reg.CA(), "web")
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		tb.Fatal(err)
	}
	return sec, &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, NegotiatedProtocol: proxy.ALPNHTTP2}
}

// Authorize runs on every HTTP request: for a known caller it allocates nothing.
func TestAuthorizeAllocs(t *testing.T) {
	sec, cs := authorizeFixture(t)
	p := proxy.Peer{TLS: cs, RemoteAddr: "127.0.0.1:1"}
	if ok, reason := sec.Authorize(context.Background(), p); !ok {
		t.Fatalf("denied: %s", reason)
	}
	if a := testing.AllocsPerRun(1000, func() { sec.Authorize(context.Background(), p) }); a != 0 {
		t.Errorf("%v allocations per Authorize", a)
	}
}

func BenchmarkAuthorize(b *testing.B) {
	sec, cs := authorizeFixture(b)
	p := proxy.Peer{TLS: cs, RemoteAddr: "127.0.0.1:1"}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			sec.Authorize(ctx, p)
		}
	})
}
