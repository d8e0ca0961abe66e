package proxy

import (
	"bufio"
	"bytes"
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

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The proxy serves HTTP/2 itself (h2server.go) rather than with net/http's server, whose
// design costs, per request: a hand-off from the frame-reading goroutine to the serve
// goroutine, another to the handler's goroutine and back for every write, a goroutine per
// flush, two flushes (two write(2)s) for a response's HEADERS and DATA, and two read(2)s
// per frame. Here the connection's goroutine reads frames through a buffer and handles
// them itself; each stream's handler runs in a goroutine of its own (reused for later
// streams of the connection, see worker) and writes its frames straight into the
// connection's buffer under a lock, so a short response goes out as HEADERS, DATA and
// END_STREAM in one write.
//
// What it does (RFC 9113): SETTINGS (the peer's table size, initial window, frame size),
// PING, WINDOW_UPDATE and flow control both ways (1 MiB receive windows, credit returned
// in batches), RST_STREAM, GOAWAY, CONTINUATION (assembled and bounded by x/net's Framer,
// which also validates field names, values and pseudo-headers), request trailers and
// response trailers, 100-continue, MaxConcurrentStreams (streams beyond it are refused
// with REFUSED_STREAM, and a stream counts until its handler returns, so resets cannot
// run up handlers), malformed requests (connection-specific fields, te other than
// trailers, bad content-length) reset with PROTOCOL_ERROR, header lists over the limit
// answered 431, graceful shutdown (GOAWAY, streams in flight finish), the idle timeout,
// and keep-alive PINGs to find dead peers. No server push, no extended CONNECT.

const (
	h2StreamWindow    = 1 << 20  // receive window per stream
	h2ConnWindow      = 1 << 20  // receive window per connection
	h2MaxReadFrame    = 64 << 10 // largest frame accepted
	h2ReadBuffer      = 16 << 10
	h2WriteBuffer     = 16 << 10
	h2PingAfter       = 30 * time.Second // silence before a keep-alive PING
	h2PingTimeout     = 10 * time.Second // wait for its answer
	h2MaxControlQueue = 1000             // SETTINGS and PINGs answered per read burst
	// h2GoAwayLinger is how long a connection stays open after the last GOAWAY and its
	// last stream, unless the peer closes first: closing at once, with a request of the
	// peer's unread, would send a TCP reset that can destroy the unread GOAWAY at the
	// peer, which then cannot tell that the request was not processed (net/http's
	// server waits likewise).
	h2GoAwayLinger = time.Second
)

var (
	errH2StreamReset = errors.New("proxy: http2 stream reset by the client")
	errH2ConnClosed  = errors.New("proxy: http2 connection closed")
)

// h2Conn is one HTTP/2 connection.
type h2Conn struct {
	l      *listener
	conn   net.Conn
	br     *bufio.Reader
	fr     *http2.Framer
	rd     *h2FrameReader // reads fr's frames, decoding header blocks
	remote string
	tls    *tls.ConnectionState
	ctx    context.Context
	cancel context.CancelFunc

	lastRead atomic.Int64 // unix nanoseconds of the last read from the peer

	// Writing, under wmu. Handlers waiting for send window wait on wcond.
	wmu    sync.Mutex
	wcond  *sync.Cond
	bw     *bufio.Writer
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
	werr   error
	h2Flow                   // send windows and frame size
	lower  map[string]string // canonical header name -> lower case

	// Streams, under mu.
	mu        sync.Mutex
	streams   map[uint32]*h2Stream
	maxID     uint32 // highest client stream ID seen
	handlers  int    // handlers running
	goingAway bool   // GOAWAY sent: no new streams
	peerGone  bool   // the peer sent GOAWAY
	closed    bool
	lingering bool
	idleSince time.Time
	noHandler chan struct{} // closed when handlers drop to zero after closed
	recv      h2RecvWindow  // the connection's
	pingSent  time.Time

	timer   *time.Timer
	flushCh chan struct{}     // kicks the flusher (capacity 1)
	work    chan *h2Stream    // hands a new stream to an idle worker (unbuffered)
	canon   map[string]string // lower-case name -> canonical, reader goroutine only
}

// h2Stream is one request.
type h2Stream struct {
	c      *h2Conn
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc
	req    *http.Request
	res    h2Response

	// Request body, under mu; reads wait on cond.
	mu       sync.Mutex
	cond     sync.Cond
	buf      []byte
	off      int
	eof      bool // END_STREAM received
	rerr     error
	recv     h2RecvWindow
	trailer  http.Header
	needCont bool // 100-continue before the first read
	bodyRead int64
	declared int64 // content-length, -1 when absent

	// Under c.wmu.
	sendWin int64
	reset   bool // RST_STREAM sent or received: no more frames
	done    bool // END_STREAM sent
}

// serveHTTP2 serves one HTTP/2 connection whose client preface has not been read yet.
// tlsState is the connection's, or nil.
func (l *listener) serveHTTP2(conn net.Conn, tlsState *tls.ConnectionState) {
	c := &h2Conn{l: l, conn: conn, remote: conn.RemoteAddr().String(), tls: tlsState,
		streams: map[uint32]*h2Stream{}, h2Flow: newH2Flow(),
		recv: newH2RecvWindow(h2ConnWindow), lower: map[string]string{}, canon: map[string]string{},
		flushCh: make(chan struct{}, 1), work: make(chan *h2Stream)}
	c.ctx, c.cancel = context.WithCancel(l.ctx)
	c.wcond = sync.NewCond(&c.wmu)
	c.br = bufio.NewReaderSize(h2TimedReader{c}, h2ReadBuffer)
	c.bw = bufio.NewWriterSize(conn, h2WriteBuffer)
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.SetMaxReadFrameSize(h2MaxReadFrame)
	c.fr.SetReuseFrames()
	c.rd = newH2FrameReader(c.fr, uint32(l.limits.MaxHeaderBytes))
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.idleSince = time.Now()
	c.lastRead.Store(time.Now().UnixNano())
	if !l.addH2(c) {
		conn.Close()
		l.release()
		return
	}
	c.serve()
	l.removeH2(c)
	l.release()
}

// h2TimedReader notes when the peer last sent anything, for keep-alive PINGs.
type h2TimedReader struct{ c *h2Conn }

func (r h2TimedReader) Read(p []byte) (int, error) {
	// Everything read so far is handled: let the handlers it started run first, so that
	// the read finds more of the peer's frames (see h1Conn.serve).
	runtime.Gosched()
	n, err := r.c.conn.Read(p)
	if n > 0 {
		r.c.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

func (c *h2Conn) serve() {
	defer c.teardown()
	c.conn.SetReadDeadline(time.Now().Add(c.l.limits.ReadHeaderTimeout))
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.br, preface[:]); err != nil || string(preface[:]) != http2.ClientPreface {
		return
	}
	c.conn.SetReadDeadline(time.Time{})
	c.wmu.Lock()
	c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(c.l.limits.MaxConcurrentStreams)},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: h2MaxReadFrame},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(c.l.limits.MaxHeaderBytes)},
	)
	c.fr.WriteWindowUpdate(0, h2ConnWindow-65535)
	c.flushLocked()
	c.wmu.Unlock()
	c.timer = time.AfterFunc(c.timerDelay(), c.onTimer)
	go c.flusher()
	controls := 0
	for {
		f, err := c.rd.ReadFrame()
		if err != nil {
			var se http2.StreamError
			switch {
			case errors.As(err, &se):
				c.streamReadError(se)
				continue
			case errors.As(err, new(http2.ConnectionError)):
				c.goAway(http2.ErrCode(err.(http2.ConnectionError)))
			}
			return
		}
		if c.br.Buffered() == 0 {
			controls = 0
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			controls++
			err = c.processSettings(f)
		case *http2.MetaHeadersFrame:
			err = c.processHeaders(f)
		case *http2.DataFrame:
			err = c.processData(f)
		case *http2.WindowUpdateFrame:
			err = c.processWindowUpdate(f)
		case *http2.RSTStreamFrame:
			c.processReset(f)
		case *http2.PingFrame:
			if !f.IsAck() {
				controls++
				c.wmu.Lock()
				c.fr.WritePing(true, f.Data)
				c.kickLocked()
				c.wmu.Unlock()
			} else {
				c.mu.Lock()
				c.pingSent = time.Time{}
				c.mu.Unlock()
			}
		case *http2.GoAwayFrame:
			c.mu.Lock()
			c.peerGone = true
			done := c.handlers == 0
			c.mu.Unlock()
			if done {
				return
			}
		case *http2.PushPromiseFrame:
			err = http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if controls > h2MaxControlQueue {
			err = http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
		if err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.goAway(http2.ErrCode(ce))
			}
			return
		}
		c.wmu.Lock()
		werr := c.werr
		c.wmu.Unlock()
		if werr != nil {
			return
		}
	}
}

