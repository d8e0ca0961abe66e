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
	"net/textproto"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2ClientConn is one HTTP/2 client connection, to a peer sidecar or an h2c app. net/
// http's client starts a goroutine per request to write it and hands every response over
// through several channels; here RoundTrip writes the request's HEADERS (and a body held
// in memory) in the caller's goroutine, and the connection's reader goroutine delivers
// the response through one channel per stream. Bodies that stream are written by a
// goroutine per request, within the flow-control windows.
//
// Errors say whether the peer can have processed the request: a RefusedError (REFUSED_
// STREAM, a stream above the peer's GOAWAY, a connection that failed before the request
// was written) is safe to retry anywhere.
type h2ClientConn struct {
	conn   net.Conn
	br     *bufio.Reader
	fr     *http2.Framer
	rd     *h2FrameReader // reads fr's frames, decoding header blocks
	scheme string

	wmu    sync.Mutex
	wcond  *sync.Cond
	bw     *bufio.Writer
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
	werr   error
	nextID uint32
	h2Flow // send windows and frame size
	lower  map[string]string

	mu         sync.Mutex
	slot       *sync.Cond // waits for a free stream slot
	streams    map[uint32]*h2ClientStream
	active     int // streams open (counted against the peer's limit)
	maxStreams int
	goAway     bool
	goAwayID   uint32
	err        error        // set when the connection is done for
	recv       h2RecvWindow // the connection's
	idleSince  time.Time
	pingSent   time.Time
	lastRead   atomic.Int64
	readerDone chan struct{}
	timer      *time.Timer
	flushCh    chan struct{}

	canon map[string]string // reader goroutine only
}

// Client windows: what a peer may send before we read.
const (
	h2ClientStreamWindow = 1 << 20
	h2ClientConnWindow   = 4 << 20
	h2ClientIdleTimeout  = 5 * time.Minute
)

var (
	errH2GoAway    = errors.New("proxy: http2 peer sent GOAWAY before processing the stream")
	errH2NotSent   = errors.New("proxy: http2 connection failed before the request was sent")
	errH2BodyClose = errors.New("proxy: http2 response body closed")
)

// h2ResetError is a stream the peer reset.
type h2ResetError struct{ Code http2.ErrCode }

func (e h2ResetError) Error() string { return "proxy: http2 stream reset by peer: " + e.Code.String() }

type h2ClientStream struct {
	cc     *h2ClientConn
	id     uint32
	req    *http.Request
	ctx    context.Context
	notify chan struct{} // capacity 1: response headers, data, end or error

	mu       sync.Mutex
	res      *http.Response
	buf      []byte
	off      int
	eof      bool
	err      error
	recv     h2RecvWindow
	trailer  http.Header
	reqDone  bool // the request is fully sent (or abandoned)
	resDone  bool // the response is fully received (or abandoned)
	released bool

	// Under cc.wmu.
	sendWin int64
	reset   bool
}

// newH2ClientConn starts HTTP/2 on conn (the preface and SETTINGS are written; the
// peer's SETTINGS are read as they come).
func newH2ClientConn(conn net.Conn, tlsOn bool) (*h2ClientConn, error) {
	cc := &h2ClientConn{conn: conn, scheme: "http", nextID: 1, h2Flow: newH2Flow(),
		streams: map[uint32]*h2ClientStream{}, maxStreams: 100,
		recv: newH2RecvWindow(h2ClientConnWindow), lower: map[string]string{}, canon: map[string]string{},
		readerDone: make(chan struct{}), idleSince: time.Now(), flushCh: make(chan struct{}, 1)}
	cc.lastRead.Store(time.Now().UnixNano())
	if tlsOn {
		cc.scheme = "https"
	}
	cc.wcond = sync.NewCond(&cc.wmu)
	cc.slot = sync.NewCond(&cc.mu)
	cc.br = bufio.NewReaderSize(h2ClientTimedReader{cc}, h2ReadBuffer)
	cc.bw = bufio.NewWriterSize(conn, h2WriteBuffer)
	cc.fr = http2.NewFramer(cc.bw, cc.br)
	cc.fr.SetMaxReadFrameSize(h2MaxReadFrame)
	cc.fr.SetReuseFrames()
	cc.rd = newH2FrameReader(cc.fr, 1<<20)
	cc.enc = hpack.NewEncoder(&cc.hbuf)
	cc.bw.WriteString(http2.ClientPreface)
	cc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2ClientStreamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: h2MaxReadFrame},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 1 << 20},
	)
	cc.fr.WriteWindowUpdate(0, h2ClientConnWindow-65535)
	if err := cc.bw.Flush(); err != nil {
		conn.Close()
		return nil, err
	}
	cc.timer = time.AfterFunc(h2PingTimeout, cc.onTimer)
	go cc.readLoop()
	go cc.flusher()
	return cc, nil
}

