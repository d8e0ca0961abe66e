package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TestOutboundSpanTree: the app sends a request with its trace context; the sidecar's
// outbound span is its child, and two attempts (a 503 that ejects the endpoint, then a
// retry that succeeds) are sibling CLIENT spans under the outbound span, with the
// conventions' attributes, the events, and the right statuses.
func TestOutboundSpanTree(t *testing.T) {
	tr, exp := newTestTracer(t, Config{ServiceName: "frontend"})

	in := httptest.NewRequest(http.MethodPost, "http://catalog/items?secret=1", nil)
	in.RemoteAddr = "127.0.0.1:40000"
	in.Header.Set("traceparent", "00-"+w3cTrace+"-"+w3cSpan+"-01")
	ctx, out := tr.StartOutbound(context.Background(), in, "catalog")

	attempt := func(n int, endpoint string, res Result, eject bool) trace.SpanContext {
		req := in.Clone(ctx)
		req.URL.Host = endpoint
		_, a := tr.StartAttempt(ctx, req, "catalog", n)
		if got := req.Header.Get("traceparent"); got != "00-"+w3cTrace+"-"+a.SpanContext().SpanID().String()+"-01" {
			t.Errorf("attempt %d sent traceparent %q, want its own span as parent", n, got)
		}
		if eject {
			a.Ejected(endpoint, "consecutive-5xx")
		}
		a.End(res)
		return a.SpanContext()
	}
	first := attempt(1, "10.0.0.1:21000", Result{Status: 503, RequestBytes: 10, ResponseBytes: 7}, true)
	out.Retry(2, "5xx")
	second := attempt(2, "10.0.0.2:21000", Result{Status: 200, RequestBytes: 10, ResponseBytes: 512}, false)
	out.End(Result{Status: 200, RequestBytes: 10, ResponseBytes: 512})

	spans := flushed(t, tr, exp)
	if len(spans) != 3 {
		t.Fatalf("exported %d spans, want 3", len(spans))
	}
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID()] = s
	}
	o := byID[out.SpanContext().SpanID()]
	a1, a2 := byID[first.SpanID()], byID[second.SpanID()]

	// Tree.
	if o.SpanKind != trace.SpanKindServer || a1.SpanKind != trace.SpanKindClient || a2.SpanKind != trace.SpanKindClient {
		t.Errorf("kinds: outbound %v, attempts %v %v; want server, client, client", o.SpanKind, a1.SpanKind, a2.SpanKind)
	}
	if o.Parent.SpanID() != mustSpanID(t, w3cSpan) || !o.Parent.IsRemote() {
		t.Errorf("outbound parent %s, want the app's span %s", o.Parent.SpanID(), w3cSpan)
	}
	for i, a := range []tracetest.SpanStub{a1, a2} {
		if a.Parent.SpanID() != o.SpanContext.SpanID() || a.SpanContext.TraceID() != mustTraceID(t, w3cTrace) {
			t.Errorf("attempt %d: parent %s trace %s, want parent %s in trace %s", i+1,
				a.Parent.SpanID(), a.SpanContext.TraceID(), o.SpanContext.SpanID(), w3cTrace)
		}
	}
	if o.Name != "POST" || a1.Name != "POST" {
		t.Errorf("names %q %q, want POST", o.Name, a1.Name)
	}

	// Attributes.
	wantAttrs := func(who string, got map[string]any, want map[string]any) {
		t.Helper()
		for k, v := range want {
			if v == nil {
				if g, ok := got[k]; ok {
					t.Errorf("%s: %s = %v, want it absent", who, k, g)
				}
				continue
			}
			if fmt.Sprint(got[k]) != fmt.Sprint(v) {
				t.Errorf("%s: %s = %v, want %v", who, k, got[k], v)
			}
		}
	}
	wantAttrs("outbound", attrs(o.Attributes), map[string]any{
		"http.request.method": "POST", "url.path": "/items", "url.scheme": "http",
		"http.response.status_code": 200, "server.address": "catalog",
		"network.peer.address": "127.0.0.1", "network.peer.port": 40000,
		"network.protocol.version": "1.1", "podmesh.direction": "outbound",
		"podmesh.source": "frontend", "podmesh.destination": "catalog",
		"http.request.body.size": 10, "http.response.body.size": 512,
		"error.type": nil, "url.query": nil,
	})
	wantAttrs("attempt 1", attrs(a1.Attributes), map[string]any{
		"http.request.method": "POST", "url.path": "/items", "server.address": "catalog",
		"network.peer.address": "10.0.0.1", "network.peer.port": 21000,
		"peer.service": "catalog", "podmesh.source": "frontend", "podmesh.destination": "catalog",
		"podmesh.attempt": 1, "http.request.resend_count": nil,
		"http.response.status_code": 503, "error.type": "503",
	})
	wantAttrs("attempt 2", attrs(a2.Attributes), map[string]any{
		"network.peer.address": "10.0.0.2", "podmesh.attempt": 2, "http.request.resend_count": 1,
		"http.response.status_code": 200, "error.type": nil,
	})

	// Events.
	if len(o.Events) != 1 || o.Events[0].Name != EventRetry {
		t.Fatalf("outbound events %v, want one %s", o.Events, EventRetry)
	}
	wantAttrs("retry event", attrs(o.Events[0].Attributes), map[string]any{"podmesh.attempt": 2, "podmesh.reason": "5xx"})
	if len(a1.Events) != 1 || a1.Events[0].Name != EventEjection {
		t.Fatalf("attempt 1 events %v, want one %s", a1.Events, EventEjection)
	}
	wantAttrs("ejection event", attrs(a1.Events[0].Attributes), map[string]any{
		"podmesh.endpoint": "10.0.0.1:21000", "podmesh.reason": "consecutive-5xx"})
	if len(a2.Events) != 0 {
		t.Errorf("attempt 2 events %v, want none", a2.Events)
	}

	// Status.
	if a1.Status.Code != codes.Error || a2.Status.Code != codes.Unset || o.Status.Code != codes.Unset {
		t.Errorf("status: attempt 1 %v, attempt 2 %v, outbound %v; want Error, Unset, Unset",
			a1.Status.Code, a2.Status.Code, o.Status.Code)
	}
}

