package tracing_test

import (
	"context"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podmesh/podmesh/tracing"
)

// The sidecar builds one Tracer from its flags (and the OTEL_* environment), registers its
// metrics, and shuts it down last, after the listeners have drained.
func Example() {
	ctx := context.Background()
	tr, err := tracing.New(ctx, tracing.Config{
		ServiceName: "frontend",
		InstanceID:  "frontend-1",
		Endpoint:    os.Getenv("TRACE_ENDPOINT"), // -trace-endpoint; "" and no OTEL_* variables: off
		SampleRatio: 0.1,
	})
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry() // the sidecar's /metrics registry
	if err := tr.Register(reg); err != nil {
		log.Fatal(err)
	}
	var access *tracing.AccessLog // nil: off, the default; tracing.NewAccessLog(os.Stdout) to turn on
	_ = access

	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = tr.Shutdown(sctx)
	}()
	// Output:
}

// The inbound path: a peer sidecar (or a client) calls this sidecar's app.
func ExampleTracer_StartInbound() {
	var tr *tracing.Tracer // from tracing.New
	var access *tracing.AccessLog
	app := "http://127.0.0.1:8080"

	handler := func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, span := tr.StartInbound(r.Context(), r, "caller-service-from-mTLS")
		out, _ := http.NewRequestWithContext(ctx, r.Method, app+r.URL.RequestURI(), r.Body)
		tr.Inject(ctx, out.Header) // the app sees the server span as its parent

		res, err := http.DefaultClient.Do(out)
		if err != nil {
			span.End(tracing.Result{Err: err})
			w.WriteHeader(http.StatusBadGateway)
			access.Log(ctx, tracing.AccessEntry{Direction: "inbound", Method: r.Method, Path: r.URL.Path,
				Status: http.StatusBadGateway, Duration: time.Since(start), Err: err})
			return
		}
		defer res.Body.Close()
		w.WriteHeader(res.StatusCode)
		n, _ := io.Copy(w, res.Body)
		span.End(tracing.Result{Status: res.StatusCode, ResponseBytes: n,
			GRPCStatus: res.Trailer.Get("Grpc-Status")})
		access.Log(ctx, tracing.AccessEntry{Direction: "inbound", Method: r.Method, Path: r.URL.Path,
			Protocol: r.Proto, Status: res.StatusCode, Duration: time.Since(start), ResponseBytes: n,
			Upstream: app, Attempts: 1, Destination: "frontend"})
	}
	_ = handler
	// Output:
}

// The outbound path: the app calls an upstream through this sidecar; every attempt is a
// CLIENT span under the outbound span, retries included.
func ExampleTracer_StartOutbound() {
	var tr *tracing.Tracer // from tracing.New
	// The endpoints lb picks for each attempt.
	endpoints := []string{"10.0.0.5:21000", "10.0.0.6:21000"}

	handler := func(w http.ResponseWriter, r *http.Request) {
		ctx, span := tr.StartOutbound(r.Context(), r, "catalog") // parent: the app's headers, or a new trace
		for attempt := 1; attempt <= len(endpoints); attempt++ {
			out := r.Clone(ctx)
			out.RequestURI, out.URL.Scheme, out.URL.Host = "", "http", endpoints[attempt-1]
			actx, a := tr.StartAttempt(ctx, out, "catalog", attempt) // also writes the trace headers into out
			res, err := http.DefaultClient.Do(out.WithContext(actx))
			if err != nil {
				a.Ejected(out.URL.Host, "connect-failure") // when lb ejected the host
				a.End(tracing.Result{Err: err})
				span.Retry(attempt+1, "connect-failure")
				continue
			}
			w.WriteHeader(res.StatusCode)
			n, _ := io.Copy(w, res.Body)
			res.Body.Close()
			a.End(tracing.Result{Status: res.StatusCode, ResponseBytes: n})
			span.End(tracing.Result{Status: res.StatusCode, ResponseBytes: n})
			return
		}
		span.End(tracing.Result{Status: http.StatusBadGateway})
		w.WriteHeader(http.StatusBadGateway)
	}
	_ = handler
	// Output:
}
