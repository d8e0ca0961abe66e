package identity

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/backoff"
	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/tls/authz"
	"github.com/podmesh/podmesh/tls/ca"
	"github.com/podmesh/podmesh/tls/spiffe"
)

// fakeRegistry serves the three Consul endpoints a Source uses, from a real ca.CA, with
// blocking queries on one global index. What it publishes lags the CA until the test says
// so, which lets a test order a rotation's steps (new leaves before new roots, and so on).
type fakeRegistry struct {
	t   testing.TB
	ca  *ca.CA
	srv *httptest.Server

	mu         sync.Mutex
	index      uint64
	changed    chan struct{}
	roots      ca.RootList
	leaves     map[string]*ca.LeafCert
	intentions []*authz.Intention
	policy     string // X-Consul-Default-ACL-Policy; "" sends none

	fail    atomic.Bool // answer 500 to everything
	closing chan struct{}
}

func newFake(t testing.TB, c *ca.CA) *fakeRegistry {
	f := &fakeRegistry{t: t, ca: c, index: 1, changed: make(chan struct{}), roots: c.Roots(),
		leaves: map[string]*ca.LeafCert{}, policy: "allow", closing: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		close(f.closing)
		f.srv.Close()
	})
	return f
}

func (f *fakeRegistry) client() *api.Client {
	c, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(f.srv.URL, "http://")})
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// bumpLocked publishes a change: a higher index and a wake-up for blocked queries.
func (f *fakeRegistry) bumpLocked() {
	f.index++
	close(f.changed)
	f.changed = make(chan struct{})
}

// PublishRoots makes the CA's current trust bundle visible.
func (f *fakeRegistry) PublishRoots() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.roots = f.ca.Roots()
	f.bumpLocked()
}

// IssueLeaf signs and publishes a new leaf for service.
func (f *fakeRegistry) IssueLeaf(service string) *ca.LeafCert {
	l, err := f.ca.IssueLeaf(f.ca.ServiceID("dc1", service))
	if err != nil {
		f.t.Fatal(err)
	}
	f.SetLeaf(service, l)
	return l
}

// SetLeaf publishes the given leaf for service.
func (f *fakeRegistry) SetLeaf(service string, l *ca.LeafCert) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leaves[service] = l
	f.bumpLocked()
}

