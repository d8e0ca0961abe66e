package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingApp is a net/http app on loopback that counts the connections it accepts.
type countingApp struct {
	addr  string
	conns atomic.Int64
	srv   *http.Server
}

func startCountingApp(t *testing.T, h http.HandlerFunc) *countingApp {
	t.Helper()
	a := &countingApp{}
	ln := listen(t)
	a.addr = ln.Addr().String()
	a.srv = &http.Server{Handler: h, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			a.conns.Add(1)
		}
	}}
	go a.srv.Serve(ln)
	t.Cleanup(func() { a.srv.Close() })
	return a
}

func testClient(addr string) *h1Client {
	d := dialer{timeout: time.Second}
	return newH1Client(addr, func(ctx context.Context, addr string) (net.Conn, error) { return d.dial(ctx, addr, "") })
}

func newReq(t *testing.T, ctx context.Context, method, url string, body io.Reader, length int64) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body = http.NoBody
	}
	req.ContentLength = length
	return req
}

func readAll(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatalf("body: %v", err)
	}
	return string(b)
}

// What the app sees of requests, and the keep-alive reuse of the connection.
func TestH1ClientRequests(t *testing.T) {
	a := startCountingApp(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen", fmt.Sprintf("%s %s host=%s ua=%q cl=%d te=%v", r.Method, r.RequestURI, r.Host,
			r.Header.Get("User-Agent"), r.ContentLength, r.TransferEncoding))
		switch r.URL.Path {
		case "/head", "/nocontent":
			w.WriteHeader(http.StatusNoContent)
			return
		case "/trailers":
			w.Header().Set("X-Trailer", r.Trailer.Get("X-T"))
		}
		w.Write(b)
	})
	p := testClient(a.addr)
	defer p.closeIdle(true)
	ctx := context.Background()
	for _, tc := range []struct {
		method, path string
		body         io.Reader
		length       int64
		seen, want   string
	}{
		{"GET", "/a%2Fb?x=1&y", nil, 0, `GET /a%2Fb?x=1&y host=svc ua="" cl=0 te=[]`, ""},
		{"POST", "/empty", nil, 0, `POST /empty host=svc ua="" cl=0 te=[]`, ""},
		// As net/http's HTTP/2 server hands over a request without a body.
		{"GET", "/h2-empty", strings.NewReader(""), 0, `GET /h2-empty host=svc ua="" cl=0 te=[]`, ""},
		{"POST", "/small", strings.NewReader("hello"), 5, `POST /small host=svc ua="" cl=5 te=[]`, "hello"},
		{"POST", "/large", bytes.NewReader(bytes.Repeat([]byte("z"), 3*replayBytes)), 3 * replayBytes,
			fmt.Sprintf(`POST /large host=svc ua="" cl=%d te=[]`, 3*replayBytes), strings.Repeat("z", 3*replayBytes)},
		{"POST", "/stream", io.MultiReader(strings.NewReader("ab"), strings.NewReader("cd")), -1,
			`POST /stream host=svc ua="" cl=-1 te=[chunked]`, "abcd"},
		{"GET", "/nocontent", nil, 0, `GET /nocontent host=svc ua="" cl=0 te=[]`, ""},
	} {
		req := newReq(t, ctx, tc.method, "http://"+a.addr+tc.path, tc.body, tc.length)
		req.Host = "svc"
		res, err := p.roundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		if got := readAll(t, res); got != tc.want || res.Header.Get("X-Seen") != tc.seen {
			t.Errorf("%s %s: app saw %q, body %.20q", tc.method, tc.path, res.Header.Get("X-Seen"), got)
		}
		if n := a.conns.Load(); n != 1 {
			t.Errorf("after %s %s: %d connections", tc.method, tc.path, n)
		}
	}
	// Trailers travel chunked.
	req := newReq(t, ctx, "POST", "http://"+a.addr+"/trailers", strings.NewReader("t"), -1)
	req.Trailer = http.Header{"X-T": {"v"}}
	res, err := p.roundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, res); body != "t" || res.Header.Get("X-Trailer") != "v" {
		t.Errorf("trailers: %q %q", body, res.Header.Get("X-Trailer"))
	}
	if n := a.conns.Load(); n != 1 {
		t.Errorf("%d connections for sequential requests, want 1 (keep-alive)", n)
	}
}

// A connection the app closed while idle: a replayable request goes again on a new one;
// one idle for over a second is checked before use.
func TestH1ClientStaleConnections(t *testing.T) {
	// A raw app that answers one request per connection and then closes it, without
	// saying so: every reuse meets a closed connection.
	ln := listen(t)
	var conns atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	p := testClient(ln.Addr().String())
	defer p.closeIdle(true)
	ctx := context.Background()
	get := func(method string, body string) error {
		var r io.Reader
		if body != "" {
			r = strings.NewReader(body)
		}
		res, err := p.roundTrip(newReq(t, ctx, method, "http://"+ln.Addr().String()+"/", r, int64(len(body))))
		if err != nil {
			return err
		}
		if got := readAll(t, res); got != "ok" {
			return fmt.Errorf("body %q", got)
		}
		return nil
	}
	for i := range 3 {
		if err := get("GET", ""); err != nil {
			t.Fatalf("GET %d: %v", i, err)
		}
	}
	// A POST is not replayed, but a connection idle for over a second is checked first.
	time.Sleep(1100 * time.Millisecond)
	if err := get("POST", "data"); err != nil {
		t.Fatalf("POST after idling: %v", err)
	}
	if n := conns.Load(); n != 4 {
		t.Errorf("%d connections, want 4", n)
	}
}

// An app that answers before reading a large body: the answer arrives, and the connection
// is not reused.
func TestH1ClientEarlyAnswer(t *testing.T) {
	a := startCountingApp(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/reject" {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		}
		io.WriteString(w, "ok")
	})
	p := testClient(a.addr)
	defer p.closeIdle(true)
	big := bytes.Repeat([]byte("x"), 8<<20)
	req := newReq(t, context.Background(), "POST", "http://"+a.addr+"/reject", bytes.NewReader(big), int64(len(big)))
	res, err := p.roundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res)
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d", res.StatusCode)
	}
	res, err = p.roundTrip(newReq(t, context.Background(), "GET", "http://"+a.addr+"/", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	if readAll(t, res) != "ok" || a.conns.Load() != 2 {
		t.Errorf("after an early answer: %d connections, want 2", a.conns.Load())
	}
}

// Cancelling the request's context cuts a response that is still streaming, and the
// connection is not reused.
func TestH1ClientCancel(t *testing.T) {
	a := startCountingApp(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	p := testClient(a.addr)
	defer p.closeIdle(true)
	ctx, cancel := context.WithCancel(context.Background())
	res, err := p.roundTrip(newReq(t, ctx, "GET", "http://"+a.addr+"/", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(res.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, res.Body); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("body ended cleanly after cancel")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("body read not cut by cancel")
	}
	res.Body.Close()
	if len(p.idle) != 0 {
		t.Error("cancelled connection went back to the pool")
	}
}

// BenchmarkH1Client is one small GET round trip to a net/http app over a kept-alive
// connection (the app's allocations included).
func BenchmarkH1Client(b *testing.B) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	d := dialer{timeout: time.Second}
	p := newH1Client(ln.Addr().String(), func(ctx context.Context, addr string) (net.Conn, error) { return d.dial(ctx, addr, "") })
	defer p.closeIdle(true)
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/x", nil)
	req.Body = http.NoBody
	buf := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		res, err := p.roundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := res.Body.Read(buf); err != nil {
				break
			}
		}
		res.Body.Close()
	}
}
