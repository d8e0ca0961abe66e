package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The proxy serves HTTP/1.x itself rather than through net/http's server: one goroutine per
// connection reads a head through the guard, calls the handler in the same goroutine, writes
// the response, and reads the next head. net/http costs a second goroutine and an extra read
// per request (its background read, which notices a client that went away) and about twenty
// allocations of parsing; here a client that goes away is noticed only for requests that
// run longer than watchDelay, and a request head costs a handful of allocations. An HTTP/2
// preface hands the connection to the HTTP/2 server (h2server.go).
//
// Semantics follow net/http's server: keep-alive (HTTP/1.1 by default, HTTP/1.0 with
// "Connection: keep-alive"), Content-Length or chunked responses (a short response of
// unknown length gets a Content-Length; HTTP/1.0 gets a close-delimited body), trailers
// (declared with "Trailer" or set with http.TrailerPrefix), HEAD, 1xx, "Expect:
// 100-continue" (100 Continue on the first body read; any other expectation is answered
// 417), Hijack for upgrades, request bodies left unread drained up to 256 KiB, handler
// panics closing the connection (http.ErrAbortHandler silently).

// Connection states, for closing idle connections at the connection limit and on
// shutdown.
const (
	connNew     int32 = iota // accepted, no request yet
	connActive               // reading or serving a request
	connIdle                 // waiting for the next request of a keep-alive connection
	connClosed               // closed by the listener (shutdown)
	connEvicted              // closed by the listener to make room at the connection limit
)

// watchDelay is how long a request runs before its connection is watched for a client
// that went away (a background read, as net/http starts for every request).
const watchDelay = 100 * time.Millisecond

// maxDrainBytes is how much of a request body the handler left unread is read away to keep
// the connection (net/http's maxPostHandlerReadBytes).
const maxDrainBytes = 256 << 10

// pendingMax is how much of a response of unknown length is held back, unflushed, so
// that a short one gets a Content-Length instead of chunks (net/http's bufferBeforeChunkingSize).
const pendingMax = 2048

// lingerTime bounds the wait for the client to read a rejection before the connection is
// closed (net/http's rstAvoidanceDelay).
const lingerTime = 500 * time.Millisecond

// aLongTimeAgo is a deadline in the past: it unblocks a read at once.
var aLongTimeAgo = time.Unix(1, 0)

var bufWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

// chunkedTE is the TransferEncoding of every chunked request; nobody mutates it.
var chunkedTE = []string{"chunked"}

// h1Conn is one HTTP/1.x connection.
type h1Conn struct {
	l      *listener
	g      *guardConn
	remote string
	tls    *tls.ConnectionState // nil for plaintext
	ctx    context.Context      // the connection's; cancelled when the client goes away
	cancel context.CancelFunc
	tmpl   *http.Request // carries ctx: requests are copies of it
	state  atomic.Int32
	since  atomic.Int64  // when it last became idle (unix nanoseconds), for eviction order
	bw     *bufio.Writer // nil between responses
	res    h1Response

	mu      sync.Mutex // guards the watch fields against the timer's and body readers' goroutines
	watch   *time.Timer
	serving bool // the handler of the current request runs
	armed   bool // the current request may be watched (its body has been read)
	bgOn    bool // a background read is running
	bgDone  chan struct{}
	gone    atomic.Bool // the background read saw the client leave

	hijacked bool
	h2       bool // an HTTP/2 preface: served by serveHTTP2
}

// serveHTTP1 serves the HTTP/1.x requests of one accepted connection until it ends. An
// HTTP/2 preface hands the connection to the HTTP/2 server.
func (l *listener) serveHTTP1(g *guardConn) {
	c := &h1Conn{l: l, g: g, remote: g.RemoteAddr().String()}
	if tc, ok := g.Conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		c.tls = &st
	}
	c.ctx, c.cancel = context.WithCancel(l.ctx)
	c.tmpl = new(http.Request).WithContext(c.ctx)
	c.res.c = c
	g.readHeaderTimeout = l.limits.ReadHeaderTimeout
	if !l.addH1(c) {
		c.cancel()
		g.Close()
		l.release()
		return
	}
	handedOff := c.serve()
	l.removeH1(c)
	c.cancel()
	c.mu.Lock()
	if c.watch != nil {
		c.watch.Stop()
	}
	c.mu.Unlock()
	switch {
	case handedOff && c.h2:
		l.serveHTTP2(g, c.tls) // it accounts for the connection
	case c.hijacked:
		// The handler owns the connection; release was done at the hijack.
	default:
		if c.state.Load() == connEvicted {
			l.evicting.Add(-1)
		}
		if c.bw != nil {
			c.bw.Reset(nil)
			bufWriters.Put(c.bw)
			c.bw = nil
		}
		g.Close()
		g.release()
		l.release()
	}
}

