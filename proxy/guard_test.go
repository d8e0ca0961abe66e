package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
)

// smuggling is the table of request heads the guard must refuse. Every one is written
// raw on a socket; the answer must be the status below and the app must see nothing.
var smuggling = []struct {
	name   string
	req    string
	status int
}{
	{"CL+TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	{"TE+CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400},
	{"duplicate CL, same value", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400},
	{"duplicate CL, different", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc", 400},
	{"CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400},
	{"CL sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400},
	{"obs-fold tab", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400},
	{"TE gzip, chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400},
	{"TE identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400},
	{"TE twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	{"TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400},
	{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	{"space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400},
	{"bad header name", "GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", 400},
	{"NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400},
	{"bare CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400},
	{"bare LF", "GET / HTTP/1.1\nHost: a\n\n", 400},
	{"missing Host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400},
	{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
	{"bad version", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400},
	{"extra space in request line", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"oversized headers", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("x", 40<<10) + "\r\n\r\n", 431},
	{"oversized, never ending", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("x", 40<<10), 431},
	{"too many headers", "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-A: b\r\n", 100) + "\r\n", 431},
}

// send writes raw to addr and reads one response; it returns the response and whether
// the connection was closed afterwards.
func send(t *testing.T, addr, raw string) (*http.Response, string, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go io.WriteString(c, raw) // may fail once the server closes: not our concern
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	_, err = br.ReadByte()
	return res, string(body), errors.Is(err, io.EOF) || isReset(err)
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

func TestSmugglingTable(t *testing.T) {
	a := startApp(t, "a", nil)
	inAddr, _ := startInbound(t, InboundConfig{Service: "a", Protocol: HTTP, App: a.addr})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "a"}, []lb.Endpoint{endpoint("a1", inAddr, HTTP)})

	for _, side := range []struct{ name, addr string }{{"outbound", upAddr}, {"inbound", inAddr}} {
		for _, tc := range smuggling {
			t.Run(side.name+"/"+tc.name, func(t *testing.T) {
				before := a.hits.Load()
				res, body, closed := send(t, side.addr, tc.req)
				if res.StatusCode != tc.status {
					t.Errorf("status %d (%q), want %d", res.StatusCode, body, tc.status)
				}
				if !closed {
					t.Error("connection stayed open after the rejection")
				}
				if n := a.hits.Load() - before; n != 0 {
					t.Errorf("the app saw %d request(s)", n)
				}
			})
		}
	}
}

// A rejected head pipelined behind a valid request is answered in order, after the
// valid request's response, and only the valid request is forwarded.
func TestSmugglingPipelined(t *testing.T) {
	a := startApp(t, "a", nil)
	inAddr, _ := startInbound(t, InboundConfig{Service: "a", Protocol: HTTP, App: a.addr})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "a"}, []lb.Endpoint{endpoint("a1", inAddr, HTTP)})

	c, err := net.Dial("tcp", upAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// A chunked body whose data looks like a request head, then a valid GET, then a
	// smuggling attempt.
	hidden := "GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n"
	io.WriteString(c, "POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"+
		fmt.Sprintf("%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n", len(hidden), hidden)+
		"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"+
		"POST /third HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	br := bufio.NewReader(c)
	for i, want := range []int{200, 200, 400} {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != want {
			t.Errorf("response %d: %d %q, want %d", i, res.StatusCode, body, want)
		}
		if i == 1 && !strings.Contains(string(body), "/second") {
			t.Errorf("second response %q", body)
		}
	}
	if n := a.hits.Load(); n != 2 {
		t.Errorf("app saw %d requests, want 2", n)
	}
}

// Valid framing keeps keep-alive working: Content-Length and chunked bodies (with chunk
// extensions and trailers) followed by more requests on the same connection.
func TestGuardKeepAlive(t *testing.T) {
	a := startApp(t, "a", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.URL.Path+":"+string(b))
	})
	inAddr, _ := startInbound(t, InboundConfig{Service: "a", Protocol: HTTP, App: a.addr})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "a"}, []lb.Endpoint{endpoint("a1", inAddr, HTTP)})
	c, err := net.Dial("tcp", upAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	reqs := []struct{ raw, want string }{
		{"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", "/cl:hello"},
		{"POST /ch HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n", "/ch:abcde"},
		{"GET /get HTTP/1.1\r\nHost: a\r\n\r\n", "/get:"},
	}
	for _, r := range reqs {
		// Write byte by byte for one of them: the guard must cope with any segmentation.
		if strings.HasPrefix(r.raw, "POST /ch") {
			for i := 0; i < len(r.raw); i++ {
				c.Write([]byte{r.raw[i]})
			}
		} else {
			io.WriteString(c, r.raw)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 || string(body) != r.want {
			t.Errorf("%q: %d %q", r.want, res.StatusCode, body)
		}
	}
}

func TestValidateHead(t *testing.T) {
	for _, tc := range []struct {
		head    string
		cl      int64
		chunked bool
		upgrade bool
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", -1, false, false},
		{"POST /x HTTP/1.1\r\nHost: a\r\ncontent-length:  12 \r\n\r\n", 12, false, false},
		{"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n", -1, true, false},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n", -1, false, true},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", -1, false, false},
		{"GET / HTTP/1.0\r\n\r\n", -1, false, false},
	} {
		info, err := validateHead([]byte(tc.head), 100)
		if err != nil || info.contentLength != tc.cl || info.chunked != tc.chunked || info.upgrade != tc.upgrade {
			t.Errorf("%q: %+v %v", tc.head, info, err)
		}
	}
	for _, tc := range smuggling {
		if strings.HasPrefix(tc.name, "oversized") {
			continue // the connection-level size limit rejects these
		}
		head, _, _ := strings.Cut(tc.req, "\r\n\r\n")
		if _, err := validateHead([]byte(head+"\r\n\r\n"), 100); err == nil && tc.name != "bare LF" {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

// FuzzValidateHead checks the guard against net/http: whatever the guard accepts, net/http
// must frame the same way (same length, same chunking), or reject itself. A head framed
// differently by the two would be a smuggling hole.
func FuzzValidateHead(f *testing.F) {
	for _, tc := range smuggling {
		f.Add([]byte(tc.req))
	}
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.0\r\nContent-Length: 0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 {
			return
		}
		head := data[:end+4]
		info, err := validateHead(head, 100)
		if err != nil || info.h2Preface {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			return // net/http answers 400 itself; nothing is forwarded
		}
		chunked := len(req.TransferEncoding) > 0
		if chunked != info.chunked {
			t.Fatalf("%q: guard chunked=%v, net/http TE=%v", head, info.chunked, req.TransferEncoding)
		}
		want := info.contentLength
		if want < 0 {
			want = 0
		}
		if !chunked && req.ContentLength != want {
			t.Fatalf("%q: guard length %d, net/http %d", head, info.contentLength, req.ContentLength)
		}
	})
}

// scriptConn serves data in chunks of the given sizes.
type scriptConn struct {
	net.Conn
	data  []byte
	sizes []byte
}

func (s *scriptConn) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(s.sizes) > 0 {
		n = min(n, int(s.sizes[0])+1)
		s.sizes = s.sizes[1:]
	}
	n = copy(p, s.data[:min(n, len(s.data))])
	s.data = s.data[n:]
	return n, nil
}

// FuzzGuardConn feeds arbitrary byte streams, cut at arbitrary points, through the guard's
// reader and through net/http's request reader: for every request both read, the head
// ends at the same place and the decoded bodies and trailers are the same, so that the
// guard never frames a stream differently from a standard server. The guard may refuse
// more than net/http, never less for framing.
func FuzzGuardConn(f *testing.F) {
	for _, tc := range smuggling {
		f.Add([]byte(tc.req), []byte{3, 7, 200})
	}
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), []byte{1, 2, 3})
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\nHost: a\r\n\r\n"), []byte{0})
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"), []byte{5})
	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		g := newGuardConn(&scriptConn{data: data, sizes: sizes}, Limits{}.withDefaults(), nil)
		ref := bufio.NewReader(bytes.NewReader(data))
		buf := make([]byte, 700)
		for range 100 {
			head, info, err := g.readHead()
			if err != nil || info.h2Preface {
				return
			}
			var body []byte
			for {
				n, err := g.readBody(buf)
				body = append(body, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					return // the guard refuses the body: nothing more is read
				}
			}
			req, err := http.ReadRequest(ref)
			if err != nil {
				return // net/http would refuse the head (400): stricter there, not a framing split
			}
			want, err := io.ReadAll(req.Body)
			if err != nil {
				return
			}
			if !bytes.Equal(body, want) {
				t.Fatalf("head %q: guard body %q, net/http %q", head, body, want)
			}
			if len(g.trailer) != len(req.Trailer) {
				t.Fatalf("head %q: guard trailers %v, net/http %v", head, g.trailer, req.Trailer)
			}
			if info.upgrade {
				return
			}
		}
	})
}

// Slowloris: a head that trickles in is cut at the read-header timeout, and a connection
// that idles after a request is closed at the idle timeout.
func TestSlowHeadAndIdleTimeouts(t *testing.T) {
	a := startApp(t, "a", nil)
	lim := Limits{ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	inAddr, _ := startInbound(t, InboundConfig{Service: "a", Protocol: HTTP, App: a.addr, Limits: lim})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "a", Limits: lim}, []lb.Endpoint{endpoint("a1", inAddr, HTTP)})

	c, err := net.Dial("tcp", upAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = io.ReadAll(c) // returns when the proxy closes the connection
	if d := time.Since(start); err != nil || d > 2*time.Second {
		t.Errorf("slow head: closed after %v (%v)", d, err)
	}
	if a.hits.Load() != 0 {
		t.Error("the slow request reached the app")
	}

	c2, err := net.Dial("tcp", upAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	io.WriteString(c2, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c2)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("request: %v %v", res, err)
	}
	io.Copy(io.Discard, res.Body)
	start = time.Now()
	c2.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("idle connection closed after %v", d)
	}
}

// At the listener's connection limit the keep-alive connection idle longest is closed to
// make room; when every connection is busy, a new one waits (it is neither closed nor
// served) until one ends.
func TestMaxConnectionsPerListener(t *testing.T) {
	release := make(chan struct{})
	a := startApp(t, "a", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "ok")
	})
	inAddr, _ := startInbound(t, InboundConfig{Service: "a", Protocol: HTTP, App: a.addr})
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "a", Limits: Limits{MaxConnections: 2}, Metrics: m},
		[]lb.Endpoint{endpoint("a1", inAddr, HTTP)})
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", upAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}
	get := func(c net.Conn, br *bufio.Reader, path string) error {
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n")
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("status %d", res.StatusCode)
		}
		_, err = io.Copy(io.Discard, res.Body)
		return err
	}

	// Two busy connections fill the listener.
	var busy [2]net.Conn
	var busyR [2]*bufio.Reader
	done := make(chan error, 2)
	for i := range busy {
		busy[i], busyR[i] = dial()
		go func() { done <- get(busy[i], busyR[i], "/slow") }()
	}
	testutil.Eventually(t, 3*time.Second, 10*time.Millisecond, func() error {
		if n := a.hits.Load(); n != 2 {
			return fmt.Errorf("%d requests at the app", n)
		}
		return nil
	})
	// A third one waits: not closed, not answered.
	c3, br3 := dial()
	io.WriteString(c3, "GET /third HTTP/1.1\r\nHost: a\r\n\r\n")
	c3.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := br3.ReadByte(); !os.IsTimeout(err) {
		t.Fatalf("third connection while the others are busy: read %v, %v; want it to wait", n, err)
	}
	// Once the busy ones are idle, one of them is closed and the third is served.
	close(release)
	for range busy {
		if err := <-done; err != nil {
			t.Fatalf("busy connection: %v", err)
		}
	}
	c3.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(br3, nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("third connection: %v %v", res, err)
	}
	res.Body.Close()
	closed := 0
	for i := range busy {
		busy[i].SetReadDeadline(time.Now().Add(time.Second))
		if _, err := busyR[i].ReadByte(); errors.Is(err, io.EOF) || isReset(err) {
			closed++
		}
	}
	if closed != 1 {
		t.Errorf("%d idle connections closed to admit the third, want 1", closed)
	}
	// Eviction order: with two idle connections, the one idle longest is closed.
	var idle [2]net.Conn
	var idleR [2]*bufio.Reader
	for i := range idle {
		idle[i], idleR[i] = dial()
		if err := get(idle[i], idleR[i], "/"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// c3 and one of the busy pair are open still; the new idle ones took the others'
	// places. Fill the listener with busy connections but one.
	testutil.Eventually(t, 3*time.Second, 10*time.Millisecond, func() error {
		if n := upActive(m); n > 2 {
			return fmt.Errorf("%v connections open", n)
		}
		return nil
	})
	c4, br4 := dial()
	if err := get(c4, br4, "/"); err != nil {
		t.Fatal(err)
	}
	idle[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idleR[0].ReadByte(); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("the longest idle connection was not the one closed: %v", err)
	}
	idle[1].SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := idleR[1].ReadByte(); !os.IsTimeout(err) {
		t.Errorf("the most recently used idle connection was closed: %v", err)
	}

	var tripped dto.Metric
	m.breakers.WithLabelValues(DirOutbound, UnknownSource, "a", BreakerConnections).Write(&tripped)
	if got := tripped.GetCounter().GetValue(); got < 1 {
		t.Errorf("breaker_trips{max_connections} = %v, want at least 1", got)
	}
}

// upActive is the outbound listener's open connection count in m.
func upActive(m *Metrics) float64 {
	var g dto.Metric
	m.connsOpen.WithLabelValues(DirOutbound, "a").Write(&g)
	return g.GetGauge().GetValue()
}