// teardown ends the connection: streams are cancelled, writers woken, and it returns
// once every handler has.
func (c *h2Conn) teardown() {
	if c.timer != nil {
		c.timer.Stop()
	}
	c.cancel()
	c.wmu.Lock()
	if c.werr == nil {
		c.werr = errH2ConnClosed
	}
	c.wcond.Broadcast()
	c.wmu.Unlock()
	c.conn.Close()
	c.mu.Lock()
	c.closed = true
	for _, st := range c.streams {
		st.abort(errH2ConnClosed)
	}
	var wait chan struct{}
	if c.handlers > 0 {
		wait = make(chan struct{})
		c.noHandler = wait
	}
	c.mu.Unlock()
	if wait != nil {
		<-wait
	}
}

// kickLocked asks the flusher to send what is buffered. Handlers do not flush themselves:
// when several have frames ready at once (their upstream answers arrived together), one
// write carries them all.
func (c *h2Conn) kickLocked() {
	select {
	case c.flushCh <- struct{}{}:
	default:
	}
}

// flusher sends the buffered frames when kicked. It first yields once, so that other
// goroutines ready to write add their frames to the same write (grpc-go's loopy writer
// yields likewise).
func (c *h2Conn) flusher() {
	for {
		select {
		case <-c.flushCh:
		case <-c.ctx.Done():
			return
		}
		runtime.Gosched()
		c.wmu.Lock()
		c.flushLocked()
		c.wmu.Unlock()
	}
}

