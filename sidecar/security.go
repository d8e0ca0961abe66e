package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podmesh/podmesh/proxy"
	"github.com/podmesh/podmesh/tls/identity"
	"github.com/podmesh/podmesh/tls/spiffe"
)

// security is the sidecar's proxy.Security when mutual TLS is on: the certificates and the
// authorization come from a tls/identity Source (the registry's Connect CA and intentions,
// through consul/api), and every handshake and decision is counted and, rate-limited,
// logged.
//
//   - Inbound: TLS 1.3, a client certificate required, chained to the current trust bundle,
//     with one SPIFFE service ID in the current trust domain; then the caller's identity is
//     authorized against the intentions on every HTTP request and once per raw TCP
//     connection (the proxy answers 403 with X-Podmesh-Denied, or closes the connection).
//   - Outbound: the same leaf as client certificate; the server's certificate must chain to
//     the bundle and its SPIFFE ID name the upstream dialled.
//
// Leaf and bundle are read on every handshake, so rotations apply to new connections
// without touching established ones.
type security struct {
	src     *identity.Source
	service string
	server  *tls.Config
	m       *securityMetrics
	log     *slog.Logger

	mu      sync.Mutex
	clients map[string]*tls.Config // by upstream service; built once each

	deniedLog, failedLog logLimiter
}

func newSecurity(src *identity.Source, service string, m *securityMetrics, log *slog.Logger) *security {
	return &security{
		src: src, service: service, m: m, log: log,
		server:    src.ServerConfig([]string{proxy.ALPNHTTP2, proxy.ALPNHTTP1, proxy.ALPNTCP}),
		clients:   map[string]*tls.Config{},
		deniedLog: logLimiter{every: time.Second, burst: 10},
		failedLog: logLimiter{every: time.Second, burst: 10},
	}
}

// ServerTLS returns the inbound configuration, the same one for every connection: it reads
// the current leaf and bundle on every handshake.
func (s *security) ServerTLS() *tls.Config { return s.server }

// ClientTLS returns the configuration for dialling instances of service; the proxy clones
// it and sets the ALPN protocol. Sessions resume through the Source's shared cache.
func (s *security) ClientTLS(service string) *tls.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[service]
	if c == nil {
		c = s.src.ClientConfig(service, nil)
		s.clients[service] = c
	}
	return c
}

// Reasons Authorize gives for peers without a verified identity (the handshake normally
// stops them first).
const (
	reasonPlaintext  = "plaintext connection: mutual TLS is required"
	reasonNoIdentity = "no verified SPIFFE service identity"
)

// Authorize decides whether the peer of a verified connection may call the local service,
// from the intentions: Consul's reason text comes back (the intention or default that
// decided). It allocates nothing for a known caller.
func (s *security) Authorize(_ context.Context, p proxy.Peer) (bool, string) {
	if p.TLS == nil {
		s.m.denied(spiffe.ServiceID{Service: unknownSource}).Inc()
		s.logDenied(p, unknownSource, reasonPlaintext)
		return false, reasonPlaintext
	}
	id, ok := peerID(p.TLS)
	if !ok {
		s.m.denied(spiffe.ServiceID{Service: unknownSource}).Inc()
		s.logDenied(p, unknownSource, reasonNoIdentity)
		return false, reasonNoIdentity
	}
	allowed, reason := s.src.Authorize(id)
	if allowed {
		s.m.allowed(id).Inc()
		return true, reason
	}
	s.m.denied(id).Inc()
	s.logDenied(p, id.String(), reason)
	return false, reason
}

// PeerService names the caller of a verified connection for metrics and spans, as the
// source label of the authorization metrics does ("" without an identity). It allocates
// nothing for a known caller.
func (s *security) PeerService(cs *tls.ConnectionState) string {
	id, ok := peerID(cs)
	if !ok {
		return ""
	}
	return s.m.source(id).label
}

// peerID returns the SPIFFE service identity of the peer's leaf: its one URI SAN, which
// the handshake has verified.
func peerID(cs *tls.ConnectionState) (spiffe.ServiceID, bool) {
	if len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].URIs) != 1 {
		return spiffe.ServiceID{}, false
	}
	id, err := spiffe.FromURI(cs.PeerCertificates[0].URIs[0])
	return id, err == nil
}

func (s *security) logDenied(p proxy.Peer, source, reason string) {
	ok, suppressed := s.deniedLog.allow()
	if !ok {
		return
	}
	addr := p.RemoteAddr
	if addr == "" && p.Addr != nil {
		addr = p.Addr.String()
	}
	kind := "request"
	if p.TLS != nil && p.TLS.NegotiatedProtocol == proxy.ALPNTCP {
		kind = "connection"
	}
	s.log.Warn("caller not authorized", "service", s.service, "source", source, "peer", addr,
		"denied", kind, "reason", reason, "suppressed_since_last", suppressed)
}