// SetIntentions publishes a new intention list and default policy.
func (f *fakeRegistry) SetIntentions(policy string, ixns ...*authz.Intention) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, x := range ixns {
		x.SetDefaults()
	}
	f.intentions, f.policy = ixns, policy
	f.bumpLocked()
}

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request) {
	if f.fail.Load() {
		http.Error(w, "registry unavailable", http.StatusInternalServerError)
		return
	}
	q := r.URL.Query()
	idx, _ := strconv.ParseUint(q.Get("index"), 10, 64)
	wait := 5 * time.Minute
	if s := q.Get("wait"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			wait = d
		}
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
wait:
	for {
		f.mu.Lock()
		cur, ch := f.index, f.changed
		f.mu.Unlock()
		if idx == 0 || cur > idx {
			break
		}
		select {
		case <-ch:
		case <-timer.C:
			break wait
		case <-r.Context().Done():
			return
		case <-f.closing:
			return
		}
		if f.fail.Load() {
			http.Error(w, "registry unavailable", http.StatusInternalServerError)
			return
		}
	}
	f.mu.Lock()
	var body any
	switch {
	case r.URL.Path == "/v1/agent/connect/ca/roots":
		body = f.roots
	case strings.HasPrefix(r.URL.Path, "/v1/agent/connect/ca/leaf/"):
		svc := strings.TrimPrefix(r.URL.Path, "/v1/agent/connect/ca/leaf/")
		l := f.leaves[svc]
		if l == nil {
			var err error
			if l, err = f.ca.IssueLeaf(f.ca.ServiceID("dc1", svc)); err != nil {
				f.mu.Unlock()
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			f.leaves[svc] = l
		}
		body = l
	case r.URL.Path == "/v1/connect/intentions/match":
		out := map[string][]*authz.Intention{}
		for _, name := range q["name"] {
			m, err := authz.Match(f.intentions, authz.MatchType(q.Get("by")), name)
			if err != nil {
				f.mu.Unlock()
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			out[name] = m
		}
		body = out
	default:
		f.mu.Unlock()
		http.NotFound(w, r)
		return
	}
	idxOut, policy := f.index, f.policy
	f.mu.Unlock()
	w.Header().Set("X-Consul-Index", strconv.FormatUint(idxOut, 10))
	w.Header().Set("X-Consul-LastContact", "0")
	w.Header().Set("X-Consul-KnownLeader", "true")
	if policy != "" {
		w.Header().Set("X-Consul-Default-ACL-Policy", policy)
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(body); err != nil {
		f.t.Errorf("fake registry: encode: %v", err)
	}
}

// startSource runs a Source for service against client until the test ends, and waits until
// it is ready.
func startSource(t testing.TB, client *api.Client, service string, mod ...func(*Config)) *Source {
	t.Helper()
	cfg := Config{Client: client, Service: service, WaitTime: 10 * time.Second,
		Backoff: backoff.Waiter{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}}
	for _, m := range mod {
		m(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case <-s.Ready():
	case <-timer.C:
		t.Fatalf("source for %q not ready: %+v", service, s.Stats())
	}
	return s
}

// echoServer accepts TLS connections with cfg and echoes lines back. Handshake errors are
// sent on errs. It stops at the end of the test.
type echoServer struct {
	addr string
	errs chan error
	// peers receives the client identity of every successful handshake.
	peers chan tls.ConnectionState
}

func startEcho(t testing.TB, cfg *tls.Config) *echoServer {
	t.Helper()
	e := &echoServer{errs: make(chan error, 1000), peers: make(chan tls.ConnectionState, 1000)}
	e.addr = testutil.ServeTCP(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			select {
			case e.errs <- err:
			default:
			}
			return
		}
		_ = c.SetDeadline(time.Time{})
		select {
		case e.peers <- tc.ConnectionState():
		default:
		}
		br := bufio.NewReader(tc)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := io.WriteString(tc, line); err != nil {
				return
			}
		}
	})
	return e
}

// dial connects with cfg, completes the handshake and one echo round trip.
func dial(addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	if err := roundTrip(c, "hello"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func roundTrip(c *tls.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != msg+"\n" {
		return fmt.Errorf("echo %q, want %q", line, msg)
	}
	return nil
}

// serverErr waits for the server side's handshake error.
func serverErr(t testing.TB, e *echoServer) error {
	t.Helper()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case err := <-e.errs:
		return err
	case <-timer.C:
		t.Fatal("server reported no handshake error")
		return nil
	}
}

// rootKey extracts the active root's certificate and key from a CA's serialized state, to
// forge certificates that chain to the mesh's root but break another rule.
func rootKey(t testing.TB, c *ca.CA) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
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
		t.Fatal(err)
	}
	for _, r := range st.Roots {
		if r.ID != st.ActiveRootID {
			continue
		}
		cb, _ := pem.Decode([]byte(r.CertPEM))
		kb, _ := pem.Decode([]byte(r.KeyPEM))
		cert, err := x509.ParseCertificate(cb.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		key, err := x509.ParseECPrivateKey(kb.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}
	t.Fatal("no active root in state")
	return nil, nil
}

// forge signs a leaf with the given parent for the given URI SAN ("" for no SAN, "dns:" for
// a DNS SAN instead), valid now.
func forge(t testing.TB, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, uri string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	switch uri {
	case "": // no SAN at all
	case "dns:":
		tmpl.DNSNames = []string{"web.example"}
	default:
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// leafPair turns a LeafCert into a tls.Certificate.
func leafPair(t testing.TB, l *ca.LeafCert) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair([]byte(l.CertPEM), []byte(l.PrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// clientWith returns a bare TLS 1.3 client config presenting cert (nil for none).
func clientWith(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// settable is a clock tests can move.
type settable struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *settable) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *settable) Set(off time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off = off
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		if cond() {
			return nil
		}
		return errors.New(what)
	})
}

var _ = spiffe.ServiceID{}
