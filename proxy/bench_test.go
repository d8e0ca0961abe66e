package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/podmesh/podmesh/lb"
)

// fakeWriter is a reusable ResponseWriter.
type fakeWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *fakeWriter) Header() http.Header         { return w.h }
func (w *fakeWriter) WriteHeader(code int)        { w.status = code }
func (w *fakeWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }
func (w *fakeWriter) reset() {
	clear(w.h)
	w.status, w.n = 0, 0
}

// resettableBody is a response body that can be replayed without allocating.
type resettableBody struct {
	data []byte
	off  int
}

func (b *resettableBody) Read(p []byte) (int, error) {
	if b.off >= len(b.data) {
		return 0, io.EOF
	}
	n := copy(p, b.data[b.off:])
	b.off += n
	return n, nil
}
func (b *resettableBody) Close() error { return nil }

// pathHarness is an Upstream whose round trip is an in-memory canned response, so that
// only the proxy's own per-request work is measured: policy, picking, header handling,
// response copy and metrics.
type pathHarness struct {
	u    *Upstream
	req  *http.Request
	w    *fakeWriter
	body *resettableBody
	res  *http.Response
}

func newPathHarness(tb testing.TB, pol Policy) *pathHarness {
	bal, err := lb.New(lb.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { bal.Close() })
	u, err := NewUpstream(context.Background(), UpstreamConfig{Name: "bench", Protocol: HTTP, Balancer: bal, Policy: pol})
	if err != nil {
		tb.Fatal(err)
	}
	u.Update([]lb.Endpoint{
		{ID: "a", Address: "10.0.0.1:1"}, {ID: "b", Address: "10.0.0.2:1"}, {ID: "c", Address: "10.0.0.3:1"},
	})
	h := &pathHarness{u: u, w: &fakeWriter{h: http.Header{}}}
	h.body = &resettableBody{data: []byte(strings.Repeat("x", 512))}
	h.res = &http.Response{StatusCode: 200, ContentLength: 512, Body: h.body,
		Header: http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"512"}}}
	u.roundTrip = func(*http.Request) (*http.Response, error) {
		h.body.off = 0
		return h.res, nil
	}
	h.req, _ = http.NewRequest("GET", "http://bench/items?id=7", nil)
	h.req.RemoteAddr = "127.0.0.1:5555"
	h.req.Header = http.Header{"Accept": {"*/*"}, "User-Agent": {"bench"}, "X-Request-Id": {"abc"}}
	return h
}

func (h *pathHarness) serve() {
	h.w.reset()
	h.u.ServeHTTP(h.w, h.req)
}

// BenchmarkOutboundPath is the proxy's own work per request (no network).
func BenchmarkOutboundPath(b *testing.B) {
	for _, tc := range []struct {
		name string
		pol  Policy
	}{
		{"default", Policy{}},
		{"no-timeout", Policy{Timeout: -1}},
		{"per-try-timeout", Policy{PerTryTimeout: time.Second}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := newPathHarness(b, tc.pol)
			b.ReportAllocs()
			for b.Loop() {
				h.serve()
			}
			if h.w.status != 200 || h.w.n != 512 {
				b.Fatalf("status %d, %d bytes", h.w.status, h.w.n)
			}
		})
	}
}

// TestOutboundPathAllocs bounds the allocations the proxy adds per request, beyond what
// net/http does anyway. The bound is the sum of:
//   - 2: the outgoing request (a shallow copy of the incoming one) and its URL;
//   - 1: the request-body holder for the attempt loop;
//   - 2 with the default overall timeout: a cancellable context and its cause closure (the
//     timer that fires it is pooled);
//   - 1: a map insertion into the caller's context children when it is cancellable.
//
// Picking, header handling, the body copy (pooled buffer) and metrics allocate nothing.
func TestOutboundPathAllocs(t *testing.T) {
	for _, tc := range []struct {
		name string
		pol  Policy
		max  float64
	}{
		{"no timeout", Policy{Timeout: -1}, 3},
		{"default timeout", Policy{}, 6}, // 5, but the race detector's sync.Pool drops some Puts
	} {
		h := newPathHarness(t, tc.pol)
		h.serve()
		allocs := testing.AllocsPerRun(200, h.serve)
		t.Logf("%s: %.1f allocs per request", tc.name, allocs)
		if allocs > tc.max {
			t.Errorf("%s: %.1f allocs per request, want at most %v", tc.name, allocs, tc.max)
		}
	}
}

// BenchmarkThroughTwoSidecars is a whole request over loopback: HTTP/1.1 client →
// outbound → HTTP/2 → inbound → HTTP/1.1 app, one request at a time and in parallel.
// Allocations include the client's and the app's.
func BenchmarkThroughTwoSidecars(b *testing.B) {
	a := startApp(b, "a", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	inAddr, _ := startInbound(b, InboundConfig{Service: "a", Protocol: HTTP, App: a.addr})
	upAddr, _ := startUpstream(b, UpstreamConfig{Name: "a"}, []lb.Endpoint{endpoint("a1", inAddr, HTTP)})
	c := client()
	url := "http://" + upAddr + "/"
	get := func() {
		res, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			get()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get()
			}
		})
	})
}

// BenchmarkValidateHead is the guard's cost per request head.
func BenchmarkValidateHead(b *testing.B) {
	head := []byte("GET /api/items?id=7 HTTP/1.1\r\nHost: catalog\r\nUser-Agent: bench/1.0\r\n" +
		"Accept: application/json\r\nX-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\nCookie: session=abc\r\n\r\n")
	b.ReportAllocs()
	b.SetBytes(int64(len(head)))
	for b.Loop() {
		if _, err := validateHead(head, 100); err != nil {
			b.Fatal(err)
		}
	}
}