// serve runs the request loop. It returns true when the connection is no longer this
// loop's to close (an HTTP/2 preface, or hijacked).
func (c *h1Conn) serve() bool {
	l, g := c.l, c.g
	g.SetReadDeadline(time.Now().Add(l.limits.ReadHeaderTimeout))
	for {
		head, info, err := g.readHead()
		if !c.state.CompareAndSwap(connNew, connActive) && !c.state.CompareAndSwap(connIdle, connActive) {
			return false // closed by the listener (idle at the limit, or shutdown)
		}
		if err != nil {
			var he *headError
			if errors.As(err, &he) {
				c.reject(he)
			}
			return false
		}
		if info.h2Preface {
			g.Passthrough()
			g.SetReadDeadline(time.Time{})
			c.h2 = true
			return true
		}
		req, err := c.newRequest(head, info)
		if err != nil {
			c.reject(bad(reasonRequestLine))
			return false
		}
		if req.Body != http.NoBody {
			g.SetReadDeadline(time.Time{}) // a body streams without a deadline
		}
		if !c.serveRequest(req, info) {
			return c.hijacked
		}
		if !c.state.CompareAndSwap(connActive, connIdle) || l.stopping.Load() {
			return false
		}
		now := time.Now()
		c.since.Store(now.UnixNano())
		if l.active.Load() >= int64(l.limits.MaxConnections) {
			l.wake() // the accept loop may be waiting for an idle connection to close
		}
		g.SetReadDeadline(now.Add(l.limits.IdleTimeout))
		if g.r == g.w {
			// Nothing pipelined: let the other goroutines ready to run go first, so that
			// the client's next request has time to arrive. Reading now would mostly
			// find nothing (a read system call for EAGAIN) and park in the poller.
			runtime.Gosched()
		}
	}
}

// serveRequest runs the handler for req and finishes its response. It reports whether
// the connection may serve another request.
func (c *h1Conn) serveRequest(req *http.Request, info headInfo) bool {
	w := &c.res
	w.reset(req)
	c.mu.Lock()
	c.serving = true
	c.mu.Unlock()
	body, _ := req.Body.(*h1Body)
	if e := req.Header["Expect"]; len(e) > 0 {
		if !containsToken(e, "100-continue") {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusExpectationFailed)
			c.disarm()
			w.finish()
			return false
		}
		if body != nil && req.ProtoAtLeast(1, 1) {
			body.cont = true
		}
	}
	if body == nil && !info.upgrade {
		c.arm()
	}
	ok := c.callHandler(w, req)
	c.disarm()
	if !ok {
		return false
	}
	if w.hijacked {
		c.hijacked = true
		c.l.release()
		return false
	}
	w.finish()
	settled := c.settleBody(body)
	keep := settled && !w.closeAfter && w.werr == nil && !c.gone.Load() && !info.upgrade
	if keep && c.bw != nil {
		c.bw.Reset(nil)
		bufWriters.Put(c.bw)
		c.bw = nil
	}
	return keep
}

// callHandler runs the handler; a panic ends the connection (logged unless it is
// http.ErrAbortHandler).
func (c *h1Conn) callHandler(w *h1Response, req *http.Request) (ok bool) {
	defer func() {
		if e := recover(); e != nil {
			if e != http.ErrAbortHandler {
				c.l.log.Error("http handler panic", "peer", c.remote, "panic", e, "stack", string(debug.Stack()))
			}
			ok = false
		}
	}()
	c.l.handler.ServeHTTP(w, req)
	return true
}

// writer returns the connection's buffered writer, taking one from the pool.
func (c *h1Conn) writer() *bufio.Writer {
	if c.bw == nil {
		c.bw = bufWriters.Get().(*bufio.Writer)
		c.bw.Reset(c.g.Conn)
	}
	return c.bw
}