type h2ClientTimedReader struct{ cc *h2ClientConn }

func (r h2ClientTimedReader) Read(p []byte) (int, error) {
	// Everything read so far is handled: let the goroutines it woke run first, so that
	// the read finds more of the peer's frames (see h1Conn.serve).
	runtime.Gosched()
	n, err := r.cc.conn.Read(p)
	if n > 0 {
		r.cc.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

// Err reports why the connection can take no more requests (nil while it can).
func (cc *h2ClientConn) Err() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil {
		return cc.err
	}
	if cc.goAway {
		return errH2GoAway
	}
	return nil
}

// dead reports whether the connection has ended (unlike Err, not after a GOAWAY, whose
// streams in flight still complete).
func (cc *h2ClientConn) dead() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err != nil
}

// Available is how many more requests may be sent now.
func (cc *h2ClientConn) Available() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil || cc.goAway {
		return 0
	}
	return max(cc.maxStreams-cc.active, 0)
}

// InFlight is the number of streams open.
func (cc *h2ClientConn) InFlight() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.active
}

// Close closes the connection; streams in flight fail.
func (cc *h2ClientConn) Close() error {
	cc.conn.Close()
	return nil
}

// RoundTrip sends req on a new stream and returns the response once its head arrived.
func (cc *h2ClientConn) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// A stream slot, waiting for one when the peer's limit is reached.
	cc.mu.Lock()
	for cc.err == nil && !cc.goAway && cc.active >= cc.maxStreams {
		if ctx.Err() != nil {
			cc.mu.Unlock()
			return nil, ctx.Err()
		}
		stop := context.AfterFunc(ctx, func() {
			cc.mu.Lock()
			cc.slot.Broadcast()
			cc.mu.Unlock()
		})
		cc.slot.Wait()
		stop()
	}
	if cc.err != nil || cc.goAway {
		cc.mu.Unlock()
		return nil, RefusedError{Err: errH2NotSent}
	}
	cc.active++
	cc.mu.Unlock()

	hasBody := req.Body != nil && req.Body != http.NoBody
	inline, _ := req.Body.(*bytesBody) // a body in memory goes with the head
	cs := &h2ClientStream{cc: cc, req: req, ctx: ctx, notify: make(chan struct{}, 1), recv: newH2RecvWindow(h2ClientStreamWindow)}
	cc.wmu.Lock()
	if cc.werr != nil {
		err := cc.werr
		cc.wmu.Unlock()
		cc.releaseSlot()
		return nil, RefusedError{Err: fmt.Errorf("%w: %w", errH2NotSent, err)}
	}
	if err := cc.encodeRequestLocked(req, hasBody); err != nil {
		cc.wmu.Unlock()
		cc.releaseSlot()
		return nil, err
	}
	cs.id = cc.nextID
	cc.nextID += 2
	cs.sendWin = cc.peerInitWin
	cc.mu.Lock()
	if cc.err != nil || cc.goAway {
		// The GOAWAY (or the end) came while this request waited: it was not sent.
		cc.mu.Unlock()
		cc.wmu.Unlock()
		cc.releaseSlot()
		return nil, RefusedError{Err: errH2NotSent}
	}
	cc.streams[cs.id] = cs
	cc.mu.Unlock()
	cc.writeHeaderBlockLocked(cs.id, !hasBody)
	written := false
	if inline != nil && int64(len(inline.data)-inline.off) <= min(cs.sendWin, cc.sendWin) &&
		len(req.Trailer) == 0 {
		data := inline.data[inline.off:]
		for len(data) > cc.peerMaxSize {
			cc.fr.WriteData(cs.id, false, data[:cc.peerMaxSize])
			data = data[cc.peerMaxSize:]
		}
		cc.fr.WriteData(cs.id, true, data)
		n := int64(len(inline.data) - inline.off)
		inline.off = len(inline.data)
		cs.sendWin -= n
		cc.sendWin -= n
		written = true
	}
	cc.kickLocked()
	werr := cc.werr
	cc.wmu.Unlock()
	if werr != nil {
		// Some of the request may have reached the peer: not a refusal.
		cs.fail(werr)
		cc.forget(cs)
		return nil, werr
	}
	switch {
	case !hasBody || written:
		cs.finishRequest() // the response may be complete already
	default:
		go cs.writeBody()
	}

	// Wait for the response head.
	for {
		cs.mu.Lock()
		res, err := cs.res, cs.err
		cs.mu.Unlock()
		if res != nil {
			return res, nil
		}
		if err != nil {
			cc.forget(cs)
			return nil, err
		}
		select {
		case <-cs.notify:
		case <-ctx.Done():
			cs.cancel(ctx.Err())
			return nil, ctx.Err()
		}
	}
}

