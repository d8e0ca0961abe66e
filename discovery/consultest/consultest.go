// Package consultest runs a Consul-compatible registry for tests, on loopback ports of its
// own. Each test says which registry it needs:
//
//   - StartRegistry (and StartMainRegistry for a package's shared one, from TestMain) runs
//     Podmesh's own registry. Tests of the sidecar's and discovery's behaviour (load
//     balancing, resilience, mTLS rotation, intention changes) use it: it is the registry
//     Podmesh ships, and it takes leaf lifetimes of seconds, which Consul refuses.
//   - StartConsul (and StartMainConsul) runs a real Consul v1.14.0 dev agent from
//     testutil.Tool(t, "consul") (the Makefile builds it). Tests whose point is that Podmesh
//     works unchanged against Consul use it.
//
// The registry binary is PODMESH_TEST_REGISTRY_BIN when set, otherwise one built from
// ./cmd/registry the first time a test binary needs it, into a temporary directory: a
// package that starts registries calls RemoveBuilt at the end of its TestMain.
//
// A restarted Consul dev agent comes back empty; Podmesh's registry keeps its data directory
// across Restart, as it would across a real restart.
package consultest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podmesh/podmesh/internal/testutil"
)

// RegistryBinEnv names an already built registry binary to use instead of building one.
const RegistryBinEnv = "PODMESH_TEST_REGISTRY_BIN"

// Kinds of Agent.
const (
	KindRegistry = "podmesh-registry"
	KindConsul   = "consul-v1.14.0"
)

// Agent is a running (or stopped) registry or Consul dev agent on loopback.
type Agent struct {
	kind  string
	bin   string
	dir   string
	ports [4]int // http, serf lan, serf wan, server (only http for the registry)
	Addr  string // host:port of the HTTP API

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// Kind returns KindRegistry or KindConsul.
func (a *Agent) Kind() string { return a.kind }

// StartRegistry runs Podmesh's registry and waits until it answers. It is stopped when the
// test ends.
func StartRegistry(t testing.TB) *Agent {
	t.Helper()
	bin, err := RegistryBinary()
	if err != nil {
		t.Fatal(err)
	}
	a, err := start(KindRegistry, bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

// StartConsul runs a real Consul v1.14.0 dev agent and waits until it has a leader. It is
// stopped when the test ends; without the consul binary the test is skipped (or fails under
// PODMESH_REQUIRE_TOOLS=1).
func StartConsul(t testing.TB) *Agent {
	t.Helper()
	bin := testutil.Tool(t, "consul")
	a, err := start(KindConsul, bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

// StartMainRegistry runs Podmesh's registry for a whole test package, keeping its files in
// dir. TestMain must Stop it, and call RemoveBuilt.
func StartMainRegistry(dir string) (*Agent, error) {
	bin, err := RegistryBinary()
	if err != nil {
		return nil, err
	}
	return start(KindRegistry, bin, dir)
}

// StartMainConsul runs a Consul dev agent for a whole test package, keeping its files in dir.
// It returns nil and a reason when the consul binary is missing (testutil.Tool's lookup,
// without a testing.TB). TestMain must Stop it.
func StartMainConsul(dir string) (*Agent, string, error) {
	bin := os.Getenv("PODMESH_CONSUL_BIN")
	if bin == "" {
		home, _ := os.UserHomeDir()
		bin = filepath.Join(home, ".cache", "podmesh", "bin", "consul-v1.14.0")
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, "consul not built (set PODMESH_CONSUL_BIN or run `make tools`)", nil
	}
	a, err := start(KindConsul, bin, dir)
	return a, "", err
}

var built struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// RegistryBinary returns the path of the registry binary: PODMESH_TEST_REGISTRY_BIN, or one
// built from ./cmd/registry (once per test binary; it takes a few seconds with a warm build
// cache).
func RegistryBinary() (string, error) {
	if bin := os.Getenv(RegistryBinEnv); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("consultest: %s: %w", RegistryBinEnv, err)
		}
		return bin, nil
	}
	built.once.Do(func() {
		removeStaleBuilds()
		built.dir, built.err = os.MkdirTemp("", builtPrefix)
		if built.err != nil {
			return
		}
		built.bin = filepath.Join(built.dir, "registry")
		cmd := exec.Command("go", "build", "-o", built.bin, "github.com/podmesh/podmesh/cmd/registry")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("consultest: build the registry (go build ./cmd/registry): %w\n%s", err, out)
		}
	})
	return built.bin, built.err
}

// RemoveBuilt removes the registry binary RegistryBinary built, if any. Call it at the end of
// TestMain.
func RemoveBuilt() {
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
}

const builtPrefix = "consultest-registry-"

// removeStaleBuilds removes the builds of test binaries that did not get to RemoveBuilt
// (killed by a timeout, say): any older than a test run can last.
func removeStaleBuilds() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), builtPrefix+"*"))
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > 2*time.Hour {
			os.RemoveAll(d)
		}
	}
}