// flushLocked flushes the write buffer; wmu is held.
func (c *h2Conn) flushLocked() {
	if c.werr != nil {
		return
	}
	if err := c.bw.Flush(); err != nil {
		c.werr = err
		c.conn.Close() // the reader ends too
	}
}

// goAway sends GOAWAY with code after the last stream processed, then closes the write
// side's use (connection errors).
func (c *h2Conn) goAway(code http2.ErrCode) {
	c.mu.Lock()
	c.goingAway = true
	last := c.maxID
	c.mu.Unlock()
	c.wmu.Lock()
	c.fr.WriteGoAway(last, code, nil)
	c.flushLocked()
	c.wmu.Unlock()
}

// shutdown starts a graceful close: GOAWAY, no new streams, the connection closes when
// the last handler returns (or now, when there is none).
func (c *h2Conn) shutdown() {
	c.mu.Lock()
	if c.goingAway {
		c.mu.Unlock()
		return
	}
	idle := c.handlers == 0
	c.mu.Unlock()
	c.goAway(http2.ErrCodeNo)
	if idle {
		c.closeSoon()
	}
}

// closeSoon closes the connection after h2GoAwayLinger, or when the peer closes it.
func (c *h2Conn) closeSoon() {
	c.mu.Lock()
	already := c.lingering
	c.lingering = true
	c.mu.Unlock()
	if !already {
		time.AfterFunc(h2GoAwayLinger, func() { c.conn.Close() })
	}
}

// streamReadError handles a stream error the framer reported (a malformed header block):
// the stream is reset, the connection goes on.
func (c *h2Conn) streamReadError(se http2.StreamError) {
	c.mu.Lock()
	if se.StreamID > c.maxID {
		c.maxID = se.StreamID
	}
	st := c.streams[se.StreamID]
	c.mu.Unlock()
	if st != nil {
		st.abort(errH2StreamReset)
	}
	c.writeReset(se.StreamID, se.Code)
}

func (c *h2Conn) writeReset(id uint32, code http2.ErrCode) {
	c.wmu.Lock()
	c.fr.WriteRSTStream(id, code)
	c.kickLocked()
	c.wmu.Unlock()
}