// TestOutboundWithoutContextStartsTrace: an app that forwards no headers still gets a trace
// per hop: the outbound span is a root, its attempts share its trace.
func TestOutboundWithoutContextStartsTrace(t *testing.T) {
	tr, exp := newTestTracer(t, Config{})
	in := httptest.NewRequest(http.MethodGet, "http://catalog/", nil)
	ctx, out := tr.StartOutbound(context.Background(), in, "catalog")
	for n := 1; n <= 2; n++ {
		req := in.Clone(ctx)
		req.URL.Host = "10.0.0.1:21000"
		_, a := tr.StartAttempt(ctx, req, "catalog", n)
		a.End(Result{Err: errors.New("connection reset")})
	}
	out.End(Result{Status: 502})
	spans := flushed(t, tr, exp)
	if len(spans) != 3 {
		t.Fatalf("exported %d spans, want 3", len(spans))
	}
	for _, s := range spans {
		if s.SpanContext.TraceID() != out.SpanContext().TraceID() {
			t.Errorf("span %s in trace %s, want %s", s.Name, s.SpanContext.TraceID(), out.SpanContext().TraceID())
		}
		switch s.SpanContext.SpanID() {
		case out.SpanContext().SpanID():
			if s.Parent.IsValid() {
				t.Errorf("outbound span has parent %s, want a root", s.Parent.SpanID())
			}
			if s.Status.Code != codes.Error {
				t.Errorf("outbound 502: status %v, want Error", s.Status.Code)
			}
		default:
			if s.Parent.SpanID() != out.SpanContext().SpanID() {
				t.Errorf("attempt parent %s, want %s", s.Parent.SpanID(), out.SpanContext().SpanID())
			}
			if s.Status.Code != codes.Error || s.Status.Description != "connection reset" {
				t.Errorf("attempt status %v %q, want Error \"connection reset\"", s.Status.Code, s.Status.Description)
			}
			if got := attrs(s.Attributes)["error.type"]; got != "transport" {
				t.Errorf("attempt error.type %v, want transport", got)
			}
		}
	}
}

