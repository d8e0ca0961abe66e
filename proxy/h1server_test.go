package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

// startH1 serves handler with the proxy's own HTTP/1 loop on a loopback listener.
func startH1(t *testing.T, lim Limits, handler http.HandlerFunc) string {
	t.Helper()
	lim = lim.withDefaults()
	l := newListener(testutil.Context(t, time.Minute), DirInbound, "t", lim, (*Metrics)(nil).orPrivate().service(DirInbound, "t", "t"),
		discardLogger(), handler)
	l.classify = func(string) connKind { return kindHTTP }
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- l.serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		l.shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// rawConn is a client connection that writes raw requests and reads responses.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) send(raw string) { io.WriteString(r.c, raw) }

// read reads one response for a request with method; its body is read whole.
func (r *rawConn) read(method string) (*http.Response, string) {
	r.t.Helper()
	res, err := http.ReadResponse(r.br, &http.Request{Method: method})
	if err != nil {
		r.t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		r.t.Fatalf("read body: %v", err)
	}
	return res, string(b)
}

// closed reports whether the server closed the connection.
func (r *rawConn) closed() bool {
	r.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := r.br.ReadByte()
	return errors.Is(err, io.EOF) || isReset(err)
}

// The response framing the loop chooses, with what the client parses from it.
func TestH1ResponseFraming(t *testing.T) {
	addr := startH1(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/short": // unknown length, short: a Content-Length
			io.WriteString(w, "hello")
		case "/long": // unknown length, beyond the hold-back: chunked
			w.Write(bytes.Repeat([]byte("x"), 3*pendingMax))
		case "/flush": // flushed: chunked
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
		case "/cl": // declared length
			w.Header().Set("Content-Length", "3")
			io.WriteString(w, "abc")
		case "/short-cl": // declared length not met: the connection closes
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "abc")
		case "/trailers":
			w.Header().Set("Trailer", "X-Declared")
			io.WriteString(w, "body")
			w.Header().Set("X-Declared", "d")
			w.Header().Set(http.TrailerPrefix+"X-Late", "l")
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/head":
			w.Header().Set("Content-Length", "42")
		case "/close":
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		case "/status":
			w.WriteHeader(http.StatusTeapot)
			io.WriteString(w, "tea")
		}
	})
	c := dialRaw(t, addr)
	for _, tc := range []struct {
		path, method string
		cl           int64
		chunked      bool
		body         string
		status       int
	}{
		{"/short", "GET", 5, false, "hello", 200},
		{"/long", "GET", -1, true, strings.Repeat("x", 3*pendingMax), 200},
		{"/flush", "GET", -1, true, "ab", 200},
		{"/cl", "GET", 3, false, "abc", 200},
		{"/nocontent", "GET", 0, false, "", 204},
		{"/head", "HEAD", 42, false, "", 200},
		{"/status", "GET", 3, false, "tea", 418},
	} {
		c.send(tc.method + " " + tc.path + " HTTP/1.1\r\nHost: a\r\n\r\n")
		res, body := c.read(tc.method)
		chunked := len(res.TransferEncoding) > 0
		if res.StatusCode != tc.status || res.ContentLength != tc.cl || chunked != tc.chunked || body != tc.body {
			t.Errorf("%s %s: %d length %d chunked %v body %q", tc.method, tc.path, res.StatusCode, res.ContentLength, chunked, body)
		}
		if res.Close || res.Header.Get("Date") == "" {
			t.Errorf("%s: close %v, Date %q", tc.path, res.Close, res.Header.Get("Date"))
		}
	}
	c.send("GET /trailers HTTP/1.1\r\nHost: a\r\n\r\n")
	res, body := c.read("GET")
	if body != "body" || res.Trailer.Get("X-Declared") != "d" || res.Trailer.Get("X-Late") != "l" {
		t.Errorf("trailers: %q %v", body, res.Trailer)
	}

	c.send("GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, body := c.read("GET"); !res.Close || body != "bye" || !c.closed() {
		t.Errorf("Connection: close from the handler: close %v body %q", res.Close, body)
	}
	c = dialRaw(t, addr)
	c.send("GET /short-cl HTTP/1.1\r\nHost: a\r\n\r\n")
	res, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(res.Body); string(b) != "abc" || err == nil {
		t.Errorf("short body: %q %v, want abc and an unexpected EOF", b, err)
	}
}