func start(kind, bin, dir string) (*Agent, error) {
	// Free ports are only free until somebody else takes them (other tests share the
	// machine): try a few sets.
	var err error
	for range 3 {
		a := &Agent{kind: kind, bin: bin, dir: dir}
		for i := range a.ports {
			p, perr := freePort()
			if perr != nil {
				return nil, perr
			}
			a.ports[i] = p
		}
		a.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports[0]))
		if err = a.Restart(); err == nil {
			return a, nil
		}
		a.Kill()
	}
	return nil, err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Restart starts the agent again on the same ports (after Stop or Kill). A Consul dev agent
// keeps its state in memory, so it comes back empty, like a registry that lost its data;
// Podmesh's registry comes back with everything it acknowledged.
func (a *Agent) Restart() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return fmt.Errorf("consultest: agent already running")
	}
	var cmd *exec.Cmd
	switch a.kind {
	case KindRegistry:
		cmd = exec.Command(a.bin, "-http", a.Addr, "-data", filepath.Join(a.dir, "registry-data"),
			"-node", "podmesh-test", "-advertise", "127.0.0.1", "-log-level", "warn")
	default:
		cmd = exec.Command(a.bin, "agent", "-dev", "-node", "podmesh-test",
			"-bind", "127.0.0.1", "-client", "127.0.0.1",
			"-http-port", strconv.Itoa(a.ports[0]),
			"-serf-lan-port", strconv.Itoa(a.ports[1]),
			"-serf-wan-port", strconv.Itoa(a.ports[2]),
			"-server-port", strconv.Itoa(a.ports[3]),
			"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
			"-log-level", "warn")
	}
	logPath := filepath.Join(a.dir, a.kind+".log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("consultest: start %s: %w", a.bin, err)
	}
	a.cmd = cmd
	exited := make(chan struct{})
	a.exited = exited
	go func() { _ = cmd.Wait(); close(exited) }()
	client, err := a.clientLocked()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		leader, err := client.Status().Leader()
		if err == nil && leader != "" {
			// The node must also be registered for service registration to work.
			if _, _, err := client.Catalog().Node("podmesh-test", nil); err == nil {
				return nil
			}
		}
		select {
		case <-exited:
			err = fmt.Errorf("exited")
			deadline = time.Now()
		default:
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(logPath)
			return fmt.Errorf("consultest: %s not ready after 20s (err %v); log:\n%s", a.kind, err, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Client returns an API client for the agent.
func (a *Agent) Client() *api.Client {
	c, err := a.clientLocked()
	if err != nil {
		panic(err)
	}
	return c
}

func (a *Agent) clientLocked() (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = a.Addr
	cfg.Scheme = "http"
	cfg.Token = ""
	return api.NewClient(cfg)
}

// URL returns the agent's HTTP API URL.
func (a *Agent) URL() string { return "http://" + a.Addr }

// Kill ends the agent abruptly (SIGKILL).
func (a *Agent) Kill() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.exited
	a.cmd = nil
}

// Stop ends the agent; it is safe to call twice.
func (a *Agent) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(os.Interrupt)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-a.exited:
	case <-t.C:
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
	a.cmd = nil
}

// Register registers a service instance (with no checks, so it is passing) directly with
// the agent, as a test stand-in for a sidecar.
func (a *Agent) Register(t testing.TB, name, id, addr string, meta map[string]string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	err := a.Client().Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: name, Address: host, Port: p, Meta: meta,
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
}

// Deregister removes a service instance.
func (a *Agent) Deregister(t testing.TB, id string) {
	t.Helper()
	if err := a.Client().Agent().ServiceDeregister(id); err != nil {
		t.Fatalf("deregister %s: %v", id, err)
	}
}