// encodeRequestLocked encodes req's header block into hbuf; wmu is held.
func (cc *h2ClientConn) encodeRequestLocked(req *http.Request, hasBody bool) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHeaderFieldValue(host) {
		return errors.New("proxy: invalid Host " + strconv.Quote(host))
	}
	// Every field is checked before any is encoded: the encoder's dynamic table is shared
	// with the peer's decoder, and a block abandoned halfway would leave entries there
	// that the peer never saw, breaking the connection for every later request.
	for k, vv := range req.Header {
		if !validToken(k) {
			return errors.New("proxy: invalid header name " + strconv.Quote(k))
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return errors.New("proxy: invalid value of header " + k)
			}
		}
	}
	cc.hbuf.Reset()
	cc.enc.WriteField(hpack.HeaderField{Name: ":method", Value: req.Method})
	if req.Method == http.MethodConnect {
		cc.enc.WriteField(hpack.HeaderField{Name: ":authority", Value: host})
	} else {
		cc.enc.WriteField(hpack.HeaderField{Name: ":scheme", Value: cc.scheme})
		cc.enc.WriteField(hpack.HeaderField{Name: ":authority", Value: host})
		path := req.URL.RequestURI()
		cc.enc.WriteField(hpack.HeaderField{Name: ":path", Value: path})
	}
	for k, vv := range req.Header {
		switch k {
		case "Host", "Content-Length", "Connection", "Proxy-Connection", "Keep-Alive", "Transfer-Encoding",
			"Upgrade", "Trailer":
			continue
		}
		name := cc.lowerName(k)
		for _, v := range vv {
			if name == "te" && v != "trailers" {
				continue
			}
			cc.enc.WriteField(hpack.HeaderField{Name: name, Value: v})
		}
	}
	if len(req.Trailer) > 0 {
		keys := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			keys = append(keys, k)
		}
		cc.enc.WriteField(hpack.HeaderField{Name: "trailer", Value: strings.Join(keys, ",")})
	}
	if hasBody && req.ContentLength > 0 {
		cc.enc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(req.ContentLength, 10)})
	}
	return nil
}

func (cc *h2ClientConn) lowerName(k string) string {
	if v, ok := cc.lower[k]; ok {
		return v
	}
	v := strings.ToLower(k)
	if len(cc.lower) < 256 {
		cc.lower[k] = v
	}
	return v
}