// HTTP/1.0: close by default, keep-alive on request, close-delimited bodies of unknown
// length.
func TestH1HTTP10(t *testing.T) {
	addr := startH1(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
		}
		io.WriteString(w, "b")
	})
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	if res, body := c.read("GET"); res.Close || body != "b" || res.Header.Get("Connection") != "keep-alive" {
		t.Errorf("keep-alive: close %v %q %q", res.Close, body, res.Header.Get("Connection"))
	}
	c.send("GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	if res, body := c.read("GET"); !res.Close || body != "ab" || !c.closed() {
		t.Errorf("stream: close %v %q", res.Close, body)
	}
	c = dialRaw(t, addr)
	c.send("GET / HTTP/1.0\r\n\r\n")
	if res, _ := c.read("GET"); !res.Close || !c.closed() {
		t.Errorf("default: close %v", res.Close)
	}
}

// Request bodies: Content-Length and chunked with trailers reach the handler decoded; an
// unread body is read away and the connection stays usable, unless it is too large.
func TestH1RequestBodies(t *testing.T) {
	addr := startH1(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ignore" {
			io.WriteString(w, "ignored")
			return
		}
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %q %v %d %v", r.Method, b, err, r.ContentLength, r.Trailer)
	})
	c := dialRaw(t, addr)
	c.send("POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
	if _, body := c.read("POST"); body != `POST "hello" <nil> 5 map[]` {
		t.Errorf("content-length: %s", body)
	}
	c.send("POST /ch HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
	if _, body := c.read("POST"); body != `POST "abcde" <nil> -1 map[X-T:[1]]` {
		t.Errorf("chunked: %s", body)
	}
	c.send("POST /ignore HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nskip")
	if _, body := c.read("POST"); body != "ignored" {
		t.Errorf("ignored body: %s", body)
	}
	c.send("GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, body := c.read("GET"); res.StatusCode != 200 || body != `GET "" <nil> 0 map[]` {
		t.Errorf("request after an unread body: %d %s", res.StatusCode, body)
	}
	// More than maxDrainBytes left unread: the connection closes after the response.
	c.send(fmt.Sprintf("POST /ignore HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", 2*maxDrainBytes))
	go c.c.Write(make([]byte, 2*maxDrainBytes))
	if _, body := c.read("POST"); body != "ignored" || !c.closed() {
		t.Errorf("large unread body: %q, connection kept", body)
	}
}

// "Expect: 100-continue" gets a 100 on the first body read; other expectations a 417.
func TestH1Expect(t *testing.T) {
	addr := startH1(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	c := dialRaw(t, addr)
	c.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
	line, err := c.br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("interim: %q %v", line, err)
	}
	c.br.ReadString('\n')
	c.send("ok")
	if res, body := c.read("POST"); res.StatusCode != 200 || body != "ok" {
		t.Errorf("after 100: %d %q", res.StatusCode, body)
	}
	c.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: something\r\n\r\nok")
	if res, _ := c.read("POST"); res.StatusCode != http.StatusExpectationFailed || !c.closed() {
		t.Errorf("unknown expectation: %d", res.StatusCode)
	}
}

// Pipelined requests are answered in order; a handler panic closes the connection.
func TestH1PipeliningAndPanics(t *testing.T) {
	addr := startH1(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/abort":
			panic(http.ErrAbortHandler)
		case "/panic":
			panic("boom")
		}
		io.WriteString(w, r.URL.Path)
	})
	c := dialRaw(t, addr)
	c.send("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
	for _, want := range []string{"/1", "/2", "/3"} {
		if _, body := c.read("GET"); body != want {
			t.Errorf("pipelined: %q, want %q", body, want)
		}
	}
	for _, path := range []string{"/abort", "/panic"} {
		c := dialRaw(t, addr)
		c.send("GET " + path + " HTTP/1.1\r\nHost: a\r\n\r\n")
		if !c.closed() {
			t.Errorf("%s: connection kept", path)
		}
	}
}

