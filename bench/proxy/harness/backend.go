package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// BodySize is the size of the backend's fixed response body.
const BodySize = 100

// Body is what the backend answers to every request: BodySize bytes of text.
var Body = []byte(strings.Repeat("podmesh-bench-", BodySize/14+1)[:BodySize])

// roleEnv names the environment variable that turns a re-executed copy of the harness
// binary into one of its child roles (the Go backend), so the backend's CPU and memory are
// measured apart from the harness.
const roleEnv = "PODMESH_BENCH_ROLE"

// RunChildIfRequested serves the child role named in the environment, if any, and reports
// whether it did. A main (or TestMain) calls it first and exits when it returns true: the
// role runs until ctx is cancelled, normally by SIGTERM from the harness.
func RunChildIfRequested(ctx context.Context) (bool, error) {
	role := os.Getenv(roleEnv)
	if role == "" {
		return false, nil
	}
	kind, addr, _ := strings.Cut(role, "=")
	switch kind {
	case "backend":
		return true, serveBackend(ctx, addr)
	default:
		return true, fmt.Errorf("bench: unknown child role %q in %s", role, roleEnv)
	}
}

// backendHandler answers every request with Body. It reads and discards a request body so
// keep-alive connections stay usable.
func backendHandler() http.Handler {
	clen := fmt.Sprint(len(Body))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			_, _ = io.Copy(io.Discard, r.Body)
		}
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{clen}
		_, _ = w.Write(Body)
	})
}

// newH1H2Server returns a server speaking HTTP/1.1 and HTTP/2 with prior knowledge (h2c)
// on the same plaintext port.
func newH1H2Server(h http.Handler) *http.Server {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
	}
}

// serveBackend runs the Go backend on addr until ctx ends.
func serveBackend(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("bench backend: listen %s: %w", addr, err)
	}
	srv := newH1H2Server(backendHandler())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	case err := <-errc:
		return fmt.Errorf("bench backend: serve %s: %w", addr, err)
	}
}

// OTLPSink is a minimal OTLP/HTTP trace receiver: it accepts POSTs to /v1/traces, discards
// them and answers with an empty ExportTraceServiceResponse, so the cost measured in the
// tracing scenario is the sidecar's, not a collector's.
type OTLPSink struct {
	Addr     string // host:port
	requests atomic.Int64
	bytes    atomic.Int64
	srv      *http.Server
}

// StartOTLPSink listens on a free loopback port.
func StartOTLPSink() (*OTLPSink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: otlp sink listen: %w", err)
	}
	s := &OTLPSink{Addr: ln.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		s.requests.Add(1)
		s.bytes.Add(n)
		if strings.Contains(r.Header.Get("Content-Type"), "json") {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte("{}"))
			return
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	})
	s.srv = newH1H2Server(mux)
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "bench: otlp sink: %v\n", err)
		}
	}()
	return s, nil
}

// Counts returns the export requests and body bytes received so far.
func (s *OTLPSink) Counts() (requests, bytes int64) { return s.requests.Load(), s.bytes.Load() }

// Close stops the sink.
func (s *OTLPSink) Close() error { return s.srv.Close() }