// reject answers a refused head and closes the connection gently, so that the client
// reads the answer before the connection goes.
func (c *h1Conn) reject(he *headError) {
	text := http.StatusText(he.status)
	body := strconv.Itoa(he.status) + " " + text + ": " + he.reason + "\n"
	bw := c.writer()
	bw.WriteString("HTTP/1.1 " + strconv.Itoa(he.status) + " " + text +
		"\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body)
	if bw.Flush() != nil {
		return
	}
	if c.g.CloseWrite() != nil {
		return
	}
	c.g.SetReadDeadline(time.Now().Add(lingerTime))
	var buf [512]byte
	for {
		if _, err := c.g.Conn.Read(buf[:]); err != nil {
			return
		}
	}
}

// settleBody closes the request body after the handler and reads away what is left of it,
// up to maxDrainBytes. It reports whether the connection is still in step (the body was
// read to its end).
func (c *h1Conn) settleBody(b *h1Body) bool {
	if b == nil {
		return true
	}
	if !b.mu.TryLock() {
		// A transport still reads the body in its own goroutine: cut it off.
		c.g.SetReadDeadline(aLongTimeAgo)
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		return false
	}
	defer b.mu.Unlock()
	b.closed = true
	if b.sawEOF || c.g.bodyDone() {
		return true
	}
	if b.cont {
		return false // the client waits for a 100 Continue that never came
	}
	c.g.SetReadDeadline(time.Now().Add(c.l.limits.IdleTimeout))
	bp := defaultPool.Get()
	defer defaultPool.Put(bp)
	for n := 0; n <= maxDrainBytes; {
		m, err := c.g.readBody(*bp)
		n += m
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

// arm lets the current request be watched for a client that goes away: after watchDelay
// a background read starts. Once the handler has returned it does nothing (a transport may
// still finish reading the body in its own goroutine).
func (c *h1Conn) arm() {
	c.mu.Lock()
	if !c.serving {
		c.mu.Unlock()
		return
	}
	c.armed = true
	if c.watch == nil {
		c.watch = time.AfterFunc(watchDelay, c.backgroundRead)
	} else {
		c.watch.Reset(watchDelay)
	}
	c.mu.Unlock()
}

// disarm ends the watch of the current request, stopping a background read.
func (c *h1Conn) disarm() {
	c.mu.Lock()
	armed, on, done := c.armed, c.bgOn, c.bgDone
	c.serving, c.armed = false, false
	c.mu.Unlock()
	if armed {
		c.watch.Stop()
	}
	if on {
		c.g.SetReadDeadline(aLongTimeAgo)
		<-done
		c.mu.Lock()
		c.bgOn = false
		c.mu.Unlock()
	}
}

// backgroundRead runs in the timer's goroutine: it reads until the client sends more (a
// pipelined request, kept for later) or goes away (the request's context is cancelled).
// A late timer of an earlier request finds armed false, or the current request armed,
// which it may watch as well.
func (c *h1Conn) backgroundRead() {
	c.mu.Lock()
	if !c.armed || c.bgOn {
		c.mu.Unlock()
		return
	}
	c.bgOn = true
	done := make(chan struct{})
	c.bgDone = done
	c.g.SetReadDeadline(time.Time{})
	c.mu.Unlock()
	if err := c.g.waitMore(); err != nil && !isTimeout(err) {
		c.gone.Store(true)
		c.cancel()
	}
	close(done)
}

// newRequest parses a head the guard has validated. Every string of the request is a
// slice of one copy of the head.
func (c *h1Conn) newRequest(headb []byte, info headInfo) (*http.Request, error) {
	head := string(headb)
	line, rest, _ := strings.Cut(head, "\r\n")
	method, line, _ := strings.Cut(line, " ")
	target, proto, _ := strings.Cut(line, " ")
	u, err := parseTarget(method, target)
	if err != nil {
		return nil, err
	}
	req := c.tmpl.WithContext(c.ctx)
	req.Method = method
	req.URL = u
	req.RequestURI = target
	req.Proto = proto
	req.ProtoMajor, req.ProtoMinor = 1, 1
	if proto == "HTTP/1.0" {
		req.ProtoMinor = 0
	}
	req.RemoteAddr = c.remote
	req.TLS = c.tls
	req.Header = parseHeader(rest)
	req.Host = u.Host
	if req.Host == "" {
		if h := req.Header["Host"]; len(h) > 0 {
			req.Host = h[0]
		}
	}
	delete(req.Header, "Host")
	req.Close = shouldClose(req.ProtoMinor, req.Header["Connection"])
	req.Body = http.NoBody
	switch {
	case info.chunked:
		delete(req.Header, "Transfer-Encoding")
		req.TransferEncoding = chunkedTE
		req.ContentLength = -1
		req.Body = &h1Body{c: c, req: req}
	case info.contentLength > 0:
		req.ContentLength = info.contentLength
		req.Body = &h1Body{c: c, req: req}
	}
	return req, nil
}

// parseHeader parses the validated header lines of a head (each ends in CRLF, then the
// empty line). Keys are canonicalized as net/http does; values are slices of the head.
func parseHeader(lines string) http.Header {
	n := strings.Count(lines, "\r\n") - 1
	if n <= 0 {
		return http.Header{}
	}
	h := make(http.Header, n)
	vals := make([]string, n)
	i := 0
	for {
		var line string
		line, lines, _ = strings.Cut(lines, "\r\n")
		if line == "" {
			return h
		}
		name, value, _ := strings.Cut(line, ":")
		value = textproto.TrimString(value)
		if !isCanonical(name) {
			name = textproto.CanonicalMIMEHeaderKey(name)
		}
		if vv, ok := h[name]; ok {
			h[name] = append(vv, value)
		} else {
			vals[i] = value
			h[name] = vals[i : i+1 : i+1]
		}
		i++
	}
}

// isCanonical reports whether a (valid) header name is already in canonical form.
func isCanonical(s string) bool {
	upper := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return true
}

// parseTarget parses a request target as net/http does (url.ParseRequestURI, with CONNECT's
// authority form), with a fast path for plain origin-form paths.
func parseTarget(method, target string) (*url.URL, error) {
	if target[0] == '/' {
		path, query, hasQuery := strings.Cut(target, "?")
		if plainPath(path) && (!hasQuery || query != "") {
			return &url.URL{Path: path, RawQuery: query}, nil
		}
	}
	raw := target
	authority := method == "CONNECT" && target[0] != '/'
	if authority {
		raw = "http://" + raw
	}
	u, err := url.ParseRequestURI(raw)
	if err != nil {
		return nil, err
	}
	if authority {
		u.Scheme = ""
	}
	return u, nil
}

// plainPath reports whether a path needs neither unescaping nor escaping: url.URL.Path is
// the path itself and RawPath is empty.
func plainPath(p string) bool {
	for i := 0; i < len(p); i++ {
		if !plainPathByte[p[i]] {
			return false
		}
	}
	return true
}

var plainPathByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for _, c := range "-_.~$&+,/:;=@" {
		t[c] = true
	}
	return t
}()

// shouldClose is net/http's: HTTP/1.0 closes unless asked to keep alive, HTTP/1.1 when
// asked to close.
func shouldClose(minor int, conn []string) bool {
	if minor == 0 {
		return containsToken(conn, "close") || !containsToken(conn, "keep-alive")
	}
	return containsToken(conn, "close")
}

// h1Body is a request body: the guard decodes it; trailers land in the request's Trailer
// at the end. Reads may come from another goroutine (a transport), hence the lock.
type h1Body struct {
	c      *h1Conn
	req    *http.Request
	mu     sync.Mutex
	closed bool
	sawEOF bool
	cont   bool // send 100 Continue before the first read
}

func (b *h1Body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.sawEOF {
		return 0, io.EOF
	}
	if b.cont {
		b.cont = false
		b.c.res.writeContinue()
	}
	n, err := b.c.g.readBody(p)
	if err == io.EOF {
		b.sawEOF = true
		if t := b.c.g.trailer; len(t) > 0 {
			if b.req.Trailer == nil {
				b.req.Trailer = make(http.Header, len(t))
			}
			for k, vv := range t {
				b.req.Trailer[k] = vv
			}
		}
		b.c.arm()
	}
	return n, err
}

// Close marks the body closed; the loop reads away what is left once the handler is done.
func (b *h1Body) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// h1Response is the http.ResponseWriter of one request; the connection reuses it.
type h1Response struct {
	c   *h1Conn
	req *http.Request

	header      http.Header
	status      int
	wroteHeader bool // the status is decided
	headSent    bool // the head is in the writer
	respBody
	chunked    bool
	closeAfter bool
	pending    []byte   // body of unknown length held back (at most pendingMax)
	trailers   []string // trailer names declared with "Trailer" when the head was sent
	werr       error
	hijacked   bool

	mu       sync.Mutex // a 100 Continue (from a body read) against the head
	contSent bool
	scratch  [32]byte
}

// reset prepares the response of req. The header map is reused: handlers do not keep it
// past their return.
func (w *h1Response) reset(req *http.Request) {
	w.req = req
	if w.header == nil {
		w.header = make(http.Header)
	} else {
		clear(w.header)
	}
	w.status, w.wroteHeader, w.headSent = 0, false, false
	w.isHead, w.bodyAllowed = req.Method == http.MethodHead, false
	w.cl, w.written, w.chunked, w.closeAfter = -1, 0, false, req.Close
	w.pending, w.trailers = w.pending[:0], w.trailers[:0]
	w.werr, w.hijacked, w.contSent = nil, false, false
}

func (w *h1Response) Header() http.Header { return w.header }

func (w *h1Response) WriteHeader(code int) {
	if w.hijacked || w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic("proxy: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		w.writeInterim(code)
		return
	}
	w.wroteHeader = true
	w.status = code
	w.bodyAllowed = code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
	if v := w.header["Content-Length"]; len(v) > 0 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 && len(v) == 1 {
			w.cl = n
		} else {
			delete(w.header, "Content-Length")
		}
	}
	if containsToken(w.header["Connection"], "close") {
		w.closeAfter = true
	}
}

// writeInterim sends a 1xx response at once, with the headers set so far.
func (w *h1Response) writeInterim(code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if code == http.StatusContinue {
		if w.contSent {
			return
		}
		w.contSent = true
	}
	bw := w.c.writer()
	w.writeStatusLine(bw, code)
	if code != http.StatusContinue {
		w.writeFields(bw)
	}
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil && w.werr == nil {
		w.werr = err
	}
}

// writeContinue answers "Expect: 100-continue" on the first body read, unless the
// response has begun.
func (w *h1Response) writeContinue() {
	w.mu.Lock()
	started := w.headSent
	w.mu.Unlock()
	if !started {
		w.writeInterim(http.StatusContinue)
	}
}

// respBody is what the HTTP/1 and HTTP/2 servers' responses track of the body the handler
// writes.
type respBody struct {
	isHead      bool
	bodyAllowed bool
	cl          int64 // declared Content-Length, -1 when unknown
	written     int64
}

// admit accounts for p, about to be written as body. send is false when nothing goes on
// the wire: on an error (no body allowed for the status, werr, the response's write error
// so far, or p passing the declared Content-Length), for an empty write where no body is
// allowed, or for a response to HEAD (p counted, n = len(p)).
func (b *respBody) admit(p []byte, werr error) (n int, send bool, err error) {
	switch {
	case !b.bodyAllowed && len(p) > 0:
		return 0, false, http.ErrBodyNotAllowed
	case !b.bodyAllowed:
		return 0, false, nil
	case werr != nil:
		return 0, false, werr
	case b.cl >= 0 && b.written+int64(len(p)) > b.cl:
		return 0, false, http.ErrContentLength
	}
	b.written += int64(len(p))
	return len(p), !b.isHead, nil
}

func (w *h1Response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if n, send, err := w.admit(p, w.werr); !send {
		return n, err
	}
	if !w.headSent {
		if w.cl < 0 && len(w.pending)+len(p) <= pendingMax {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		w.sendHead(false)
		if w.werr != nil {
			return 0, w.werr
		}
	}
	w.writeBody(p)
	if w.werr != nil {
		return 0, w.werr
	}
	return len(p), nil
}

// WriteString avoids a copy of s for io.WriteString.
func (w *h1Response) WriteString(s string) (int, error) {
	if w.headSent && w.bodyAllowed && !w.isHead && !w.chunked && w.werr == nil &&
		(w.cl < 0 || w.written+int64(len(s)) <= w.cl) {
		w.written += int64(len(s))
		if _, err := w.c.bw.WriteString(s); err != nil {
			w.werr = err
			return 0, err
		}
		return len(s), nil
	}
	return w.Write([]byte(s))
}

func (w *h1Response) writeBody(p []byte) {
	bw := w.c.bw
	if w.chunked {
		if len(p) == 0 {
			return
		}
		bw.Write(strconv.AppendInt(w.scratch[:0], int64(len(p)), 16))
		bw.WriteString("\r\n")
		bw.Write(p)
		_, err := bw.WriteString("\r\n")
		if err != nil {
			w.werr = err
		}
		return
	}
	if _, err := bw.Write(p); err != nil {
		w.werr = err
	}
}

// Flush sends what is buffered, the head first.
func (w *h1Response) Flush() { _ = w.FlushError() }

// FlushError is Flush for http.ResponseController.
func (w *h1Response) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false)
	}
	if w.werr == nil {
		if err := w.c.bw.Flush(); err != nil {
			w.werr = err
		}
	}
	return w.werr
}

