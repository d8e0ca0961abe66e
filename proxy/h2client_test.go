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
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/podmesh/podmesh/internal/testutil"
)

// startH2CApp is net/http's HTTP/2 server (h2c) on loopback: the client must
// interoperate with it.
func startH2CApp(t *testing.T, maxStreams uint32, h http.HandlerFunc) string {
	t.Helper()
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: int(maxStreams)}}
	ln := listen(t)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func dialH2Client(t *testing.T, addr string) *h2ClientConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := newH2ClientConn(c, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestH2ClientRequests(t *testing.T) {
	addr := startH2CApp(t, 0, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			w.Header().Set("X-Got", fmt.Sprintf("%d %x %v cl=%d", n, h.Sum(nil)[:4], err, r.ContentLength))
		case "/big":
			w.Write(bytes.Repeat([]byte("b"), 6<<20))
		case "/trailers":
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Trailer", "X-Out")
			w.Header().Set("X-In", r.Trailer.Get("X-In"))
			io.WriteString(w, "t")
			w.Header().Set("X-Out", "o")
		case "/head":
			w.Header().Set("Content-Length", "5")
		case "/info":
			fmt.Fprintf(w, "%s %s %q %q", r.Method, r.RequestURI, r.Host, r.Header.Get("User-Agent"))
		}
	})
	cc := dialH2Client(t, addr)
	ctx := context.Background()
	do := func(method, path string, body io.Reader, length int64, trailer http.Header) *http.Response {
		t.Helper()
		req := newReq(t, ctx, method, "http://"+addr+path, body, length)
		req.Host = "svc"
		req.Trailer = trailer
		res, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return res
	}
	if res := do("GET", "/info?q=1", nil, 0, nil); readAll(t, res) != `GET /info?q=1 "svc" ""` || res.StatusCode != 200 {
		t.Errorf("GET: %d", res.StatusCode)
	}
	small := []byte("in memory")
	res := do("POST", "/echo", &bytesBody{data: small}, int64(len(small)), nil)
	readAll(t, res)
	sum := sha256.Sum256(small)
	if want := fmt.Sprintf("%d %x <nil> cl=%d", len(small), sum[:4], len(small)); res.Header.Get("X-Got") != want {
		t.Errorf("inline body: %q, want %q", res.Header.Get("X-Got"), want)
	}
	big := bytes.Repeat([]byte("u"), 5<<20) // past the peer's windows: flow control
	res = do("POST", "/echo", io.MultiReader(bytes.NewReader(big)), -1, nil)
	readAll(t, res)
	sum = sha256.Sum256(big)
	if want := fmt.Sprintf("%d %x <nil> cl=-1", len(big), sum[:4]); res.Header.Get("X-Got") != want {
		t.Errorf("streamed body: %q, want %q", res.Header.Get("X-Got"), want)
	}
	if n := len(readAll(t, do("GET", "/big", nil, 0, nil))); n != 6<<20 { // past our windows
		t.Errorf("download: %d bytes", n)
	}
	res = do("POST", "/trailers", strings.NewReader("x"), -1, http.Header{"X-In": {"i"}})
	if body := readAll(t, res); body != "t" || res.Header.Get("X-In") != "i" || res.Trailer.Get("X-Out") != "o" {
		t.Errorf("trailers: %q in %q out %v", body, res.Header.Get("X-In"), res.Trailer)
	}
	if res := do("HEAD", "/head", nil, 0, nil); readAll(t, res) != "" || res.ContentLength != 5 {
		t.Errorf("HEAD: length %d", res.ContentLength)
	}
	if n := cc.InFlight(); n != 0 {
		t.Errorf("%d streams still counted after complete exchanges", n)
	}
}

// The peer's SETTINGS_MAX_CONCURRENT_STREAMS is respected: more requests wait for a slot.
func TestH2ClientStreamLimit(t *testing.T) {
	var now, peak atomic.Int64
	addr := startH2CApp(t, 2, func(w http.ResponseWriter, r *http.Request) {
		n := now.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
		now.Add(-1)
	})
	cc := dialH2Client(t, addr)
	// Let the peer's SETTINGS arrive.
	testutil.Eventually(t, 2*time.Second, 5*time.Millisecond, func() error {
		if a := cc.Available(); a != 2 {
			return fmt.Errorf("available %d", a)
		}
		return nil
	})
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := cc.RoundTrip(newReq(t, context.Background(), "GET", "http://"+addr+"/", nil, 0))
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 2 {
		t.Errorf("%d concurrent streams at the peer, limit 2", p)
	}
}

