package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// registryBinary builds cmd/registry once per test run.
func registryBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "registry-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "registry")
		gobin, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("go toolchain not on PATH: %w", err)
			return
		}
		out, err := exec.Command(gobin, "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

type proc struct {
	cmd     *exec.Cmd
	addr    string
	out     *bytes.Buffer
	done    chan struct{} // closed when the process has exited
	waitErr error
}

func startProc(t *testing.T, dataDir string, extra ...string) *proc {
	t.Helper()
	addr := testutil.FreePort(t)
	args := append([]string{"-http", addr, "-data", dataDir, "-node", "crash-test", "-log-level", "warn"}, extra...)
	cmd := exec.Command(registryBinary(t), args...)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, addr: addr, out: out, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("registry output:\n%s", out.String())
		}
	})
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		resp, err := http.Get("http://" + addr + "/v1/agent/self")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return p
}

var client = &http.Client{Timeout: 10 * time.Second}

func put(url, body string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestKill9KeepsAcknowledgedWrites is acceptance 4 (and issue 4's persistence): writers stream
// agent registrations, KV puts, intention upserts and leaf certificate requests while the
// registry is killed with SIGKILL; after a restart on the same data directory every write
// that was acknowledged with a 200 is there, indexes keep rising, the CA has the same roots
// and keys (every leaf handed out still verifies) and its serial numbers keep rising.
func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, dir, "-leaf-cert-ttl", "1h")
	base := "http://" + p.addr
	rootsBefore := getRoots(t, base)

	type ack struct {
		kind, id, value string
	}
	var mu sync.Mutex
	var acked []ack
	var wg sync.WaitGroup
	stop := make(chan struct{})
	const writers = 8
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ { // bounded; the kill ends it long before
				select {
				case <-stop:
					return
				default:
				}
				var a ack
				var code int
				var body string
				var err error
				switch {
				case w == 0: // leaves for ever new services: each one is issued
					a = ack{"leaf", fmt.Sprintf("leaf-%d", i), ""}
					var l leafJSON
					code, l, err = getLeaf(base, a.id)
					a.value = l.CertPEM
				case w == 1 && i%2 == 0:
					a = ack{"ixn", fmt.Sprintf("src-%d", i), []string{"allow", "deny"}[i%4/2]}
					code, body, err = put(base+"/v1/connect/intentions/exact?source="+a.id+"&destination=db", `{"Action":"`+a.value+`"}`)
					if err == nil && body != "true\n" {
						err = fmt.Errorf("intention put answered %q", body)
					}
				case i%2 == 0:
					a = ack{"kv", fmt.Sprintf("crash/%d/%d", w, i), fmt.Sprintf("value-%d-%d", w, i)}
					code, body, err = put(base+"/v1/kv/"+a.id, a.value)
					if err == nil && body != "true\n" {
						err = fmt.Errorf("kv put answered %q", body)
					}
				default:
					a = ack{"svc", fmt.Sprintf("svc-%d-%d", w, i), ""}
					reg := fmt.Sprintf(`{"ID":%q,"Name":"crash-%d","Port":%d,"Check":{"TTL":"10m"}}`, a.id, w, 1000+i)
					code, _, err = put(base+"/v1/agent/service/register", reg)
				}
				if err != nil || code != 200 {
					return // the registry is gone
				}
				mu.Lock()
				acked = append(acked, a)
				mu.Unlock()
			}
		}()
	}
	// Kill it mid-stream, once a good number of writes are through.
	testutil.Eventually(t, 20*time.Second, 5*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 400 {
			return fmt.Errorf("%d writes acknowledged", len(acked))
		}
		return nil
	})
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	close(stop)
	wg.Wait()
	mu.Lock()
	final := append([]ack(nil), acked...)
	mu.Unlock()
	t.Logf("%d writes acknowledged before SIGKILL", len(final))

	p2 := startProc(t, dir)
	base = "http://" + p2.addr
	resp, err := client.Get(base + "/v1/agent/services")
	if err != nil {
		t.Fatal(err)
	}
	var svcs map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&svcs); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = client.Get(base + "/v1/kv/crash/?recurse")
	if err != nil {
		t.Fatal(err)
	}
	var pairs []struct {
		Key         string
		Value       []byte
		ModifyIndex uint64
	}
	if err := json.NewDecoder(resp.Body).Decode(&pairs); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	kv := map[string]string{}
	var maxIndex uint64
	for _, p := range pairs {
		kv[p.Key] = string(p.Value)
		maxIndex = max(maxIndex, p.ModifyIndex)
	}
	// The CA is the same: same trust domain and roots (keys included, as every leaf handed
	// out still verifies), and serials continue above every one handed out.
	rootsAfter := getRoots(t, base)
	if rootsAfter.TrustDomain != rootsBefore.TrustDomain || rootsAfter.ActiveRootID != rootsBefore.ActiveRootID ||
		len(rootsAfter.Roots) != 1 || rootsAfter.Roots[0].RootCert != rootsBefore.Roots[0].RootCert {
		t.Fatalf("roots changed across SIGKILL:\nbefore %+v\nafter  %+v", rootsBefore, rootsAfter)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(rootsAfter.Roots[0].RootCert))
	ixns := getIntentions(t, base)
	var maxSerial uint64
	leaves := 0
	missing := 0
	for _, a := range final {
		switch a.kind {
		case "leaf":
			leaves++
			cert := parseCert(t, a.value)
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Errorf("leaf for %s handed out before SIGKILL no longer verifies: %v", a.id, err)
			}
			maxSerial = max(maxSerial, cert.SerialNumber.Uint64())
		case "ixn":
			if got := ixns[a.id]; got != a.value {
				missing++
				t.Errorf("acknowledged intention %s -> db %s lost (have %q)", a.id, a.value, got)
			}
		case "kv":
			if kv[a.id] != a.value {
				missing++
				t.Errorf("acknowledged KV %s = %q lost (have %q)", a.id, a.value, kv[a.id])
			}
		case "svc":
			if _, ok := svcs[a.id]; !ok {
				missing++
				t.Errorf("acknowledged service %s lost", a.id)
			}
		}
		if missing > 10 {
			t.Fatal("too many lost writes")
		}
	}
	if leaves == 0 {
		t.Fatal("no leaf was handed out before SIGKILL")
	}
	code, l, err := getLeaf(base, "after-restart")
	if err != nil || code != 200 {
		t.Fatalf("leaf after restart: %d %v", code, err)
	}
	if sn := parseCert(t, l.CertPEM).SerialNumber.Uint64(); sn <= maxSerial {
		t.Fatalf("serial %d after restart, not above the %d handed out before SIGKILL", sn, maxSerial)
	}
	t.Logf("%d leaves and %d intentions acknowledged before SIGKILL; serials continue above %d", leaves, len(ixns), maxSerial)
	// Indexes keep rising from where they were.
	code, body, err := put(base+"/v1/kv/after-restart", "x")
	if err != nil || code != 200 || body != "true\n" {
		t.Fatalf("write after restart: %d %q %v", code, body, err)
	}
	resp, err = client.Get(base + "/v1/kv/after-restart")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	idx, _ := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if idx <= maxIndex {
		t.Fatalf("index after restart %d, not above the acknowledged %d", idx, maxIndex)
	}
}

