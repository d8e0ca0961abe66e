// Package tracing is the sidecar's distributed tracing: OpenTelemetry spans for the requests
// it proxies, W3C and B3 propagation, OTLP/HTTP export that never blocks a request, counters
// for what was dropped, and a JSON access log with trace IDs.
//
// # Spans
//
// Each sidecar records, per HTTP or gRPC request:
//
//   - inbound (a peer or client calls this sidecar's app): a SERVER span, StartInbound,
//     parented on the caller's trace context; the app then receives that span's context;
//   - outbound (the app calls an upstream through this sidecar): a SERVER span for the
//     app's request, StartOutbound, parented on the context the app sent or, when it sent
//     none, the root of a new trace, so an app that forwards no headers still gets a trace
//     per hop; under it
//   - one CLIENT span per attempt, StartAttempt: retries are sibling spans under the same
//     outbound span, with http.request.resend_count and podmesh.attempt.
//
// The outbound span is of kind SERVER because the sidecar serves the app's request (an
// instrumented app's CLIENT span is its parent), and it gives retries a common parent even
// when the app sent no context. A trace through two sidecars therefore reads: app CLIENT →
// outbound SERVER → attempt CLIENT(s) → peer's inbound SERVER → peer app.
//
// Attributes follow the OpenTelemetry HTTP and RPC semantic conventions (v1.37.0) and add
// podmesh.direction, podmesh.source and podmesh.destination (service names). Span status is
// Error for 5xx responses, transport errors and the gRPC codes the conventions call errors.
//
// # Sampling and propagation
//
// A request with a sampling decision (W3C traceparent, or B3 with a sampled flag) follows
// it; one without starts a trace at Config.SampleRatio. Extract reads W3C first, then the
// single b3 header, then X-B3-*; injection writes the formats in Config.Propagation (all by
// default) and removes stale trace headers from the forwarded request.
//
// # Cost
//
// With tracing off (the zero Config, or a nil *Tracer) every helper returns at once and
// allocates nothing. On but unsampled, a request costs the context and span-context
// allocations of the OpenTelemetry SDK and the injected header values, no attributes.
//
// # Export
//
// Ended spans go to a bounded queue drained by one goroutine that sends batches over
// OTLP/HTTP. A full queue drops spans; a failed export drops its batch; both are counted
// (Stats, and the podmesh_tracing_* metrics from Register) and nothing ever waits for the
// collector on a request's path.
//
// The package sets no OpenTelemetry globals (tracer provider, propagator, error handler).
package tracing

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName is the instrumentation scope of every span.
const instrumentationName = "github.com/podmesh/podmesh/tracing"

// Tracer records and exports the sidecar's spans. A nil *Tracer, and the Tracer New returns
// for a Config with tracing off, are valid: every method is then a no-op. Its methods are
// safe for concurrent use.
type Tracer struct {
	s       settings
	tp      *sdktrace.TracerProvider // nil when off
	tracer  trace.Tracer
	bat     *batcher
	client  *http.Client // the OTLP exporter's; nil with Config.Exporter
	service string
	closed  atomic.Bool

	serverOpts []trace.SpanStartOption
	clientOpts []trace.SpanStartOption
}

// New builds a Tracer from cfg. ctx bounds the setup only; the Tracer lives until Shutdown.
// With tracing off (see Config) it returns a Tracer whose helpers do nothing, and no error.
func New(ctx context.Context, cfg Config) (*Tracer, error) {
	s, err := cfg.resolve(nil)
	if err != nil {
		return nil, err
	}
	if !s.enabled {
		return &Tracer{}, nil
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	t := &Tracer{
		s:          s,
		service:    s.service,
		serverOpts: []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)},
		clientOpts: []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)},
	}
	exp := s.exporter
	if exp == nil {
		t.client = &http.Client{
			Timeout: s.timeout,
			Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
				ForceAttemptHTTP2:     true,
				MaxIdleConns:          4,
				MaxIdleConnsPerHost:   2,
				IdleConnTimeout:       90 * time.Second,
				TLSHandshakeTimeout:   10 * time.Second,
				ExpectContinueTimeout: time.Second,
			},
		}
		headers := s.headers
		if headers == nil {
			headers = map[string]string{} // ours, resolved above, win over the exporter's own env reading
		}
		exp, err = otlptracehttp.New(ctx,
			otlptracehttp.WithEndpointURL(s.endpoint),
			otlptracehttp.WithHeaders(headers),
			otlptracehttp.WithTimeout(s.timeout),
			otlptracehttp.WithHTTPClient(t.client),
		)
		if err != nil {
			return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", s.endpoint, err)
		}
	}

	attrs := []resource.Option{
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // OTEL_RESOURCE_ATTRIBUTES; the attributes below win
		resource.WithAttributes(semconv.ServiceName(s.service)),
	}
	if s.instance != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceInstanceID(s.instance)))
	}
	res, err := resource.New(ctx, attrs...)
	if err != nil {
		if res == nil || !errors.Is(err, resource.ErrPartialResource) {
			_ = exp.Shutdown(ctx)
			return nil, fmt.Errorf("tracing: resource for service %q: %w", s.service, err)
		}
		log.Warn("tracing: some resource attributes were ignored", "err", err)
	}

	t.bat = newBatcher(ctx, exp, s, log)
	t.tp = sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(newSampler(s.ratio)),
		sdktrace.WithSpanProcessor(t.bat),
	)
	t.tracer = t.tp.Tracer(instrumentationName, trace.WithSchemaURL(semconv.SchemaURL))
	return t, nil
}

