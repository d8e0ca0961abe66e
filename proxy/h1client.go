package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// h1Client sends requests to an HTTP/1.1 app over pooled keep-alive connections, doing
// the whole exchange in the caller's goroutine: write the request, read the response
// head, hand the body over. net/http's Transport costs two goroutine hand-offs per
// request (its write and read loops), a timer and a probe of bodies of unknown length,
// and about thirty allocations more.
//
// A request body of known length up to replayBytes is read whole first and written with
// the head. Longer and streaming bodies are written by a goroutine of their own while the
// response is read, as an app may answer before it has read them; the connection is
// reused only if both are done.
//
// Without a reader goroutine per idle connection, an app that closes an idle keep-alive
// connection is noticed when the connection is taken again: one that has been idle for
// over a second is checked first (a non-blocking peek), and a replayable request (as
// net/http defines it: GET, HEAD, OPTIONS, TRACE, or an Idempotency-Key, and a body
// held whole or none) that meets a closed connection anyway is sent again on a new one.
type h1Client struct {
	addr        string
	dial        func(ctx context.Context, addr string) (net.Conn, error)
	maxIdle     int
	idleTimeout time.Duration

	mu     sync.Mutex
	idle   []*h1ClientConn // most recently used last
	closed bool
}

// replayBytes is the largest request body written with the head and kept for a retry on
// a fresh connection (it is read into a pooled copy buffer).
const replayBytes = copyBufferSize

type h1ClientConn struct {
	c        net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
	reused   bool
}

func newH1Client(addr string, dial func(ctx context.Context, addr string) (net.Conn, error)) *h1Client {
	return &h1Client{addr: addr, dial: dial, maxIdle: 256, idleTimeout: 90 * time.Second}
}

// staleError is a failure of a reused connection before any response byte arrived: the
// app may have closed it while it was idle.
type staleError struct{ err error }

func (e staleError) Error() string { return "proxy: reused connection to the app: " + e.err.Error() }
func (e staleError) Unwrap() error { return e.err }

// replayable is net/http's rule for sending a request again after a reused connection
// failed: a method without side effects, or an idempotency key.
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, a := req.Header["Idempotency-Key"]
	_, b := req.Header["X-Idempotency-Key"]
	return a || b
}

// alive reports whether an idle connection is still open: no EOF and no unexpected
// bytes waiting (a non-blocking peek).
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = rerr == syscall.EAGAIN
		return true
	})
	return err == nil && ok
}

// roundTrip sends req and returns the response; its body must be read to the end or
// closed. Errors from connecting are DialError. Unlike net/http's client, a ContentLength
// of 0 means no body, whatever Body is (net/http's HTTP/2 server gives a request without
// a body a Body and a ContentLength of 0; the transport would probe it, with a timer).
func (p *h1Client) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	var body []byte // the whole body, when short enough to replay
	var bp *[]byte
	streaming := false
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0 {
		switch {
		case req.ContentLength > 0 && req.ContentLength <= replayBytes && len(req.Header["Expect"]) == 0 &&
			len(req.Trailer) == 0:
			bp = defaultPool.Get()
			body = (*bp)[:req.ContentLength]
			if _, err := io.ReadFull(req.Body, body); err != nil {
				defaultPool.Put(bp)
				return nil, err
			}
		default:
			streaming = true
		}
	}
	for {
		cc, err := p.get(ctx)
		if err != nil {
			if bp != nil {
				defaultPool.Put(bp)
			}
			return nil, err
		}
		res, err := p.exchange(ctx, cc, req, body, streaming)
		if err == nil {
			if bp != nil {
				defaultPool.Put(bp)
			}
			return res, nil
		}
		var se staleError
		if errors.As(err, &se) {
			if !streaming && replayable(req) && ctx.Err() == nil {
				continue // the app closed the connection: again, on another one
			}
			err = se.err
		}
		if bp != nil {
			defaultPool.Put(bp)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
}

// get returns an idle connection or dials one.
func (p *h1Client) get(ctx context.Context) (*h1ClientConn, error) {
	now := time.Now()
	p.mu.Lock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		cc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if idle := now.Sub(cc.lastUsed); idle < p.idleTimeout && (idle < time.Second || alive(cc.c)) {
			p.mu.Unlock()
			cc.reused = true
			return cc, nil
		}
		cc.c.Close()
	}
	p.mu.Unlock()
	c, err := p.dial(ctx, p.addr)
	if err != nil {
		return nil, err
	}
	return &h1ClientConn{c: c, br: bufio.NewReaderSize(c, 4<<10), bw: bufio.NewWriterSize(c, 4<<10)}, nil
}