// TestInboundSpan: the SERVER span for a request from another sidecar, HTTP/2 and gRPC.
func TestInboundSpan(t *testing.T) {
	tests := []struct {
		name       string
		grpcStatus string
		status     int
		err        error
		wantName   string
		wantCode   codes.Code
		wantAttrs  map[string]any
	}{
		{name: "grpc ok", grpcStatus: "0", status: 200, wantName: "shop.Catalog/List", wantCode: codes.Unset,
			wantAttrs: map[string]any{"rpc.system": "grpc", "rpc.service": "shop.Catalog", "rpc.method": "List",
				"rpc.grpc.status_code": 0, "network.protocol.version": "2", "peer.service": "frontend",
				"podmesh.direction": "inbound", "podmesh.source": "frontend", "podmesh.destination": "catalog",
				"server.address": "10.0.0.9", "server.port": 21000}},
		{name: "grpc unavailable is a server error", grpcStatus: "14", status: 200, wantName: "shop.Catalog/List",
			wantCode: codes.Error, wantAttrs: map[string]any{"rpc.grpc.status_code": 14, "error.type": "14"}},
		{name: "grpc not found is not a server error", grpcStatus: "5", status: 200, wantName: "shop.Catalog/List",
			wantCode: codes.Unset, wantAttrs: map[string]any{"rpc.grpc.status_code": 5}},
		{name: "timeout", err: context.DeadlineExceeded, wantName: "shop.Catalog/List", wantCode: codes.Error,
			wantAttrs: map[string]any{"error.type": "timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, exp := newTestTracer(t, Config{ServiceName: "catalog"})
			r := httptest.NewRequest(http.MethodPost, "http://10.0.0.9:21000/shop.Catalog/List", nil)
			r.ProtoMajor, r.ProtoMinor, r.Proto = 2, 0, "HTTP/2.0"
			r.Header.Set("Content-Type", "application/grpc+proto")
			r.Header.Set("b3", b3Trace+"-"+b3Span+"-1")
			_, s := tr.StartInbound(context.Background(), r, "frontend")
			s.End(Result{Status: tt.status, GRPCStatus: tt.grpcStatus, Err: tt.err})
			spans := flushed(t, tr, exp)
			if len(spans) != 1 {
				t.Fatalf("exported %d spans, want 1", len(spans))
			}
			sp := spans[0]
			if sp.Name != tt.wantName || sp.SpanKind != trace.SpanKindServer || sp.Status.Code != tt.wantCode {
				t.Errorf("span %q kind %v status %v, want %q server %v", sp.Name, sp.SpanKind, sp.Status.Code,
					tt.wantName, tt.wantCode)
			}
			if sp.Parent.SpanID() != mustSpanID(t, b3Span) {
				t.Errorf("parent %s, want the B3 caller %s", sp.Parent.SpanID(), b3Span)
			}
			got := attrs(sp.Attributes)
			for k, v := range tt.wantAttrs {
				if fmt.Sprint(got[k]) != fmt.Sprint(v) {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
			if sp.Resource.Len() == 0 {
				t.Error("span has no resource")
			}
			if v, _ := sp.Resource.Set().Value("service.name"); v.AsString() != "catalog" {
				t.Errorf("service.name %q, want catalog", v.AsString())
			}
		})
	}
}

// TestGRPCClientStatus: on a CLIENT span any gRPC code but OK is an error.
func TestGRPCClientStatus(t *testing.T) {
	tr, exp := newTestTracer(t, Config{})
	r := httptest.NewRequest(http.MethodPost, "http://catalog/shop.Catalog/Get", nil)
	r.Header.Set("Content-Type", "application/grpc")
	_, a := tr.StartAttempt(context.Background(), r, "catalog", 1)
	a.End(Result{Status: 200, GRPCStatus: "5"})
	spans := flushed(t, tr, exp)
	if len(spans) != 1 || spans[0].Status.Code != codes.Error {
		t.Fatalf("got %v, want one span with status Error", spans)
	}
}

// TestOffIsNoop: with tracing off, and with a nil Tracer, every helper works, records
// nothing, touches no header, and allocates nothing.
func TestOffIsNoop(t *testing.T) {
	clearOTELEnv(t)
	off, err := New(context.Background(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	for name, tr := range map[string]*Tracer{"off": off, "nil": nil} {
		t.Run(name, func(t *testing.T) {
			if tr.Enabled() {
				t.Fatal("Enabled() = true")
			}
			r := httptest.NewRequest(http.MethodGet, "http://catalog/", nil)
			r.Header.Set("traceparent", "00-"+w3cTrace+"-"+w3cSpan+"-01")
			ctx := context.Background()
			allocs := testing.AllocsPerRun(100, func() {
				c, s := tr.StartInbound(ctx, r, "x")
				tr.Inject(c, r.Header)
				c, o := tr.StartOutbound(c, r, "y")
				_, a := tr.StartAttempt(c, r, "y", 1)
				a.Ejected("e", "r")
				o.Retry(2, "r")
				a.End(Result{Status: 500})
				o.End(Result{Status: 500})
				s.End(Result{Status: 200})
			})
			if allocs != 0 {
				t.Errorf("%v allocations per request with tracing off, want 0", allocs)
			}
			if len(r.Header) != 1 || r.Header.Get("traceparent") != "00-"+w3cTrace+"-"+w3cSpan+"-01" {
				t.Errorf("headers changed with tracing off: %v", r.Header)
			}
			if tr.Stats() != (Stats{}) {
				t.Errorf("stats %+v, want zero", tr.Stats())
			}
			if err := tr.Flush(ctx); err != nil {
				t.Errorf("Flush: %v", err)
			}
		})
	}
}

func TestSplitHostPort(t *testing.T) {
	for _, tt := range []struct {
		in   string
		host string
		port int
	}{
		{"", "", 0},
		{"catalog", "catalog", 0},
		{"catalog:8080", "catalog", 8080},
		{"10.0.0.1:21000", "10.0.0.1", 21000},
		{"[::1]:80", "::1", 80},
		{"[::1]", "::1", 0},
		{"::1", "::1", 0},
		{"[::1", "", 0},
		{"host:notaport", "host", 0},
	} {
		host, port := splitHostPort(tt.in)
		if host != tt.host || port != tt.port {
			t.Errorf("splitHostPort(%q) = %q, %d; want %q, %d", tt.in, host, port, tt.host, tt.port)
		}
	}
}
