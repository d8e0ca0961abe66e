package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/podmesh/podmesh/internal/testutil"
)

// startH2 serves handler on loopback; connections starting with the HTTP/2 preface go
// to the HTTP/2 server (as on every HTTP listener). It returns the address and the
// listener, for Shutdown.
func startH2(t *testing.T, lim Limits, handler http.HandlerFunc) (string, *listener) {
	t.Helper()
	lim = lim.withDefaults()
	l := newListener(testutil.Context(t, time.Minute), DirInbound, "t", lim,
		(*Metrics)(nil).orPrivate().service(DirInbound, "t", "t"), discardLogger(), handler)
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
	return ln.Addr().String(), l
}

// h2cClient is net/http's client speaking HTTP/2 with prior knowledge.
func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 10 * time.Second}
}

func TestH2Requests(t *testing.T) {
	addr, _ := startH2(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			w.Header().Set("X-Got", fmt.Sprintf("%d %x %v %d", n, h.Sum(nil)[:4], err, r.ContentLength))
		case "/big":
			w.Header().Set("Content-Length", strconv.Itoa(4<<20))
			w.Write(bytes.Repeat([]byte("b"), 4<<20))
		case "/trailers":
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Trailer", "X-Declared")
			w.Header().Set("X-Req-Trailer", r.Trailer.Get("X-In"))
			io.WriteString(w, "body")
			w.Header().Set("X-Declared", "d")
			w.Header().Set(http.TrailerPrefix+"X-Late", "l")
		case "/info":
			fmt.Fprintf(w, "%s %s %s %q %s %v", r.Method, r.Proto, r.RequestURI, r.Host, r.Header.Get("Cookie"), r.Body == http.NoBody)
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		}
	})
	c := h2cClient()
	base := "http://" + addr
	res, err := c.Get(base + "/info?q=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.ProtoMajor != 2 || string(body) != `GET HTTP/2.0 /info?q=1 "`+addr+`"  true` || res.Header.Get("Date") == "" {
		t.Errorf("GET: %s %q date %q", res.Proto, body, res.Header.Get("Date"))
	}
	// A body larger than both receive windows: the server returns credit as it reads.
	big := bytes.Repeat([]byte("u"), 5<<20)
	res, err = c.Post(base+"/echo", "", bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	sum := sha256.Sum256(big)
	if want := fmt.Sprintf("%d %x <nil> %d", len(big), sum[:4], len(big)); res.Header.Get("X-Got") != want {
		t.Errorf("upload: %q, want %q", res.Header.Get("X-Got"), want)
	}
	res, err = c.Get(base + "/big")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, res.Body); n != 4<<20 || err != nil {
		t.Errorf("download: %d %v", n, err)
	}
	res.Body.Close()
	req, _ := http.NewRequest("POST", base+"/trailers", io.MultiReader(strings.NewReader("x"), strings.NewReader("y")))
	req.Trailer = http.Header{"X-In": {"in"}}
	res, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if string(body) != "body" || res.Header.Get("X-Req-Trailer") != "in" || res.Trailer.Get("X-Declared") != "d" ||
		res.Trailer.Get("X-Late") != "l" {
		t.Errorf("trailers: %q req %q res %v", body, res.Header.Get("X-Req-Trailer"), res.Trailer)
	}
	res, err = c.Get(base + "/nocontent")
	if err != nil || res.StatusCode != http.StatusNoContent {
		t.Fatalf("204: %v %v", res, err)
	}
	res.Body.Close()
}

// rawH2 is a hand-driven HTTP/2 client connection, for protocol edge cases.
type rawH2 struct {
	t    *testing.T
	c    net.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

func dialH2(t *testing.T, addr string, settings ...http2.Setting) *rawH2 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := &rawH2{t: t, c: c, fr: http2.NewFramer(c, c)}
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.enc = hpack.NewEncoder(&r.hbuf)
	io.WriteString(c, http2.ClientPreface)
	r.fr.WriteSettings(settings...)
	return r
}