func (c *h2Conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if f.HasDuplicates() {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	err := c.settingsLocked(f, c.enc, c.streamWindows, nil)
	c.wcond.Broadcast()
	if err != nil {
		return err
	}
	c.fr.WriteSettingsAck()
	c.kickLocked()
	return nil
}

// streamWindows yields the send window of every open stream, under mu.
func (c *h2Conn) streamWindows(yield func(*int64) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.streams {
		if !yield(&st.sendWin) {
			return
		}
	}
}

func (c *h2Conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	var st *h2Stream
	var win *int64
	if f.StreamID != 0 {
		c.mu.Lock()
		st = c.streams[f.StreamID]
		c.mu.Unlock()
		if st == nil {
			return nil // closed, or idle (a peer bug we tolerate)
		}
		win = &st.sendWin
	}
	c.wmu.Lock()
	overflow, err := c.windowUpdateLocked(win, f.Increment)
	if overflow && !st.reset {
		st.reset = true
		c.fr.WriteRSTStream(f.StreamID, http2.ErrCodeFlowControl)
		c.kickLocked()
	}
	c.wcond.Broadcast()
	c.wmu.Unlock()
	if overflow {
		st.abort(errH2StreamReset)
	}
	return err
}

func (c *h2Conn) processReset(f *http2.RSTStreamFrame) {
	c.mu.Lock()
	st := c.streams[f.StreamID]
	c.mu.Unlock()
	if st == nil {
		return
	}
	c.wmu.Lock()
	st.reset = true
	c.wcond.Broadcast()
	c.wmu.Unlock()
	st.abort(errH2StreamReset)
}

func (c *h2Conn) processData(f *http2.DataFrame) error {
	n := int64(f.Length) // padding included: it counts against flow control
	c.mu.Lock()
	if !c.recv.take(n) {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	st := c.streams[f.StreamID]
	if st == nil {
		c.mu.Unlock()
		c.returnConnCredit(n)
		if f.StreamID > c.maxID || f.StreamID%2 == 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.writeReset(f.StreamID, http2.ErrCodeStreamClosed)
		return nil
	}
	c.mu.Unlock()
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		c.returnConnCredit(pad)
	}
	st.mu.Lock()
	if st.eof || st.rerr != nil {
		closed := st.eof
		st.mu.Unlock()
		c.returnConnCredit(int64(len(data)))
		if closed {
			c.writeReset(st.id, http2.ErrCodeStreamClosed)
		}
		return nil
	}
	if !st.recv.take(int64(len(data))) {
		st.mu.Unlock()
		c.writeReset(st.id, http2.ErrCodeFlowControl)
		st.abort(errH2StreamReset)
		return nil
	}
	if len(data) > 0 {
		if st.off == len(st.buf) {
			st.buf, st.off = st.buf[:0], 0
		}
		st.buf = append(st.buf, data...)
	}
	st.bodyRead += int64(len(data))
	if f.StreamEnded() {
		st.eof = true
		if st.declared >= 0 && st.bodyRead != st.declared {
			st.rerr = errors.New("proxy: request body length does not match content-length")
		}
	} else if st.declared >= 0 && st.bodyRead > st.declared {
		st.rerr = errors.New("proxy: request body longer than content-length")
	}
	bad := st.rerr != nil
	st.cond.Broadcast()
	st.mu.Unlock()
	if bad {
		c.writeReset(st.id, http2.ErrCodeProtocol)
		st.abort(errH2StreamReset)
	}
	return nil
}

// returnConnCredit gives the peer back connection window for n consumed bytes, in
// batches of half the window.
func (c *h2Conn) returnConnCredit(n int64) {
	c.mu.Lock()
	incr := c.recv.consumed(n, true)
	c.mu.Unlock()
	if incr > 0 {
		c.wmu.Lock()
		c.fr.WriteWindowUpdate(0, uint32(incr))
		c.kickLocked()
		c.wmu.Unlock()
	}
}

func (c *h2Conn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		c.mu.Unlock()
		return c.processTrailers(st, f)
	}
	if id <= c.maxID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol) // a closed stream
	}
	c.maxID = id
	switch {
	case c.goingAway:
		c.mu.Unlock()
		return nil // after our GOAWAY: ignored; the client retries elsewhere
	case c.handlers >= c.l.limits.MaxConcurrentStreams:
		c.mu.Unlock()
		c.writeReset(id, http2.ErrCodeRefusedStream)
		return nil
	}
	c.mu.Unlock()
	if f.Truncated {
		c.writeStatusOnly(id, http2.ErrCodeNo, http.StatusRequestHeaderFieldsTooLarge)
		return nil
	}
	st, err := c.newStream(f)
	if err != nil {
		c.writeReset(id, http2.ErrCodeProtocol)
		return nil
	}
	c.mu.Lock()
	c.streams[id] = st
	c.handlers++
	c.mu.Unlock()
	select {
	case c.work <- st: // an idle handler goroutine takes it
	default:
		go c.worker(st)
	}
	return nil
}

// worker runs handlers: st's, then those of later streams, until the connection ends.
// Reusing the goroutines spares a new goroutine per request and the growth of its stack
// (a proxy's handler needs more than a new goroutine starts with).
func (c *h2Conn) worker(st *h2Stream) {
	for {
		c.runHandler(st)
		select {
		case st = <-c.work:
		case <-c.ctx.Done():
			return
		}
	}
}

