package state

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/podmesh/podmesh/tls/authz"
)

// Intentions, as Consul 1.14 keeps them: one per (source, destination) pair. Those written
// through PUT /v1/connect/intentions/exact have no ID and no timestamps (Consul keeps them in
// service-intentions config entries); those created through the deprecated
// POST /v1/connect/intentions get an ID, CreatedAt, UpdatedAt and a Hash. Rows are immutable
// once stored. Every change raises TopicIntentions and the by-destination and by-source
// topics of the old and new names, and nothing else.

// ConflictError is a write that would create a second intention for a source/destination
// pair.
type ConflictError struct {
	Field string
	Msg   string
}

func (e *ConflictError) Error() string { return e.Field + ": " + e.Msg }

// intentionKey identifies an intention by its pair.
func intentionKey(x *authz.Intention) string {
	return pairKey(x.SourceNS, x.SourceName, x.DestinationNS, x.DestinationName)
}

func pairKey(srcNS, src, dstNS, dst string) string {
	if srcNS == "" {
		srcNS = authz.DefaultNamespace
	}
	if dstNS == "" {
		dstNS = authz.DefaultNamespace
	}
	return srcNS + "/" + src + "\x00" + dstNS + "/" + dst
}

// prepareIntention copies x, applies the defaults and validates it, as the authz contract
// requires before storing. Validation errors are an *InvalidError naming the first bad field
// and carrying every failed check.
func prepareIntention(x *authz.Intention) (*authz.Intention, error) {
	cp, err := cloneIntention(x)
	if err != nil {
		return nil, err
	}
	cp.SetDefaults()
	if err := cp.Validate(); err != nil {
		field := "Intention"
		var fe *authz.FieldError
		if errors.As(err, &fe) {
			field = fe.Field
		}
		return nil, &InvalidError{Field: field, Msg: err.Error()}
	}
	cp.CreateIndex, cp.ModifyIndex = 0, 0
	return cp, nil
}

// cloneIntention deep-copies an intention (maps, permissions), so a stored row never shares
// memory with a caller.
func cloneIntention(x *authz.Intention) (*authz.Intention, error) {
	b, err := json.Marshal(x)
	if err != nil {
		return nil, fmt.Errorf("state: copy intention: %w", err)
	}
	cp := new(authz.Intention)
	if err := json.Unmarshal(b, cp); err != nil {
		return nil, fmt.Errorf("state: copy intention: %w", err)
	}
	return cp, nil
}

// intentionContent is what a change of an intention is judged by (not indexes, timestamps
// or the hash).
func intentionContent(x *authz.Intention) []byte {
	b, _ := json.Marshal(struct {
		ID, Description, SourceNS, SourceName, DestinationNS, DestinationName string
		SourceType                                                            authz.SourceType
		Action                                                                authz.Action
		Permissions                                                           []*authz.Permission
		Meta                                                                  map[string]string
		Precedence                                                            int
	}{x.ID, x.Description, x.SourceNS, x.SourceName, x.DestinationNS, x.DestinationName,
		x.SourceType, x.Action, x.Permissions, x.Meta, x.Precedence})
	return b
}

func intentionHash(x *authz.Intention) []byte {
	sum := sha256.Sum256(intentionContent(x))
	return sum[:]
}

// stamp finishes an intention about to replace old (nil: new): it keeps the identity and
// creation time, and for ID-bearing intentions sets UpdatedAt and the Hash.
func (s *Store) stamp(x, old *authz.Intention) {
	if old != nil {
		if x.ID == "" {
			x.ID = old.ID
		}
		x.CreatedAt = old.CreatedAt
	}
	if x.ID != "" {
		now := s.opts.Clock.Now().UTC()
		if x.CreatedAt.IsZero() {
			x.CreatedAt = now
		}
		x.UpdatedAt = now
		x.Hash = intentionHash(x)
	} else {
		x.CreatedAt, x.UpdatedAt, x.Hash = time.Time{}, time.Time{}, nil
	}
}

