package registry_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/registry"
	"github.com/podmesh/podmesh/registry/checks"
	"github.com/podmesh/podmesh/registry/state"
)

// testRegistry is a registry served on loopback: store, check runner, API.
type testRegistry struct {
	URL    string // http://127.0.0.1:port
	Addr   string // 127.0.0.1:port
	Store  *state.Store
	Server *registry.Server
	Checks *checks.Manager
	Client *api.Client
	// baseWatchers is the number of topics watched with no query waiting: the check
	// runner's own watch and the CA maintenance loop's (Server.Run).
	baseWatchers int
}

type regOptions struct {
	token               string
	policy              string // default intention policy
	leafTTL             time.Duration
	dir                 string
	checkUpdateInterval time.Duration
	checks              checks.Config
	maxBody, maxKV      int64
}

func startRegistry(t *testing.T, mods ...func(*regOptions)) *testRegistry {
	t.Helper()
	return startRegistryB(t, mods...)
}

func startRegistryB(t testing.TB, mods ...func(*regOptions)) *testRegistry {
	t.Helper()
	o := regOptions{dir: t.TempDir(), checkUpdateInterval: -1}
	for _, m := range mods {
		m(&o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	store, err := state.Open(ctx, state.Options{Dir: o.dir, NodeName: "node1", CheckUpdateInterval: o.checkUpdateInterval,
		CA: state.CAOptions{LeafCertTTL: o.leafTTL}})
	if err != nil {
		t.Fatalf("state.Open: %v", err)
	}
	var srv *registry.Server
	cc := o.checks
	cc.Store = store
	cc.OnRun = func(kind, result string) { srv.CountCheckRun(kind, result) }
	mgr, err := checks.New(cc)
	if err != nil {
		t.Fatal(err)
	}
	srv, err = registry.New(registry.Config{Store: store, Checks: mgr, ACLToken: o.token, MaxBodyBytes: o.maxBody,
		MaxKVValueBytes: o.maxKV, DefaultIntentionPolicy: o.policy})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		mgr.Run(ctx)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		srv.Run(ctx)
	}()
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
		cancel()
		<-done
		<-done
		store.Close()
	})
	cfg := api.DefaultConfig()
	cfg.Address = hs.Listener.Addr().String()
	cfg.Token = o.token
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The check runner watches state.TopicAgentChecks once it runs, Server.Run the CA
	// configuration.
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		if store.Watchers() != 2 {
			return fmt.Errorf("check runner and CA maintenance not watching yet")
		}
		return nil
	})
	return &testRegistry{URL: hs.URL, Addr: hs.Listener.Addr().String(), Store: store, Server: srv, Checks: mgr, Client: client, baseWatchers: 2}
}

// do sends a raw request and returns the status, headers and body.
func (r *testRegistry) do(t *testing.T, method, path, body string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(testutil.Context(t, 30*time.Second), method, r.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