func (cc *h2ClientConn) writeHeaderBlockLocked(id uint32, endStream bool) {
	block := cc.hbuf.Bytes()
	first := true
	for len(block) > 0 || first {
		n := min(len(block), cc.peerMaxSize)
		frag := block[:n]
		block = block[n:]
		if first {
			cc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag,
				EndStream: endStream, EndHeaders: len(block) == 0})
			first = false
		} else {
			cc.fr.WriteContinuation(id, len(block) == 0, frag)
		}
	}
}

// kickLocked asks the flusher to send what is buffered, so that requests written at the
// same moment share one write (see h2Conn.kickLocked).
func (cc *h2ClientConn) kickLocked() {
	select {
	case cc.flushCh <- struct{}{}:
	default:
	}
}

func (cc *h2ClientConn) flusher() {
	for {
		select {
		case <-cc.flushCh:
		case <-cc.readerDone:
			return
		}
		runtime.Gosched()
		cc.wmu.Lock()
		cc.flushLocked()
		cc.wmu.Unlock()
	}
}

func (cc *h2ClientConn) flushLocked() {
	if cc.werr != nil {
		return
	}
	if err := cc.bw.Flush(); err != nil {
		cc.werr = err
		cc.conn.Close()
	}
}

// writeBody streams the request body as DATA frames, then trailers or END_STREAM.
func (cs *h2ClientStream) writeBody() {
	cc := cs.cc
	req := cs.req
	bp := defaultPool.Get()
	defer defaultPool.Put(bp)
	buf := (*bp)[:min(len(*bp), 16<<10)]
	fail := func(err error) {
		req.Body.Close()
		cs.cancel(err)
	}
	var sent int64
	for {
		n, rerr := req.Body.Read(buf)
		if n > 0 {
			sent += int64(n)
			if req.ContentLength > 0 && sent > req.ContentLength {
				fail(errors.New("proxy: request body longer than its Content-Length"))
				return
			}
			if err := cs.writeData(buf[:n], false); err != nil {
				req.Body.Close()
				cs.finishRequest()
				return
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			fail(rerr)
			return
		}
	}
	if req.ContentLength > 0 && sent != req.ContentLength {
		fail(errors.New("proxy: request body shorter than its Content-Length"))
		return
	}
	cc.wmu.Lock()
	if !cs.reset && cc.werr == nil {
		if len(req.Trailer) > 0 {
			cc.hbuf.Reset()
			for k, vv := range req.Trailer {
				for _, v := range vv {
					if validToken(k) && httpguts.ValidHeaderFieldValue(v) {
						cc.enc.WriteField(hpack.HeaderField{Name: cc.lowerName(k), Value: v})
					}
				}
			}
			cc.writeHeaderBlockLocked(cs.id, true)
		} else {
			cc.fr.WriteData(cs.id, true, nil)
		}
		cc.kickLocked()
	}
	cc.wmu.Unlock()
	cs.finishRequest()
}

// writeData writes p within the send windows, waiting for window.
func (cs *h2ClientStream) writeData(p []byte, end bool) error {
	cc := cs.cc
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	for len(p) > 0 {
		if cc.werr != nil {
			return cc.werr
		}
		if cs.reset {
			return errH2StreamReset
		}
		n := int64(min(len(p), cc.peerMaxSize))
		n = min(n, cs.sendWin, cc.sendWin)
		if n <= 0 {
			cc.flushLocked()
			cc.wcond.Wait()
			continue
		}
		cc.fr.WriteData(cs.id, end && int(n) == len(p), p[:n])
		cs.sendWin -= n
		cc.sendWin -= n
		p = p[n:]
	}
	cc.kickLocked()
	return cc.werr
}

// finishRequest marks the request side done and releases the stream when both are.
func (cs *h2ClientStream) finishRequest() {
	cs.mu.Lock()
	cs.reqDone = true
	done := cs.resDone
	cs.mu.Unlock()
	if done {
		cs.cc.forget(cs)
	}
}

// cancel abandons the stream: RST_STREAM(CANCEL) unless it is over, err for waiters.
func (cs *h2ClientStream) cancel(err error) {
	cc := cs.cc
	cc.wmu.Lock()
	if !cs.reset {
		cs.reset = true
		cc.fr.WriteRSTStream(cs.id, http2.ErrCodeCancel)
		cc.kickLocked()
	}
	cc.wcond.Broadcast()
	cc.wmu.Unlock()
	cs.fail(err)
	cc.forget(cs)
}

// fail ends the stream's waiters with err.
func (cs *h2ClientStream) fail(err error) {
	cs.mu.Lock()
	if cs.err == nil && !cs.eof {
		cs.err = err
	}
	cs.mu.Unlock()
	cs.signal()
}

func (cs *h2ClientStream) signal() {
	select {
	case cs.notify <- struct{}{}:
	default:
	}
}

// forget removes the stream from the connection and frees its slot, once.
func (cc *h2ClientConn) forget(cs *h2ClientStream) {
	cs.mu.Lock()
	if cs.released {
		cs.mu.Unlock()
		return
	}
	cs.released = true
	cs.reqDone, cs.resDone = true, true
	unread := int64(len(cs.buf) - cs.off)
	cs.buf, cs.off = nil, 0
	cs.mu.Unlock()
	cc.mu.Lock()
	delete(cc.streams, cs.id)
	cc.mu.Unlock()
	if unread > 0 {
		cc.returnConnCredit(unread)
	}
	cc.releaseSlot()
}

func (cc *h2ClientConn) releaseSlot() {
	cc.mu.Lock()
	cc.active--
	if cc.active == 0 {
		cc.idleSince = time.Now()
	}
	closeNow := cc.active == 0 && cc.goAway
	cc.slot.Signal()
	cc.mu.Unlock()
	if closeNow {
		cc.conn.Close()
	}
}

func (cc *h2ClientConn) returnConnCredit(n int64) {
	cc.mu.Lock()
	incr := cc.recv.consumed(n, true)
	cc.mu.Unlock()
	if incr > 0 {
		cc.wmu.Lock()
		cc.fr.WriteWindowUpdate(0, uint32(incr))
		cc.kickLocked()
		cc.wmu.Unlock()
	}
}

// h2ClientBody is a response body.
type h2ClientBody struct{ cs *h2ClientStream }

func (b h2ClientBody) Read(p []byte) (int, error) {
	cs := b.cs
	cc := cs.cc
	for {
		cs.mu.Lock()
		if cs.off < len(cs.buf) {
			n := copy(p, cs.buf[cs.off:])
			cs.off += n
			if cs.off == len(cs.buf) {
				cs.buf, cs.off = cs.buf[:0], 0
			}
			incr := cs.recv.consumed(int64(n), !cs.eof)
			cs.mu.Unlock()
			if incr > 0 {
				cc.wmu.Lock()
				if !cs.reset {
					cc.fr.WriteWindowUpdate(cs.id, uint32(incr))
					cc.kickLocked()
				}
				cc.wmu.Unlock()
			}
			cc.returnConnCredit(int64(n))
			return n, nil
		}
		if cs.eof {
			if len(cs.trailer) > 0 && cs.res != nil {
				if cs.res.Trailer == nil {
					cs.res.Trailer = make(http.Header, len(cs.trailer))
				}
				for k, vv := range cs.trailer {
					cs.res.Trailer[k] = vv
				}
				cs.trailer = nil
			}
			done := cs.reqDone
			cs.resDone = true
			cs.mu.Unlock()
			if done {
				cc.forget(cs)
			}
			return 0, io.EOF
		}
		if err := cs.err; err != nil {
			cs.mu.Unlock()
			return 0, err
		}
		cs.mu.Unlock()
		select {
		case <-cs.notify:
		case <-cs.ctx.Done():
			cs.cancel(cs.ctx.Err())
			return 0, cs.ctx.Err()
		}
	}
}

// Close abandons the rest of the response.
func (b h2ClientBody) Close() error {
	cs := b.cs
	cs.mu.Lock()
	over := cs.eof && cs.off == len(cs.buf)
	cs.mu.Unlock()
	if over {
		cs.mu.Lock()
		cs.resDone = true
		done := cs.reqDone
		cs.mu.Unlock()
		if done {
			cs.cc.forget(cs)
		}
		return nil
	}
	cs.cancel(errH2BodyClose)
	return nil
}

// readLoop reads the peer's frames until the connection ends.
func (cc *h2ClientConn) readLoop() {
	err := cc.readFrames()
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = err
		if cc.err == nil {
			cc.err = errH2ConnClosed
		}
	}
	streams := make([]*h2ClientStream, 0, len(cc.streams))
	for _, cs := range cc.streams {
		streams = append(streams, cs)
	}
	cc.slot.Broadcast()
	cc.mu.Unlock()
	cc.wmu.Lock()
	if cc.werr == nil {
		cc.werr = errH2ConnClosed
	}
	cc.wcond.Broadcast()
	cc.wmu.Unlock()
	cc.timer.Stop()
	cc.conn.Close()
	for _, cs := range streams {
		cs.mu.Lock()
		gotHead := cs.res != nil
		cs.mu.Unlock()
		if gotHead {
			cs.fail(io.ErrUnexpectedEOF)
		} else {
			cs.fail(errors.New("proxy: http2 connection lost: " + cc.err.Error()))
		}
	}
	close(cc.readerDone)
}