// put returns a connection whose exchange completed to the idle pool.
func (p *h1Client) put(cc *h1ClientConn) {
	cc.lastUsed = time.Now()
	p.mu.Lock()
	if p.closed || len(p.idle) >= p.maxIdle {
		p.mu.Unlock()
		cc.c.Close()
		return
	}
	p.idle = append(p.idle, cc)
	p.mu.Unlock()
}

// closeIdle closes the idle connections; with stop, later ones too.
func (p *h1Client) closeIdle(stop bool) {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	if stop {
		p.closed = true
	}
	p.mu.Unlock()
	for _, cc := range idle {
		cc.c.Close()
	}
}

// exchange runs one request on cc. On failure cc is closed; a staleError says that a
// reused connection failed before any byte of a response arrived.
func (p *h1Client) exchange(ctx context.Context, cc *h1ClientConn, req *http.Request, body []byte, streaming bool) (*http.Response, error) {
	stop := noStop
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { cc.c.SetDeadline(aLongTimeAgo) })
	}
	fail := func(err error, stale bool) (*http.Response, error) {
		stop()
		cc.c.Close()
		if stale && cc.reused && ctx.Err() == nil {
			return nil, staleError{err}
		}
		return nil, err
	}
	chunked := streaming && (req.ContentLength <= 0 || len(req.Trailer) > 0)
	if err := writeRequestHead(cc.bw, req, chunked, streaming || body != nil); err != nil {
		return fail(err, false)
	}
	var bodyDone chan error
	if streaming {
		if err := cc.bw.Flush(); err != nil {
			return fail(err, true)
		}
		bodyDone = make(chan error, 1)
		go func() { bodyDone <- writeRequestBody(cc.bw, req, chunked) }()
	} else {
		cc.bw.Write(body)
		if err := cc.bw.Flush(); err != nil {
			return fail(err, true)
		}
	}
	var res *http.Response
	for {
		if cc.br.Buffered() == 0 {
			// The app cannot have answered yet: let the goroutines ready to run go first
			// rather than read now for nothing (a system call for EAGAIN, then the poller).
			runtime.Gosched()
		}
		if _, err := cc.br.Peek(1); err != nil {
			return fail(err, !streaming)
		}
		if res, ok := readResponseFast(cc.br, req); ok {
			b := &h1ClientBody{p: p, cc: cc, stop: stop, bodyDone: bodyDone, keep: !req.Close}
			if res.ContentLength == 0 {
				res.Body = http.NoBody
				b.finish(true)
				return res, nil
			}
			b.fixed = fixedBody{br: cc.br, n: res.ContentLength}
			b.rc = &b.fixed
			res.Body = b
			return res, nil
		}
		var err error
		res, err = http.ReadResponse(cc.br, req)
		if err != nil {
			return fail(err, false)
		}
		if res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		res.Body.Close() // 1xx: the final response follows
	}
	b := &h1ClientBody{p: p, cc: cc, rc: res.Body, stop: stop, bodyDone: bodyDone,
		keep: !res.Close && !req.Close && res.StatusCode != http.StatusSwitchingProtocols}
	if res.Body == http.NoBody {
		b.finish(true)
		return res, nil
	}
	res.Body = b
	return res, nil
}

func noStop() bool { return true }

