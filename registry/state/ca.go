package state

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/podmesh/podmesh/tls/ca"
	"github.com/podmesh/podmesh/tls/spiffe"
)

// The mesh certificate authority. The store owns the CA (package tls/ca) so that every change
// to it is durable before anyone sees its result: a leaf is handed out only after the serial
// counter that numbered it is on disk, and a new root is published (TopicCARoots) in the same
// transaction that stores it. Leaf issuance holds caMu shared, so leaves are issued and
// committed concurrently (group commit); rotation, configuration changes and pruning hold it
// exclusively, and if their commit fails the CA is restored to its state before the change.

// CAOptions configure the mesh CA on the store's first start; later starts load the stored CA.
type CAOptions struct {
	// ClusterID is the cluster's ID; the trust domain is "<cluster-id>.consul". Empty: the
	// stored one, or a random UUID on first start. A ClusterID different from the stored one
	// is an error (the trust domain of a CA cannot change).
	ClusterID string
	// LeafCertTTL is the leaf lifetime the CA starts with (ca.DefaultLeafCertTTL when zero).
	// It applies only when the CA is created; later changes go through SetCAConfig.
	LeafCertTTL time.Duration
}

// ProviderConsul is the only CA provider: the built-in one, which Consul calls "consul".
const ProviderConsul = "consul"

// CAConfig is the mesh CA's configuration as GET /v1/connect/ca/configuration shows it.
type CAConfig struct {
	Provider string
	// Config is the built-in provider's effective configuration (durations, key type and
	// size), with "PrivateKey" when the operator set one, as Consul shows it.
	Config                   map[string]any
	ForceWithoutCrossSigning bool
	// PrivateKey is the root key the operator configured (PEM), "" when the registry makes
	// its own root keys. A change of it rotates the root, as in Consul.
	PrivateKey  string `json:",omitempty"`
	CreateIndex uint64
	ModifyIndex uint64
}

func (c *CAConfig) contentJSON() []byte {
	b, _ := json.Marshal(struct {
		Provider                 string
		Config                   map[string]any
		ForceWithoutCrossSigning bool
		PrivateKey               string
	}{c.Provider, c.Config, c.ForceWithoutCrossSigning, c.PrivateKey})
	return b
}

// CAConfigUpdate is a validated PUT /v1/connect/ca/configuration.
type CAConfigUpdate struct {
	// Config holds the durations; zero fields take ca's defaults (the configuration is
	// replaced, not merged, as in Consul).
	Config ca.Config
	// PrivateKey is the operator's root key as sent (PEM) and Key the same key parsed; both
	// empty when the registry is to make its own keys.
	PrivateKey               string
	Key                      *ecdsa.PrivateKey
	ForceWithoutCrossSigning bool
}

// caRecord is the CA as stored: its serialization (keys and serial counter included), the
// published trust bundle with the registry's indexes, and the configuration view.
type caRecord struct {
	state  []byte
	roots  *ca.RootList
	config *CAConfig
}

// Keys of the "ca" bucket.
var (
	caKeyState  = []byte("state")
	caKeyRoots  = []byte("roots")
	caKeyConfig = []byte("config")
)

// ParseCAPrivateKey reads an operator's root key: a PEM "EC PRIVATE KEY" (SEC 1) or
// "PRIVATE KEY" (PKCS #8) block holding an ECDSA P-256 key, the only kind of root this
// registry makes.
func ParseCAPrivateKey(s string) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		return nil, errors.New("no PEM block found")
	}
	var key any
	var err error
	switch b.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q: want EC PRIVATE KEY or PRIVATE KEY", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", b.Type, err)
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%T key: only ECDSA P-256 keys are supported", key)
	}
	if ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("ECDSA %s key: only P-256 is supported", ek.Curve.Params().Name)
	}
	return ek, nil
}