func (cc *h2ClientConn) readFrames() error {
	for {
		f, err := cc.rd.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if cs := cc.stream(se.StreamID); cs != nil {
					cs.cancel(se)
				}
				continue
			}
			if ce, ok := err.(http2.ConnectionError); ok {
				cc.wmu.Lock()
				cc.fr.WriteGoAway(0, http2.ErrCode(ce), nil)
				cc.flushLocked()
				cc.wmu.Unlock()
			}
			return err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			err = cc.processSettings(f)
		case *http2.MetaHeadersFrame:
			err = cc.processHeaders(f)
		case *http2.DataFrame:
			err = cc.processData(f)
		case *http2.WindowUpdateFrame:
			err = cc.processWindowUpdate(f)
		case *http2.RSTStreamFrame:
			if cs := cc.stream(f.StreamID); cs != nil {
				cc.wmu.Lock()
				cs.reset = true
				cc.wcond.Broadcast()
				cc.wmu.Unlock()
				var e error = h2ResetError{f.ErrCode}
				if f.ErrCode == http2.ErrCodeRefusedStream {
					e = RefusedError{Err: e}
				}
				cs.mu.Lock()
				over := cs.eof || cs.err != nil
				cs.mu.Unlock()
				if !over || f.ErrCode != http2.ErrCodeNo {
					cs.fail(e)
				}
				cs.finishRequest()
			}
		case *http2.PingFrame:
			if f.IsAck() {
				cc.mu.Lock()
				cc.pingSent = time.Time{}
				cc.mu.Unlock()
			} else {
				cc.wmu.Lock()
				cc.fr.WritePing(true, f.Data)
				cc.kickLocked()
				cc.wmu.Unlock()
			}
		case *http2.GoAwayFrame:
			cc.processGoAway(f)
		case *http2.PushPromiseFrame:
			err = http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if err != nil {
			if ce, ok := err.(http2.ConnectionError); ok {
				cc.wmu.Lock()
				cc.fr.WriteGoAway(0, http2.ErrCode(ce), nil)
				cc.flushLocked()
				cc.wmu.Unlock()
			}
			return err
		}
	}
}

