package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/podmesh/podmesh/tls/spiffe"
)

// stateVersion is the version of the serialized form; Load refuses others.
const stateVersion = 1

// state is the serialized CA. Keys are PEM ("EC PRIVATE KEY"), durations are strings.
type state struct {
	Version      int         `json:"version"`
	ClusterID    string      `json:"cluster_id"`
	TrustDomain  string      `json:"trust_domain"`
	ActiveRootID string      `json:"active_root_id"`
	Serial       uint64      `json:"serial"`
	Config       configState `json:"config"`
	Roots        []rootState `json:"roots"`
}

type configState struct {
	LeafCertTTL         string `json:"leaf_cert_ttl"`
	RootCertTTL         string `json:"root_cert_ttl"`
	RotationPeriod      string `json:"rotation_period"`
	IntermediateCertTTL string `json:"intermediate_cert_ttl"`
	ClockSkew           string `json:"clock_skew"`
}

type rootState struct {
	ID                string    `json:"id"`
	SerialNumber      uint64    `json:"serial_number"`
	CertPEM           string    `json:"cert_pem"`
	KeyPEM            string    `json:"key_pem"`
	IntermediateCerts []string  `json:"intermediate_certs,omitempty"`
	RotatedOutAt      time.Time `json:"rotated_out_at,omitzero"`
	LastLeafNotAfter  time.Time `json:"last_leaf_not_after,omitzero"`
}

// Marshal returns the CA's whole state, private keys included, for the registry's store.
func (c *CA) Marshal() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := state{
		Version:      stateVersion,
		ClusterID:    c.clusterID,
		TrustDomain:  c.trustDomain,
		ActiveRootID: c.active.id,
		Serial:       c.serial,
		Config: configState{
			LeafCertTTL:         c.cfg.LeafCertTTL.String(),
			RootCertTTL:         c.cfg.RootCertTTL.String(),
			RotationPeriod:      c.cfg.RotationPeriod.String(),
			IntermediateCertTTL: c.cfg.IntermediateCertTTL.String(),
			ClockSkew:           c.cfg.ClockSkew.String(),
		},
	}
	for _, r := range c.roots {
		st.Roots = append(st.Roots, rootState{
			ID:                r.id,
			SerialNumber:      r.serial,
			CertPEM:           r.certPEM,
			KeyPEM:            r.keyPEM,
			IntermediateCerts: r.intermediates,
			RotatedOutAt:      r.rotatedOutAt,
			LastLeafNotAfter:  r.lastLeafAfter,
		})
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("ca: marshal state: %w", err)
	}
	return b, nil
}

// Load restores a CA from Marshal's output, checking that every key matches its root, that
// each ID is its root's fingerprint and that exactly one root is active. now is the clock
// (time.Now when nil).
func Load(data []byte, now func() time.Time) (*CA, error) {
	var st state
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("ca: load state: %w", err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("ca: load state: version %d: want %d", st.Version, stateVersion)
	}
	td, err := spiffe.TrustDomainFromClusterID(st.ClusterID)
	if err != nil {
		return nil, fmt.Errorf("ca: load state: %w", err)
	}
	if td != st.TrustDomain {
		return nil, fmt.Errorf("ca: load state: trust domain %q does not match cluster ID %q", st.TrustDomain, st.ClusterID)
	}
	var cfg Config
	for _, f := range []struct {
		name string
		s    string
		dst  *time.Duration
	}{
		{"leaf_cert_ttl", st.Config.LeafCertTTL, &cfg.LeafCertTTL},
		{"root_cert_ttl", st.Config.RootCertTTL, &cfg.RootCertTTL},
		{"rotation_period", st.Config.RotationPeriod, &cfg.RotationPeriod},
		{"intermediate_cert_ttl", st.Config.IntermediateCertTTL, &cfg.IntermediateCertTTL},
		{"clock_skew", st.Config.ClockSkew, &cfg.ClockSkew},
	} {
		if f.s == "" {
			continue
		}
		d, err := time.ParseDuration(f.s)
		if err != nil {
			return nil, fmt.Errorf("ca: load state: config %s %q: %w", f.name, f.s, err)
		}
		*f.dst = d
	}
	cfg.Now = now
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ca: load state: %w", err)
	}
	c := &CA{cfg: cfg.withDefaults(), clusterID: st.ClusterID, trustDomain: td, serial: st.Serial}
	if len(st.Roots) == 0 {
		return nil, errors.New("ca: load state: no roots")
	}
	for i, rs := range st.Roots {
		r, err := loadRoot(rs, td)
		if err != nil {
			return nil, fmt.Errorf("ca: load state: root %d (%s): %w", i, rs.ID, err)
		}
		if r.serial > c.serial {
			return nil, fmt.Errorf("ca: load state: root %s serial %d is above the serial counter %d", r.id, r.serial, c.serial)
		}
		if r.id == st.ActiveRootID {
			if c.active != nil {
				return nil, fmt.Errorf("ca: load state: active root %s appears twice", r.id)
			}
			c.active = r
		}
		c.roots = append(c.roots, r)
	}
	if c.active == nil {
		return nil, fmt.Errorf("ca: load state: active root %q is not among the roots", st.ActiveRootID)
	}
	return c, nil
}

func loadRoot(rs rootState, td string) (*root, error) {
	cert, err := parseCertPEM(rs.CertPEM)
	if err != nil {
		return nil, fmt.Errorf("cert: %w", err)
	}
	if got := Fingerprint(cert.Raw); got != rs.ID {
		return nil, fmt.Errorf("ID %q is not the certificate's fingerprint %q", rs.ID, got)
	}
	if !cert.IsCA || len(cert.URIs) != 1 || cert.URIs[0].String() != (spiffe.SigningID{TrustDomain: td}).String() {
		return nil, fmt.Errorf("certificate is not a CA for %q", td)
	}
	b, _ := pem.Decode([]byte(rs.KeyPEM))
	if b == nil || b.Type != "EC PRIVATE KEY" {
		return nil, errors.New("key: no PEM EC PRIVATE KEY block")
	}
	key, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	if key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key: curve %s, want P-256", key.Curve.Params().Name)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("key does not match the certificate")
	}
	pkixDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	for j, im := range rs.IntermediateCerts {
		if _, err := parseCertPEM(im); err != nil {
			return nil, fmt.Errorf("intermediate %d: %w", j, err)
		}
	}
	return &root{
		id:            rs.ID,
		serial:        rs.SerialNumber,
		cert:          cert,
		certPEM:       rs.CertPEM,
		key:           key,
		keyPEM:        rs.KeyPEM,
		keyID:         keyID(pkixDER),
		intermediates: rs.IntermediateCerts,
		rotatedOutAt:  rs.RotatedOutAt,
		lastLeafAfter: rs.LastLeafNotAfter,
	}, nil
}
