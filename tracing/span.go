package tracing

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Span is one request's or one attempt's span. It is a small value: pass it by value. The
// zero Span (tracing off) and an unsampled span accept every call and record nothing.
type Span struct {
	span   trace.Span // nil when tracing is off
	rec    bool       // span.IsRecording(), cached
	client bool
	grpc   bool
}

// Result is how a request or an attempt ended, for Span.End.
type Result struct {
	// Status is the HTTP response status, 0 when no response arrived.
	Status int
	// GRPCStatus is the grpc-status trailer (or header, for a trailers-only response) of a
	// gRPC request, "" when there was none.
	GRPCStatus string
	// RequestBytes and ResponseBytes are the body bytes sent and received; values <= 0 are
	// not recorded.
	RequestBytes, ResponseBytes int64
	// Err is the transport error (dial, reset, timeout) when the request failed without a
	// response, or failed while its body was being copied.
	Err error
}

// Recording reports whether the span is sampled and records what it is given; callers can
// skip building event details when it is false.
func (s Span) Recording() bool { return s.rec }

// SpanContext returns the span's trace and span IDs (valid also for an unsampled span when
// tracing is on; zero when off).
func (s Span) SpanContext() trace.SpanContext {
	if s.span == nil {
		return trace.SpanContext{}
	}
	return s.span.SpanContext()
}

// Event names and attribute keys of Podmesh's own span data.
const (
	EventRetry     = "podmesh.retry"
	EventEjection  = "podmesh.ejection"
	attrDirection  = attribute.Key("podmesh.direction")
	attrSource     = attribute.Key("podmesh.source")
	attrDest       = attribute.Key("podmesh.destination")
	attrAttempt    = attribute.Key("podmesh.attempt")
	attrReason     = attribute.Key("podmesh.reason")
	attrEndpoint   = attribute.Key("podmesh.endpoint")
	grpcStatusOK   = "0"
	contentTypeRPC = "application/grpc"
)

// Retry records on the outbound span that attempt number next is about to be made, and why
// ("5xx", "reset", "connect-failure"...).
func (s Span) Retry(next int, reason string) {
	if !s.rec {
		return
	}
	s.span.AddEvent(EventRetry, trace.WithAttributes(attrAttempt.Int(next), attrReason.String(reason)))
}

// Ejected records that endpoint (host:port) was ejected from load balancing, and why
// ("consecutive-5xx", "consecutive-gateway-failure"...). Call it on the attempt span whose
// outcome caused the ejection.
func (s Span) Ejected(endpoint, reason string) {
	if !s.rec {
		return
	}
	s.span.AddEvent(EventEjection, trace.WithAttributes(attrEndpoint.String(endpoint), attrReason.String(reason)))
}

// End records the result and ends the span. Call it once; later calls do nothing.
//
// Status: Error for a transport error, an HTTP status >= 500, and for gRPC the codes the
// semantic conventions call errors (on a server span UNKNOWN, DEADLINE_EXCEEDED,
// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS; on a client span anything but OK). A 4xx
// leaves the status unset on both kinds: a 404 from an upstream is the caller's business,
// not a mesh failure (the conventions say a client SHOULD mark it; Envoy and Linkerd don't).
func (s Span) End(res Result) {
	if s.span == nil {
		return
	}
	if s.rec {
		s.record(res)
	}
	s.span.End()
}

func (s Span) record(res Result) {
	attrs := make([]attribute.KeyValue, 0, 5)
	if res.Status > 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(res.Status))
	}
	if res.RequestBytes > 0 {
		attrs = append(attrs, semconv.HTTPRequestBodySize(int(res.RequestBytes)))
	}
	if res.ResponseBytes > 0 {
		attrs = append(attrs, semconv.HTTPResponseBodySize(int(res.ResponseBytes)))
	}
	errType, desc, failed := "", "", false
	if s.grpc && res.GRPCStatus != "" {
		code, err := strconv.Atoi(res.GRPCStatus)
		if err == nil && code >= 0 {
			attrs = append(attrs, semconv.RPCGRPCStatusCodeKey.Int(code))
			if grpcFailed(code, s.client) {
				failed, errType = true, res.GRPCStatus
			}
		}
	}
	switch {
	case res.Err != nil:
		failed, errType, desc = true, errorType(res.Err), res.Err.Error()
	case res.Status >= 500:
		failed = true
		if errType == "" {
			errType = strconv.Itoa(res.Status)
		}
	}
	if failed {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
		s.span.SetStatus(codes.Error, desc)
	}
	s.span.SetAttributes(attrs...)
}

// grpcFailed applies the RPC semantic conventions' span status rules.
func grpcFailed(code int, client bool) bool {
	if client {
		return code != 0
	}
	switch code {
	case 2, 4, 12, 13, 14, 15: // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
		return true
	}
	return false
}

// errorType names a transport error's class for error.type, from a small fixed set so the
// attribute stays low-cardinality.
func errorType(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return "connect"
	}
	return "transport"
}

type direction uint8

const (
	dirInbound direction = iota + 1
	dirOutbound
)

var directionAttrs = [...]attribute.KeyValue{
	dirInbound:  attrDirection.String("inbound"),
	dirOutbound: attrDirection.String("outbound"),
}

