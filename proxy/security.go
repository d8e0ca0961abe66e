package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
)

// Security is how transport security and authorization plug into the proxy (issue 4: mTLS
// with SPIFFE identities and intentions). The proxy consumes it; it does not implement
// certificates itself. A nil Security means plaintext and allow-all.
//
// Everything between sidecars can run over TLS 1.3. The inbound listener offers ALPN
// "h2" (multiplexed HTTP), "http/1.1" (Upgrade tunnels such as WebSocket) and
// "podmesh-tcp" (raw TCP) and dispatches on the negotiated protocol; outbound dials ask for
// the one they need.
type Security interface {
	// ServerTLS returns the inbound listener's TLS configuration, or nil for plaintext.
	// It is called for every accepted connection, so certificates may rotate.
	ServerTLS() *tls.Config
	// ClientTLS returns the configuration for dialling an instance of service, or nil for
	// plaintext. The proxy sets NextProtos itself. It is called for every dial.
	ClientTLS(service string) *tls.Config
	// Authorize decides whether a peer may call the local service. The inbound side asks
	// once per raw TCP connection (a denied one is closed right after the handshake) and
	// once per HTTP request, so that a changed decision (an intention edited) applies to
	// multiplexed connections that stay open; a denied request gets a 403 with reason in
	// the HeaderDenied header. It is on the request path: it must be fast and should not
	// allocate. The Security counts and logs its own decisions.
	Authorize(ctx context.Context, p Peer) (ok bool, reason string)
}

// HandshakeObserver is an optional capability of a Security: the proxy reports the outcome
// of every TLS handshake it runs, inbound (dir DirInbound, service the local service) and
// outbound (DirOutbound, service the upstream dialled), with err nil on success. It must not
// block.
type HandshakeObserver interface {
	HandshakeDone(dir, service string, err error)
}

// HeaderDenied is set on the 403 an inbound sidecar answers to a request its Security did
// not authorize; its value is the reason (the intention or default that decided). It is
// removed from the app's own responses, so only the sidecar can say it.
const HeaderDenied = "X-Podmesh-Denied"

// ErrALPN is the handshake error when a peer sidecar did not agree on the protocol asked
// for (it is not a podmesh sidecar, or an older one).
var ErrALPN = errors.New("tls: peer did not negotiate the ALPN protocol asked for")

// observeHandshake reports a handshake's outcome to sec when it listens.
func observeHandshake(sec Security, dir, service string, err error) {
	if o, ok := sec.(HandshakeObserver); ok {
		o.HandshakeDone(dir, service, err)
	}
}

// Peer is what the inbound listener knows about a connecting peer.
type Peer struct {
	Addr net.Addr             // nil when asked for an HTTP request (see RemoteAddr)
	TLS  *tls.ConnectionState // nil on plaintext connections
	// RemoteAddr is the peer's host:port as text, set for HTTP requests.
	RemoteAddr string
}

// ALPN protocol IDs spoken between sidecars.
const (
	ALPNHTTP2 = "h2"
	ALPNHTTP1 = "http/1.1"
	ALPNTCP   = "podmesh-tcp"
)

// plaintext is the Security used when none is configured.
type plaintext struct{}

func (plaintext) ServerTLS() *tls.Config                         { return nil }
func (plaintext) ClientTLS(string) *tls.Config                   { return nil }
func (plaintext) Authorize(context.Context, Peer) (bool, string) { return true, "" }

// clientTLS returns a copy of sec's client configuration for service with NextProtos set
// to proto, or nil for plaintext.
func clientTLS(sec Security, service, proto string) *tls.Config {
	c := sec.ClientTLS(service)
	if c == nil {
		return nil
	}
	c = c.Clone()
	c.NextProtos = []string{proto}
	if c.MinVersion < tls.VersionTLS13 {
		c.MinVersion = tls.VersionTLS13
	}
	return c
}

var _ Security = plaintext{}
