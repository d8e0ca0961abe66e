// Package testutil holds what the project's tests share: finding the real external programs
// the Makefile builds (Consul, Prometheus, Jaeger, vegeta), the privileged-test gate, free
// loopback ports, waiting for a condition, and a goroutine leak check.
//
// Tools are found through environment variables the Makefile sets (PODMESH_CONSUL_BIN and so
// on). A plain `go test ./...` without them skips the tests that need a tool; under `make test`
// PODMESH_REQUIRE_TOOLS=1 turns such a skip into a failure, and PODMESH_REQUIRE_PRIVILEGED=1
// (set by .ci/run) does the same for tests that need root.
package testutil

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// Tool names known to Tool, with the environment variable that holds each one's path and the
// versioned file name the Makefile gives it under $HOME/.cache/podmesh/bin.
var tools = map[string]struct{ env, file string }{
	"consul":     {"PODMESH_CONSUL_BIN", "consul-v1.14.0"},
	"prometheus": {"PODMESH_PROMETHEUS_BIN", "prometheus-v0.316.0"},
	"jaeger":     {"PODMESH_JAEGER_BIN", "jaeger-v1.76.0"},
	"vegeta":     {"PODMESH_VEGETA_BIN", "vegeta-v12.13.0"},
}

// Tool returns the path of the named external program ("consul", "prometheus", "jaeger",
// "vegeta", or a command on PATH such as "nginx" or "wrk"). When it is missing the test is
// skipped, or fails under PODMESH_REQUIRE_TOOLS=1.
func Tool(t testing.TB, name string) string {
	t.Helper()
	if tl, ok := tools[name]; ok {
		if p, ok := BuiltTool(name); ok {
			return p
		}
		missing(t, fmt.Sprintf("%s not built (set %s or run `make tools`)", name, tl.env))
		return ""
	}
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
				return filepath.Join(dir, name)
			}
		}
		missing(t, fmt.Sprintf("%s not installed (run `make apt-deps`)", name))
	}
	return p
}

// BuiltTool returns the path of one of the Go tools `make tools` builds ("consul",
// "prometheus", "jaeger", "vegeta"): its PODMESH_*_BIN variable, else the cached file. ok is
// false when it is not there; unlike Tool, nothing is skipped.
func BuiltTool(name string) (path string, ok bool) {
	tl, known := tools[name]
	if !known {
		return "", false
	}
	if p := os.Getenv(tl.env); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p, true
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".cache", "podmesh", "bin", tl.file)
		if _, err := os.Stat(p); err == nil {
			return p, true
		}
	}
	return "", false
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("PODMESH_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s; PODMESH_REQUIRE_TOOLS=1 makes this a failure", why)
	}
	t.Skip(why)
}

// RequirePrivileged skips a test that needs root (namespaces, cgroups, veth), or fails it
// when PODMESH_REQUIRE_PRIVILEGED=1, as in CI.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("PODMESH_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal("test needs root and PODMESH_REQUIRE_PRIVILEGED=1 forbids skipping it")
	}
	t.Skip("test needs root")
}

// FreePort returns a loopback address with a port that was free a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Context returns a context cancelled when the test ends or after d, whichever is first.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Eventually polls cond every tick until it returns nil or timeout passes, then fails the
// test with cond's last error.
func Eventually(t testing.TB, timeout, tick time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(tick)
	}
}

// CheckGoroutines records the goroutines running now and, when the test ends, fails it if
// new ones are still running after a grace period. Call it first in a test that starts
// long-lived loops.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	before := map[string]bool{}
	for _, g := range interesting() {
		before[goroutineID(g)] = true
	}
	t.Cleanup(func() {
		var leaked []string
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaked = leaked[:0]
			for _, g := range interesting() {
				if !before[goroutineID(g)] {
					leaked = append(leaked, g)
				}
			}
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(leaked) > 0 {
			sort.Strings(leaked)
			t.Errorf("%d goroutine(s) leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}

// goroutineID returns "goroutine N" from a stack's header line.
func goroutineID(stack string) string {
	id, _, _ := strings.Cut(stack, " [")
	return id
}

// interesting returns the stacks of goroutines that are not part of the runtime or the
// testing framework.
func interesting() []string {
	buf := make([]byte, 2<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		_, stack, _ := strings.Cut(g, "\n")
		switch {
		case stack == "",
			strings.Contains(stack, "testing.(*T).Run"),
			strings.Contains(stack, "testing.tRunner"),
			strings.Contains(stack, "testing.(*M)."),
			strings.Contains(stack, "testing.runTests"),
			strings.Contains(stack, "runtime.goexit") && strings.Count(stack, "\n") <= 2,
			strings.Contains(stack, "created by runtime.gc"),
			strings.Contains(stack, "runtime.MHeap_Scavenger"),
			strings.Contains(stack, "signal.signal_recv"),
			strings.Contains(stack, "sigterm.handler"),
			strings.Contains(stack, "runtime_mcall"),
			strings.Contains(stack, "goroutine in C code"),
			strings.Contains(stack, "net/http.(*persistConn)"), // keep-alive pools close lazily
			strings.Contains(stack, "internal/poll.runtime_pollWait") && strings.Contains(stack, "net/http.(*persistConn).readLoop"),
			strings.Contains(stack, "go.opencensus.io"),
			strings.Contains(stack, "interestingGoroutines"):
			continue
		}
		out = append(out, g)
	}
	return out
}
