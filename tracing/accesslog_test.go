package tracing

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestAccessLog(t *testing.T) {
	tr, _ := newTestTracer(t, Config{SampleRatio: -1}) // unsampled: IDs are logged all the same
	var buf bytes.Buffer
	log := NewAccessLog(&buf)

	r := httptest.NewRequest(http.MethodGet, "http://catalog/items?token=secret", nil)
	ctx, span := tr.StartOutbound(context.Background(), r, "catalog")
	span.End(Result{Status: 503})
	log.Log(ctx, AccessEntry{
		Direction: "outbound", Method: r.Method, Path: r.URL.Path, Protocol: r.Proto, Status: 503,
		Duration: 1500 * time.Microsecond, RequestBytes: 0, ResponseBytes: 19, Upstream: "10.0.0.2:21000",
		Attempts: 3, Source: "frontend", Destination: "catalog", Err: errors.New("upstream 503"),
	})
	log.Log(context.Background(), AccessEntry{Direction: "inbound", Method: "POST", Path: "/", Status: 200, Attempts: 1})

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), buf.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("line 1 is not JSON: %v\n%s", err, lines[0])
	}
	want := map[string]any{
		"msg": "request", "direction": "outbound", "method": "GET", "path": "/items", "protocol": "HTTP/1.1",
		"status": 503.0, "duration_ms": 1.5, "request_bytes": 0.0, "response_bytes": 19.0,
		"upstream": "10.0.0.2:21000", "attempts": 3.0, "source": "frontend", "destination": "catalog",
		"error":    "upstream 503",
		"trace_id": span.SpanContext().TraceID().String(), "span_id": span.SpanContext().SpanID().String(),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	if strings.Contains(lines[0], "secret") {
		t.Errorf("the query leaked into the log: %s", lines[0])
	}
	got = nil
	if err := json.Unmarshal([]byte(lines[1]), &got); err != nil {
		t.Fatalf("line 2 is not JSON: %v", err)
	}
	for _, k := range []string{"trace_id", "span_id", "error", "grpc_status", "source"} {
		if _, ok := got[k]; ok {
			t.Errorf("line 2 has %s without a span or a value for it: %s", k, lines[1])
		}
	}

	var off *AccessLog
	off.Log(ctx, AccessEntry{}) // off by default: must not panic
}