// headers sends a request's HEADERS; fields after the pseudo-headers are name, value
// pairs.
func (r *rawH2) headers(id uint32, endStream bool, method, path string, fields ...string) {
	r.hbuf.Reset()
	r.enc.WriteField(hpack.HeaderField{Name: ":method", Value: method})
	r.enc.WriteField(hpack.HeaderField{Name: ":scheme", Value: "http"})
	r.enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "a"})
	if path != "" {
		r.enc.WriteField(hpack.HeaderField{Name: ":path", Value: path})
	}
	for i := 0; i+1 < len(fields); i += 2 {
		r.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hbuf.Bytes(),
		EndStream: endStream, EndHeaders: true}); err != nil {
		r.t.Fatal(err)
	}
}

// until reads frames until match returns true; it fails on a read error.
func (r *rawH2) until(what string, match func(http2.Frame) bool) http2.Frame {
	r.t.Helper()
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			r.t.Fatalf("waiting for %s: %v", what, err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			r.fr.WriteSettingsAck()
		}
		if match(f) {
			return f
		}
	}
}

func (r *rawH2) reset(id uint32) http2.ErrCode {
	r.t.Helper()
	f := r.until(fmt.Sprintf("RST_STREAM %d", id), func(f http2.Frame) bool {
		rst, ok := f.(*http2.RSTStreamFrame)
		return ok && rst.StreamID == id
	})
	return f.(*http2.RSTStreamFrame).ErrCode
}

func (r *rawH2) status(id uint32) string {
	r.t.Helper()
	f := r.until(fmt.Sprintf("HEADERS %d", id), func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == id
	})
	return f.(*http2.MetaHeadersFrame).PseudoValue("status")
}

// Malformed requests are reset with PROTOCOL_ERROR; the connection stays usable.
func TestH2MalformedRequests(t *testing.T) {
	addr, _ := startH2(t, Limits{}, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })
	r := dialH2(t, addr)
	id := uint32(1)
	for _, tc := range []struct {
		name   string
		path   string
		fields []string
	}{
		{"connection field", "/", []string{"connection", "keep-alive"}},
		{"transfer-encoding", "/", []string{"transfer-encoding", "chunked"}},
		{"te gzip", "/", []string{"te", "gzip"}},
		{"no path", "", nil},
		{"uppercase name", "/", []string{"X-Upper", "1"}},
		{"content-length without body", "/", []string{"content-length", "3"}},
	} {
		r.headers(id, true, "GET", tc.path, tc.fields...)
		if code := r.reset(id); code != http2.ErrCodeProtocol {
			t.Errorf("%s: RST_STREAM %v, want PROTOCOL_ERROR", tc.name, code)
		}
		id += 2
	}
	// A body longer than its content-length.
	r.headers(id, false, "POST", "/", "content-length", "2")
	r.fr.WriteData(id, true, []byte("abc"))
	if code := r.reset(id); code != http2.ErrCodeProtocol {
		t.Errorf("long body: RST_STREAM %v", code)
	}
	id += 2
	r.headers(id, true, "GET", "/")
	if s := r.status(id); s != "200" {
		t.Errorf("after the bad ones: %q", s)
	}
}

// Streams beyond MaxConcurrentStreams are refused; a reset stream cancels its handler.
func TestH2ConcurrencyAndReset(t *testing.T) {
	started := make(chan struct{}, 10)
	cancelled := make(chan struct{}, 10)
	addr, _ := startH2(t, Limits{MaxConcurrentStreams: 2}, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
		cancelled <- struct{}{}
	})
	r := dialH2(t, addr)
	r.headers(1, true, "GET", "/")
	r.headers(3, true, "GET", "/")
	<-started
	<-started
	r.headers(5, true, "GET", "/")
	if code := r.reset(5); code != http2.ErrCodeRefusedStream {
		t.Errorf("third stream: %v, want REFUSED_STREAM", code)
	}
	r.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	select {
	case <-cancelled:
	case <-time.After(3 * time.Second):
		t.Fatal("reset did not cancel the handler")
	}
	// Its slot is free again once the handler has returned: new streams are refused
	// until then, served after.
	for id := uint32(7); ; id += 2 {
		if id > 200 {
			t.Fatal("no handler for a stream after a reset freed a slot")
		}
		r.headers(id, true, "GET", "/")
		select {
		case <-started:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// The server sends no more DATA than the client's window allows, and resumes on
// WINDOW_UPDATE.
func TestH2SendFlowControl(t *testing.T) {
	const size = 200 << 10
	addr, _ := startH2(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte("d"), size))
	})
	r := dialH2(t, addr) // default windows: 65535 per stream and for the connection
	r.headers(1, true, "GET", "/")
	got := 0
	r.until("the window's worth of DATA", func(f http2.Frame) bool {
		if d, ok := f.(*http2.DataFrame); ok {
			got += len(d.Data())
		}
		return got >= 65535
	})
	r.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if f, err := r.fr.ReadFrame(); err == nil {
		if d, ok := f.(*http2.DataFrame); ok && len(d.Data()) > 0 {
			t.Fatalf("DATA beyond the window: %d more bytes", len(d.Data()))
		}
	}
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r.fr.WriteWindowUpdate(0, size)
	r.fr.WriteWindowUpdate(1, size)
	r.until("the rest", func(f http2.Frame) bool {
		d, ok := f.(*http2.DataFrame)
		if ok {
			got += len(d.Data())
		}
		return ok && d.StreamEnded()
	})
	if got != size {
		t.Errorf("got %d bytes, want %d", got, size)
	}
}

