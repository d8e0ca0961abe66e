package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"

	"github.com/podmesh/podmesh/lb"
)

// The error types below classify what went wrong with one attempt. Their type decides
// whether a retry is safe (see retryable) and statusFor maps any of them to the one status
// the client sees, in the manner of Caddy's reverse proxy.

// DialError is a failure to connect to an instance: nothing was sent, so any request may
// be retried on another instance.
type DialError struct {
	Addr string
	Err  error
}

func (e DialError) Error() string { return "proxy: connect to " + e.Addr + ": " + e.Err.Error() }
func (e DialError) Unwrap() error { return e.Err }

// RefusedError is an attempt the peer provably did not process: an HTTP/2 REFUSED_STREAM,
// a GOAWAY that excluded the stream, a connection that was unusable before the request was
// written, or a 503 from a peer sidecar that says it did not reach its app. Retried for
// any method.
type RefusedError struct {
	Err error
}

func (e RefusedError) Error() string { return "proxy: refused: " + e.Err.Error() }
func (e RefusedError) Unwrap() error { return e.Err }

// OverloadedError is a circuit breaker that refused the request; Breaker names it as it
// appears in the x-podmesh-overloaded header.
type OverloadedError struct {
	Breaker string
}

func (e OverloadedError) Error() string { return "proxy: overloaded: " + e.Breaker }

// Breaker names.
const (
	BreakerConnections = "max_connections"
	BreakerPending     = "max_pending_requests"
	BreakerRequests    = "max_requests"
	BreakerRetries     = "max_retries"
)

var (
	// errTimeout is the overall timeout firing (the cause of the request context).
	errTimeout = errors.New("proxy: upstream timeout")
	// errPerTryTimeout is one attempt's timeout firing.
	errPerTryTimeout = errors.New("proxy: per-try timeout")
)

// Response headers the sidecars use between themselves.
const (
	// HeaderOverloaded names the breaker that refused a request (Envoy: x-envoy-overloaded).
	HeaderOverloaded = "X-Podmesh-Overloaded"
	// headerNotProcessed on a 503 from an inbound sidecar says the app never saw the
	// request, so the calling sidecar may retry it on another instance whatever the
	// method. It is removed before the response reaches the app.
	headerNotProcessed = "X-Podmesh-Not-Processed"
)

// StatusClientClosed is logged (never sent) when the client went away first (nginx's 499).
const StatusClientClosed = 499

// statusFor maps the error that ended a request to the status the client gets. clientCtx
// is the incoming request's context, whose cancellation means the client left.
func statusFor(err error, clientCtx context.Context) int {
	var (
		oe OverloadedError
		de DialError
		re RefusedError
		ne net.Error
	)
	switch {
	case errors.Is(err, errTimeout), errors.Is(err, errPerTryTimeout):
		return http.StatusGatewayTimeout
	case clientCtx.Err() != nil:
		return StatusClientClosed
	case errors.As(err, &oe), errors.Is(err, lb.ErrNoHost), errors.As(err, &de), errors.As(err, &re):
		return http.StatusServiceUnavailable
	case errors.As(err, &ne) && ne.Timeout():
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// h2StreamError mirrors the fields of net/http's HTTP/2 stream error; that type converts
// itself into any struct with the same fields through errors.As.
type h2StreamError struct {
	StreamID uint32
	Code     uint32
	Cause    error
}

func (e h2StreamError) Error() string { return "http2 stream error" }

const h2ErrCodeRefusedStream = 0x7

// classifyRoundTrip wraps an error from an HTTP/2 or HTTP/1 round trip in the type that
// says whether the peer may have processed the request.
func classifyRoundTrip(err error) error {
	var se h2StreamError
	if errors.As(err, &se) && se.Code == h2ErrCodeRefusedStream {
		return RefusedError{Err: err}
	}
	// net/http's HTTP/2 client reports these unexported sentinels when the connection was
	// gone, or the server's GOAWAY excluded this stream, before the request was processed.
	msg := err.Error()
	for _, s := range notProcessedMessages {
		if strings.Contains(msg, s) {
			return RefusedError{Err: err}
		}
	}
	return err
}

var notProcessedMessages = []string{
	"http2: Transport received Server's graceful shutdown GOAWAY",
	"http2: client conn not usable",
	"http2: client conn could not be established",
}