// writeStatusOnly answers a stream with a bare status and ends it.
func (c *h2Conn) writeStatusOnly(id uint32, _ http2.ErrCode, status int) {
	c.wmu.Lock()
	c.hbuf.Reset()
	c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	c.writeHeaderBlockLocked(id, true)
	c.kickLocked()
	c.wmu.Unlock()
}

func (c *h2Conn) processTrailers(st *h2Stream, f *http2.MetaHeadersFrame) error {
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		c.writeReset(st.id, http2.ErrCodeProtocol)
		st.abort(errH2StreamReset)
		return nil
	}
	st.mu.Lock()
	if st.eof {
		st.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	for _, hf := range f.RegularFields() {
		if st.trailer == nil {
			st.trailer = http.Header{}
		}
		st.trailer.Add(c.canonical(hf.Name), hf.Value)
	}
	st.eof = true
	if st.declared >= 0 && st.bodyRead != st.declared {
		st.rerr = errors.New("proxy: request body length does not match content-length")
	}
	st.cond.Broadcast()
	st.mu.Unlock()
	return nil
}

// canonical returns the http.Header key of a lower-case field name.
func (c *h2Conn) canonical(name string) string {
	if k, ok := c.canon[name]; ok {
		return k
	}
	k := textproto.CanonicalMIMEHeaderKey(name)
	if len(c.canon) < 256 {
		c.canon[name] = k
	}
	return k
}

// newStream builds the stream and its request from a HEADERS frame, refusing malformed
// requests (RFC 9113 §8.2.2, §8.3.1).
func (c *h2Conn) newStream(f *http2.MetaHeadersFrame) (*h2Stream, error) {
	var method, path, scheme, authority string
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":path":
			path = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":authority":
			authority = hf.Value
		default: // :protocol (no extended CONNECT), or a response pseudo-header
			return nil, errors.New("unexpected pseudo-header " + hf.Name)
		}
	}
	isConnect := method == http.MethodConnect
	if method == "" || !validToken(method) || isConnect && (path != "" || scheme != "" || authority == "") ||
		!isConnect && (path == "" || scheme == "") {
		return nil, errors.New("bad pseudo-headers")
	}
	fields := f.RegularFields()
	h := make(http.Header, len(fields))
	var cookies []string
	for _, hf := range fields {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return nil, errors.New("connection-specific field " + hf.Name)
		case "te":
			if hf.Value != "trailers" {
				return nil, errors.New("te other than trailers")
			}
		case "cookie":
			cookies = append(cookies, hf.Value)
			continue
		}
		k := c.canonical(hf.Name)
		h[k] = append(h[k], hf.Value)
	}
	if len(cookies) > 0 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	var u *url.URL
	var err error
	if isConnect {
		u = &url.URL{Host: authority}
		path = authority
	} else if u, err = parseTarget(method, path); err != nil {
		return nil, err
	}
	if authority == "" {
		if v := h["Host"]; len(v) > 0 {
			authority = v[0]
		}
	}
	delete(h, "Host")
	st := &h2Stream{c: c, id: f.StreamID, recv: newH2RecvWindow(h2StreamWindow), declared: -1}
	st.cond.L = &st.mu
	st.ctx, st.cancel = context.WithCancel(c.ctx)
	req := h2ReqTemplate.WithContext(st.ctx) // a copy: one allocation, not two
	req.Method = method
	req.URL = u
	req.Header = h
	req.Host = authority
	req.RemoteAddr = c.remote
	req.RequestURI = path
	req.TLS = c.tls
	if scheme == "https" && c.tls == nil {
		req.URL.Scheme = "" // as net/http: a request's URL has no scheme
	}
	if tr := h["Trailer"]; len(tr) > 0 {
		req.Trailer = http.Header{}
		for _, v := range tr {
			for k := range strings.SplitSeq(v, ",") {
				if k = textproto.TrimString(k); k != "" && validToken(k) {
					req.Trailer[textproto.CanonicalMIMEHeaderKey(k)] = nil
				}
			}
		}
	}
	if !f.StreamEnded() {
		req.ContentLength = -1
		if v := h["Content-Length"]; len(v) > 0 {
			n, err := strconv.ParseInt(v[0], 10, 64)
			if err != nil || n < 0 || len(v) > 1 {
				return nil, errors.New("bad content-length")
			}
			req.ContentLength, st.declared = n, n
		}
		req.Body = &h2Body{st: st}
		if containsToken(h["Expect"], "100-continue") {
			st.needCont = true
		}
	} else {
		st.eof = true
		if v := h["Content-Length"]; len(v) > 0 && v[0] != "0" {
			return nil, errors.New("content-length without a body")
		}
	}
	c.wmu.Lock()
	st.sendWin = c.peerInitWin
	c.wmu.Unlock()
	st.req = req
	st.res.st = st
	return st, nil
}