// PINGs are answered; a header list over the limit gets a 431; an idle connection is
// closed with a GOAWAY.
func TestH2PingLimitsIdle(t *testing.T) {
	addr, _ := startH2(t, Limits{MaxHeaderBytes: 1024, IdleTimeout: 300 * time.Millisecond}, func(w http.ResponseWriter, r *http.Request) {})
	r := dialH2(t, addr)
	r.fr.WritePing(false, [8]byte{1, 2, 3})
	r.until("PING ack", func(f http2.Frame) bool {
		p, ok := f.(*http2.PingFrame)
		return ok && p.IsAck() && p.Data == [8]byte{1, 2, 3}
	})
	var many []string // fields below the string limit, together over the list limit
	for i := range 10 {
		many = append(many, "x-f"+strconv.Itoa(i), strings.Repeat("x", 200))
	}
	r.headers(1, true, "GET", "/", many...)
	if s := r.status(1); s != "431" {
		t.Errorf("large header list: %q", s)
	}
	start := time.Now()
	r.until("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if _, err := r.fr.ReadFrame(); err == nil {
		t.Error("connection open after GOAWAY on idle")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("idle close after %v", d)
	}
}

// Shutdown: GOAWAY, the stream in flight completes, then the connection closes.
func TestH2GracefulShutdown(t *testing.T) {
	testutil.CheckGoroutines(t)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	addr, l := startH2(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		io.WriteString(w, "done")
	})
	c := h2cClient()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		res, err := c.Get("http://" + addr + "/")
		if err != nil {
			t.Errorf("in-flight request: %v", err)
			return
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(body) != "done" {
			t.Errorf("in-flight body %q", body)
		}
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- l.shutdown(ctx) }()
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()
	if err := <-errc; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	c.CloseIdleConnections()
}

// A connection error (a window pushed past 2^31-1) ends the connection with GOAWAY.
func TestH2FlowControlError(t *testing.T) {
	addr, _ := startH2(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {})
	r := dialH2(t, addr)
	r.fr.WriteWindowUpdate(0, 1<<31-1)
	f := r.until("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if code := f.(*http2.GoAwayFrame).ErrCode; code != http2.ErrCodeFlowControl {
		t.Errorf("GOAWAY %v, want FLOW_CONTROL_ERROR", code)
	}
	if _, err := r.fr.ReadFrame(); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("after GOAWAY: %v", err)
	}
}

// BenchmarkH2Request is one small request and response over an h2c connection, net/
// http's client included.
func BenchmarkH2Request(b *testing.B) {
	l := newListener(context.Background(), DirInbound, "t", Limits{}.withDefaults(),
		(*Metrics)(nil).orPrivate().service(DirInbound, "t", "t"), discardLogger(),
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "2")
			io.WriteString(w, "ok")
		}))
	l.classify = func(string) connKind { return kindHTTP }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go l.serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		l.shutdown(ctx)
	}()
	c := h2cClient()
	url := "http://" + ln.Addr().String() + "/"
	b.ReportAllocs()
	for b.Loop() {
		res, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
}
