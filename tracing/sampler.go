package tracing

import (
	"fmt"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// sampler is the SDK's ParentBased(TraceIDRatioBased(ratio)) with the B3 cases a span
// context cannot express, read from the hint Extract leaves in the context:
//
//   - a remote parent whose B3 headers deferred the decision is decided here, by ratio;
//   - B3 headers with a decision but no IDs ("b3: 1", "X-B3-Sampled: 0") decide the new
//     root: 1 or d starts a sampled trace, 0 an unsampled one.
//
// Everything else follows the parent: a sampled parent always, an unsampled one never, and
// a request without any context starts a trace at ratio.
type sampler struct {
	ratio sdktrace.Sampler
	desc  string
}

func newSampler(ratio float64) sampler {
	return sampler{
		ratio: sdktrace.TraceIDRatioBased(ratio),
		desc:  fmt.Sprintf("PodmeshParentBased{root:TraceIDRatioBased{%g}}", ratio),
	}
}

func (s sampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	psc := trace.SpanContextFromContext(p.ParentContext)
	if psc.IsValid() && !psc.IsRemote() {
		return follow(psc)
	}
	hint, hinted := p.ParentContext.Value(hintKey{}).(sampling)
	if psc.IsValid() {
		if hinted && hint == samplingDeferred {
			return s.ratio.ShouldSample(p)
		}
		return follow(psc)
	}
	switch {
	case hinted && hint == samplingAccept:
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample}
	case hinted && hint == samplingDeny:
		return sdktrace.SamplingResult{Decision: sdktrace.Drop}
	}
	return s.ratio.ShouldSample(p)
}

func follow(psc trace.SpanContext) sdktrace.SamplingResult {
	d := sdktrace.Drop
	if psc.IsSampled() {
		d = sdktrace.RecordAndSample
	}
	return sdktrace.SamplingResult{Decision: d, Tracestate: psc.TraceState()}
}

func (s sampler) Description() string { return s.desc }

var _ sdktrace.Sampler = sampler{}