// h2ReqTemplate holds what every HTTP/2 request has; nobody modifies it.
var h2ReqTemplate = &http.Request{Proto: "HTTP/2.0", ProtoMajor: 2, Body: http.NoBody}

// runHandler serves one stream in its own goroutine.
func (c *h2Conn) runHandler(st *h2Stream) {
	w := &st.res
	w.reset(st.req)
	ok := c.callHandler(w, st.req)
	if ok {
		w.finish()
	} else {
		c.wmu.Lock()
		if !st.reset && !st.done {
			st.reset = true
			c.fr.WriteRSTStream(st.id, http2.ErrCodeInternal)
			c.kickLocked()
		}
		c.wmu.Unlock()
	}
	c.endStream(st)
}

func (c *h2Conn) callHandler(w *h2Response, req *http.Request) (ok bool) {
	defer func() {
		if e := recover(); e != nil {
			if e != http.ErrAbortHandler {
				c.l.log.Error("http2 handler panic", "peer", c.remote, "panic", e, "stack", string(debug.Stack()))
			}
			ok = false
		}
	}()
	c.l.handler.ServeHTTP(w, req)
	return true
}

// endStream forgets a stream whose handler returned: a request body still arriving is
// refused (RST_STREAM NO_ERROR after a complete response, RFC 9113 §8.1), unread body
// bytes go back to the connection window.
func (c *h2Conn) endStream(st *h2Stream) {
	st.cancel()
	st.mu.Lock()
	open := !st.eof && st.rerr == nil
	unread := int64(len(st.buf) - st.off)
	st.rerr = errH2StreamReset
	st.buf, st.off = nil, 0
	st.mu.Unlock()
	if open {
		c.wmu.Lock()
		if !st.reset {
			st.reset = true
			c.fr.WriteRSTStream(st.id, http2.ErrCodeNo)
			c.kickLocked()
		}
		c.wmu.Unlock()
	}
	if unread > 0 {
		c.returnConnCredit(unread)
	}
	c.mu.Lock()
	delete(c.streams, st.id)
	c.handlers--
	last := c.handlers == 0
	if last {
		c.idleSince = time.Now()
	}
	closeNow := last && (c.goingAway || c.peerGone)
	var wake chan struct{}
	if last && c.noHandler != nil {
		wake = c.noHandler
	}
	c.mu.Unlock()
	if wake != nil {
		close(wake)
	}
	if closeNow {
		c.wmu.Lock()
		c.flushLocked()
		c.wmu.Unlock()
		c.closeSoon()
	}
}

// timerDelay is when the connection next needs a look: idle timeout or keep-alive.
func (c *h2Conn) timerDelay() time.Duration {
	return min(c.l.limits.IdleTimeout, h2PingAfter, h2PingTimeout)
}

// onTimer closes an idle connection, and pings a silent peer, closing it when the PING
// goes unanswered.
func (c *h2Conn) onTimer() {
	now := time.Now()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	idle := c.handlers == 0 && now.Sub(c.idleSince) >= c.l.limits.IdleTimeout
	silent := now.Sub(time.Unix(0, c.lastRead.Load())) >= h2PingAfter
	ping := false
	dead := false
	switch {
	case !c.pingSent.IsZero():
		dead = now.Sub(c.pingSent) >= h2PingTimeout
	case silent:
		ping = true
		c.pingSent = now
	}
	c.mu.Unlock()
	switch {
	case idle:
		c.shutdown()
	case dead:
		c.conn.Close()
	case ping:
		c.wmu.Lock()
		c.fr.WritePing(false, [8]byte{'p', 'o', 'd', 'm', 'e', 's', 'h'})
		c.kickLocked()
		c.wmu.Unlock()
	}
	c.timer.Reset(c.timerDelay())
}

// writeHeaderBlockLocked writes the block in hbuf as HEADERS and CONTINUATION frames;
// wmu is held.
func (c *h2Conn) writeHeaderBlockLocked(id uint32, endStream bool) {
	block := c.hbuf.Bytes()
	first := true
	for len(block) > 0 || first {
		n := min(len(block), c.peerMaxSize)
		frag := block[:n]
		block = block[n:]
		if first {
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag,
				EndStream: endStream, EndHeaders: len(block) == 0})
			first = false
		} else {
			c.fr.WriteContinuation(id, len(block) == 0, frag)
		}
	}
}