// Hijack hands the connection to the handler (for Upgrade tunnels). Bytes the client sent
// after the head are read from the returned connection first.
func (w *h1Response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.headSent {
		return nil, nil, errors.New("proxy: hijack after the response began")
	}
	c := w.c
	c.disarm()
	w.hijacked = true
	c.g.Passthrough()
	c.g.SetDeadline(time.Time{})
	bw := c.writer()
	c.bw = nil // the handler's now
	return c.g, bufio.NewReadWriter(bufio.NewReaderSize(c.g, 16), bw), nil
}

// sendHead writes the status line and header fields, deciding the framing: final is set
// when the handler has returned, so that a held-back short body gets a Content-Length.
func (w *h1Response) sendHead(final bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.headSent = true
	h := w.header
	if w.c.l.stopping.Load() {
		w.closeAfter = true
	}
	var framing string
	switch {
	case !w.bodyAllowed:
		delete(h, "Transfer-Encoding")
	case w.isHead:
	case w.cl >= 0:
	case final && len(h["Trailer"]) == 0:
		w.cl = int64(len(w.pending))
		framing = "Content-Length: " + strconv.Itoa(len(w.pending)) + "\r\n"
	case w.req.ProtoMinor >= 1:
		w.chunked = true
		delete(h, "Content-Length")
		framing = "Transfer-Encoding: chunked\r\n"
	default:
		w.closeAfter = true // HTTP/1.0: the body ends with the connection
	}
	if tr := h["Trailer"]; len(tr) > 0 && w.chunked {
		for _, v := range tr {
			for k := range strings.SplitSeq(v, ",") {
				if k = textproto.TrimString(k); k != "" {
					w.trailers = append(w.trailers, textproto.CanonicalMIMEHeaderKey(k))
				}
			}
		}
	}
	bw := w.c.writer()
	w.writeStatusLine(bw, w.status)
	w.writeFields(bw)
	bw.WriteString(framing)
	if _, ok := h["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(time.Now().UTC().AppendFormat(w.scratch[:0], http.TimeFormat))
		bw.WriteString("\r\n")
	}
	if _, ok := h["Connection"]; !ok {
		switch {
		case w.closeAfter:
			bw.WriteString("Connection: close\r\n")
		case !w.closeAfter && w.req.ProtoMinor == 0:
			bw.WriteString("Connection: keep-alive\r\n")
		}
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		w.werr = err
	}
	if len(w.pending) > 0 {
		p := w.pending
		w.pending = p[:0]
		w.writeBody(p)
	}
}

