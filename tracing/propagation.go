package tracing

// W3C Trace Context is read and written with the OpenTelemetry propagator
// (go.opentelemetry.io/otel/propagation.TraceContext), through a carrier that adds the two
// multi-header rules of the specification. B3 is parsed and written here rather than with
// go.opentelemetry.io/contrib/propagators/b3, for three reasons: a B3 request that defers
// the sampling decision (IDs without a sampled flag) must be decided by this sidecar's
// ratio, and one with a decision but no IDs ("b3: 0") must decide the new root, but the
// contrib propagator keeps those states in its own unexported context keys, where the
// sampler cannot see them (the SDK would then drop every deferred B3 request as
// unsampled); the precedence (W3C, then single, then multi) is explicit in one function;
// and it is ~150 lines without a new module. The parsers are fuzzed against the grammar
// and against re-injection.

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Propagation is a set of trace header formats to write into outgoing requests. It
// implements encoding.TextMarshaler and TextUnmarshaler ("w3c,b3,b3multi"), so it can be a
// flag (flag.TextVar) or a YAML field.
type Propagation uint8

// The formats.
const (
	// PropagateW3C writes traceparent and tracestate (W3C Trace Context).
	PropagateW3C Propagation = 1 << iota
	// PropagateB3Single writes the single b3 header: {TraceId}-{SpanId}-{Sampled}.
	PropagateB3Single
	// PropagateB3Multi writes X-B3-TraceId, X-B3-SpanId and X-B3-Sampled (Zipkin style).
	PropagateB3Multi

	propagateAll = PropagateW3C | PropagateB3Single | PropagateB3Multi
)

var propagationNames = [...]struct {
	p    Propagation
	name string
}{{PropagateW3C, "w3c"}, {PropagateB3Single, "b3"}, {PropagateB3Multi, "b3multi"}}

// String returns the formats as a comma-separated list ("w3c,b3,b3multi"); the zero value
// is "" (which Config reads as all formats).
func (p Propagation) String() string {
	var b strings.Builder
	for _, n := range propagationNames {
		if p&n.p != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n.name)
		}
	}
	return b.String()
}

// MarshalText implements encoding.TextMarshaler.
func (p Propagation) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: a comma-separated list of "w3c", "b3"
// and "b3multi" (case-insensitive); "all" is every format.
func (p *Propagation) UnmarshalText(text []byte) error {
	var out Propagation
	for _, f := range strings.Split(string(text), ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		if f == "" {
			continue
		}
		if f == "all" {
			out |= propagateAll
			continue
		}
		found := false
		for _, n := range propagationNames {
			if n.name == f {
				out |= n.p
				found = true
			}
		}
		if !found {
			return fmt.Errorf("tracing: propagation format %q: want w3c, b3, b3multi or all", f)
		}
	}
	*p = out
	return nil
}

// Header names, in the canonical form net/http (and its HTTP/2 server, which carries gRPC
// metadata) gives them, so lookups are plain map accesses.
const (
	hdrTraceparent  = "Traceparent"
	hdrTracestate   = "Tracestate"
	hdrB3           = "B3"
	hdrB3TraceID    = "X-B3-Traceid"
	hdrB3SpanID     = "X-B3-Spanid"
	hdrB3ParentID   = "X-B3-Parentspanid"
	hdrB3Sampled    = "X-B3-Sampled"
	hdrB3Flags      = "X-B3-Flags"
	w3cVersion      = "00"
	traceparentSize = 55 // 00-{32}-{16}-{2}
)

// sampling is a caller's sampling decision, as far as a header says one.
type sampling uint8

const (
	samplingDeferred sampling = iota // no decision: this hop decides (B3 without a flag)
	samplingDeny                     // "0": do not sample
	samplingAccept                   // "1", "d" (debug) or X-B3-Flags: 1
)

// hintKey marks a context whose extracted B3 headers carried a sampling state that a
// SpanContext cannot express: a deferred decision next to trace IDs, or a decision with no
// IDs at all. The sampler reads it; nothing else does.
type hintKey struct{}