// configView builds the configuration GET /v1/connect/ca/configuration shows.
func configView(c *ca.CA, privateKey string, force bool) *CAConfig {
	m := c.Config().ProviderConfig()
	if privateKey != "" {
		m["PrivateKey"] = privateKey
	}
	// Round-trip through JSON so the values are what a reload reads back (numbers as
	// float64), and equal configurations compare equal before and after a restart.
	if b, err := json.Marshal(m); err == nil {
		m2 := map[string]any{}
		if json.Unmarshal(b, &m2) == nil {
			m = m2
		}
	}
	return &CAConfig{Provider: ProviderConsul, Config: m, ForceWithoutCrossSigning: force, PrivateKey: privateKey}
}

// ensureCA loads the stored CA, or creates one on first start.
func (s *Store) ensureCA(ctx context.Context) error {
	now := s.opts.Clock.Now
	if rec := s.st.ca; rec != nil {
		c, err := ca.Load(rec.state, now)
		if err != nil {
			return fmt.Errorf("state: load the mesh CA: %w", err)
		}
		if id := s.opts.CA.ClusterID; id != "" && id != c.ClusterID() {
			return fmt.Errorf("state: cluster ID %q differs from the stored %q (the trust domain %s cannot change)", id, c.ClusterID(), c.TrustDomain())
		}
		s.ca = c
		return nil
	}
	id := s.opts.CA.ClusterID
	if id == "" {
		id = newUUID()
	}
	c, err := ca.New(id, ca.Config{LeafCertTTL: s.opts.CA.LeafCertTTL, Now: now})
	if err != nil {
		return fmt.Errorf("state: create the mesh CA: %w", err)
	}
	s.ca = c
	_, err = s.writeCA(ctx, c, configView(c, "", false))
	return err
}

// TrustDomain is the mesh CA's trust domain, "<cluster-id>.consul".
func (s *Store) TrustDomain() string {
	s.caMu.RLock()
	defer s.caMu.RUnlock()
	return s.ca.TrustDomain()
}

// ClusterID is the cluster ID the trust domain derives from.
func (s *Store) ClusterID() string {
	s.caMu.RLock()
	defer s.caMu.RUnlock()
	return s.ca.ClusterID()
}

// writeCA stores and publishes c as it is when the commit runs: its serialization, its trust
// bundle (raising TopicCARoots when the bundle changed) and, when cfg is set, the
// configuration (raising TopicCAConfig when it changed). It returns the write's index.
func (s *Store) writeCA(ctx context.Context, c *ca.CA, cfg *CAConfig) (uint64, error) {
	var idx uint64
	err := s.write(ctx, func(tx *Txn) error {
		data, err := c.Marshal()
		if err != nil {
			return err
		}
		old := tx.getCA()
		rec := &caRecord{state: data}
		var oldRoots *ca.RootList
		if old != nil {
			oldRoots, rec.config = old.roots, old.config
		}
		var changed bool
		rec.roots, changed = indexRoots(oldRoots, c.Roots(), tx.Index())
		if changed {
			tx.bump(TopicCARoots)
		}
		if cfg != nil && (rec.config == nil || !bytes.Equal(cfg.contentJSON(), rec.config.contentJSON())) {
			nc := *cfg
			nc.CreateIndex, nc.ModifyIndex = tx.Index(), tx.Index()
			if rec.config != nil {
				nc.CreateIndex = rec.config.CreateIndex
			}
			rec.config = &nc
			tx.bump(TopicCAConfig)
		}
		tx.putCA(rec)
		idx = tx.Index()
		return nil
	})
	return idx, err
}