// scriptServer accepts one HTTP/2 connection and runs script on it.
func scriptServer(t *testing.T, script func(fr *http2.Framer, enc func(id uint32, end bool, kv ...string))) string {
	t.Helper()
	ln := listen(t)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.WriteSettings()
		var hbuf bytes.Buffer
		henc := hpack.NewEncoder(&hbuf)
		script(fr, func(id uint32, end bool, kv ...string) {
			hbuf.Reset()
			for i := 0; i+1 < len(kv); i += 2 {
				henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf.Bytes(), EndStream: end, EndHeaders: true})
		})
	}()
	return ln.Addr().String()
}

// nextHeaders reads frames until a request's HEADERS and returns its stream ID.
func nextHeaders(fr *http2.Framer) (uint32, bool) {
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return 0, false
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			return h.StreamID, true
		}
	}
}

// REFUSED_STREAM and streams above a GOAWAY are RefusedError (retried anywhere); other
// resets are not.
func TestH2ClientRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		script  func(fr *http2.Framer, id uint32)
		refused bool
	}{
		{"refused stream", func(fr *http2.Framer, id uint32) { fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) }, true},
		{"goaway before it", func(fr *http2.Framer, id uint32) { fr.WriteGoAway(id-1, http2.ErrCodeNo, nil) }, true},
		{"internal error", func(fr *http2.Framer, id uint32) { fr.WriteRSTStream(id, http2.ErrCodeInternal) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := scriptServer(t, func(fr *http2.Framer, _ func(uint32, bool, ...string)) {
				if id, ok := nextHeaders(fr); ok {
					tc.script(fr, id)
					time.Sleep(200 * time.Millisecond)
				}
			})
			cc := dialH2Client(t, addr)
			_, err := cc.RoundTrip(newReq(t, context.Background(), "GET", "http://"+addr+"/", nil, 0))
			var re RefusedError
			if err == nil || errors.As(err, &re) != tc.refused {
				t.Errorf("error %v, refused %v, want refused %v", err, errors.As(err, &re), tc.refused)
			}
		})
	}
}