func (cc *h2ClientConn) stream(id uint32) *h2ClientStream {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.streams[id]
}

func (cc *h2ClientConn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	err := cc.settingsLocked(f, cc.enc, cc.streamWindows, func(s http2.Setting) {
		if s.ID == http2.SettingMaxConcurrentStreams {
			cc.mu.Lock()
			cc.maxStreams = int(min(s.Val, 1<<20))
			cc.slot.Broadcast()
			cc.mu.Unlock()
		}
	})
	cc.wcond.Broadcast()
	if err != nil {
		return err
	}
	cc.fr.WriteSettingsAck()
	cc.kickLocked()
	return nil
}

// streamWindows yields the send window of every open stream, under mu.
func (cc *h2ClientConn) streamWindows(yield func(*int64) bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for _, cs := range cc.streams {
		if !yield(&cs.sendWin) {
			return
		}
	}
}

// errH2WindowOverflow fails a stream whose window the peer pushed beyond 2^31-1.
var errH2WindowOverflow = errors.New("proxy: http2 peer overflowed the stream's flow-control window")

func (cc *h2ClientConn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	var cs *h2ClientStream
	var win *int64
	if f.StreamID != 0 {
		if cs = cc.stream(f.StreamID); cs == nil {
			return nil
		}
		win = &cs.sendWin
	}
	cc.wmu.Lock()
	overflow, err := cc.windowUpdateLocked(win, f.Increment)
	if overflow && !cs.reset {
		cs.reset = true
		cc.fr.WriteRSTStream(f.StreamID, http2.ErrCodeFlowControl)
		cc.kickLocked()
	}
	cc.wcond.Broadcast()
	cc.wmu.Unlock()
	if overflow {
		cs.fail(errH2WindowOverflow)
		cc.forget(cs)
	}
	return err
}

