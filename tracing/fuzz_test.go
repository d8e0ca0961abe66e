package tracing

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// FuzzExtract feeds arbitrary trace headers to Extract. It must never panic; whatever it
// accepts must survive injection and re-extraction unchanged in every format; and a valid
// traceparent must always win.
func FuzzExtract(f *testing.F) {
	tp := "00-" + w3cTrace + "-" + w3cSpan + "-01"
	f.Add(tp, "rojo=00f067aa0ba902b7", "", "", "", "", "", "")
	f.Add("", "", b3Trace+"-"+b3Span+"-1-"+b3Parent, "", "", "", "", "")
	f.Add("", "", b3Trace64+"-"+b3Span, "", "", "", "", "")
	f.Add("", "", "d", "", "", "", "", "")
	f.Add("", "", "", b3Trace, b3Span, b3Parent, "1", "")
	f.Add("", "", "", b3Trace64, b3Span, "", "", "1")
	f.Add("", "", "", "", "", "", "0", "")
	f.Add("cc-"+w3cTrace+"-"+w3cSpan+"-01-x", "a=1,b=2", b3Trace+"-"+b3Span+"-0", b3Trace, b3Span, "", "true", "")
	f.Add("00-"+w3cTrace+"-"+w3cSpan+"-01-", "", "-", "-", "-", "-", "-", "-")
	f.Fuzz(func(t *testing.T, traceparent, tracestate, b3, tid, sid, pid, sampled, flags string) {
		h := http.Header{}
		for k, v := range map[string]string{
			hdrTraceparent: traceparent, hdrTracestate: tracestate, hdrB3: b3, hdrB3TraceID: tid,
			hdrB3SpanID: sid, hdrB3ParentID: pid, hdrB3Sampled: sampled, hdrB3Flags: flags,
		} {
			if v != "" {
				h[k] = []string{v}
			}
		}
		ctx := Extract(context.Background(), h)
		sc := trace.SpanContextFromContext(ctx)

		// W3C precedence: whatever the OpenTelemetry W3C propagator accepts is the answer.
		w3c := trace.SpanContextFromContext((propagation.TraceContext{}).Extract(context.Background(), propagation.HeaderCarrier(h)))
		if w3c.IsValid() && !sc.Equal(w3c) {
			t.Fatalf("valid traceparent %q gave %v, but Extract returned %v", traceparent, w3c, sc)
		}
		if !sc.IsValid() {
			return
		}
		if !sc.IsRemote() {
			t.Fatal("extracted span context is not remote")
		}
		out := http.Header{}
		inject(sc, propagateAll, out)
		for _, only := range []string{hdrTraceparent, hdrB3, hdrB3TraceID} {
			hh := http.Header{}
			for k, v := range out {
				if k == only || (only == hdrB3TraceID && strings.HasPrefix(k, "X-B3-")) || (only == hdrTraceparent && k == hdrTracestate) {
					hh[k] = v
				}
			}
			back := trace.SpanContextFromContext(Extract(context.Background(), hh))
			if back.TraceID() != sc.TraceID() || back.SpanID() != sc.SpanID() || back.IsSampled() != sc.IsSampled() {
				t.Fatalf("%s round trip: %v became %v (headers %v)", only, sc, back, hh)
			}
			if only == hdrTraceparent && back.TraceState().String() != sc.TraceState().String() {
				t.Fatalf("tracestate %q became %q", sc.TraceState(), back.TraceState())
			}
		}
	})
}

// FuzzB3Single checks the single-header parser against the grammar's shape: anything it
// accepts has one of the legal lengths and alphabets, and re-encodes to the same IDs.
func FuzzB3Single(f *testing.F) {
	for _, s := range []string{
		b3Trace + "-" + b3Span, b3Trace + "-" + b3Span + "-1", b3Trace + "-" + b3Span + "-d-" + b3Parent,
		b3Trace64 + "-" + b3Span + "-0", "0", "1", "d", "", "-", b3Trace + "--1", b3Trace + "-" + b3Span + "-1-",
	} {
		f.Add(s)
	}
	legal := map[int]bool{1: true, 33: true, 35: true, 52: true, 49: true, 51: true, 68: true}
	f.Fuzz(func(t *testing.T, v string) {
		c, ok := parseB3Single(v)
		if !ok {
			return
		}
		if !legal[len(v)] || strings.Trim(v, "0123456789abcdef-") != "" {
			t.Fatalf("accepted %q (length %d), outside the grammar", v, len(v))
		}
		if !c.hasIDs {
			if len(v) != 1 || c.sampling == samplingDeferred {
				t.Fatalf("accepted %q without IDs or a decision", v)
			}
			return
		}
		if !c.traceID.IsValid() || !c.spanID.IsValid() {
			t.Fatalf("accepted %q with a zero ID", v)
		}
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: c.traceID, SpanID: c.spanID,
			TraceFlags: map[bool]trace.TraceFlags{true: trace.FlagsSampled}[c.sampling == samplingAccept]})
		h := http.Header{}
		inject(sc, PropagateB3Single, h)
		back, ok := parseB3Single(h[hdrB3][0])
		if !ok || back.traceID != c.traceID || back.spanID != c.spanID || (back.sampling == samplingAccept) != (c.sampling == samplingAccept) {
			t.Fatalf("%q re-encoded as %q parses to %+v, want %+v", v, h[hdrB3][0], back, c)
		}
	})
}
