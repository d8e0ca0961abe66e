// Package meshtest is a registry with a Connect CA for tests: an HTTP server that answers
// the Consul endpoints of the mesh's certificate authority and intentions itself, from a
// real tls/ca CA and tls/authz, and passes every other request (catalog, health, agent
// services and checks) on to a real Consul agent or Podmesh registry. A sidecar pointed at
// it works as against a Consul agent, but leaves can live for seconds (Consul's minimum is
// an hour) and a test can reach the CA's keys to forge certificates.
//
// Served here, with blocking queries on one index as Consul does:
//
//	GET  /v1/agent/connect/ca/roots, /v1/connect/ca/roots
//	GET  /v1/agent/connect/ca/leaf/SERVICE   a new leaf at 60–90% of the old one's life, or
//	                                         at once after a root rotation
//	GET  /v1/connect/ca/configuration
//	PUT  /v1/connect/ca/configuration        LeafCertTTL and the other durations; a new
//	                                         Config.PrivateKey rotates the root, as it does
//	                                         in Consul (the fake makes its own key)
//	GET  /v1/connect/intentions/match, GET/PUT/DELETE /v1/connect/intentions/exact
//
// Every answer carries X-Consul-Default-ACL-Policy (SetDefaultPolicy).
package meshtest

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/tls/authz"
	"github.com/podmesh/podmesh/tls/ca"
)

// Datacenter is the datacenter named in the leaves' SPIFFE IDs.
const Datacenter = "dc1"

// Registry is the fake. Start it with Start; it stops when the test ends.
type Registry struct {
	t   testing.TB
	ca  *ca.CA
	srv *httptest.Server

	mu         sync.Mutex
	index      uint64
	changed    chan struct{} // closed and replaced at every change
	rootsIndex uint64
	roots      ca.RootList
	leaves     map[string]*leaf
	ixnIndex   uint64
	intentions []*authz.Intention
	policy     string
	cfgIndex   uint64
	requests   map[string]int // by endpoint, for tests

	closing chan struct{}
	wg      sync.WaitGroup
}

type leaf struct {
	cert    *ca.LeafCert
	renewAt time.Time
}

// Start runs a fake registry with a fresh CA whose leaves live leafTTL (72h when zero).
// Requests it does not serve itself go to catalog (an agent's URL); with catalog empty they
// get 404.
func Start(t testing.TB, catalog string, leafTTL time.Duration) *Registry {
	t.Helper()
	c, err := ca.New(fmt.Sprintf("%08x-0000-4000-8000-000000000000", time.Now().UnixNano()&0xffffffff),
		ca.Config{LeafCertTTL: leafTTL})
	if err != nil {
		t.Fatal(err)
	}
	r := &Registry{t: t, ca: c, index: 1, changed: make(chan struct{}), rootsIndex: 1, ixnIndex: 1, cfgIndex: 1,
		roots: c.Roots(), leaves: map[string]*leaf{}, policy: "allow", requests: map[string]int{},
		closing: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/agent/connect/ca/roots", r.serveRoots)
	mux.HandleFunc("GET /v1/connect/ca/roots", r.serveRoots)
	mux.HandleFunc("GET /v1/agent/connect/ca/leaf/{service}", r.serveLeaf)
	mux.HandleFunc("GET /v1/connect/ca/configuration", r.serveConfig)
	mux.HandleFunc("PUT /v1/connect/ca/configuration", r.putConfig)
	mux.HandleFunc("GET /v1/connect/intentions/match", r.serveMatch)
	mux.HandleFunc("/v1/connect/intentions/exact", r.serveExact)
	// The rest of Connect is not faked, and must not reach the catalog's own CA.
	notHere := func(w http.ResponseWriter, req *http.Request) {
		http.Error(w, "meshtest: "+req.Method+" "+req.URL.Path+" is not served by the fake", http.StatusNotFound)
	}
	mux.HandleFunc("/v1/connect/", notHere)
	mux.HandleFunc("/v1/agent/connect/", notHere)
	if catalog != "" {
		u, err := url.Parse(catalog)
		if err != nil {
			t.Fatalf("meshtest: catalog %q: %v", catalog, err)
		}
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.ErrorLog = log.New(io.Discard, "", 0) // blocking queries cut at the end of a test
		mux.Handle("/", rp)
	}
	r.srv = httptest.NewServer(mux)
	r.wg.Add(1)
	go r.prune()
	t.Cleanup(r.close)
	return r
}

func (r *Registry) close() {
	close(r.closing)
	r.srv.CloseClientConnections()
	r.srv.Close()
	r.wg.Wait()
}

// URL returns the registry's address, for a sidecar's -registry.
func (r *Registry) URL() string { return r.srv.URL }

// Client returns a consul/api client for the registry.
func (r *Registry) Client() *api.Client {
	c, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(r.srv.URL, "http://")})
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// CA returns the certificate authority, to issue certificates outside the registry.
func (r *Registry) CA() *ca.CA { return r.ca }