func (cc *h2ClientConn) processGoAway(f *http2.GoAwayFrame) {
	cc.mu.Lock()
	cc.goAway = true
	cc.goAwayID = f.LastStreamID
	var refused []*h2ClientStream
	for id, cs := range cc.streams {
		if id > f.LastStreamID {
			refused = append(refused, cs)
		}
	}
	idle := cc.active == len(refused)
	cc.slot.Broadcast()
	cc.mu.Unlock()
	for _, cs := range refused {
		cs.fail(RefusedError{Err: errH2GoAway})
		cc.forget(cs)
	}
	if idle {
		cc.conn.Close()
	}
}

func (cc *h2ClientConn) processData(f *http2.DataFrame) error {
	n := int64(f.Length)
	cc.mu.Lock()
	if !cc.recv.take(n) {
		cc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	cs := cc.streams[f.StreamID]
	cc.mu.Unlock()
	data := f.Data()
	if cs == nil {
		cc.returnConnCredit(n)
		return nil
	}
	if pad := n - int64(len(data)); pad > 0 {
		cc.returnConnCredit(pad)
	}
	cs.mu.Lock()
	if cs.res == nil || cs.eof || cs.err != nil {
		head := cs.res != nil
		cs.mu.Unlock()
		cc.returnConnCredit(int64(len(data)))
		if !head {
			cs.cancel(errors.New("proxy: http2 DATA before the response head"))
		}
		return nil
	}
	if !cs.recv.take(int64(len(data))) {
		cs.mu.Unlock()
		cs.cancel(errors.New("proxy: http2 peer exceeded the stream's window"))
		return nil
	}
	cs.buf = append(cs.buf, data...)
	if f.StreamEnded() {
		cs.eof = true
	}
	cs.mu.Unlock()
	cs.signal()
	return nil
}

func (cc *h2ClientConn) processHeaders(f *http2.MetaHeadersFrame) error {
	cs := cc.stream(f.StreamID)
	if cs == nil {
		return nil // a stream we abandoned
	}
	cs.mu.Lock()
	if cs.res != nil {
		// Trailers.
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			cs.mu.Unlock()
			cs.cancel(errors.New("proxy: http2 malformed trailers"))
			return nil
		}
		for _, hf := range f.RegularFields() {
			if cs.trailer == nil {
				cs.trailer = http.Header{}
			}
			cs.trailer.Add(cc.canonical(hf.Name), hf.Value)
		}
		cs.eof = true
		cs.mu.Unlock()
		cs.signal()
		return nil
	}
	cs.mu.Unlock()
	status := f.PseudoValue("status")
	code, err := strconv.Atoi(status)
	if err != nil || len(status) != 3 {
		cs.cancel(errors.New("proxy: http2 response with a bad :status " + strconv.Quote(status)))
		return nil
	}
	if code < 200 {
		if f.StreamEnded() {
			cs.cancel(errors.New("proxy: http2 1xx response ends the stream"))
		}
		return nil // interim: the final response follows
	}
	fields := f.RegularFields()
	h := make(http.Header, len(fields))
	vals := make([]string, len(fields)) // one array for every single-valued field
	for i, hf := range fields {
		k := cc.canonical(hf.Name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, hf.Value)
		} else {
			vals[i] = hf.Value
			h[k] = vals[i : i+1 : i+1]
		}
	}
	res := &http.Response{
		Status:        statusLine(code, status),
		StatusCode:    code,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        h,
		ContentLength: -1,
		Request:       cs.req,
	}
	if v := h["Content-Length"]; len(v) == 1 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			res.ContentLength = n
		}
	}
	if tr := h["Trailer"]; len(tr) > 0 {
		res.Trailer = http.Header{}
		for _, v := range tr {
			for k := range strings.SplitSeq(v, ",") {
				if k = textproto.TrimString(k); k != "" {
					res.Trailer[textproto.CanonicalMIMEHeaderKey(k)] = nil
				}
			}
		}
	}
	cs.mu.Lock()
	forget := false
	if f.StreamEnded() {
		// No body, no trailers: the response side is over now.
		cs.eof, cs.resDone = true, true
		forget = cs.reqDone
		if res.ContentLength == -1 {
			res.ContentLength = 0
		}
		res.Body = http.NoBody
	} else {
		res.Body = h2ClientBody{cs}
	}
	cs.res = res
	cs.mu.Unlock()
	cs.signal()
	if forget {
		cc.forget(cs)
	}
	return nil
}