type rootsJSON struct {
	ActiveRootID string
	TrustDomain  string
	Roots        []struct{ ID, RootCert string }
}

func getRoots(t *testing.T, base string) rootsJSON {
	t.Helper()
	resp, err := client.Get(base + "/v1/connect/ca/roots")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var l rootsJSON
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		t.Fatal(err)
	}
	return l
}

type leafJSON struct {
	SerialNumber string
	CertPEM      string
}

func getLeaf(base, service string) (int, leafJSON, error) {
	var l leafJSON
	resp, err := client.Get(base + "/v1/agent/connect/ca/leaf/" + service)
	if err != nil {
		return 0, l, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return resp.StatusCode, l, nil
	}
	err = json.NewDecoder(resp.Body).Decode(&l)
	return resp.StatusCode, l, err
}

// getIntentions returns the action of each intention to db by source.
func getIntentions(t *testing.T, base string) map[string]string {
	t.Helper()
	resp, err := client.Get(base + "/v1/connect/intentions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list []struct{ SourceName, DestinationName, Action string }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, x := range list {
		if x.DestinationName == "db" {
			out[x.SourceName] = x.Action
		}
	}
	return out
}

func parseCert(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("no PEM in %.40q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestGracefulShutdown: SIGTERM answers blocked queries at once and exits 0.
func TestGracefulShutdown(t *testing.T) {
	p := startProc(t, t.TempDir())
	res := make(chan int, 1)
	go func() {
		resp, err := client.Get("http://" + p.addr + "/v1/health/service/web?index=1&wait=5m")
		if err != nil {
			res <- 0
			return
		}
		resp.Body.Close()
		res <- resp.StatusCode
	}()
	time.Sleep(100 * time.Millisecond) // let the query block
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case <-p.done:
		if p.waitErr != nil {
			t.Fatalf("exit: %v", p.waitErr)
		}
	case <-timer.C:
		t.Fatal("registry did not exit within 10s of SIGTERM")
	}
	if code := <-res; code != 200 {
		t.Fatalf("blocked query got %d on shutdown, want 200", code)
	}
	t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
}

func TestFlags(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("from-file\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(c config) error
	}{
		{"defaults", nil, "", func(c config) error {
			if c.httpAddr != "127.0.0.1:8500" || c.dc != "dc1" || c.advertise != "127.0.0.1" || c.node == "" || c.dataDir == "" {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}},
		{"advertise from -http", []string{"-http", "10.1.2.3:8500"}, "", func(c config) error {
			if c.advertise != "10.1.2.3" {
				return fmt.Errorf("advertise %q", c.advertise)
			}
			return nil
		}},
		{"wildcard -http", []string{"-http", "0.0.0.0:8500"}, "", func(c config) error {
			if c.advertise != "127.0.0.1" {
				return fmt.Errorf("advertise %q", c.advertise)
			}
			return nil
		}},
		{"token file", []string{"-acl-token-file", tokenFile}, "", func(c config) error {
			if c.aclToken != "from-file" {
				return fmt.Errorf("token %q", c.aclToken)
			}
			return nil
		}},
		{"both tokens", []string{"-acl-token", "a", "-acl-token-file", tokenFile}, "exclusive", nil},
		{"missing token file", []string{"-acl-token-file", "/nonexistent/token"}, "-acl-token-file", nil},
		{"bad http", []string{"-http", "nonsense"}, "-http", nil},
		{"empty node", []string{"-node", ""}, "-node", nil},
		{"bad max body", []string{"-max-body", "0"}, "-max-body", nil},
		{"extra args", []string{"extra"}, "unexpected arguments", nil},
		{"connect defaults", nil, "", func(c config) error {
			if c.intentionPolicy != "allow" || c.leafCertTTL != 72*time.Hour || c.leafCertTTLSet || c.clusterID != "" {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}},
		{"connect flags", []string{"-default-intention-policy", "deny", "-leaf-cert-ttl", "5s", "-cluster-id", "11111111-2222-3333-4444-555555555555"}, "", func(c config) error {
			if c.intentionPolicy != "deny" || c.leafCertTTL != 5*time.Second || !c.leafCertTTLSet || c.clusterID != "11111111-2222-3333-4444-555555555555" {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}},
		{"bad intention policy", []string{"-default-intention-policy", "maybe"}, "-default-intention-policy", nil},
		{"leaf ttl too short", []string{"-leaf-cert-ttl", "10ms"}, "-leaf-cert-ttl", nil},
		{"leaf ttl negative", []string{"-leaf-cert-ttl", "-1h"}, "-leaf-cert-ttl", nil},
		{"bad cluster id", []string{"-cluster-id", "Not/Valid"}, "-cluster-id", nil},
		{"self-registration by default", nil, "", func(c config) error {
			if !c.selfRegister {
				return fmt.Errorf("selfRegister false by default")
			}
			return nil
		}},
		{"no self-registration", []string{"-self-register=false"}, "", func(c config) error {
			if c.selfRegister {
				return fmt.Errorf("-self-register=false ignored")
			}
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseFlags(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.check(c); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestConnectFlags: what the sidecar's tests rely on when they run this binary: -leaf-cert-ttl
// in seconds, -cluster-id as the trust domain (kept in -data, so a different one later is
// refused), and -default-intention-policy in every response's header.
func TestConnectFlags(t *testing.T) {
	dir := t.TempDir()
	const id = "11111111-2222-3333-4444-555555555555"
	p := startProc(t, dir, "-leaf-cert-ttl", "5s", "-cluster-id", id, "-default-intention-policy", "deny")
	base := "http://" + p.addr
	if l := getRoots(t, base); l.TrustDomain != id+".consul" {
		t.Fatalf("trust domain %q", l.TrustDomain)
	}
	asked := time.Now()
	code, l, err := getLeaf(base, "web")
	if err != nil || code != 200 {
		t.Fatalf("leaf: %d %v", code, err)
	}
	// 5s from the issue, rounded up to the second (only NotBefore is backdated).
	if c := parseCert(t, l.CertPEM); c.NotAfter.Sub(asked) < 5*time.Second || c.NotAfter.Sub(asked) > 7*time.Second {
		t.Fatalf("leaf valid until %v, asked at %v: want 5s from its issue", c.NotAfter, asked)
	}
	resp, err := client.Get(base + "/v1/connect/intentions/match?by=destination&name=web")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Consul-Default-ACL-Policy"); got != "deny" {
		t.Fatalf("X-Consul-Default-ACL-Policy %q", got)
	}
	p.cmd.Process.Kill()
	<-p.done

	out, err := exec.Command(registryBinary(t), "-http", testutil.FreePort(t), "-data", dir, "-node", "crash-test",
		"-cluster-id", "22222222-2222-3333-4444-555555555555").CombinedOutput()
	if err == nil || !strings.Contains(string(out), id) {
		t.Fatalf("restart with another -cluster-id: %v\n%s", err, out)
	}
	p2 := startProc(t, dir)
	if l := getRoots(t, "http://"+p2.addr); l.TrustDomain != id+".consul" {
		t.Fatalf("trust domain after restart without -cluster-id: %q", l.TrustDomain)
	}
}

// selfInstances returns the podmesh-registry instances in the catalog of the registry at base.
func selfInstances(t *testing.T, base string) []catalogService {
	t.Helper()
	resp, err := client.Get(base + "/v1/catalog/service/podmesh-registry")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []catalogService
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("decode /v1/catalog/service/podmesh-registry: %v", err)
	}
	return out
}

type catalogService struct {
	ServiceID      string
	ServiceAddress string
	ServicePort    int
	ServiceMeta    map[string]string
}

// TestSelfRegistration: the registry is in its own catalog as podmesh-registry at its address
// with meta metrics_port, where its /metrics answers (what Prometheus' consul_sd_configs
// needs to scrape it); a restart on another port moves the one instance, and
// -self-register=false removes it.
func TestSelfRegistration(t *testing.T) {
	dir := t.TempDir()
	for round := range 2 { // the second start is on another port, with the same data
		p := startProc(t, dir)
		_, port, _ := strings.Cut(p.addr, ":")
		got := selfInstances(t, "http://"+p.addr)
		if len(got) != 1 {
			t.Fatalf("round %d: %d podmesh-registry instances, want 1: %+v", round, len(got), got)
		}
		in := got[0]
		if in.ServiceID != "podmesh-registry-crash-test" || in.ServiceAddress != "127.0.0.1" ||
			strconv.Itoa(in.ServicePort) != port || in.ServiceMeta["metrics_port"] != port {
			t.Fatalf("round %d: instance %+v, want podmesh-registry-crash-test at %s with metrics_port %s", round, in, p.addr, port)
		}
		resp, err := client.Get("http://" + in.ServiceAddress + ":" + in.ServiceMeta["metrics_port"] + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "podmesh_registry_http_requests_total") {
			t.Fatalf("metrics_port serves no registry metrics: %d %.200s", resp.StatusCode, b)
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		<-p.done
	}
	p := startProc(t, dir, "-self-register=false")
	if got := selfInstances(t, "http://"+p.addr); len(got) != 0 {
		t.Fatalf("-self-register=false left %+v", got)
	}
}
