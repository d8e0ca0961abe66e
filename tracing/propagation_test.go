package tracing

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

const (
	w3cTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	w3cSpan   = "00f067aa0ba902b7"
	b3Trace   = "80f198ee56343ba864fe8b2a57d3eff7"
	b3Span    = "e457b5a2e4d86bd1"
	b3Parent  = "05e3ac9a4f6e3b90"
	b3Trace64 = "a3ce929d0e0e4736"
)

// TestExtract is the propagation table: which context each set of headers yields.
func TestExtract(t *testing.T) {
	tp := "00-" + w3cTrace + "-" + w3cSpan + "-01"
	tests := []struct {
		name       string
		h          http.Header
		trace      string // "" means no remote span context
		span       string
		sampled    bool
		tracestate string
		hint       *sampling // the sampling hint left for the sampler, if any
	}{
		{name: "no headers"},
		{name: "w3c sampled", h: header("traceparent", tp), trace: w3cTrace, span: w3cSpan, sampled: true},
		{name: "w3c not sampled", h: header("traceparent", "00-"+w3cTrace+"-"+w3cSpan+"-00"),
			trace: w3cTrace, span: w3cSpan},
		{name: "w3c tracestate kept", h: header("traceparent", tp, "tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
			trace: w3cTrace, span: w3cSpan, sampled: true, tracestate: "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
		{name: "w3c tracestate in two headers is one list", h: header("traceparent", tp, "tracestate", "congo=t61rcWkgMzE", "tracestate", "rojo=00f067aa0ba902b7"),
			trace: w3cTrace, span: w3cSpan, sampled: true, tracestate: "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
		{name: "w3c bad tracestate dropped, traceparent kept", h: header("traceparent", tp, "tracestate", "NOT VALID"),
			trace: w3cTrace, span: w3cSpan, sampled: true},
		{name: "w3c future version with extra field", h: header("traceparent", "cc-"+w3cTrace+"-"+w3cSpan+"-01-what-the-future-holds"),
			trace: w3cTrace, span: w3cSpan, sampled: true},

		{name: "b3 single sampled", h: header("b3", b3Trace+"-"+b3Span+"-1"), trace: b3Trace, span: b3Span, sampled: true},
		{name: "b3 single with parent", h: header("b3", b3Trace+"-"+b3Span+"-1-"+b3Parent), trace: b3Trace, span: b3Span, sampled: true},
		{name: "b3 single not sampled", h: header("b3", b3Trace+"-"+b3Span+"-0"), trace: b3Trace, span: b3Span},
		{name: "b3 single debug is sampled", h: header("b3", b3Trace+"-"+b3Span+"-d"), trace: b3Trace, span: b3Span, sampled: true},
		{name: "b3 single 64-bit trace ID is padded", h: header("b3", b3Trace64+"-"+b3Span+"-1"),
			trace: "0000000000000000" + b3Trace64, span: b3Span, sampled: true},
		{name: "b3 single deferred", h: header("b3", b3Trace+"-"+b3Span), trace: b3Trace, span: b3Span, hint: ptr(samplingDeferred)},
		{name: "b3 single sampling only: accept", h: header("b3", "1"), hint: ptr(samplingAccept)},
		{name: "b3 single sampling only: debug", h: header("b3", "d"), hint: ptr(samplingAccept)},
		{name: "b3 single sampling only: deny", h: header("b3", "0"), hint: ptr(samplingDeny)},

		{name: "b3 multi sampled", h: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-ParentSpanId", b3Parent, "X-B3-Sampled", "1"),
			trace: b3Trace, span: b3Span, sampled: true},
		{name: "b3 multi not sampled", h: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Sampled", "0"),
			trace: b3Trace, span: b3Span},
		{name: "b3 multi legacy true", h: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Sampled", "true"),
			trace: b3Trace, span: b3Span, sampled: true},
		{name: "b3 multi debug flag", h: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Flags", "1"),
			trace: b3Trace, span: b3Span, sampled: true},
		{name: "b3 multi 64-bit", h: header("X-B3-TraceId", b3Trace64, "X-B3-SpanId", b3Span, "X-B3-Sampled", "1"),
			trace: "0000000000000000" + b3Trace64, span: b3Span, sampled: true},
		{name: "b3 multi deferred", h: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span),
			trace: b3Trace, span: b3Span, hint: ptr(samplingDeferred)},
		{name: "b3 multi sampling only: deny", h: header("X-B3-Sampled", "0"), hint: ptr(samplingDeny)},
		{name: "b3 multi lower-case keys from HTTP/2 are canonical too", h: header("x-b3-traceid", b3Trace, "x-b3-spanid", b3Span, "x-b3-sampled", "1"),
			trace: b3Trace, span: b3Span, sampled: true},

		{name: "w3c wins over b3 single and multi", h: header("traceparent", tp, "b3", b3Trace+"-"+b3Span+"-0",
			"X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span), trace: w3cTrace, span: w3cSpan, sampled: true},
		{name: "b3 single wins over multi", h: header("b3", b3Trace+"-"+b3Span+"-1", "X-B3-TraceId", b3Trace64, "X-B3-SpanId", b3Parent),
			trace: b3Trace, span: b3Span, sampled: true},
		{name: "bad w3c falls back to b3", h: header("traceparent", "00-"+strings.ToUpper(w3cTrace)+"-"+w3cSpan+"-01", "b3", b3Trace+"-"+b3Span+"-1"),
			trace: b3Trace, span: b3Span, sampled: true},
		{name: "bad b3 single falls back to multi", h: header("b3", b3Trace+"-"+b3Span+"-x", "X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Sampled", "1"),
			trace: b3Trace, span: b3Span, sampled: true},

		// Malformed headers are ignored: the request starts a new trace.
		{name: "w3c upper case", h: header("traceparent", "00-"+strings.ToUpper(w3cTrace)+"-"+w3cSpan+"-01")},
		{name: "w3c short", h: header("traceparent", "00-"+w3cTrace[:30]+"-"+w3cSpan+"-01")},
		{name: "w3c version ff", h: header("traceparent", "ff-"+w3cTrace+"-"+w3cSpan+"-01")},
		{name: "w3c version 00 with extra field", h: header("traceparent", tp+"-extra")},
		{name: "w3c zero trace ID", h: header("traceparent", "00-00000000000000000000000000000000-"+w3cSpan+"-01")},
		{name: "w3c zero span ID", h: header("traceparent", "00-"+w3cTrace+"-0000000000000000-01")},
		{name: "w3c two traceparent headers", h: header("traceparent", tp, "traceparent", "00-"+b3Trace+"-"+b3Span+"-01")},
		{name: "b3 single trace ID only", h: header("b3", b3Trace)},
		{name: "b3 single dangling dash", h: header("b3", b3Trace+"-"+b3Span+"-")},
		{name: "b3 single bad sampling", h: header("b3", b3Trace+"-"+b3Span+"-2")},
		{name: "b3 single parent without sampling", h: header("b3", b3Trace+"-"+b3Span+"-"+b3Parent)},
		{name: "b3 single bad parent", h: header("b3", b3Trace+"-"+b3Span+"-1-xyz")},
		{name: "b3 single zero parent", h: header("b3", b3Trace+"-"+b3Span+"-1-0000000000000000")},
		{name: "b3 single 24-char trace ID", h: header("b3", b3Trace[:24]+"-"+b3Span+"-1")},
		{name: "b3 single upper case", h: header("b3", strings.ToUpper(b3Trace)+"-"+b3Span+"-1")},
		{name: "b3 single zero span", h: header("b3", b3Trace+"-0000000000000000-1")},
		{name: "b3 single sampling only: garbage", h: header("b3", "x")},
		{name: "b3 multi trace ID without span ID", h: header("X-B3-TraceId", b3Trace, "X-B3-Sampled", "1")},
		{name: "b3 multi parent without IDs", h: header("X-B3-ParentSpanId", b3Parent, "X-B3-Sampled", "1")},
		{name: "b3 multi bad sampled", h: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Sampled", "yes")},
		{name: "b3 multi d is single-header only", h: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Sampled", "d")},
		{name: "b3 multi bad span ID", h: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", "e457b5a2e4d86bdz")},
		{name: "b3 multi flags other than 1 ignored", h: header("X-B3-Flags", "2")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := Extract(context.Background(), tt.h)
			sc := trace.SpanContextFromContext(ctx)
			if tt.trace == "" {
				if sc.IsValid() {
					t.Fatalf("got span context %s/%s, want none", sc.TraceID(), sc.SpanID())
				}
			} else {
				if !sc.IsValid() || !sc.IsRemote() {
					t.Fatalf("got no valid remote span context, want %s/%s", tt.trace, tt.span)
				}
				if sc.TraceID() != mustTraceID(t, tt.trace) || sc.SpanID() != mustSpanID(t, tt.span) {
					t.Errorf("got %s/%s, want %s/%s", sc.TraceID(), sc.SpanID(), tt.trace, tt.span)
				}
				if sc.IsSampled() != tt.sampled {
					t.Errorf("sampled = %v, want %v", sc.IsSampled(), tt.sampled)
				}
				if got := sc.TraceState().String(); got != tt.tracestate {
					t.Errorf("tracestate = %q, want %q", got, tt.tracestate)
				}
			}
			hint, hinted := ctx.Value(hintKey{}).(sampling)
			switch {
			case tt.hint == nil && hinted:
				t.Errorf("sampling hint %d, want none", hint)
			case tt.hint != nil && !hinted:
				t.Errorf("no sampling hint, want %d", *tt.hint)
			case tt.hint != nil && hint != *tt.hint:
				t.Errorf("sampling hint %d, want %d", hint, *tt.hint)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestPropagationThroughTracer runs headers through a sidecar hop (StartInbound, then
// Inject on the request to the app) and checks what leaves: every format, consistent with
// one another, carrying the server span as parent and the caller's sampling decision.
func TestPropagationThroughTracer(t *testing.T) {
	tp := "00-" + w3cTrace + "-" + w3cSpan + "-01"
	tests := []struct {
		name        string
		in          http.Header
		ratio       float64
		wantTrace   string // "" means a new trace
		wantParent  string // the remote parent of the server span, "" for a root
		wantSampled bool
		tracestate  string
	}{
		{name: "w3c in", in: header("traceparent", tp, "tracestate", "rojo=00f067aa0ba902b7"),
			wantTrace: w3cTrace, wantParent: w3cSpan, wantSampled: true, tracestate: "rojo=00f067aa0ba902b7"},
		{name: "w3c unsampled stays unsampled at ratio 1", in: header("traceparent", "00-"+w3cTrace+"-"+w3cSpan+"-00"),
			ratio: 1, wantTrace: w3cTrace, wantParent: w3cSpan},
		{name: "w3c sampled is followed at ratio 0", in: header("traceparent", tp), ratio: -1,
			wantTrace: w3cTrace, wantParent: w3cSpan, wantSampled: true},
		{name: "b3 single in", in: header("b3", b3Trace+"-"+b3Span+"-1-"+b3Parent),
			wantTrace: b3Trace, wantParent: b3Span, wantSampled: true},
		{name: "b3 multi in", in: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Sampled", "1"),
			wantTrace: b3Trace, wantParent: b3Span, wantSampled: true},
		{name: "b3 multi unsampled", in: header("X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span, "X-B3-Sampled", "0"),
			wantTrace: b3Trace, wantParent: b3Span},
		{name: "both present: w3c wins", in: header("traceparent", tp, "b3", b3Trace+"-"+b3Span+"-0"),
			wantTrace: w3cTrace, wantParent: w3cSpan, wantSampled: true},
		{name: "b3 deferred decided here: ratio 1", in: header("b3", b3Trace+"-"+b3Span), ratio: 1,
			wantTrace: b3Trace, wantParent: b3Span, wantSampled: true},
		{name: "b3 deferred decided here: ratio 0", in: header("b3", b3Trace+"-"+b3Span), ratio: -1,
			wantTrace: b3Trace, wantParent: b3Span},
		{name: "b3 deny without IDs: new unsampled trace", in: header("b3", "0"), ratio: 1},
		{name: "b3 accept without IDs: new sampled trace at ratio 0", in: header("X-B3-Flags", "1"), ratio: -1, wantSampled: true},
		{name: "malformed: new trace", in: header("traceparent", "00-zz-"+w3cSpan+"-01", "b3", "garbage"), ratio: 1, wantSampled: true},
		{name: "nothing at ratio 1: new sampled trace", in: header(), ratio: 1, wantSampled: true},
		{name: "nothing at ratio 0: new unsampled trace", in: header(), ratio: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, exp := newTestTracer(t, Config{SampleRatio: tt.ratio})
			r := httptest.NewRequest(http.MethodGet, "http://frontend/items", nil)
			r.Header = tt.in
			ctx, span := tr.StartInbound(context.Background(), r, "client")

			toApp := header("X-B3-ParentSpanId", b3Parent, "X-B3-Flags", "1", "Accept", "*/*")
			tr.Inject(ctx, toApp)
			span.End(Result{Status: 200})

			sc := span.SpanContext()
			if !sc.IsValid() {
				t.Fatal("server span has no valid span context")
			}
			if tt.wantTrace != "" && sc.TraceID() != mustTraceID(t, tt.wantTrace) {
				t.Errorf("trace ID %s, want %s", sc.TraceID(), tt.wantTrace)
			}
			if tt.wantTrace == "" && (sc.TraceID() == mustTraceID(t, w3cTrace) || sc.TraceID() == mustTraceID(t, b3Trace)) {
				t.Errorf("trace ID %s reused a malformed header's", sc.TraceID())
			}
			if sc.IsSampled() != tt.wantSampled || span.Recording() != tt.wantSampled {
				t.Errorf("sampled %v, recording %v; want %v", sc.IsSampled(), span.Recording(), tt.wantSampled)
			}

			// Out: every format, the same IDs in each, stale B3 headers gone.
			tid, sid := sc.TraceID().String(), sc.SpanID().String()
			flag, flags := "0", "00"
			if tt.wantSampled {
				flag, flags = "1", "01"
			}
			want := map[string]string{
				"Traceparent":  "00-" + tid + "-" + sid + "-" + flags,
				"B3":           tid + "-" + sid + "-" + flag,
				"X-B3-Traceid": tid,
				"X-B3-Spanid":  sid,
				"X-B3-Sampled": flag,
				"Accept":       "*/*",
			}
			if tt.tracestate != "" {
				want["Tracestate"] = tt.tracestate
			}
			if len(toApp) != len(want) {
				t.Errorf("headers to the app: %v, want exactly %v", toApp, want)
			}
			for k, v := range want {
				if got := toApp[k]; len(got) != 1 || got[0] != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			// What the app receives extracts back to the server span, whatever format it reads.
			for _, only := range []string{"Traceparent", "B3", "X-B3-Traceid"} {
				h := http.Header{}
				for k, v := range toApp {
					if k == only || (only == "X-B3-Traceid" && strings.HasPrefix(k, "X-B3-")) {
						h[k] = v
					}
				}
				got := trace.SpanContextFromContext(Extract(context.Background(), h))
				if got.TraceID() != sc.TraceID() || got.SpanID() != sc.SpanID() || got.IsSampled() != sc.IsSampled() {
					t.Errorf("an app reading only %s gets %s/%s sampled=%v, want %s/%s sampled=%v", only,
						got.TraceID(), got.SpanID(), got.IsSampled(), sc.TraceID(), sc.SpanID(), sc.IsSampled())
				}
			}

			spans := flushed(t, tr, exp)
			if !tt.wantSampled {
				if len(spans) != 0 {
					t.Errorf("exported %d spans of an unsampled trace", len(spans))
				}
				return
			}
			if len(spans) != 1 {
				t.Fatalf("exported %d spans, want 1", len(spans))
			}
			p := spans[0].Parent
			switch {
			case tt.wantParent == "" && p.IsValid():
				t.Errorf("server span has parent %s, want a root", p.SpanID())
			case tt.wantParent != "" && (p.SpanID() != mustSpanID(t, tt.wantParent) || !p.IsRemote()):
				t.Errorf("server span parent %s (remote %v), want remote %s", p.SpanID(), p.IsRemote(), tt.wantParent)
			}
		})
	}
}

// TestInjectFormats checks that Config.Propagation selects the formats written, and that
// the formats left out are removed rather than passed on stale.
func TestInjectFormats(t *testing.T) {
	stale := func() http.Header {
		return header("traceparent", "00-"+w3cTrace+"-"+w3cSpan+"-01", "tracestate", "a=b",
			"b3", b3Trace+"-"+b3Span+"-1", "X-B3-TraceId", b3Trace, "X-B3-SpanId", b3Span,
			"X-B3-Sampled", "1", "X-B3-ParentSpanId", b3Parent, "X-B3-Flags", "1")
	}
	tests := []struct {
		p    Propagation
		want []string
	}{
		{0, []string{"Traceparent", "B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled"}},
		{PropagateW3C, []string{"Traceparent"}},
		{PropagateB3Single, []string{"B3"}},
		{PropagateB3Multi, []string{"X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled"}},
		{PropagateW3C | PropagateB3Multi, []string{"Traceparent", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled"}},
	}
	for _, tt := range tests {
		t.Run(tt.p.String(), func(t *testing.T) {
			tr, _ := newTestTracer(t, Config{Propagation: tt.p})
			ctx, span := tr.StartOutbound(context.Background(), httptest.NewRequest("GET", "/", nil), "catalog")
			defer span.End(Result{})
			h := stale()
			tr.Inject(ctx, h)
			if len(h) != len(tt.want) {
				t.Errorf("got headers %v, want only %v", h, tt.want)
			}
			for _, k := range tt.want {
				if len(h[k]) != 1 {
					t.Errorf("%s missing", k)
				}
			}
			if got := trace.SpanContextFromContext(Extract(context.Background(), h)); got.SpanID() != span.SpanContext().SpanID() {
				t.Errorf("extracting the injected headers gives span %s, want %s", got.SpanID(), span.SpanContext().SpanID())
			}
		})
	}
}

func TestPropagationText(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    Propagation
		wantErr bool
	}{
		{"w3c", PropagateW3C, false},
		{"W3C, b3", PropagateW3C | PropagateB3Single, false},
		{"b3multi,b3", PropagateB3Single | PropagateB3Multi, false},
		{"all", propagateAll, false},
		{"", 0, false},
		{"zipkin", 0, true},
	} {
		var p Propagation
		err := p.UnmarshalText([]byte(tt.in))
		if (err != nil) != tt.wantErr || p != tt.want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v, error %v", tt.in, p, err, tt.want, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), `"zipkin"`) {
			t.Errorf("error %q does not name the bad value", err)
		}
		if err == nil {
			var back Propagation
			if text, _ := p.MarshalText(); back.UnmarshalText(text) != nil || back != p {
				t.Errorf("%v does not survive MarshalText/UnmarshalText", p)
			}
		}
	}
}

// TestInjectWithoutSpanKeepsHeaders: a context without a span changes nothing.
func TestInjectWithoutSpanKeepsHeaders(t *testing.T) {
	tr, _ := newTestTracer(t, Config{})
	h := header("traceparent", "00-"+w3cTrace+"-"+w3cSpan+"-01", "X-B3-Flags", "1")
	tr.Inject(context.Background(), h)
	if len(h) != 2 || h.Get("traceparent") != "00-"+w3cTrace+"-"+w3cSpan+"-01" {
		t.Errorf("headers %v changed by an Inject without a span", h)
	}
}