// Extract returns ctx carrying the trace context found in h, as the remote parent of the
// next span started from it. Formats are tried in order, and the first valid one wins: W3C
// traceparent (with its tracestate), then the single b3 header, then the X-B3-* headers.
// A malformed header is ignored, as if absent, so the request starts a new trace. h must
// have canonical keys, as every http.Header from net/http does.
func Extract(ctx context.Context, h http.Header) context.Context {
	if len(h) == 0 {
		return ctx
	}
	if out := (propagation.TraceContext{}).Extract(ctx, w3cCarrier(h)); out != ctx {
		return out
	}
	if v := h[hdrB3]; len(v) > 0 {
		if c, ok := parseB3Single(v[0]); ok {
			return c.context(ctx)
		}
	}
	if c, ok := parseB3Multi(h); ok {
		return c.context(ctx)
	}
	return ctx
}

// w3cCarrier adapts http.Header to the OpenTelemetry W3C propagator with the two rules the
// Trace Context specification adds: more than one traceparent header is invalid, and
// several tracestate headers are one list.
type w3cCarrier http.Header

func (c w3cCarrier) Get(key string) string {
	switch key {
	case "traceparent":
		if v := c[hdrTraceparent]; len(v) == 1 {
			return v[0]
		}
	case "tracestate":
		switch v := c[hdrTracestate]; len(v) {
		case 0:
		case 1:
			return v[0]
		default:
			return strings.Join(v, ",")
		}
	}
	return ""
}

func (c w3cCarrier) Set(key, value string) { http.Header(c).Set(key, value) }
func (c w3cCarrier) Keys() []string        { return []string{"traceparent", "tracestate"} }

// b3Context is what a set of B3 headers says.
type b3Context struct {
	traceID  trace.TraceID
	spanID   trace.SpanID
	hasIDs   bool
	sampling sampling
}

