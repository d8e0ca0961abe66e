package ca

import (
	"math/rand/v2"
	"strings"
	"time"
)

// RootList is the body of GET /v1/connect/ca/roots and /v1/agent/connect/ca/roots, in
// Consul's JSON shape (a superset of consul/api's CARootList).
type RootList struct {
	ActiveRootID string
	TrustDomain  string
	Roots        []Root
}

// Root is one trusted root in a RootList, in Consul's JSON shape and field order.
// CreateIndex and ModifyIndex are the registry's to fill.
type Root struct {
	ID                  string
	Name                string
	SerialNumber        uint64
	SigningKeyID        string
	ExternalTrustDomain string
	NotBefore           time.Time
	NotAfter            time.Time
	RootCert            string
	IntermediateCerts   []string
	Active              bool
	PrivateKeyType      string
	PrivateKeyBits      int
	CreateIndex         uint64
	ModifyIndex         uint64
}

// LeafCert is the body of GET /v1/agent/connect/ca/leaf/<service>, in Consul's JSON shape
// (a superset of consul/api's LeafCert). CertPEM holds the leaf followed by any intermediates
// (the cross-signed active root during a rotation). CreateIndex and ModifyIndex are the
// registry's to fill.
type LeafCert struct {
	SerialNumber  string
	CertPEM       string
	PrivateKeyPEM string `json:",omitempty"`
	Service       string
	ServiceURI    string
	ValidAfter    time.Time
	ValidBefore   time.Time
	Namespace     string
	CreateIndex   uint64
	ModifyIndex   uint64

	// RootID is the ID of the root that signed this leaf. The registry compares it with
	// ActiveRootID to know when a rotation makes the leaf due for replacement. Not sent.
	RootID string `json:"-"`
	// IssuedAt is when the CA signed the leaf: its lifetime, LeafCertTTL, counts from here
	// (ValidAfter is backdated for clock skew). Renewal is due at RenewalTime(IssuedAt,
	// ValidBefore, ...). Not sent; zero in a leaf decoded from JSON, where ValidAfter is the
	// best there is.
	IssuedAt time.Time `json:"-"`
}

// Roots returns the trust bundle: every root not yet pruned, oldest first, exactly one of
// them Active.
func (c *CA) Roots() RootList {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := RootList{ActiveRootID: c.active.id, TrustDomain: c.trustDomain, Roots: make([]Root, 0, len(c.roots))}
	for _, r := range c.roots {
		var ims []string
		if len(r.intermediates) > 0 {
			ims = append([]string(nil), r.intermediates...)
		}
		out.Roots = append(out.Roots, Root{
			ID:                  r.id,
			Name:                RootName,
			SerialNumber:        r.serial,
			SigningKeyID:        HexString(r.keyID),
			ExternalTrustDomain: strings.TrimSuffix(c.trustDomain, ".consul"),
			NotBefore:           r.cert.NotBefore.UTC(),
			NotAfter:            r.cert.NotAfter.UTC(),
			RootCert:            r.certPEM,
			IntermediateCerts:   ims,
			Active:              r == c.active,
			PrivateKeyType:      PrivateKeyType,
			PrivateKeyBits:      PrivateKeyBits,
		})
	}
	return out
}

// PEM returns the roots as one concatenated PEM bundle, the body of ?pem=true.
func (l RootList) PEM() string {
	var b strings.Builder
	for _, r := range l.Roots {
		b.WriteString(r.RootCert)
		if !strings.HasSuffix(r.RootCert, "\n") {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// Configuration is the body of GET /v1/connect/ca/configuration. CreateIndex and ModifyIndex
// are the registry's to fill.
type Configuration struct {
	Provider                 string
	Config                   map[string]any
	State                    map[string]string
	ForceWithoutCrossSigning bool
	CreateIndex              uint64
	ModifyIndex              uint64
}

// Configuration returns the CA configuration view for the built-in ("consul") provider.
func (c *CA) Configuration() Configuration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Configuration{Provider: "consul", Config: c.cfg.ProviderConfig()}
}

// RenewalTime returns when a leaf living from validAfter to validBefore should be replaced: at
// a random point between 60% and 90% of its lifetime, as Consul's agent does, so that many
// sidecars do not renew at once. Pass the leaf's IssuedAt as validAfter when it is known:
// ValidAfter is backdated for clock skew, which would move the renewal earlier than the
// leaf's real lifetime calls for. rnd returns a number in [0, 1); nil means math/rand/v2.
func RenewalTime(validAfter, validBefore time.Time, rnd func() float64) time.Time {
	life := validBefore.Sub(validAfter)
	if life <= 0 {
		return validAfter
	}
	if rnd == nil {
		rnd = rand.Float64
	}
	f := rnd()
	if f < 0 {
		f = 0
	}
	if f > 1 {
		f = 1
	}
	frac := 0.6 + 0.3*f
	return validAfter.Add(time.Duration(float64(life) * frac))
}
