package proxy

import (
	"context"
	"crypto/tls"
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
	// Authorize decides whether a peer may call the local service. reason is logged and
	// counted when the answer is no.
	Authorize(ctx context.Context, p Peer) (ok bool, reason string)
}

// Peer is what the inbound listener knows about a connecting peer.
type Peer struct {
	Addr net.Addr
	TLS  *tls.ConnectionState // nil on plaintext connections
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