// Cancelling a request resets its stream; closing a body early frees the slot.
func TestH2ClientCancel(t *testing.T) {
	gotReset := make(chan http2.ErrCode, 2)
	addr := scriptServer(t, func(fr *http2.Framer, hdr func(uint32, bool, ...string)) {
		id, ok := nextHeaders(fr)
		if !ok {
			return
		}
		// Stream 1: never answered; stream 3: a head and some DATA, never ended.
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				gotReset <- f.ErrCode
			case *http2.MetaHeadersFrame:
				hdr(f.StreamID, false, ":status", "200")
				fr.WriteData(f.StreamID, false, []byte("partial"))
			}
			_ = id
		}
	})
	cc := dialH2Client(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := cc.RoundTrip(newReq(t, ctx, "GET", "http://"+addr+"/", nil, 0))
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled round trip: %v", err)
	}
	if code := <-gotReset; code != http2.ErrCodeCancel {
		t.Errorf("reset code %v", code)
	}
	res, err := cc.RoundTrip(newReq(t, context.Background(), "GET", "http://"+addr+"/", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(res.Body, buf); err != nil || string(buf) != "partial" {
		t.Fatalf("partial body: %q %v", buf, err)
	}
	res.Body.Close()
	if code := <-gotReset; code != http2.ErrCodeCancel {
		t.Errorf("reset code on early close %v", code)
	}
	if n := cc.InFlight(); n != 0 {
		t.Errorf("%d streams counted after cancel and close", n)
	}
}

// A connection that dies mid-response fails the body read.
func TestH2ClientConnectionLost(t *testing.T) {
	addr := scriptServer(t, func(fr *http2.Framer, hdr func(uint32, bool, ...string)) {
		if id, ok := nextHeaders(fr); ok {
			hdr(id, false, ":status", "200", "content-length", strconv.Itoa(100))
			fr.WriteData(id, false, []byte("part"))
		}
	})
	cc := dialH2Client(t, addr)
	res, err := cc.RoundTrip(newReq(t, context.Background(), "GET", "http://"+addr+"/", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(res.Body); err == nil {
		t.Error("body ended cleanly on a lost connection")
	}
	if cc.Err() == nil {
		t.Error("connection still usable")
	}
}

// BenchmarkH2Client is one small GET over an HTTP/2 connection to the proxy's own HTTP/2
// server (server included).
func BenchmarkH2Client(b *testing.B) {
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
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	cc, err := newH2ClientConn(c, false)
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/", nil)
	buf := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		res, err := cc.RoundTrip(req)
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

// An instance that leaves (retain without it) after its sidecar sent GOAWAY: the request
// in flight on the pooled connection still completes.
func TestH2PoolDepartedPeerFinishesStreams(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	addr, l := startH2(t, Limits{}, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		io.WriteString(w, "done")
	})
	d := dialer{timeout: time.Second}
	p := newH2Pool(testutil.Context(t, time.Minute), 1, false, func(ctx context.Context, addr string) (net.Conn, error) {
		return d.dial(ctx, addr, "")
	}, nil)
	defer p.close()
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		res, err := p.roundTrip(newReq(t, context.Background(), "GET", "http://"+addr+"/", nil, 0), addr)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		done <- result{string(b), err}
	}()
	<-started
	go l.shutdown(testutil.Context(t, 5*time.Second)) // GOAWAY to the pool's connection
	time.Sleep(100 * time.Millisecond)
	p.retain(map[string]bool{}) // the instance left discovery
	time.Sleep(100 * time.Millisecond)
	close(release)
	if r := <-done; r.err != nil || r.body != "done" {
		t.Errorf("request in flight: %q %v", r.body, r.err)
	}
}

// A peer that closes its connection gracefully (GOAWAY) while requests are in flight on it:
// the pool sends the streams the GOAWAY refused again on a new connection, bodies in memory
// included, instead of failing them; the caller sees no error. (Each failure would cost
// the outbound a retry and a slot of its retry budget: with more requests in flight than
// the budget's floor of 3, some failed with 503 while sidecars replaced connections.)
func TestH2PoolResendsRefusedStreams(t *testing.T) {
	const n = 4
	ln := listen(t)
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go goAwayConn(c, accepted.Add(1) == 1, n)
		}
	}()
	addr := ln.Addr().String()
	d := dialer{timeout: time.Second}
	p := newH2Pool(testutil.Context(t, time.Minute), 1, false, func(ctx context.Context, addr string) (net.Conn, error) {
		return d.dial(ctx, addr, "")
	}, nil)
	defer p.close()
	errs := make(chan error, n)
	for i := range n {
		go func() {
			ctx := testutil.Context(t, 10*time.Second)
			req := newReq(t, ctx, "GET", "http://"+addr+"/", nil, 0)
			want := "0"
			if i%2 == 1 {
				body := strings.Repeat("x", 10*i)
				req = newReq(t, ctx, "POST", "http://"+addr+"/", nil, int64(len(body)))
				req.Body = &bytesBody{data: []byte(body)}
				want = strconv.Itoa(len(body))
			}
			res, err := p.roundTrip(req, addr)
			if err != nil {
				errs <- fmt.Errorf("request %d: %w", i, err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if got := res.Header.Get("X-Len"); res.StatusCode != 200 || got != want {
				errs <- fmt.Errorf("request %d: %d, the peer read %s body bytes, want %s", i, res.StatusCode, got, want)
				return
			}
			errs <- nil
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if a := accepted.Load(); a != 2 {
		t.Errorf("%d connections, want 2", a)
	}
}

// goAwayConn serves one HTTP/2 connection for TestH2PoolResendsRefusedStreams. With
// goAway, once n requests have arrived it sends GOAWAY with the first of them as the last
// stream, answers that one and never the others; otherwise it answers every request, with
// the number of body bytes it read in X-Len.
func goAwayConn(c net.Conn, goAway bool, n int) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	var hbuf bytes.Buffer
	henc := hpack.NewEncoder(&hbuf)
	respond := func(id uint32, size int) {
		hbuf.Reset()
		henc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
		henc.WriteField(hpack.HeaderField{Name: "x-len", Value: strconv.Itoa(size)})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf.Bytes(), EndStream: true, EndHeaders: true})
	}
	sizes := map[uint32]int{}
	ended := map[uint32]bool{}
	var first uint32
	heads, sentGoAway, answered := 0, false, false
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		var id uint32
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			id = f.StreamID
			heads++
			if first == 0 {
				first = id
			}
			ended[id] = f.StreamEnded()
		case *http2.DataFrame:
			id = f.StreamID
			sizes[id] += len(f.Data())
			ended[id] = f.StreamEnded()
		default:
			continue
		}
		if !goAway {
			if ended[id] {
				respond(id, sizes[id])
			}
			continue
		}
		if heads == n && !sentGoAway {
			fr.WriteGoAway(first, http2.ErrCodeNo, nil)
			sentGoAway = true
		}
		if sentGoAway && ended[first] && !answered {
			respond(first, sizes[first])
			answered = true
		}
	}
}

