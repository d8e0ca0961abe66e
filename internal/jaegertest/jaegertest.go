// Package jaegertest runs a real Jaeger (v2, the binary `make tools` builds from
// github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0) in memory for tests: an OTLP/HTTP
// receiver and the query API on free loopback ports.
package jaegertest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

// config runs Jaeger in memory with nothing but an OTLP/HTTP receiver and the query
// API, each on the loopback port given. The binary the Makefile builds from tag v1.76.0 is
// cmd/jaeger, which is Jaeger v2 (an OpenTelemetry Collector distribution): it takes a
// collector configuration file, not the v1 all-in-one's --collector.* flags. Its built-in
// all-in-one configuration binds a dozen fixed ports (4317, 4318, 16686, 14250, 9411,
// 5778, 13133, 8888...), so the test writes its own; the internal metrics endpoint is
// turned off (level none) and the query service's self-tracing too.
const config = `
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
  jaeger_query:
    enable_tracing: false
    storage:
      traces: mem
    http:
      endpoint: %s
    grpc:
      endpoint: %s
receivers:
  otlp:
    protocols:
      http:
        endpoint: %s
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`

// Start runs the real Jaeger (testutil.Tool "jaeger") and returns its OTLP/HTTP address and query API base
// URL. It is stopped when the test ends. The ports are probed free just before Jaeger binds
// them, so another process can take one in between: a start that fails on a bind is retried
// with new ports.
func Start(t testing.TB) (otlpAddr, queryURL string) {
	t.Helper()
	bin := testutil.Tool(t, "jaeger")
	for try := 1; ; try++ {
		otlpAddr, queryURL, err := tryStart(t, bin)
		if err == nil {
			return otlpAddr, queryURL
		}
		if try == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("jaeger start %d: %v; retrying with other ports", try, err)
	}
}

func tryStart(t testing.TB, bin string) (otlpAddr, queryURL string, err error) {
	otlpAddr, queryAddr, grpcAddr := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	cfg := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, queryAddr, grpcAddr, otlpAddr), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	cmd := exec.Command(bin, "--config", cfg)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start jaeger: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		timer := time.NewTimer(10 * time.Second)
		defer timer.Stop()
		select {
		case <-exited:
		case <-timer.C:
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	queryURL = "http://" + queryAddr
	// Startup takes a second or two (the collector resolves and starts every component).
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case werr := <-exited:
			return "", "", fmt.Errorf("jaeger exited during startup (%v):\n%s", werr, logs.String())
		default:
		}
		if Ready(queryURL, otlpAddr) {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return "", "", fmt.Errorf("jaeger not ready within 30s:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("jaeger output:\n%s", logs.String())
		}
	})
	return otlpAddr, queryURL, nil
}

// Ready reports whether Jaeger answers on its query API and accepts OTLP connections.
func Ready(queryURL, otlpAddr string) bool {
	res, err := http.Get(queryURL + "/api/services")
	if err != nil {
		return false
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		return false
	}
	c, err := net.Dial("tcp", otlpAddr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// lockedBuffer collects Jaeger's output from the process's copier goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
