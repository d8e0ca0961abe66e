// Package consultest runs a real Consul agent in dev mode for tests: the registry contract
// is the Consul HTTP API, so tests of discovery and the sidecar run against the real thing.
// The binary comes from testutil.Tool(t, "consul") (the Makefile builds Consul v1.14.0).
//
// With PODMESH_TEST_REGISTRY_BIN set to a Podmesh registry binary, the same tests run
// against it instead (started with -http, -data, -node and -advertise), to check that it
// stands in for Consul.
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

// Agent is a running (or stopped) Consul dev agent on loopback.
type Agent struct {
	podmesh bool // the Podmesh registry rather than Consul
	bin     string
	dir     string
	ports   [4]int // http, serf lan, serf wan, server
	Addr    string // host:port of the HTTP API

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// Start runs a dev agent and waits until it has a leader. The test (or TestMain, with
// StartMain) must Stop it.
func Start(t testing.TB) *Agent {
	t.Helper()
	bin := os.Getenv("PODMESH_TEST_REGISTRY_BIN")
	if bin == "" {
		bin = testutil.Tool(t, "consul")
	}
	a, err := start(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

// StartMain runs a dev agent for a whole test package. bin is the consul binary (empty:
// look it up as testutil.Tool would, without a testing.TB); it returns nil and a reason
// when the binary is missing.
func StartMain(dir string) (*Agent, string, error) {
	bin := os.Getenv("PODMESH_TEST_REGISTRY_BIN")
	if bin == "" {
		bin = os.Getenv("PODMESH_CONSUL_BIN")
	}
	if bin == "" {
		home, _ := os.UserHomeDir()
		bin = filepath.Join(home, ".cache", "podmesh", "bin", "consul-v1.14.0")
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, "consul not built (set PODMESH_CONSUL_BIN or run `make tools`)", nil
	}
	a, err := start(bin, dir)
	return a, "", err
}

func start(bin, dir string) (*Agent, error) {
	// Free ports are only free until somebody else takes them (other tests share the
	// machine): try a few sets.
	var err error
	for range 3 {
		a := &Agent{bin: bin, dir: dir, podmesh: bin == os.Getenv("PODMESH_TEST_REGISTRY_BIN")}
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

// Restart starts the agent again on the same ports (after Stop or Kill). A dev agent keeps
// its state in memory, so it comes back empty, like a registry that lost its data.
func (a *Agent) Restart() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return fmt.Errorf("consultest: agent already running")
	}
	cmd := exec.Command(a.bin, "agent", "-dev", "-node", "podmesh-test",
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(a.ports[0]),
		"-serf-lan-port", strconv.Itoa(a.ports[1]),
		"-serf-wan-port", strconv.Itoa(a.ports[2]),
		"-server-port", strconv.Itoa(a.ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-log-level", "warn")
	if a.podmesh {
		cmd = exec.Command(a.bin, "-http", a.Addr, "-data", filepath.Join(a.dir, "registry-data"),
			"-node", "podmesh-test", "-advertise", "127.0.0.1", "-log-level", "warn")
	}
	log, err := os.OpenFile(filepath.Join(a.dir, "consul.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
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
			data, _ := os.ReadFile(filepath.Join(a.dir, "consul.log"))
			return fmt.Errorf("consultest: no leader after 20s (err %v); log:\n%s", err, data)
		}
		time.Sleep(50 * time.Millisecond)
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
