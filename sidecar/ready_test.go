package sidecar

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/meshtest"
	"github.com/podmesh/podmesh/internal/testutil"
)

// readyPipe is a pipe whose write end is handed to the sidecar as -ready-fd (a duplicate,
// which the sidecar owns and closes, as a child owns an inherited descriptor).
func readyPipe(t *testing.T) (r *os.File, fd int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fd, err = syscall.Dup(int(w.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() { r.Close() })
	return r, fd
}

// gatedRegistry is a registry behind a gate (addr) that answers 503 to everything until
// opened: the sidecar's certificates and intentions stay out of reach until then.
func gatedRegistry(t *testing.T) (reg *meshtest.Registry, addr string, open func()) {
	t.Helper()
	reg = meshtest.Start(t, "", 0)
	target, _ := url.Parse(reg.URL())
	var opened atomic.Bool
	gate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !opened.Load() {
			http.Error(w, "registry starting", http.StatusServiceUnavailable)
			return
		}
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
	}))
	t.Cleanup(gate.Close)
	return reg, gate.URL, func() { opened.Store(true) }
}

// startReadyFD runs a mutual-TLS sidecar with -ready-fd against registry.
func startReadyFD(t *testing.T, registry string, fd int) (sc *Sidecar, stop func() error) {
	t.Helper()
	app := startTestApp(t, "rf-db", nil)
	cfg, err := Parse([]string{"-service", "rf-db", "-protocol", "http", "-inbound", "127.0.0.1:0", "-app", app.addr,
		"-register=false", "-admin", "127.0.0.1:0", "-registry", registry, "-ready-fd", strconv.Itoa(fd)}, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ReadyTimeout = Duration(10 * time.Millisecond) // applies to discovery, not to the certificates
	if sc, err = New(cfg, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	var stopped bool
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return sc, stop
}

// readWithin reads what r gives within d: the bytes, and whether it reached EOF.
func readWithin(t *testing.T, r *os.File, d time.Duration) (string, bool) {
	t.Helper()
	if err := r.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 64)
	for {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		switch {
		case errors.Is(err, io.EOF):
			return string(got), true
		case errors.Is(err, os.ErrDeadlineExceeded):
			return string(got), false
		case err != nil:
			t.Fatal(err)
		}
	}
}

// TestReadyFD: the sidecar writes READY=1 on -ready-fd exactly when /ready turns 200 (not
// while the registry withholds its certificates, however long past the ready timeout),
// then closes the descriptor.
func TestReadyFD(t *testing.T) {
	testutil.CheckGoroutines(t)
	_, registry, open := gatedRegistry(t)
	r, fd := readyPipe(t)
	sc, _ := startReadyFD(t, registry, fd)
	if got, eof := readWithin(t, r, 300*time.Millisecond); got != "" || eof {
		t.Fatalf("before the certificates: read %q (EOF %v), want nothing", got, eof)
	}
	if ok, why := sc.Ready(); ok {
		t.Fatalf("ready without certificates: %s", why)
	}
	open()
	got, eof := readWithin(t, r, 10*time.Second)
	if got != "READY=1\n" || !eof {
		t.Fatalf("read %q (EOF %v), want READY=1 and the descriptor closed", got, eof)
	}
	if ok, why := sc.Ready(); !ok {
		t.Fatalf("notified, but Ready says %s", why)
	}
}

// TestReadyFDClosedWhenStoppedFirst: a sidecar stopped before it was ready closes the
// descriptor without a word, so whoever waits on it learns at once.
func TestReadyFDClosedWhenStoppedFirst(t *testing.T) {
	testutil.CheckGoroutines(t)
	_, registry, _ := gatedRegistry(t)
	r, fd := readyPipe(t)
	_, stop := startReadyFD(t, registry, fd)
	time.Sleep(100 * time.Millisecond)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got, eof := readWithin(t, r, 5*time.Second); got != "" || !eof {
		t.Fatalf("read %q (EOF %v), want EOF and nothing", got, eof)
	}
}