// PutIntentionExact creates or replaces the intention for x's source and destination, as
// PUT /v1/connect/intentions/exact: the caller's ID, timestamps, precedence, hash and indexes
// are ignored. An intention created through the legacy API keeps its ID.
func (s *Store) PutIntentionExact(ctx context.Context, x *authz.Intention) error {
	nx, err := prepareIntention(x)
	if err != nil {
		return err
	}
	nx.ID = ""
	return s.write(ctx, func(tx *Txn) error {
		old := tx.getIntention(intentionKey(nx))
		if old != nil && old.ID != "" {
			nx.ID = old.ID
		}
		if old != nil && bytes.Equal(intentionContent(old), intentionContent(nx)) {
			return nil // unchanged: raise nothing
		}
		s.stamp(nx, old)
		tx.putIntention(nx, old)
		return nil
	})
}

// CreateIntention stores a new intention with a new ID, as the deprecated
// POST /v1/connect/intentions; a second intention for the same pair is a *ConflictError.
func (s *Store) CreateIntention(ctx context.Context, x *authz.Intention) (string, error) {
	nx, err := prepareIntention(x)
	if err != nil {
		return "", err
	}
	nx.ID = newUUID()
	err = s.write(ctx, func(tx *Txn) error {
		if old := tx.getIntention(intentionKey(nx)); old != nil {
			return duplicate(old)
		}
		s.stamp(nx, nil)
		tx.putIntention(nx, nil)
		return nil
	})
	if err != nil {
		return "", err
	}
	return nx.ID, nil
}

func duplicate(old *authz.Intention) error {
	id := ""
	if old.ID != "" {
		id = " (ID " + old.ID + ")"
	}
	return &ConflictError{Field: "SourceName/DestinationName", Msg: fmt.Sprintf(
		"an intention from %s/%s to %s/%s already exists%s", old.SourceNS, old.SourceName, old.DestinationNS, old.DestinationName, id)}
}

// UpdateIntention replaces the intention with the ID (the deprecated
// PUT /v1/connect/intentions/ID); its source and destination may change, but not onto a pair
// another intention has. A missing ID is a *NotFoundError.
func (s *Store) UpdateIntention(ctx context.Context, id string, x *authz.Intention) error {
	nx, err := prepareIntention(x)
	if err != nil {
		return err
	}
	nx.ID = id
	return s.write(ctx, func(tx *Txn) error {
		old := tx.getIntentionByID(id)
		if old == nil {
			return &NotFoundError{Kind: "intention", ID: id}
		}
		if other := tx.getIntention(intentionKey(nx)); other != nil && other != old {
			return duplicate(other)
		}
		if bytes.Equal(intentionContent(old), intentionContent(nx)) {
			return nil
		}
		s.stamp(nx, old)
		if intentionKey(old) != intentionKey(nx) {
			tx.deleteIntention(old)
			nx.CreatedAt = old.CreatedAt
			tx.putIntention(nx, nil)
			nx.CreateIndex = old.CreateIndex
			return nil
		}
		tx.putIntention(nx, old)
		return nil
	})
}

// DeleteIntentionExact removes the intention for the pair; a missing one is not an error (as
// Consul answers true).
func (s *Store) DeleteIntentionExact(ctx context.Context, srcNS, src, dstNS, dst string) error {
	return s.write(ctx, func(tx *Txn) error {
		if old := tx.getIntention(pairKey(srcNS, src, dstNS, dst)); old != nil {
			tx.deleteIntention(old)
		}
		return nil
	})
}

// DeleteIntention removes the intention with the ID; a missing one is a *NotFoundError.
func (s *Store) DeleteIntention(ctx context.Context, id string) error {
	return s.write(ctx, func(tx *Txn) error {
		old := tx.getIntentionByID(id)
		if old == nil {
			return &NotFoundError{Kind: "intention", ID: id}
		}
		tx.deleteIntention(old)
		return nil
	})
}

// Intentions returns every intention in evaluation order (precedence, then names).
func (v *View) Intentions() []*authz.Intention {
	out := make([]*authz.Intention, 0, len(v.st.intentions))
	for _, x := range v.st.intentions {
		out = append(out, x)
	}
	authz.Sort(out)
	return out
}