// Enabled reports whether the Tracer records spans at all.
func (t *Tracer) Enabled() bool { return t != nil && t.tp != nil }

// Endpoint is the URL spans are exported to ("" when off or with Config.Exporter), for the
// sidecar's /config page.
func (t *Tracer) Endpoint() string {
	if t == nil {
		return ""
	}
	return t.s.endpoint
}

// Shutdown ends tracing: spans that end from now on are dropped (and counted), the queue is
// exported, and the exporter is closed. ctx bounds all of it: when it ends first, the export
// in flight is abandoned and ctx's error returned, and no goroutine is left running either
// way. A second call returns net.ErrClosed. Shutdown on an off or nil Tracer returns nil.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if !t.closed.CompareAndSwap(false, true) {
		return net.ErrClosed
	}
	if t.tp == nil {
		return nil
	}
	err := t.tp.Shutdown(ctx)
	if t.client != nil {
		t.client.CloseIdleConnections()
	}
	if err != nil {
		return fmt.Errorf("tracing: shutdown: %w", err)
	}
	return nil
}

// Flush exports every span that has ended, and waits for it, within ctx. Tests and a
// draining sidecar use it; the request path never needs it.
func (t *Tracer) Flush(ctx context.Context) error {
	if !t.Enabled() {
		return nil
	}
	return t.tp.ForceFlush(ctx)
}

// Stats returns the export counters. They are all zero when tracing is off.
func (t *Tracer) Stats() Stats {
	if !t.Enabled() {
		return Stats{}
	}
	return t.bat.stats()
}

// Inject writes the span context in ctx into h, in the configured formats, after removing
// any trace headers h had. It does nothing when tracing is off or ctx has no span (the
// app's own headers then pass through untouched). StartAttempt calls it; the inbound path calls it on the request
// forwarded to the app.
func (t *Tracer) Inject(ctx context.Context, h http.Header) {
	if !t.Enabled() || h == nil {
		return
	}
	inject(trace.SpanContextFromContext(ctx), t.s.propagation, h)
}

// StartInbound starts the SERVER span for a request this sidecar received for its own app,
// parented on the trace context in r's headers (see Extract). source is the calling
// service when known (from its mTLS identity), else "". The returned context carries the
// span: pass it to Inject for the request to the app, and call End on the span when the
// response is done.
func (t *Tracer) StartInbound(ctx context.Context, r *http.Request, source string) (context.Context, Span) {
	if !t.Enabled() {
		return ctx, Span{}
	}
	return t.startServer(Extract(ctx, r.Header), r, dirInbound, source, t.service)
}

// StartOutbound starts the SERVER span for a request this sidecar received from its own app
// for the upstream service destination, parented on the trace context the app sent, or the
// root of a new trace when it sent none. Each attempt to send the request on is a
// StartAttempt under the returned context.
func (t *Tracer) StartOutbound(ctx context.Context, r *http.Request, destination string) (context.Context, Span) {
	if !t.Enabled() {
		return ctx, Span{}
	}
	return t.startServer(Extract(ctx, r.Header), r, dirOutbound, t.service, destination)
}

// StartAttempt starts the CLIENT span for one attempt (1 for the first, 2 for the first
// retry...) at sending req to destination, as a child of the span in ctx (the outbound
// span), and writes the new span's context into req.Header. req.URL.Host is taken to be the
// endpoint dialed (network.peer.address) and req.Host the name the app asked for
// (server.address). End the span when the attempt's response is done or it failed.
func (t *Tracer) StartAttempt(ctx context.Context, req *http.Request, destination string, attempt int) (context.Context, Span) {
	if !t.Enabled() {
		return ctx, Span{}
	}
	name, grpc := spanName(req)
	ctx, s := t.tracer.Start(ctx, name, t.clientOpts...)
	sp := Span{span: s, client: true, grpc: grpc, rec: s.IsRecording()}
	if sp.rec {
		s.SetAttributes(clientAttributes(req, grpc, t.service, destination, attempt)...)
	}
	if req.Header == nil {
		req.Header = make(http.Header)
	}
	inject(s.SpanContext(), t.s.propagation, req.Header)
	return ctx, sp
}

func (t *Tracer) startServer(ctx context.Context, r *http.Request, dir direction, source, destination string) (context.Context, Span) {
	name, grpc := spanName(r)
	ctx, s := t.tracer.Start(ctx, name, t.serverOpts...)
	sp := Span{span: s, grpc: grpc, rec: s.IsRecording()}
	if sp.rec {
		s.SetAttributes(serverAttributes(r, grpc, dir, source, destination)...)
	}
	return ctx, sp
}