// lowerName returns the wire (lower-case) form of a canonical header name.
func (c *h2Conn) lowerName(k string) string {
	if v, ok := c.lower[k]; ok {
		return v
	}
	v := strings.ToLower(k)
	if len(c.lower) < 256 {
		c.lower[k] = v
	}
	return v
}

// h2Body is a request body: DATA frames buffered by the connection's goroutine.
type h2Body struct{ st *h2Stream }

func (b *h2Body) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	st.mu.Lock()
	if st.needCont {
		st.needCont = false
		st.mu.Unlock()
		st.res.writeContinue()
		st.mu.Lock()
	}
	for st.off == len(st.buf) && !st.eof && st.rerr == nil {
		st.cond.Wait()
	}
	if st.off < len(st.buf) {
		n := copy(p, st.buf[st.off:])
		st.off += n
		incr := st.recv.consumed(int64(n), !st.eof)
		st.mu.Unlock()
		if incr > 0 {
			c.wmu.Lock()
			if !st.reset {
				c.fr.WriteWindowUpdate(st.id, uint32(incr))
				c.kickLocked()
			}
			c.wmu.Unlock()
		}
		c.returnConnCredit(int64(n))
		return n, nil
	}
	defer st.mu.Unlock()
	if st.rerr != nil {
		return 0, st.rerr
	}
	if len(st.trailer) > 0 {
		for k, vv := range st.trailer {
			if st.req.Trailer == nil {
				st.req.Trailer = http.Header{}
			}
			st.req.Trailer[k] = vv
		}
	}
	return 0, io.EOF
}

func (b *h2Body) Close() error { return nil }

// abort ends the stream's request body with err and cancels its context.
func (st *h2Stream) abort(err error) {
	st.cancel()
	st.mu.Lock()
	if st.rerr == nil && !st.eof {
		st.rerr = err
	}
	st.cond.Broadcast()
	st.mu.Unlock()
}

// h2Response is a stream's http.ResponseWriter.
type h2Response struct {
	st *h2Stream

	header      http.Header
	status      int
	wroteHeader bool
	headSent    bool
	respBody
	trailers []string
	err      error
	contMu   sync.Mutex
	contSent bool
}

func (w *h2Response) reset(req *http.Request) {
	w.header = make(http.Header)
	w.isHead = req.Method == http.MethodHead
	w.cl = -1
}

func (w *h2Response) Header() http.Header { return w.header }

func (w *h2Response) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic("proxy: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code < 200 {
		if code != http.StatusSwitchingProtocols {
			w.writeInterim(code)
		}
		return
	}
	w.wroteHeader = true
	w.status = code
	w.bodyAllowed = code != http.StatusNoContent && code != http.StatusNotModified
	if v := w.header["Content-Length"]; len(v) > 0 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 && len(v) == 1 {
			w.cl = n
		} else {
			delete(w.header, "Content-Length")
		}
	}
}

func (w *h2Response) writeInterim(code int) {
	c := w.st.c
	w.contMu.Lock()
	defer w.contMu.Unlock()
	if w.headSent || code == http.StatusContinue && w.contSent {
		return
	}
	if code == http.StatusContinue {
		w.contSent = true
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if w.st.reset {
		return
	}
	c.hbuf.Reset()
	c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(code)})
	if code != http.StatusContinue {
		w.encodeFieldsLocked(false)
	}
	c.writeHeaderBlockLocked(w.st.id, false)
	c.kickLocked()
}

// writeContinue answers "Expect: 100-continue" on the first body read, unless the
// response began.
func (w *h2Response) writeContinue() { w.writeInterim(http.StatusContinue) }

func (w *h2Response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if n, send, err := w.admit(p, w.err); !send {
		return n, err
	}
	if !w.headSent {
		w.sendHead(false, false)
	}
	if err := w.writeData(p, false, false); err != nil {
		w.err = err
		return 0, err
	}
	return len(p), nil
}

// WriteString avoids a conversion for io.WriteString callers that pass strings.
func (w *h2Response) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

func (w *h2Response) Flush() { _ = w.FlushError() }

// FlushError sends the head and what was written, for http.ResponseController.
func (w *h2Response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false, true)
		return w.err
	}
	c := w.st.c
	c.wmu.Lock()
	c.kickLocked()
	err := c.werr
	c.wmu.Unlock()
	if err != nil && w.err == nil {
		w.err = err
	}
	return w.err
}