// IntentionCount is the number of intentions.
func (v *View) IntentionCount() int { return len(v.st.intentions) }

// IntentionExact returns the intention for the pair, or nil.
func (v *View) IntentionExact(srcNS, src, dstNS, dst string) *authz.Intention {
	return v.st.intentions[pairKey(srcNS, src, dstNS, dst)]
}

// IntentionByID returns the intention with the ID, or nil.
func (v *View) IntentionByID(id string) *authz.Intention {
	if k, ok := v.st.ixnByID[id]; ok {
		return v.st.intentions[k]
	}
	return nil
}

// IntentionsByDestination returns the intentions whose destination name is name or "*", in
// no particular order: the candidates a match by destination filters (authz.Match).
func (v *View) IntentionsByDestination(name string) []*authz.Intention {
	return collect(v.st.ixnByDst, name)
}

// IntentionsBySource is IntentionsByDestination for the source name.
func (v *View) IntentionsBySource(name string) []*authz.Intention {
	return collect(v.st.ixnBySrc, name)
}

func collect(idx map[string]map[string]*authz.Intention, name string) []*authz.Intention {
	exact, wild := idx[name], idx[authz.Wildcard]
	out := make([]*authz.Intention, 0, len(exact)+len(wild))
	for _, x := range exact {
		out = append(out, x)
	}
	if name != authz.Wildcard {
		for _, x := range wild {
			out = append(out, x)
		}
	}
	return out
}

// Txn side.

func (tx *Txn) getIntention(key string) *authz.Intention {
	return get(tx.intentions, tx.base.intentions, key)
}

func (tx *Txn) getIntentionByID(id string) *authz.Intention {
	for _, x := range tx.intentions {
		if x != nil && x.ID == id {
			return x
		}
	}
	k, ok := tx.base.ixnByID[id]
	if !ok {
		return nil
	}
	if x, ok := tx.intentions[k]; ok {
		if x != nil && x.ID == id {
			return x
		}
		return nil
	}
	return tx.base.intentions[k]
}

func (tx *Txn) bumpIntention(x *authz.Intention) {
	tx.bump(TopicIntentions)
	tx.bump(TopicIntentionsByDestination(x.DestinationName))
	tx.bump(TopicIntentionsBySource(x.SourceName))
}

// putIntention stores x (a fresh row) in place of old (nil: new), with indexes.
func (tx *Txn) putIntention(x, old *authz.Intention) {
	x.CreateIndex, x.ModifyIndex = tx.Index(), tx.Index()
	if old != nil {
		x.CreateIndex = old.CreateIndex
		tx.bumpIntention(old)
	}
	set(tx, tx.intentions, intentionKey(x), x)
	tx.bumpIntention(x)
}

func (tx *Txn) deleteIntention(old *authz.Intention) {
	set(tx, tx.intentions, intentionKey(old), nil)
	tx.bumpIntention(old)
}

// memState side.

func (st *memState) indexIntention(key string, x *authz.Intention) {
	if x.ID != "" {
		st.ixnByID[x.ID] = key
	}
	for _, p := range []struct {
		m    map[string]map[string]*authz.Intention
		name string
	}{{st.ixnByDst, x.DestinationName}, {st.ixnBySrc, x.SourceName}} {
		b := p.m[p.name]
		if b == nil {
			b = map[string]*authz.Intention{}
			p.m[p.name] = b
		}
		b[key] = x
	}
}

func (st *memState) unindexIntention(key string, x *authz.Intention) {
	if x.ID != "" && st.ixnByID[x.ID] == key {
		delete(st.ixnByID, x.ID)
	}
	for _, p := range []struct {
		m    map[string]map[string]*authz.Intention
		name string
	}{{st.ixnByDst, x.DestinationName}, {st.ixnBySrc, x.SourceName}} {
		if b := p.m[p.name]; b != nil {
			delete(b, key)
			if len(b) == 0 {
				delete(p.m, p.name)
			}
		}
	}
}