// indexRoots gives each root of next its Create/ModifyIndex: a root already published keeps
// its CreateIndex, and its ModifyIndex too unless it changed (became inactive, lost its
// cross-signed intermediate); new roots get idx. It returns old itself when nothing changed.
func indexRoots(old *ca.RootList, next ca.RootList, idx uint64) (*ca.RootList, bool) {
	changed := old == nil || old.ActiveRootID != next.ActiveRootID || old.TrustDomain != next.TrustDomain ||
		len(old.Roots) != len(next.Roots)
	prev := map[string]*ca.Root{}
	if old != nil {
		for i := range old.Roots {
			prev[old.Roots[i].ID] = &old.Roots[i]
		}
	}
	for i := range next.Roots {
		r := &next.Roots[i]
		if !changed && old.Roots[i].ID != r.ID {
			changed = true
		}
		o := prev[r.ID]
		if o == nil {
			r.CreateIndex, r.ModifyIndex = idx, idx
			changed = true
			continue
		}
		r.CreateIndex, r.ModifyIndex = o.CreateIndex, o.ModifyIndex
		if o.Active != r.Active || o.RootCert != r.RootCert || !slices.Equal(o.IntermediateCerts, r.IntermediateCerts) {
			r.ModifyIndex = idx
			changed = true
		}
	}
	if !changed {
		return old, false
	}
	return &next, true
}

// IssueLeaf issues a leaf certificate (with its private key) for service in the local
// datacenter and the CA's trust domain. It returns only once the CA's serial counter is on
// disk, so no serial is ever reused after a restart; the leaf's CreateIndex and ModifyIndex
// are the index of that write.
func (s *Store) IssueLeaf(ctx context.Context, service string) (*ca.LeafCert, error) {
	s.caMu.RLock()
	defer s.caMu.RUnlock()
	c := s.ca
	id := c.ServiceID(s.opts.Datacenter, service)
	if err := id.Validate(); err != nil {
		return nil, invalid("service", "%q cannot be named in a certificate: %v", service, err)
	}
	leaf, err := c.IssueLeaf(id)
	if err != nil {
		return nil, fmt.Errorf("state: issue leaf for %q: %w", service, err)
	}
	idx, err := s.writeCA(ctx, c, nil)
	if err != nil {
		return nil, err
	}
	leaf.CreateIndex, leaf.ModifyIndex = idx, idx
	return leaf, nil
}

// ServiceID is the identity a leaf for service carries.
func (s *Store) ServiceID(service string) spiffe.ServiceID {
	s.caMu.RLock()
	defer s.caMu.RUnlock()
	return s.ca.ServiceID(s.opts.Datacenter, service)
}

// changeCA runs change on the CA with leaf issuance stopped, then, when change asks for it,
// stores and publishes the result with cfg (nil: the configuration is unchanged). If change or
// the commit fails, the CA is restored to what it was, so memory never runs ahead of the disk.
func (s *Store) changeCA(ctx context.Context, change func(c *ca.CA) (cfg *CAConfig, write bool, err error)) error {
	s.caMu.Lock()
	defer s.caMu.Unlock()
	before, err := s.ca.Marshal()
	if err != nil {
		return err
	}
	restore := func() {
		c, err := ca.Load(before, s.opts.Clock.Now)
		if err != nil {
			s.log.Error("restoring the mesh CA after a failed change failed; keeping the changed one", "err", err)
			return
		}
		s.ca = c
	}
	cfg, write, err := change(s.ca)
	if err != nil {
		restore()
		return err
	}
	if !write {
		return nil
	}
	if _, err := s.writeCA(ctx, s.ca, cfg); err != nil {
		restore()
		return err
	}
	return nil
}

// rotateLocked rotates c over the configured root key, or a new one when none is configured.
func rotateLocked(c *ca.CA, cfg *CAConfig) (string, error) {
	if cfg != nil && cfg.PrivateKey != "" {
		key, err := ParseCAPrivateKey(cfg.PrivateKey)
		if err != nil {
			return "", fmt.Errorf("state: rotate: configured PrivateKey: %w", err)
		}
		return c.RotateWithKey(key)
	}
	return c.Rotate()
}

func (s *Store) caConfig() (cfg *CAConfig) {
	s.View(func(v *View) { cfg = v.CAConfig() })
	return cfg
}