// writeRequestHead writes the request line and header fields; framing says whether a
// body follows (chunked, or with its Content-Length).
func writeRequestHead(bw *bufio.Writer, req *http.Request, chunked, hasBody bool) error {
	u := req.URL
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	switch {
	case u.Opaque != "":
		bw.WriteString(u.RequestURI())
	default:
		p := u.EscapedPath()
		if p == "" {
			p = "/"
		}
		bw.WriteString(p)
		if u.ForceQuery || u.RawQuery != "" {
			bw.WriteByte('?')
			bw.WriteString(u.RawQuery)
		}
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	host := req.Host
	if host == "" {
		host = u.Host
	}
	if !validHeaderValue(host) {
		return errors.New("proxy: invalid Host " + strconv.Quote(host))
	}
	bw.WriteString(host)
	bw.WriteString("\r\n")
	for k, vv := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if !validToken(k) {
			return errors.New("proxy: invalid header name " + strconv.Quote(k))
		}
		for _, v := range vv {
			if !validHeaderValue(v) {
				return errors.New("proxy: invalid value of header " + k)
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	switch {
	case chunked:
		if len(req.Trailer) > 0 {
			keys := make([]string, 0, len(req.Trailer))
			for k := range req.Trailer {
				keys = append(keys, k)
			}
			bw.WriteString("Trailer: " + strings.Join(keys, ", ") + "\r\n")
		}
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case hasBody || req.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		var b [20]byte
		bw.Write(strconv.AppendInt(b[:0], req.ContentLength, 10))
		bw.WriteString("\r\n")
	case req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n") // as net/http: some servers want it
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// validHeaderValue rejects what would break the message: CR, LF and NUL.
func validHeaderValue(v string) bool {
	return strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0 && strings.IndexByte(v, 0) < 0
}

// writeRequestBody streams req's body (chunked, or exactly ContentLength bytes) and its
// trailers, and flushes.
func writeRequestBody(bw *bufio.Writer, req *http.Request, chunked bool) error {
	bp := defaultPool.Get()
	defer defaultPool.Put(bp)
	buf := *bp
	var n int64
	for {
		m, rerr := req.Body.Read(buf)
		if m > 0 {
			n += int64(m)
			if chunked {
				var b [16]byte
				bw.Write(strconv.AppendInt(b[:0], int64(m), 16))
				bw.WriteString("\r\n")
				bw.Write(buf[:m])
				bw.WriteString("\r\n")
			} else {
				if n > req.ContentLength {
					return errors.New("proxy: request body longer than its Content-Length")
				}
				bw.Write(buf[:m])
			}
			if err := bw.Flush(); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if chunked {
		bw.WriteString("0\r\n")
		for k, vv := range req.Trailer {
			for _, v := range vv {
				if validToken(k) && validHeaderValue(v) {
					bw.WriteString(k + ": " + v + "\r\n")
				}
			}
		}
		bw.WriteString("\r\n")
	} else if n != req.ContentLength {
		return errors.New("proxy: request body shorter than its Content-Length")
	}
	return bw.Flush()
}

// settleSoon is how long the end of a response waits for its request body writer
// before leaving the decision to settle, which waits up to settleWait in the background.
const (
	settleSoon = 10 * time.Millisecond
	settleWait = time.Second
)

// settle keeps cc if its request body writer completes within settleWait, and closes it
// otherwise (which also ends a writer stuck on an app that stopped reading).
func (p *h1Client) settle(cc *h1ClientConn, done <-chan error) {
	t := time.NewTimer(settleWait)
	defer t.Stop()
	select {
	case err := <-done:
		if err == nil {
			p.put(cc)
			return
		}
	case <-t.C:
	}
	cc.c.Close()
}

// h1ClientBody is a response body: at its end the connection goes back to the pool, if
// the exchange allows; closed early, the connection is closed.
type h1ClientBody struct {
	p        *h1Client
	cc       *h1ClientConn
	rc       io.ReadCloser
	stop     func() bool
	bodyDone chan error // the request body writer's result, when there is one
	keep     bool
	done     bool
	fixed    fixedBody // rc when the head was read by readResponseFast
}

func (b *h1ClientBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	}
	return n, err
}

func (b *h1ClientBody) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

// finish ends the exchange: the connection is reused when the response was read to its
// end, the request body was written whole, and the request was not cancelled.
func (b *h1ClientBody) finish(eof bool) {
	b.done = true
	keep := eof && b.keep && b.stop()
	if keep && b.bodyDone != nil {
		select {
		case err := <-b.bodyDone:
			keep = err == nil
		default:
			// The writer has not reported yet: it is about to (the app answered on the
			// last byte), or the app answered early and may never read the rest.
			t := time.NewTimer(settleSoon)
			select {
			case err := <-b.bodyDone:
				t.Stop()
				keep = err == nil
			case <-t.C:
				go b.p.settle(b.cc, b.bodyDone)
				return
			}
		}
	}
	if keep {
		b.p.put(b.cc)
		return
	}
	b.cc.c.Close()
	if !eof {
		b.rc.Close()
	}
}