// statusLine is http.Response.Status for code (whose digits are status): precomputed for
// the common codes.
func statusLine(code int, status string) string {
	if code >= 100 && code < 600 {
		if s := statusLines[code-100]; s != "" {
			return s
		}
	}
	return status + " " + http.StatusText(code)
}

var statusLines = func() (t [500]string) {
	for code := 100; code < 600; code++ {
		if text := http.StatusText(code); text != "" {
			t[code-100] = strconv.Itoa(code) + " " + text
		}
	}
	return t
}()

func (cc *h2ClientConn) canonical(name string) string {
	if k, ok := cc.canon[name]; ok {
		return k
	}
	k := textproto.CanonicalMIMEHeaderKey(name)
	if len(cc.canon) < 256 {
		cc.canon[name] = k
	}
	return k
}

// onTimer pings a silent peer and closes the connection when the PING goes unanswered,
// or when it has been idle for h2ClientIdleTimeout.
func (cc *h2ClientConn) onTimer() {
	now := time.Now()
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	idle := cc.active == 0 && now.Sub(cc.idleSince) >= h2ClientIdleTimeout
	silent := now.Sub(time.Unix(0, cc.lastRead.Load())) >= h2PingAfter
	dead := !cc.pingSent.IsZero() && now.Sub(cc.pingSent) >= h2PingTimeout
	ping := cc.pingSent.IsZero() && silent
	if ping {
		cc.pingSent = now
	}
	cc.mu.Unlock()
	switch {
	case idle || dead:
		cc.conn.Close()
		return
	case ping:
		cc.wmu.Lock()
		cc.fr.WritePing(false, [8]byte{'p', 'o', 'd', 'm', 'e', 's', 'h'})
		cc.kickLocked()
		cc.wmu.Unlock()
	}
	cc.timer.Reset(h2PingTimeout)
}