// A request refused for an invalid header leaves the connection usable: nothing of it
// reached the encoder's table, which the peer's decoder mirrors.
func TestH2ClientInvalidHeaderKeepsConnection(t *testing.T) {
	addr := startH2CApp(t, 0, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Host) })
	cc := dialH2Client(t, addr)
	bad := newReq(t, context.Background(), "GET", "http://"+addr+"/", nil, 0)
	bad.Host = "first.example"
	bad.Header.Set("X-Bad", "a\x00b")
	if _, err := cc.RoundTrip(bad); err == nil {
		t.Fatal("a header value with NUL was sent")
	}
	good := newReq(t, context.Background(), "GET", "http://"+addr+"/", nil, 0)
	good.Host = "first.example"
	res, err := cc.RoundTrip(good)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(b) != "first.example" {
		t.Errorf("%d %q", res.StatusCode, b)
	}
}

// A WINDOW_UPDATE that pushes a window beyond 2^31-1 is a FLOW_CONTROL_ERROR (RFC 9113
// §6.9.1): the stream's, a stream error (RST_STREAM, the request fails, the connection
// goes on); the connection's, a connection error (GOAWAY). So is a SETTINGS_INITIAL_
// WINDOW_SIZE that pushes an open stream's window beyond it (§6.9.2).
func TestH2ClientWindowOverflow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script func(fr *http2.Framer, id uint32)
		conn   bool // a connection error: GOAWAY, not RST_STREAM
	}{
		{"stream window", func(fr *http2.Framer, id uint32) { fr.WriteWindowUpdate(id, 1<<31-1) }, false},
		{"connection window", func(fr *http2.Framer, id uint32) { fr.WriteWindowUpdate(0, 1<<31-1) }, true},
		{"initial window", func(fr *http2.Framer, id uint32) {
			fr.WriteWindowUpdate(id, 1<<31-1-65535) // the stream's window is now exactly 2^31-1
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65536})
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan http2.Frame, 1)
			addr := scriptServer(t, func(fr *http2.Framer, hdr func(uint32, bool, ...string)) {
				id, ok := nextHeaders(fr)
				if !ok {
					return
				}
				tc.script(fr, id)
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						close(got)
						return
					}
					switch f := f.(type) {
					case *http2.RSTStreamFrame:
						got <- f
						// The connection goes on: a second stream is answered.
						if id2, ok := nextHeaders(fr); ok {
							hdr(id2, true, ":status", "204")
						}
						time.Sleep(100 * time.Millisecond)
						return
					case *http2.GoAwayFrame:
						got <- f
						return
					}
				}
			})
			cc := dialH2Client(t, addr)
			url := "http://" + addr + "/"
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := cc.RoundTrip(newReq(t, ctx, "GET", url, nil, 0))
			if err == nil {
				t.Fatal("the request succeeded")
			}
			var f http2.Frame
			select {
			case f = <-got:
			case <-time.After(5 * time.Second):
				t.Fatal("the client sent neither RST_STREAM nor GOAWAY")
			}
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				if tc.conn || f.ErrCode != http2.ErrCodeFlowControl {
					t.Fatalf("RST_STREAM %v, want %s", f.ErrCode, map[bool]string{true: "GOAWAY FLOW_CONTROL_ERROR", false: "FLOW_CONTROL_ERROR"}[tc.conn])
				}
				if !strings.Contains(err.Error(), "flow-control window") {
					t.Errorf("error %v, want the window overflow", err)
				}
				res, err := cc.RoundTrip(newReq(t, ctx, "GET", url, nil, 0))
				if err != nil || res.StatusCode != 204 {
					t.Fatalf("the next request: %v, %v", res, err)
				}
			case *http2.GoAwayFrame:
				if !tc.conn || f.ErrCode != http2.ErrCodeFlowControl {
					t.Fatalf("GOAWAY %v, want RST_STREAM FLOW_CONTROL_ERROR", f.ErrCode)
				}
			default:
				t.Fatalf("the connection ended without RST_STREAM or GOAWAY (%v)", err)
			}
		})
	}
}