// context puts c into ctx: a remote span context when c has IDs, and a sampling hint when
// the decision is one the span context's flags cannot carry.
func (c b3Context) context(ctx context.Context) context.Context {
	if !c.hasIDs {
		if c.sampling == samplingDeferred {
			return ctx
		}
		return context.WithValue(ctx, hintKey{}, c.sampling)
	}
	var flags trace.TraceFlags
	if c.sampling == samplingAccept {
		flags = trace.FlagsSampled
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: c.traceID, SpanID: c.spanID, TraceFlags: flags, Remote: true,
	})
	if c.sampling == samplingDeferred {
		ctx = context.WithValue(ctx, hintKey{}, samplingDeferred)
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// parseB3Single parses the b3 header (github.com/openzipkin/b3-propagation):
//
//	{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]   or   {SamplingState}
//
// TraceId is 16 or 32 lower-hex characters (a 64-bit ID is left-padded with zeros), SpanId
// and ParentSpanId 16; SamplingState is 0, 1 or d (debug, which implies sampled). The parent
// ID is checked but not used: the sender's span ID is the parent that matters here.
func parseB3Single(v string) (b3Context, bool) {
	var c b3Context
	if len(v) == 1 {
		s, ok := parseB3Sampling(v)
		c.sampling = s
		return c, ok && s != samplingDeferred
	}
	tid, rest, ok := strings.Cut(v, "-")
	if !ok || !decodeTraceID(&c.traceID, tid) {
		return b3Context{}, false
	}
	sid, rest, more := strings.Cut(rest, "-")
	if !decodeHex(c.spanID[:], sid) || !c.spanID.IsValid() {
		return b3Context{}, false
	}
	c.hasIDs = true
	if !more {
		return c, true
	}
	flag, parent, hasParent := strings.Cut(rest, "-")
	if len(flag) != 1 {
		return b3Context{}, false
	}
	if c.sampling, ok = parseB3Sampling(flag); !ok || c.sampling == samplingDeferred {
		return b3Context{}, false
	}
	if hasParent {
		var p trace.SpanID
		if !decodeHex(p[:], parent) || !p.IsValid() {
			return b3Context{}, false
		}
	}
	return c, true
}

// parseB3Sampling reads a sampling state: "0" or "1", or "d" (debug) in the single header.
// The multi-header X-B3-Sampled also accepts "true" and "false" from old Zipkin clients.
func parseB3Sampling(v string) (sampling, bool) {
	switch v {
	case "":
		return samplingDeferred, true
	case "0", "false":
		return samplingDeny, true
	case "1", "true", "d":
		return samplingAccept, true
	}
	return samplingDeferred, false
}

// parseB3Multi parses the X-B3-* headers. TraceId and SpanId come together or not at all;
// ParentSpanId needs them. X-B3-Flags: 1 means debug, which implies sampled; other values are
// ignored, as the B3 specification says. ok is false when nothing usable is there.
func parseB3Multi(h http.Header) (b3Context, bool) {
	var c b3Context
	tid, sid := first(h, hdrB3TraceID), first(h, hdrB3SpanID)
	parent := first(h, hdrB3ParentID)
	s, ok := parseB3Sampling(first(h, hdrB3Sampled))
	if !ok || (first(h, hdrB3Sampled) == "d") {
		return b3Context{}, false
	}
	c.sampling = s
	if first(h, hdrB3Flags) == "1" {
		c.sampling = samplingAccept
	}
	switch {
	case tid == "" && sid == "":
		if parent != "" {
			return b3Context{}, false
		}
		return c, c.sampling != samplingDeferred
	case tid == "" || sid == "":
		return b3Context{}, false
	}
	if !decodeTraceID(&c.traceID, tid) || !decodeHex(c.spanID[:], sid) || !c.spanID.IsValid() {
		return b3Context{}, false
	}
	if parent != "" {
		var p trace.SpanID
		if !decodeHex(p[:], parent) || !p.IsValid() {
			return b3Context{}, false
		}
	}
	c.hasIDs = true
	return c, true
}

func first(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// decodeTraceID reads a 32- or 16-character B3 trace ID; a 64-bit one fills the low half.
func decodeTraceID(dst *trace.TraceID, s string) bool {
	switch len(s) {
	case 32:
		if !decodeHex(dst[:], s) {
			return false
		}
	case 16:
		*dst = trace.TraceID{}
		if !decodeHex(dst[8:], s) {
			return false
		}
	default:
		return false
	}
	return dst.IsValid()
}

// decodeHex decodes exactly len(dst)*2 lower-hex characters. It does not allocate.
func decodeHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := 0; i < len(dst); i++ {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// traceHeaders lists every header Inject owns: it removes them all before writing the
// formats it is configured for, so stale values from the app never reach the next hop.
var traceHeaders = [...]string{
	hdrTraceparent, hdrTracestate, hdrB3, hdrB3TraceID, hdrB3SpanID, hdrB3ParentID,
	hdrB3Sampled, hdrB3Flags,
}

// inject writes sc into h in the formats p selects, after removing every trace header h
// had. An invalid sc leaves h alone: the headers the app sent pass through. All header
// values are cut from one string, so a full injection costs two allocations plus what the
// map needs for new keys (and tracestate when there is one).
func inject(sc trace.SpanContext, p Propagation, h http.Header) {
	if !sc.IsValid() {
		return
	}
	for _, k := range traceHeaders {
		delete(h, k)
	}
	// buf: "00-{trace}-{span}-0f" then "{trace}-{span}-s": 55 + 51 bytes.
	var buf [traceparentSize + 51]byte
	tid, sid := sc.TraceID(), sc.SpanID()
	copy(buf[0:], w3cVersion+"-")
	hex.Encode(buf[3:35], tid[:])
	buf[35] = '-'
	hex.Encode(buf[36:52], sid[:])
	buf[52] = '-'
	const hexDigits = "0123456789abcdef"
	f := byte(sc.TraceFlags())
	buf[53], buf[54] = hexDigits[f>>4], hexDigits[f&0xf]
	copy(buf[55:], buf[3:53]) // "{trace}-{span}-"
	sampled := byte('0')
	if sc.IsSampled() {
		sampled = '1'
	}
	buf[105] = sampled
	s := string(buf[:])
	vals := new([5]string)
	vals[0], vals[1], vals[2], vals[3] = s[:55], s[55:], s[3:35], s[36:52]
	vals[4] = s[105:]
	if p&PropagateW3C != 0 {
		h[hdrTraceparent] = vals[0:1:1]
		if ts := sc.TraceState(); ts.Len() > 0 {
			h[hdrTracestate] = []string{ts.String()}
		}
	}
	if p&PropagateB3Single != 0 {
		h[hdrB3] = vals[1:2:2]
	}
	if p&PropagateB3Multi != 0 {
		h[hdrB3TraceID] = vals[2:3:3]
		h[hdrB3SpanID] = vals[3:4:4]
		h[hdrB3Sampled] = vals[4:5:5]
	}
}