// spanName follows the conventions: "{method}" for HTTP (the route is unknown to a proxy,
// and a path would make names unbounded), "{service}/{method}" for gRPC.
func spanName(r *http.Request) (name string, grpc bool) {
	if isGRPC(r.Header) && len(r.URL.Path) > 1 {
		return r.URL.Path[1:], true
	}
	if _, known := methodAttrs[r.Method]; !known {
		return "HTTP", false
	}
	return r.Method, false
}

func isGRPC(h http.Header) bool {
	v := h["Content-Type"]
	return len(v) > 0 && strings.HasPrefix(v[0], contentTypeRPC)
}

// methodAttrs holds the known methods' attributes, prebuilt; anything else is _OTHER with
// http.request.method_original, as the conventions say.
var methodAttrs = map[string]attribute.KeyValue{
	http.MethodGet:     semconv.HTTPRequestMethodGet,
	http.MethodHead:    semconv.HTTPRequestMethodHead,
	http.MethodPost:    semconv.HTTPRequestMethodPost,
	http.MethodPut:     semconv.HTTPRequestMethodPut,
	http.MethodPatch:   semconv.HTTPRequestMethodPatch,
	http.MethodDelete:  semconv.HTTPRequestMethodDelete,
	http.MethodConnect: semconv.HTTPRequestMethodConnect,
	http.MethodOptions: semconv.HTTPRequestMethodOptions,
	http.MethodTrace:   semconv.HTTPRequestMethodTrace,
}

// commonAttributes are the attributes of both span kinds.
func commonAttributes(attrs []attribute.KeyValue, r *http.Request, grpc bool) []attribute.KeyValue {
	if a, ok := methodAttrs[r.Method]; ok {
		attrs = append(attrs, a)
	} else {
		attrs = append(attrs, semconv.HTTPRequestMethodOther, semconv.HTTPRequestMethodOriginal(r.Method))
	}
	attrs = append(attrs, semconv.URLPath(r.URL.Path))
	switch {
	case r.ProtoMajor == 2:
		attrs = append(attrs, semconv.NetworkProtocolVersion("2"))
	case r.ProtoMajor == 1 && r.ProtoMinor == 1:
		attrs = append(attrs, semconv.NetworkProtocolVersion("1.1"))
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		attrs = append(attrs, semconv.NetworkProtocolVersion("1.0"))
	}
	if grpc {
		attrs = append(attrs, semconv.RPCSystemGRPC)
		svc, method, _ := strings.Cut(r.URL.Path[1:], "/")
		attrs = append(attrs, semconv.RPCService(svc), semconv.RPCMethod(method))
	}
	return attrs
}

func serverAttributes(r *http.Request, grpc bool, dir direction, source, destination string) []attribute.KeyValue {
	attrs := commonAttributes(make([]attribute.KeyValue, 0, 16), r, grpc)
	scheme := semconv.URLScheme("http")
	if r.TLS != nil {
		scheme = semconv.URLScheme("https")
	}
	attrs = append(attrs, scheme, directionAttrs[dir])
	if host, port := splitHostPort(r.Host); host != "" {
		attrs = append(attrs, semconv.ServerAddress(host))
		if port > 0 {
			attrs = append(attrs, semconv.ServerPort(port))
		}
	}
	if host, port := splitHostPort(r.RemoteAddr); host != "" {
		attrs = append(attrs, semconv.NetworkPeerAddress(host))
		if port > 0 {
			attrs = append(attrs, semconv.NetworkPeerPort(port))
		}
	}
	if dir == dirInbound && source != "" {
		attrs = append(attrs, semconv.PeerService(source)) // the caller is the remote service
	}
	return appendServices(attrs, source, destination)
}

func clientAttributes(r *http.Request, grpc bool, source, destination string, attempt int) []attribute.KeyValue {
	attrs := commonAttributes(make([]attribute.KeyValue, 0, 16), r, grpc)
	attrs = append(attrs, directionAttrs[dirOutbound], attrAttempt.Int(attempt))
	if attempt > 1 {
		attrs = append(attrs, semconv.HTTPRequestResendCount(attempt-1))
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	if h, port := splitHostPort(host); h != "" {
		attrs = append(attrs, semconv.ServerAddress(h))
		if port > 0 {
			attrs = append(attrs, semconv.ServerPort(port))
		}
	}
	if h, port := splitHostPort(r.URL.Host); h != "" {
		attrs = append(attrs, semconv.NetworkPeerAddress(h))
		if port > 0 {
			attrs = append(attrs, semconv.NetworkPeerPort(port))
		}
	}
	if destination != "" {
		attrs = append(attrs, semconv.PeerService(destination))
	}
	return appendServices(attrs, source, destination)
}

func appendServices(attrs []attribute.KeyValue, source, destination string) []attribute.KeyValue {
	if source != "" {
		attrs = append(attrs, attrSource.String(source))
	}
	if destination != "" {
		attrs = append(attrs, attrDest.String(destination))
	}
	return attrs
}

// splitHostPort splits "host", "host:port", "[v6]" or "[v6]:port" without allocating; the
// port is 0 when absent or not a number.
func splitHostPort(s string) (host string, port int) {
	if s == "" {
		return "", 0
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", 0
		}
		host, rest := s[1:end], s[end+1:]
		if len(rest) > 1 && rest[0] == ':' {
			port, _ = strconv.Atoi(rest[1:])
		}
		return host, port
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return s, 0
	}
	if strings.IndexByte(s[:i], ':') >= 0 { // a bare IPv6 address
		return s, 0
	}
	port, _ = strconv.Atoi(s[i+1:])
	return s[:i], port
}