// RotateCA makes a new root the active one and returns its ID. The new root is cross-signed
// by the old one, which stays in the trust bundle until MaintainCA prunes it. With a
// configured PrivateKey the new root is made over that key.
func (s *Store) RotateCA(ctx context.Context) (string, error) {
	var id string
	err := s.changeCA(ctx, func(c *ca.CA) (*CAConfig, bool, error) {
		var err error
		id, err = rotateLocked(c, s.caConfig())
		return nil, true, err
	})
	return id, err
}

// SetCAConfig replaces the CA's configuration. As in Consul, a change of the operator's root
// key (PrivateKey set, changed or removed) rotates the root; other changes (lifetimes) apply
// to the leaves issued from now on. It returns the new active root's ID when it rotated.
func (s *Store) SetCAConfig(ctx context.Context, u *CAConfigUpdate) (rotatedTo string, err error) {
	if (u.PrivateKey == "") != (u.Key == nil) {
		return "", invalid("PrivateKey", "the PEM and the parsed key must be given together")
	}
	err = s.changeCA(ctx, func(c *ca.CA) (*CAConfig, bool, error) {
		cur := s.caConfig()
		if err := c.SetConfig(u.Config); err != nil {
			return nil, false, &InvalidError{Field: "Config", Msg: err.Error()}
		}
		rotate := cur == nil || cur.PrivateKey != u.PrivateKey
		view := configView(c, u.PrivateKey, u.ForceWithoutCrossSigning)
		if !rotate && cur != nil && bytes.Equal(view.contentJSON(), cur.contentJSON()) {
			return nil, false, nil // the same configuration: nothing to write
		}
		if rotate {
			var err error
			if u.Key != nil {
				rotatedTo, err = c.RotateWithKey(u.Key)
			} else {
				rotatedTo, err = c.Rotate()
			}
			if err != nil {
				return nil, false, err
			}
		}
		return view, true, nil
	})
	if err != nil {
		rotatedTo = ""
	}
	return rotatedTo, err
}

// MaintainCA rotates the root when it is older than RotationPeriod and prunes the roots that
// no valid leaf can chain to any more (and expired cross-signed intermediates), publishing the
// result. It returns the new active root's ID when it rotated and the IDs of removed roots.
func (s *Store) MaintainCA(ctx context.Context) (rotatedTo string, removed []string, err error) {
	err = s.changeCA(ctx, func(c *ca.CA) (*CAConfig, bool, error) {
		if c.RotationDue() {
			id, err := rotateLocked(c, s.caConfig())
			if err != nil {
				return nil, false, err
			}
			rotatedTo = id
		}
		removed = c.Prune()
		var published *ca.RootList
		s.View(func(v *View) { published = v.CARoots() })
		_, changed := indexRoots(published, c.Roots(), 0)
		return nil, changed, nil
	})
	if err != nil {
		return "", nil, err
	}
	return rotatedTo, removed, nil
}

// InitialLeafCertTTL is the leaf lifetime the CA was configured to start with
// (Options.CA.LeafCertTTL, ca.DefaultLeafCertTTL when zero): what a configuration that leaves
// LeafCertTTL out gets.
func (s *Store) InitialLeafCertTTL() time.Duration {
	if d := s.opts.CA.LeafCertTTL; d > 0 {
		return d
	}
	return ca.DefaultLeafCertTTL
}

// CAConfigOf returns the CA's configuration with defaults applied (durations), for callers
// that schedule maintenance.
func (s *Store) CAConfigOf() ca.Config {
	s.caMu.RLock()
	defer s.caMu.RUnlock()
	return s.ca.Config()
}

// CARoots returns the published trust bundle (nil before the CA exists). It is immutable.
func (v *View) CARoots() *ca.RootList {
	if v.st.ca == nil {
		return nil
	}
	return v.st.ca.roots
}

// CAConfig returns the published CA configuration (nil before the CA exists). It is
// immutable.
func (v *View) CAConfig() *CAConfig {
	if v.st.ca == nil {
		return nil
	}
	return v.st.ca.config
}