// A client that goes away while its request runs cancels the request's context.
func TestH1ClientGone(t *testing.T) {
	testutil.CheckGoroutines(t)
	cancelled := make(chan error, 1)
	addr := startH1(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			cancelled <- r.Context().Err()
		case <-time.After(5 * time.Second):
			cancelled <- errors.New("not cancelled")
		}
	})
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	time.Sleep(2 * watchDelay)
	c.c.Close()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("request context: %v", err)
	}
}

// Requests parse as net/http parses them.
func TestH1RequestParsing(t *testing.T) {
	for _, head := range []string{
		"GET /a/b?c=d&e HTTP/1.1\r\nHost: example\r\nUser-Agent: x\r\naccept: */*\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\n",
		"GET /%41%2F?q HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /p!(x)? HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET http://other:8080/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
		"CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		checkParse(t, []byte(head))
	}
}

func checkParse(t *testing.T, head []byte) {
	t.Helper()
	info, err := validateHead(head, 100)
	if err != nil || info.h2Preface {
		return
	}
	want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	c := &h1Conn{ctx: context.Background(), remote: "1.2.3.4:5"}
	c.tmpl = new(http.Request).WithContext(c.ctx)
	got, gerr := c.newRequest(head, info)
	if err != nil {
		return // net/http refuses it: so may we, or forward a request it would have refused
	}
	if gerr != nil {
		t.Fatalf("%q: %v (net/http accepts it)", head, gerr)
	}
	if got.Method != want.Method || got.URL.String() != want.URL.String() || *got.URL != *want.URL ||
		got.Proto != want.Proto || got.ProtoMinor != want.ProtoMinor || got.Host != want.Host ||
		got.RequestURI != want.RequestURI || got.Close != want.Close || got.ContentLength != want.ContentLength ||
		fmt.Sprint(got.TransferEncoding) != fmt.Sprint(want.TransferEncoding) ||
		fmt.Sprint(got.Header) != fmt.Sprint(want.Header) {
		t.Fatalf("%q:\n got  %s %#v %s %q close=%v cl=%d te=%v %v\n want %s %#v %s %q close=%v cl=%d te=%v %v", head,
			got.Method, *got.URL, got.Proto, got.Host, got.Close, got.ContentLength, got.TransferEncoding, got.Header,
			want.Method, *want.URL, want.Proto, want.Host, want.Close, want.ContentLength, want.TransferEncoding, want.Header)
	}
}

// FuzzH1RequestParsing compares the loop's parser with net/http's on heads the guard
// accepts.
func FuzzH1RequestParsing(f *testing.F) {
	for _, tc := range smuggling {
		f.Add([]byte(tc.req))
	}
	f.Add([]byte("GET /a?b HTTP/1.1\r\nHost: a\r\nx-y: 1\r\n\r\n"))
	f.Add([]byte("GET http://h/%7e HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 {
			return
		}
		checkParse(t, data[:end+4])
	})
}

// BenchmarkH1Request is the loop's own cost per keep-alive request: a small GET and its
// response over loopback, client included.
func BenchmarkH1Request(b *testing.B) {
	addr := startH1Bench(b, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("GET /items?id=7 HTTP/1.1\r\nHost: a\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		c.Write(req)
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func startH1Bench(b *testing.B, handler http.HandlerFunc) string {
	l := newListener(context.Background(), DirInbound, "t", Limits{}.withDefaults(),
		(*Metrics)(nil).orPrivate().service(DirInbound, "t", "t"), discardLogger(), handler)
	l.classify = func(string) connKind { return kindHTTP }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go l.serve(ln)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		l.shutdown(ctx)
	})
	return ln.Addr().String()
}