// sendHead writes the response HEADERS: endStream ends the stream with them, flush
// sends them at once.
func (w *h2Response) sendHead(endStream, flush bool) {
	w.contMu.Lock()
	w.headSent = true
	w.contMu.Unlock()
	st := w.st
	c := st.c
	if tr := w.header["Trailer"]; len(tr) > 0 {
		for _, v := range tr {
			for k := range strings.SplitSeq(v, ",") {
				if k = textproto.TrimString(k); k != "" {
					w.trailers = append(w.trailers, textproto.CanonicalMIMEHeaderKey(k))
				}
			}
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if st.reset || c.werr != nil {
		w.err = errH2StreamReset
		if c.werr != nil {
			w.err = c.werr
		}
		return
	}
	c.hbuf.Reset()
	c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(w.status)})
	w.encodeFieldsLocked(true)
	c.writeHeaderBlockLocked(st.id, endStream)
	if endStream {
		st.done = true
	}
	if flush || endStream {
		c.kickLocked()
	}
}

// encodeFieldsLocked encodes the header fields (final adds date when missing) without
// connection-specific fields, trailers or invalid ones; c.wmu is held.
func (w *h2Response) encodeFieldsLocked(final bool) {
	c := w.st.c
	for k, vv := range w.header {
		switch k {
		case "Connection", "Proxy-Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Trailer":
			if k != "Trailer" || len(w.trailers) == 0 {
				continue
			}
		}
		if strings.HasPrefix(k, http.TrailerPrefix) || !validToken(k) {
			continue
		}
		name := c.lowerName(k)
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				continue
			}
			if name == "te" && v != "trailers" {
				continue
			}
			c.enc.WriteField(hpack.HeaderField{Name: name, Value: v})
		}
	}
	if _, ok := w.header["Date"]; final && !ok {
		c.enc.WriteField(hpack.HeaderField{Name: "date", Value: time.Now().UTC().Format(http.TimeFormat)})
	}
}

// writeData writes p as DATA frames within the flow-control windows, waiting for window
// when there is none; endStream marks the last frame.
func (w *h2Response) writeData(p []byte, endStream, flush bool) error {
	st := w.st
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for {
		if c.werr != nil {
			return c.werr
		}
		if st.reset {
			return errH2StreamReset
		}
		if len(p) == 0 {
			if endStream {
				c.fr.WriteData(st.id, true, nil)
				st.done = true
			}
			break
		}
		n := int64(min(len(p), c.peerMaxSize))
		n = min(n, st.sendWin, c.sendWin)
		if n <= 0 {
			c.flushLocked() // the peer may be waiting for what is buffered
			c.wcond.Wait()
			continue
		}
		last := endStream && int(n) == len(p)
		c.fr.WriteData(st.id, last, p[:n])
		st.sendWin -= n
		c.sendWin -= n
		p = p[n:]
		if last {
			st.done = true
			break
		}
	}
	if flush || endStream {
		c.kickLocked()
	}
	return nil
}

// finish ends the response after the handler returned: the head if it is not out, then
// END_STREAM on trailers or an empty DATA frame, and a flush.
func (w *h2Response) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	var trailer []hpack.HeaderField
	if !w.isHead && w.bodyAllowed {
		for _, k := range w.trailers {
			for _, v := range w.header[k] {
				trailer = append(trailer, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && validToken(name) {
				for _, v := range vv {
					trailer = append(trailer, hpack.HeaderField{Name: strings.ToLower(name), Value: v})
				}
			}
		}
	}
	if !w.headSent {
		w.sendHead(len(trailer) == 0, true)
		if len(trailer) == 0 {
			return
		}
	}
	if w.err != nil {
		return
	}
	if w.cl >= 0 && w.written < w.cl && w.bodyAllowed && !w.isHead {
		// Cut short: the client must not take it for complete.
		c := w.st.c
		c.wmu.Lock()
		if !w.st.reset {
			w.st.reset = true
			c.fr.WriteRSTStream(w.st.id, http2.ErrCodeInternal)
			c.kickLocked()
		}
		c.wmu.Unlock()
		return
	}
	if len(trailer) == 0 {
		_ = w.writeData(nil, true, true)
		return
	}
	st := w.st
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if st.reset || c.werr != nil {
		return
	}
	c.hbuf.Reset()
	for _, hf := range trailer {
		if httpguts.ValidHeaderFieldValue(hf.Value) {
			c.enc.WriteField(hf)
		}
	}
	c.writeHeaderBlockLocked(st.id, true)
	st.done = true
	c.kickLocked()
}

var (
	_ http.ResponseWriter = (*h2Response)(nil)
	_ http.Flusher        = (*h2Response)(nil)
)