// TrustDomain returns the mesh's trust domain.
func (r *Registry) TrustDomain() string { return r.ca.TrustDomain() }

// Requests returns how many requests an endpoint ("roots", "leaf", "match") has answered.
func (r *Registry) Requests(endpoint string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests[endpoint]
}

// SetDefaultPolicy sets X-Consul-Default-ACL-Policy ("allow" or "deny") and wakes the
// intention queries, which carry it.
func (r *Registry) SetDefaultPolicy(p string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.policy = p
	r.ixnIndex = r.bumpLocked()
}

// Rotate makes a new root the active one and publishes the bundle; every leaf is replaced
// at its next query.
func (r *Registry) Rotate() string {
	id, err := r.ca.Rotate()
	if err != nil {
		r.t.Fatalf("meshtest: rotate: %v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.publishRootsLocked()
	return id
}

// RootKey returns the active root's certificate and key, to forge leaves that chain to the
// mesh's root but break another rule.
func (r *Registry) RootKey() (*x509.Certificate, *ecdsa.PrivateKey) {
	b, err := r.ca.Marshal()
	if err != nil {
		r.t.Fatal(err)
	}
	var st struct {
		ActiveRootID string `json:"active_root_id"`
		Roots        []struct {
			ID      string `json:"id"`
			CertPEM string `json:"cert_pem"`
			KeyPEM  string `json:"key_pem"`
		} `json:"roots"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		r.t.Fatal(err)
	}
	for _, root := range st.Roots {
		if root.ID != st.ActiveRootID {
			continue
		}
		cb, _ := pem.Decode([]byte(root.CertPEM))
		kb, _ := pem.Decode([]byte(root.KeyPEM))
		if cb == nil || kb == nil {
			break
		}
		cert, err := x509.ParseCertificate(cb.Bytes)
		if err != nil {
			r.t.Fatal(err)
		}
		key, err := x509.ParseECPrivateKey(kb.Bytes)
		if err != nil {
			r.t.Fatal(err)
		}
		return cert, key
	}
	r.t.Fatal("meshtest: no active root in the CA state")
	return nil, nil
}

func (r *Registry) bumpLocked() uint64 {
	r.index++
	close(r.changed)
	r.changed = make(chan struct{})
	return r.index
}

func (r *Registry) publishRootsLocked() {
	roots := r.ca.Roots()
	r.rootsIndex = r.bumpLocked()
	for i := range roots.Roots {
		roots.Roots[i].CreateIndex, roots.Roots[i].ModifyIndex = r.rootsIndex, r.rootsIndex
	}
	r.roots = roots
}

// prune drops the roots no leaf can chain to any more, as the registry's CA would.
func (r *Registry) prune() {
	defer r.wg.Done()
	tick := time.NewTicker(250 * time.Millisecond) // the leaf lifetime may change at any time
	defer tick.Stop()
	for {
		select {
		case <-r.closing:
			return
		case <-tick.C:
		}
		if len(r.ca.Prune()) > 0 {
			r.mu.Lock()
			r.publishRootsLocked()
			r.mu.Unlock()
		}
	}
}

// query reads ?index= and ?wait= (5 minutes when absent, at most 10).
func query(req *http.Request) (uint64, time.Duration) {
	q := req.URL.Query()
	idx, _ := strconv.ParseUint(q.Get("index"), 10, 64)
	wait := 5 * time.Minute
	if s := q.Get("wait"); s != "" {
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			wait = min(d, 10*time.Minute)
		}
	}
	return idx, wait
}

// waitLocked releases r.mu until something changes, until passes, or the client leaves,
// and takes it again. It returns false when the client left or the registry is closing.
func (r *Registry) waitLocked(req *http.Request, until time.Time) bool {
	ch := r.changed
	r.mu.Unlock()
	defer r.mu.Lock()
	t := time.NewTimer(max(time.Until(until), 0))
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-req.Context().Done():
		return false
	case <-r.closing:
		return false
	}
	return true
}

// blockLocked waits, r.mu held, while current() is still idx (a blocking query), at most
// wait. It returns false when the client left.
func (r *Registry) blockLocked(req *http.Request, idx uint64, wait time.Duration, current func() uint64) bool {
	deadline := time.Now().Add(wait)
	for idx != 0 && current() == idx && time.Now().Before(deadline) {
		if !r.waitLocked(req, deadline) {
			return false
		}
	}
	return true
}

func (r *Registry) reply(w http.ResponseWriter, idx uint64, body any) {
	r.mu.Lock()
	policy := r.policy
	r.mu.Unlock()
	h := w.Header()
	h.Set("X-Consul-Index", strconv.FormatUint(max(idx, 1), 10))
	h.Set("X-Consul-LastContact", "0")
	h.Set("X-Consul-KnownLeader", "true")
	h.Set("X-Consul-Default-ACL-Policy", policy)
	h.Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(body); err != nil {
		r.t.Logf("meshtest: encode: %v", err)
	}
}

func (r *Registry) serveRoots(w http.ResponseWriter, req *http.Request) {
	idx, wait := query(req)
	r.mu.Lock()
	r.requests["roots"]++
	if !r.blockLocked(req, idx, wait, func() uint64 { return r.rootsIndex }) {
		r.mu.Unlock()
		return
	}
	body, out := r.roots, r.rootsIndex
	r.mu.Unlock()
	r.reply(w, out, body)
}

// serveLeaf answers the current leaf for the service, issuing a new one when there is none,
// when its renewal time has come, or when it was signed by a root that is no longer active.
func (r *Registry) serveLeaf(w http.ResponseWriter, req *http.Request) {
	svc := req.PathValue("service")
	idx, wait := query(req)
	deadline := time.Now().Add(wait)
	r.mu.Lock()
	r.requests["leaf"]++
	for {
		l, err := r.currentLeafLocked(svc)
		if err != nil {
			r.mu.Unlock()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if idx == 0 || l.cert.ModifyIndex != idx || !time.Now().Before(deadline) {
			body := *l.cert
			r.mu.Unlock()
			r.reply(w, body.ModifyIndex, body)
			return
		}
		until := deadline
		if l.renewAt.Before(until) {
			until = l.renewAt
		}
		if !r.waitLocked(req, until) {
			r.mu.Unlock()
			return
		}
	}
}

func (r *Registry) currentLeafLocked(svc string) (*leaf, error) {
	l := r.leaves[svc]
	if l != nil && time.Now().Before(l.renewAt) && l.cert.RootID == r.ca.ActiveRootID() {
		return l, nil
	}
	c, err := r.ca.IssueLeaf(r.ca.ServiceID(Datacenter, svc))
	if err != nil {
		return nil, err
	}
	i := r.bumpLocked()
	c.CreateIndex, c.ModifyIndex = i, i
	l = &leaf{cert: c, renewAt: ca.RenewalTime(c.ValidAfter, c.ValidBefore, nil)}
	r.leaves[svc] = l
	return l, nil
}

func (r *Registry) serveConfig(w http.ResponseWriter, _ *http.Request) {
	r.mu.Lock()
	idx := r.cfgIndex
	r.mu.Unlock()
	c := r.ca.Configuration()
	c.CreateIndex, c.ModifyIndex = 1, idx
	r.reply(w, idx, c)
}

// putConfig takes consul/api's CASetConfig body. A PrivateKey in Config rotates the root, as
// Consul does when given a new key; the fake ignores the key itself and makes its own.
func (r *Registry) putConfig(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Provider string
		Config   map[string]any
	}
	if err := json.NewDecoder(io.LimitReader(req.Body, 1<<20)).Decode(&body); err != nil {
		http.Error(w, "decode CA configuration: "+err.Error(), http.StatusBadRequest)
		return
	}
	if body.Provider != "" && body.Provider != "consul" {
		http.Error(w, fmt.Sprintf("provider %q: only consul", body.Provider), http.StatusBadRequest)
		return
	}
	rotate := false
	raw := map[string]any{}
	for k, v := range body.Config {
		switch strings.ToLower(k) {
		case "privatekey", "private_key":
			rotate = v != ""
		case "privatekeytype", "privatekeybits", "private_key_type", "private_key_bits":
			// ec 256 is all the CA makes; Consul clients send these along.
		default:
			raw[k] = v
		}
	}
	cfg, err := ca.ParseProviderConfig(raw, r.ca.Config())
	if err == nil {
		err = r.ca.SetConfig(cfg)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if rotate {
		if _, err := r.ca.Rotate(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	r.mu.Lock()
	r.cfgIndex = r.bumpLocked()
	if rotate {
		r.publishRootsLocked()
	}
	r.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (r *Registry) serveMatch(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	idx, wait := query(req)
	r.mu.Lock()
	r.requests["match"]++
	if !r.blockLocked(req, idx, wait, func() uint64 { return r.ixnIndex }) {
		r.mu.Unlock()
		return
	}
	out := map[string][]*authz.Intention{}
	for _, name := range q["name"] {
		m, err := authz.Match(r.intentions, authz.MatchType(q.Get("by")), name)
		if err != nil {
			r.mu.Unlock()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		out[name] = m
	}
	i := r.ixnIndex
	r.mu.Unlock()
	r.reply(w, i, out)
}

// serveExact is GET, PUT and DELETE /v1/connect/intentions/exact?source=&destination=.
func (r *Registry) serveExact(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	src, dst := q.Get("source"), q.Get("destination")
	if src == "" || dst == "" {
		http.Error(w, "source and destination are required", http.StatusBadRequest)
		return
	}
	find := func() int {
		for i, x := range r.intentions {
			if x.SourceName == src && x.DestinationName == dst {
				return i
			}
		}
		return -1
	}
	switch req.Method {
	case http.MethodGet:
		r.mu.Lock()
		i, idx := find(), r.ixnIndex
		var x *authz.Intention
		if i >= 0 {
			x = r.intentions[i]
		}
		r.mu.Unlock()
		if x == nil {
			http.NotFound(w, req)
			return
		}
		r.reply(w, idx, x)
	case http.MethodPut:
		var x authz.Intention
		if err := json.NewDecoder(io.LimitReader(req.Body, 1<<20)).Decode(&x); err != nil {
			http.Error(w, "decode intention: "+err.Error(), http.StatusBadRequest)
			return
		}
		x.SourceName, x.DestinationName = src, dst
		x.SetDefaults()
		x.UpdatePrecedence()
		if err := x.Validate(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		next := append([]*authz.Intention(nil), r.intentions...)
		if i := find(); i >= 0 {
			next[i] = &x
		} else {
			next = append(next, &x)
		}
		r.intentions = next
		r.ixnIndex = r.bumpLocked()
		x.CreateIndex, x.ModifyIndex = r.ixnIndex, r.ixnIndex
		r.mu.Unlock()
		io.WriteString(w, "true")
	case http.MethodDelete:
		r.mu.Lock()
		if i := find(); i >= 0 {
			r.intentions = append(append([]*authz.Intention(nil), r.intentions[:i]...), r.intentions[i+1:]...)
			r.ixnIndex = r.bumpLocked()
		}
		r.mu.Unlock()
		io.WriteString(w, "true")
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}