// HandshakeDone counts a handshake the proxy ran, and logs (rate-limited) a failed one
// with its reason.
func (s *security) HandshakeDone(dir, service string, err error) {
	if err == nil {
		s.m.handshake(dir).Inc()
		return
	}
	reason := handshakeFailure(err)
	s.m.handshakeFailed(dir, reason).Inc()
	if reason == failClosed {
		// Port probes and peers going away: counted, not worth a warning.
		s.log.Debug("tls handshake failed", "direction", dir, "service", service, "reason", reason, "err", err.Error())
		return
	}
	if ok, suppressed := s.failedLog.allow(); ok {
		s.log.Warn("tls handshake failed", "direction", dir, "service", service, "reason", reason,
			"err", err.Error(), "suppressed_since_last", suppressed)
	}
}

// Handshake failure reasons, the values of the reason label.
const (
	failNoCertificate  = "no_certificate"  // the peer sent no certificate
	failUnknownCA      = "unknown_ca"      // not chained to a root of the trust bundle
	failExpired        = "expired"         // expired or not yet valid
	failTrustDomain    = "trust_domain"    // SPIFFE ID in another trust domain
	failWrongService   = "wrong_service"   // outbound: the peer is not the upstream dialled
	failBadCertificate = "bad_certificate" // chained but unusable: no or several SPIFFE IDs, wrong key usage
	failPeerRejected   = "peer_rejected"   // the peer sent an alert: it refused our certificate
	failProtocol       = "protocol"        // not TLS (plaintext), not TLS 1.3, no common ALPN protocol
	failNotReady       = "not_ready"       // this sidecar has no leaf or bundle yet
	failClosed         = "closed"          // the connection ended during the handshake
	failTimeout        = "timeout"
	failOther          = "other"
)

var failureReasons = []string{failNoCertificate, failUnknownCA, failExpired, failTrustDomain, failWrongService,
	failBadCertificate, failPeerRejected, failProtocol, failNotReady, failClosed, failTimeout, failOther}

// handshakeFailure classifies a handshake error into one of the reasons above.
func handshakeFailure(err error) string {
	var (
		unknownCA x509.UnknownAuthorityError
		invalid   x509.CertificateInvalidError
		alert     tls.AlertError
		op        *net.OpError
		record    tls.RecordHeaderError
		ne        net.Error
	)
	switch {
	case errors.Is(err, identity.ErrNoPeerCert):
		return failNoCertificate
	case errors.As(err, &unknownCA):
		return failUnknownCA
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return failExpired
	case errors.Is(err, identity.ErrTrustDomain):
		return failTrustDomain
	case errors.Is(err, identity.ErrWrongService):
		return failWrongService
	case errors.Is(err, identity.ErrNoLeaf), errors.Is(err, identity.ErrNoRoots):
		return failNotReady
	case errors.As(err, &invalid), strings.HasPrefix(err.Error(), "identity: "):
		return failBadCertificate
	case errors.As(err, &op) && op.Op == "remote error", errors.As(err, &alert):
		return failPeerRejected
	case errors.As(err, &record), errors.Is(err, proxy.ErrALPN):
		return failProtocol
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.EPIPE):
		return failClosed
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return failTimeout
	}
	// crypto/tls has no exported errors for these.
	msg := err.Error()
	switch {
	case strings.Contains(msg, "didn't provide a certificate"):
		return failNoCertificate
	case strings.Contains(msg, "tls: "):
		// unsupported versions, no application protocol, unexpected message, bad record MAC...
		return failProtocol
	}
	return failOther
}

// logLimiter lets burst lines through, then one per interval, and counts what it held back.
type logLimiter struct {
	every time.Duration
	burst int

	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
}

// allow reports whether a line may be logged now and how many were suppressed since the
// last one that was.
func (l *logLimiter) allow() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.last.IsZero() {
		l.tokens = float64(l.burst)
	} else {
		l.tokens = min(float64(l.burst), l.tokens+float64(now.Sub(l.last))/float64(l.every))
	}
	l.last = now
	if l.tokens < 1 {
		l.suppressed++
		return false, 0
	}
	l.tokens--
	n := l.suppressed
	l.suppressed = 0
	return true, n
}

// Interface guards.
var (
	_ proxy.Security          = (*security)(nil)
	_ proxy.HandshakeObserver = (*security)(nil)
	_ proxy.PeerNamer         = (*security)(nil)
)
