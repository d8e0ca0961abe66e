package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/podmesh/podmesh/tls/spiffe"
)

// Errors a handshake can fail with, for errors.Is in callers and tests.
var (
	ErrNoLeaf       = errors.New("identity: no leaf certificate yet")
	ErrNoRoots      = errors.New("identity: no trust bundle yet")
	ErrNoPeerCert   = errors.New("identity: peer presented no certificate")
	ErrTrustDomain  = errors.New("identity: peer identity is in another trust domain")
	ErrWrongService = errors.New("identity: peer is not the service dialled")
)

// ServerConfig returns the TLS configuration for an inbound listener: TLS 1.3 only, the
// current leaf as the server certificate, and a client certificate required and verified
// against the current trust bundle: it must chain to a current root for client use, carry
// exactly one SPIFFE service URI SAN, and be in the current trust domain. Whether that
// caller may connect is a separate question: call PeerIdentity and Authorize after the
// handshake (so an HTTP caller can get a 403 with a reason). alpn is offered as NextProtos.
//
// The configuration reads the current material on every handshake, so it stays valid
// across leaf and root rotations; build it once per listener.
func (s *Source) ServerConfig(alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     append([]string(nil), alpn...),
		Time:           s.cfg.Now,
		GetCertificate: s.getCertificate,
		// Go checks that a certificate was sent and parses it; the chain, the identity and the
		// trust domain are checked in VerifyConnection against the current bundle, which
		// ClientCAs (fixed when the config is built) could not follow through a rotation.
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: s.verifier(x509.ExtKeyUsageClientAuth, ""),
	}
}

// ClientConfig returns the TLS configuration for dialling a peer sidecar of wantService:
// TLS 1.3 only, the current leaf as the client certificate, and the server's certificate
// verified against the current trust bundle for server use, with its SPIFFE ID required to
// be spiffe://<current trust domain>/ns/default/dc/<any>/svc/<wantService>. Sessions are
// resumed through a cache shared by the Source; a resumed session is verified again.
func (s *Source) ClientConfig(wantService string, alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		NextProtos:           append([]string(nil), alpn...),
		Time:                 s.cfg.Now,
		GetClientCertificate: s.getClientCertificate,
		// Host-name verification does not apply to SPIFFE identities; VerifyConnection does
		// the full chain verification against the current roots and checks the identity.
		InsecureSkipVerify: true,
		VerifyConnection:   s.verifier(x509.ExtKeyUsageServerAuth, wantService),
		ClientSessionCache: s.sessions,
	}
}

func (s *Source) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if l := s.leaf.Load(); l != nil {
		return l.cert, nil
	}
	return nil, ErrNoLeaf
}

func (s *Source) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if l := s.leaf.Load(); l != nil {
		return l.cert, nil
	}
	return nil, ErrNoLeaf
}

// verifier returns a VerifyConnection callback checking the peer's chain for the given use
// against the current roots, its identity's trust domain and, when wantService is set, that
// it is that service in the default namespace and partition.
func (s *Source) verifier(usage x509.ExtKeyUsage, wantService string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return ErrNoPeerCert
		}
		r := s.roots.Load()
		if r == nil {
			return ErrNoRoots
		}
		leaf := cs.PeerCertificates[0]
		opts := x509.VerifyOptions{
			Roots:       r.pool,
			CurrentTime: s.cfg.Now(),
			KeyUsages:   []x509.ExtKeyUsage{usage},
		}
		if len(cs.PeerCertificates) > 1 {
			opts.Intermediates = x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
		}
		if _, err := leaf.Verify(opts); err != nil {
			return fmt.Errorf("identity: verify peer certificate: %w", err)
		}
		id, err := identityOf(leaf)
		if err != nil {
			return fmt.Errorf("identity: peer certificate: %w", err)
		}
		if id.TrustDomain != r.trustDomain {
			return fmt.Errorf("%w: %s, want trust domain %q", ErrTrustDomain, id, r.trustDomain)
		}
		if wantService != "" && (id.Service != wantService || id.Namespace != spiffe.DefaultNamespace || id.Partition != "") {
			return fmt.Errorf("%w: got %s, want service %q", ErrWrongService, id, wantService)
		}
		return nil
	}
}

// PeerIdentity returns the SPIFFE identity of the peer of a connection made with
// ServerConfig or ClientConfig (whose handshake has already verified it).
func (s *Source) PeerIdentity(cs tls.ConnectionState) (spiffe.ServiceID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffe.ServiceID{}, ErrNoPeerCert
	}
	id, err := identityOf(cs.PeerCertificates[0])
	if err != nil {
		return spiffe.ServiceID{}, fmt.Errorf("identity: peer certificate: %w", err)
	}
	return id, nil
}
