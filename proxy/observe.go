package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/podmesh/podmesh/lb"
	"github.com/podmesh/podmesh/tracing"
)

// PeerNamer is an optional capability of a Security: the service name of the peer of a
// verified connection, for the source label of metrics and the peer of spans, or "" when
// the connection carries no identity. It is called per request: it must be fast and
// should not allocate.
type PeerNamer interface {
	PeerService(cs *tls.ConnectionState) string
}

// exchange is what a request handler learns about one request, for its metrics, span and
// access log line.
type exchange struct {
	code      int    // status sent to the client
	grpc      string // grpc-status sent to the client ("" when none)
	reqBytes  int64  // body bytes read from the client
	respBytes int64  // body bytes sent to the client
	upstream  string // the last endpoint tried (outbound) or the app (inbound)
	attempts  int
	err       error
	abort     bool         // the response was cut short: the handler must abort the stream
	span      tracing.Span // outbound: the request's span, for retry events
	bodyCount *countingBody
}

// requestBytes returns the body bytes read from the client.
func (x *exchange) requestBytes() int64 {
	if x.bodyCount != nil {
		return x.bodyCount.n.Load()
	}
	return x.reqBytes
}

// countingBody counts the bytes read from a body of unknown length.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// grpcStatus returns the grpc-status a response carried: from the trailers, or from the
// headers of a trailers-only response. Call it once the body has been read.
func grpcStatus(res *http.Response) string {
	if v := res.Trailer["Grpc-Status"]; len(v) > 0 {
		return v[0]
	}
	if v := res.Header["Grpc-Status"]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// observer is the tracing and access logging of one side (inbound or an upstream).
type observer struct {
	tr   *tracing.Tracer    // nil: off
	alog *tracing.AccessLog // nil: off
	on   bool               // tr.Enabled()
}

func newObserver(tr *tracing.Tracer, alog *tracing.AccessLog) observer {
	return observer{tr: tr, alog: alog, on: tr.Enabled()}
}

// finish records a finished request: metrics, span and access log line.
func (o observer) finish(ctx context.Context, pm *pairMetrics, span tracing.Span, dir string, r *http.Request,
	x *exchange, start time.Time) {
	d := time.Since(start)
	reqBytes := x.requestBytes()
	pm.active.Dec()
	pm.request(r.Method, x.code, x.grpc, reqBytes, x.respBytes, d)
	if o.on {
		span.End(tracing.Result{Status: x.code, GRPCStatus: x.grpc, RequestBytes: reqBytes,
			ResponseBytes: x.respBytes, Err: x.err})
	}
	if o.alog != nil {
		src, dst := pm.source, pm.dest
		o.alog.Log(ctx, tracing.AccessEntry{
			Direction: dir, Method: r.Method, Path: r.URL.Path, Protocol: r.Proto,
			Status: x.code, GRPCStatus: x.grpc, Duration: d,
			RequestBytes: reqBytes, ResponseBytes: x.respBytes,
			Upstream: x.upstream, Attempts: x.attempts, Source: src, Destination: dst, Err: x.err,
		})
	}
}

// peerService names the caller of an inbound request from its verified certificate.
func peerService(sec Security, cs *tls.ConnectionState) string {
	if cs == nil {
		return ""
	}
	if n, ok := sec.(PeerNamer); ok {
		return n.PeerService(cs)
	}
	return ""
}

// connTLS returns the TLS state of a connection, nil for plaintext.
func connTLS(c net.Conn) *tls.ConnectionState {
	if tc, ok := c.(*tls.Conn); ok {
		st := tc.ConnectionState()
		return &st
	}
	return nil
}

// retryReason names why an attempt is retried, for the span's retry event.
func retryReason(err error, res *http.Response) string {
	var re RefusedError
	var oe OverloadedError
	switch {
	case err == nil && res != nil && res.Header.Get(headerNotProcessed) != "":
		return "connect-failure"
	case err == nil && res != nil && res.Header.Get(HeaderOverloaded) != "":
		return "refused-stream"
	case err == nil:
		return "5xx"
	case isDialError(err):
		return "connect-failure"
	case errors.As(err, &re), errors.As(err, &oe):
		return "refused-stream"
	case errors.Is(err, errPerTryTimeout):
		return "per-try-timeout"
	}
	return "reset"
}

// outcomeName names an attempt's outcome, the reason of an ejection it caused.
func outcomeName(o lb.Outcome) string {
	switch o {
	case lb.ConnectFailure:
		return "connect-failure"
	case lb.GatewayFailure:
		return "gateway-failure"
	case lb.ServerError:
		return "5xx"
	case lb.ClientError:
		return "client-error"
	}
	return "success"
}