func (w *h1Response) writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(w.scratch[:0], int64(code), 10))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code " + strconv.Itoa(code))
	}
	bw.WriteString("\r\n")
}

// writeFields writes the header fields, without the framing fields the writer manages
// and without trailers set with http.TrailerPrefix. Invalid names are skipped and line
// breaks in values become spaces, as net/http does.
func (w *h1Response) writeFields(bw *bufio.Writer) {
	for k, vv := range w.header {
		if k == "Transfer-Encoding" || strings.HasPrefix(k, http.TrailerPrefix) || !validToken(k) {
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			if strings.ContainsAny(v, "\r\n") {
				v = strings.NewReplacer("\r\n", " ", "\r", " ", "\n", " ").Replace(v)
			}
			bw.WriteString(textproto.TrimString(v))
			bw.WriteString("\r\n")
		}
	}
}

// finish completes the response after the handler returned: the head if it is not out,
// the last chunk and trailers, and a flush.
func (w *h1Response) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(true)
	}
	bw := w.c.bw
	switch {
	case w.chunked:
		bw.WriteString("0\r\n")
		for _, k := range w.trailers {
			for _, v := range w.header[k] {
				bw.WriteString(k + ": " + textproto.TrimString(v) + "\r\n")
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && validToken(name) {
				for _, v := range vv {
					bw.WriteString(name + ": " + textproto.TrimString(v) + "\r\n")
				}
			}
		}
		bw.WriteString("\r\n")
	case w.cl >= 0 && w.written < w.cl && w.bodyAllowed && !w.isHead:
		w.closeAfter = true // the response is cut short: only closing tells the client
	}
	if w.werr == nil {
		if err := bw.Flush(); err != nil {
			w.werr = err
		}
	}
}

var (
	_ http.ResponseWriter = (*h1Response)(nil)
	_ http.Flusher        = (*h1Response)(nil)
	_ http.Hijacker       = (*h1Response)(nil)
	_ io.StringWriter     = (*h1Response)(nil)
)
