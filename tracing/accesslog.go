package tracing

import (
	"context"
	"io"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// AccessLog writes one JSON line per request, with the trace and span IDs of the request's
// span so a log line leads to its trace. A nil *AccessLog is off (the default) and Log
// costs nothing. Safe for concurrent use.
//
// A line looks like:
//
//	{"time":"…","level":"INFO","msg":"request","direction":"outbound","method":"GET",
//	 "path":"/items","protocol":"HTTP/1.1","status":200,"duration_ms":3.2,
//	 "request_bytes":0,"response_bytes":512,"upstream":"10.1.0.7:21000","attempts":2,
//	 "source":"frontend","destination":"catalog",
//	 "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}
//
// grpc_status and error appear when set; trace_id and span_id when the context has a span
// (tracing on, sampled or not).
type AccessLog struct {
	l *slog.Logger
}

// NewAccessLog returns an AccessLog writing JSON lines to w (os.Stdout, a file).
func NewAccessLog(w io.Writer) *AccessLog {
	return &AccessLog{l: slog.New(slog.NewJSONHandler(w, nil))}
}

// AccessEntry is one request, as the proxy saw it when it finished.
type AccessEntry struct {
	Direction  string // "inbound" or "outbound"
	Method     string
	Path       string // URL path, without the query (it may hold secrets)
	Protocol   string // "HTTP/1.1", "HTTP/2.0"
	Status     int    // status sent to the client
	GRPCStatus string // grpc-status sent to the client, for gRPC
	Duration   time.Duration
	// RequestBytes and ResponseBytes are the body bytes received from and sent to the
	// client.
	RequestBytes, ResponseBytes int64
	Upstream                    string // address of the last endpoint tried (outbound) or the app (inbound)
	Attempts                    int    // attempts made upstream (1 without retries)
	Source, Destination         string // service names, when known
	Err                         error  // why the request failed, if it did
}

// Log writes e. ctx is the request's context from StartInbound or StartOutbound, whose
// span gives trace_id and span_id.
func (a *AccessLog) Log(ctx context.Context, e AccessEntry) {
	if a == nil {
		return
	}
	attrs := make([]slog.Attr, 0, 18)
	attrs = append(attrs,
		slog.String("direction", e.Direction),
		slog.String("method", e.Method),
		slog.String("path", e.Path),
		slog.String("protocol", e.Protocol),
		slog.Int("status", e.Status),
	)
	if e.GRPCStatus != "" {
		attrs = append(attrs, slog.String("grpc_status", e.GRPCStatus))
	}
	attrs = append(attrs,
		slog.Float64("duration_ms", float64(e.Duration)/float64(time.Millisecond)),
		slog.Int64("request_bytes", e.RequestBytes),
		slog.Int64("response_bytes", e.ResponseBytes),
		slog.String("upstream", e.Upstream),
		slog.Int("attempts", e.Attempts),
	)
	if e.Source != "" {
		attrs = append(attrs, slog.String("source", e.Source))
	}
	if e.Destination != "" {
		attrs = append(attrs, slog.String("destination", e.Destination))
	}
	if e.Err != nil {
		attrs = append(attrs, slog.String("error", e.Err.Error()))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()),
			slog.String("span_id", sc.SpanID().String()))
	}
	a.l.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
}
