package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The guard reads the HTTP/1.x requests of a listener's connections for the proxy's own
// HTTP/1 loop (h1server.go). A proxy must not be lenient where net/http is: net/http drops
// Content-Length when Transfer-Encoding is also present, merges identical duplicate
// Content-Length headers, and accepts bare LF line ends. A proxy that forwards what its
// backend would frame differently is open to request smuggling, so every request head is
// checked here, on the raw bytes, before it is parsed, and the guard decodes each body's
// framing itself, so that it always knows where the next head of a keep-alive connection
// starts.
//
// A rejected head is never parsed or forwarded: the loop answers it with the status (400
// or 431) and "Connection: close", after the response in flight, and the connection ends.
// An HTTP/2 preface switches the connection to pass-through: HTTP/2 framing is checked by
// net/http's HTTP/2 server. After a head that asks for an Upgrade no further head is read:
// the handler either switches the connection to pass-through (the tunnel is up) or answers
// with "Connection: close".

// Rejection reasons, as they appear in metrics and in the 400 body.
const (
	reasonRequestLine  = "bad_request_line"
	reasonVersion      = "bad_version"
	reasonLineEnding   = "bad_line_ending"
	reasonObsFold      = "obs_fold"
	reasonHeaderName   = "bad_header_name"
	reasonHeaderValue  = "bad_header_value"
	reasonCLTE         = "content_length_with_transfer_encoding"
	reasonDuplicateCL  = "duplicate_content_length"
	reasonBadCL        = "bad_content_length"
	reasonBadTE        = "bad_transfer_encoding"
	reasonTEHTTP10     = "transfer_encoding_in_http10"
	reasonHost         = "bad_host"
	reasonHeadTooLarge = "headers_too_large"
	reasonTooMany      = "too_many_headers"
)

// headInfo is what the guard learns from a valid request head.
type headInfo struct {
	contentLength int64 // -1 when absent
	chunked       bool
	upgrade       bool // Connection lists "upgrade" and an Upgrade header is present
	h2Preface     bool // "PRI * HTTP/2.0": the start of an HTTP/2 prior-knowledge preface
}

// headError is a rejected head: the status to answer (400 or 431) and why.
type headError struct {
	status int
	reason string
}

func (e *headError) Error() string { return strconv.Itoa(e.status) + " " + e.reason }

func bad(reason string) *headError { return &headError{http.StatusBadRequest, reason} }
func tooLarge(reason string) *headError {
	return &headError{http.StatusRequestHeaderFieldsTooLarge, reason}
}

// validateHead checks one complete request head: the request line, header lines and the
// final empty line, each ending in CRLF. maxCount bounds the number of header fields.
func validateHead(head []byte, maxCount int) (headInfo, error) {
	info := headInfo{contentLength: -1}
	if !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		return info, bad(reasonLineEnding)
	}
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	if err := checkLine(line); err != nil {
		return info, err
	}
	method, rest1, ok1 := bytes.Cut(line, []byte(" "))
	target, version, ok2 := bytes.Cut(rest1, []byte(" "))
	if !ok1 || !ok2 || len(method) == 0 || len(target) == 0 || !validToken(string(method)) {
		return info, bad(reasonRequestLine)
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return info, bad(reasonRequestLine)
		}
	}
	http10 := false
	switch string(version) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		http10 = true
	case "HTTP/2.0":
		if string(method) == "PRI" && string(target) == "*" && len(rest) == 2 {
			info.h2Preface = true
			return info, nil
		}
		return info, bad(reasonVersion)
	default:
		return info, bad(reasonVersion)
	}

	var (
		count, hosts       int
		sawCL, sawTE       bool
		connUpgrade, upHdr bool
	)
	for {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(line) == 0 {
			break // the empty line that ends the head (the suffix check guarantees it)
		}
		if err := checkLine(line); err != nil {
			return info, err
		}
		if line[0] == ' ' || line[0] == '\t' {
			return info, bad(reasonObsFold)
		}
		count++
		if count > maxCount {
			return info, tooLarge(reasonTooMany)
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || !validToken(string(name)) {
			return info, bad(reasonHeaderName)
		}
		value = trimOWS(value)
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return info, bad(reasonHeaderValue)
			}
		}
		switch {
		case asciiEqualFold(name, "Content-Length"):
			if sawCL {
				return info, bad(reasonDuplicateCL)
			}
			sawCL = true
			n, ok := parseContentLength(value)
			if !ok {
				return info, bad(reasonBadCL)
			}
			info.contentLength = n
		case asciiEqualFold(name, "Transfer-Encoding"):
			if sawTE {
				return info, bad(reasonBadTE)
			}
			sawTE = true
			if !asciiEqualFold(value, "chunked") {
				return info, bad(reasonBadTE)
			}
			info.chunked = true
		case asciiEqualFold(name, "Host"):
			hosts++
		case asciiEqualFold(name, "Connection"):
			if containsToken([]string{string(value)}, "upgrade") {
				connUpgrade = true
			}
		case asciiEqualFold(name, "Upgrade"):
			upHdr = len(value) > 0
		}
	}
	switch {
	case sawCL && sawTE:
		return info, bad(reasonCLTE)
	case sawTE && http10:
		return info, bad(reasonTEHTTP10)
	case hosts > 1 || (hosts == 0 && !http10):
		return info, bad(reasonHost)
	}
	info.upgrade = connUpgrade && upHdr
	return info, nil
}

// checkLine rejects a line holding a bare CR or LF (the head was split on CRLF, so any CR
// or LF left inside a line is bare).
func checkLine(line []byte) error {
	if bytes.IndexByte(line, '\n') >= 0 || bytes.IndexByte(line, '\r') >= 0 {
		return bad(reasonLineEnding)
	}
	return nil
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// parseContentLength accepts 1*DIGIT that fits in an int64; no sign, no list.
func parseContentLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// Guard states: what the next bytes on the connection are.
type guardState uint8

const (
	stHead        guardState = iota // a request head
	stBody                          // remain bytes of Content-Length body or of chunk data
	stChunkSize                     // a chunk-size line
	stChunkCRLF                     // the CRLF after chunk data
	stTrailer                       // trailer lines up to the empty line
	stHold                          // after an Upgrade message: no further head is read
	stPassthrough                   // HTTP/2 or an established tunnel: raw bytes
	stBroken                        // malformed chunked framing: reads fail
)

// maxChunkLine bounds a chunk-size or trailer line, as net/http does.
const maxChunkLine = 4096

// guardBufSize is the pooled buffer each connection reads through. Heads up to the head
// limit grow it beyond this.
const guardBufSize = 4096

var guardBufs = sync.Pool{New: func() any { b := make([]byte, guardBufSize); return &b }}

var (
	// errBroken is returned by body reads once chunked framing turned out malformed.
	errBroken = errors.New("proxy: malformed chunked request body")
	// errHeld is returned by readHead after an Upgrade message that was not switched.
	errHeld = errors.New("proxy: no request may follow an upgrade request")
	// errBodyPending is returned by readHead before the previous body was read to its end.
	errBodyPending = errors.New("proxy: request body not consumed")
)

// guardConn reads HTTP/1.x requests off a connection: readHead returns each head once it
// is complete and valid, readBody the decoded body that follows (Content-Length or
// chunked, trailers collected), so that it always knows where the next head starts. One
// goroutine reads at a time; the state needs no lock. After Passthrough (HTTP/2, or a
// tunnel once the upgrade is answered) Read returns the raw bytes, buffered ones first.
type guardConn struct {
	net.Conn
	maxHead, maxCount int

	bp        *[]byte // pooled buffer; buf is it, or a larger one for a large head
	buf       []byte
	r, w      int // buf[r:w] read from the connection, not yet consumed
	state     guardState
	remain    int64      // body or chunk bytes left (stBody)
	afterBody guardState // the state after the current stBody run
	next      guardState // the state after the current message (stHead or stHold)
	scanned   int        // bytes of buf[r:] already searched for the end of the head
	trailers  int        // trailer lines so far
	heads     int        // heads returned
	trailer   http.Header
	onReject  func(reason string)
	rerr      error // a read error kept until the buffered bytes are consumed

	// readHeaderTimeout, when set, bounds a head from its first byte (see readHead).
	readHeaderTimeout time.Duration
}

func newGuardConn(c net.Conn, lim Limits, onReject func(reason string)) *guardConn {
	return &guardConn{Conn: c, maxHead: lim.MaxHeaderBytes, maxCount: lim.MaxHeaderCount, onReject: onReject}
}

// Passthrough makes Read return every further byte unchecked, the buffered ones first:
// for HTTP/2, and for a tunnel once the handler has hijacked the connection.
func (g *guardConn) Passthrough() {
	g.state = stPassthrough
}

// CloseWrite half-closes the underlying connection, for tunnels.
func (g *guardConn) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return g.Conn.Close()
}

// Read returns raw bytes after Passthrough, the buffered ones first. Before it, the
// connection is read through readHead and readBody only, and Read fails.
func (g *guardConn) Read(p []byte) (int, error) {
	if g.state != stPassthrough {
		return 0, errors.New("proxy: raw read of a guarded connection")
	}
	if g.w > g.r {
		n := copy(p, g.buf[g.r:g.w])
		g.r += n
		return n, nil
	}
	if g.rerr != nil {
		return 0, g.takeErr()
	}
	return g.Conn.Read(p)
}

// readHead returns the next request head, complete and valid, and its framing; the bytes
// are valid until the next call of any method. An HTTP/2 preface is returned with
// info.h2Preface and left unconsumed (the caller switches to Passthrough). A head the
// guard refuses is a *headError, counted through onReject.
//
// The caller sets the read deadline for the wait (the idle timeout); once part of a head
// has arrived and more is needed, readHead moves the deadline to readHeaderTimeout from
// then on.
func (g *guardConn) readHead() ([]byte, headInfo, error) {
	switch g.state {
	case stHead:
	case stHold:
		return nil, headInfo{}, errHeld
	case stBroken:
		return nil, headInfo{}, errBroken
	default:
		return nil, headInfo{}, errBodyPending
	}
	headTimer := false
	for {
		data := g.buf[g.r:g.w]
		// Search only what earlier rounds have not, so that a head trickling in byte by
		// byte costs linear time.
		from := max(g.scanned-3, 0)
		if end := bytes.Index(data[from:], crlfcrlf); end >= 0 {
			end += from
			g.scanned = 0
			head := data[:end+4]
			if len(head) > g.maxHead {
				return nil, headInfo{}, g.reject(tooLarge(reasonHeadTooLarge))
			}
			info, err := validateHead(head, g.maxCount)
			if err != nil {
				var he *headError
				if !errors.As(err, &he) {
					he = bad(reasonRequestLine)
				}
				return nil, headInfo{}, g.reject(he)
			}
			if info.h2Preface {
				if g.heads > 0 {
					return nil, headInfo{}, g.reject(bad(reasonVersion))
				}
				return head, info, nil
			}
			g.heads++
			g.r += len(head)
			g.trailer = nil
			g.next = stHead
			if info.upgrade {
				g.next = stHold
			}
			switch {
			case info.chunked:
				g.state, g.trailers = stChunkSize, 0
			case info.contentLength > 0:
				g.state, g.remain, g.afterBody = stBody, info.contentLength, g.next
			default:
				g.state = g.next
			}
			return head, info, nil
		}
		// A bare LF can never become part of a valid head; say so without waiting.
		for i := max(g.scanned, 0); i < len(data); i++ {
			if data[i] == '\n' && (i == 0 || data[i-1] != '\r') {
				return nil, headInfo{}, g.reject(bad(reasonLineEnding))
			}
		}
		g.scanned = len(data)
		if len(data) > g.maxHead {
			return nil, headInfo{}, g.reject(tooLarge(reasonHeadTooLarge))
		}
		if g.rerr != nil {
			return nil, headInfo{}, g.takeErr()
		}
		if len(data) > 0 && !headTimer && g.readHeaderTimeout > 0 {
			headTimer = true
			g.Conn.SetReadDeadline(time.Now().Add(g.readHeaderTimeout))
		}
		if err := g.fill(); err != nil {
			return nil, headInfo{}, err
		}
	}
}

var crlfcrlf = []byte("\r\n\r\n")

// readBody reads the current request's body, decoded: io.EOF at its end. A connection
// that ends inside the body is io.ErrUnexpectedEOF; malformed chunked framing is
// errBroken, for good.
func (g *guardConn) readBody(p []byte) (int, error) {
	for {
		switch g.state {
		case stHead, stHold, stPassthrough:
			return 0, io.EOF
		case stBroken:
			return 0, errBroken
		case stBody:
			if len(p) == 0 {
				return 0, nil
			}
			if g.w > g.r {
				n := int(min(int64(g.w-g.r), g.remain, int64(len(p))))
				copy(p, g.buf[g.r:g.r+n])
				g.r += n
				g.bodyConsumed(int64(n))
				return n, nil
			}
			if g.rerr != nil {
				return 0, unexpected(g.takeErr())
			}
			// Nothing buffered: read the body straight into the caller's buffer.
			if int64(len(p)) > g.remain {
				p = p[:g.remain]
			}
			n, err := g.Conn.Read(p)
			g.bodyConsumed(int64(n))
			if err != nil {
				if n > 0 {
					g.rerr = err
					return n, nil
				}
				return 0, unexpected(err)
			}
			return n, nil
		}
		// Chunk framing: consume what is buffered, read more when it is not enough.
		progress, done := g.advanceChunked()
		if done {
			return 0, io.EOF
		}
		if progress {
			continue
		}
		if g.rerr != nil {
			return 0, unexpected(g.takeErr())
		}
		if err := g.fill(); err != nil {
			return 0, unexpected(err)
		}
	}
}

// unexpected turns the end of the connection inside a body into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// bodyDone reports whether the current request's body has been read to its end.
func (g *guardConn) bodyDone() bool {
	switch g.state {
	case stHead, stHold, stPassthrough:
		return true
	}
	return false
}

func (g *guardConn) takeErr() error {
	err := g.rerr
	g.rerr = nil
	return err
}

func (g *guardConn) bodyConsumed(n int64) {
	g.remain -= n
	if g.remain == 0 {
		g.state = g.afterBody
	}
}

// fill reads more bytes into the buffer.
func (g *guardConn) fill() error {
	if g.bp == nil {
		g.bp = guardBufs.Get().(*[]byte)
		g.buf = *g.bp
	}
	if g.r > 0 {
		copy(g.buf, g.buf[g.r:g.w])
		g.w -= g.r
		g.r = 0
	}
	if g.w == 0 && len(g.buf) > guardBufSize {
		g.buf = *g.bp // a large head is gone: back to the pooled buffer
	}
	if g.w == len(g.buf) {
		limit := g.maxHead + 4
		if g.state != stHead {
			limit = maxChunkLine + 4
		}
		if len(g.buf) >= limit {
			// readHead or advanceChunked would have refused an over-long head or line.
			return errBroken
		}
		nb := make([]byte, min(2*len(g.buf), limit))
		copy(nb, g.buf[:g.w])
		g.buf = nb
	}
	n, err := g.Conn.Read(g.buf[g.w:])
	g.w += n
	if err != nil {
		if n > 0 {
			g.rerr = err
			return nil
		}
		return err
	}
	return nil
}

// waitMore blocks until the peer sends more bytes or the connection ends, and keeps what
// arrives for the next head. It is the HTTP/1 loop's check for a client that went away
// while its request is served (the body has been read by then). A full buffer returns at
// once.
func (g *guardConn) waitMore() error {
	if g.bp == nil {
		g.bp = guardBufs.Get().(*[]byte)
		g.buf = *g.bp
	}
	if g.r > 0 {
		copy(g.buf, g.buf[g.r:g.w])
		g.w -= g.r
		g.r = 0
	}
	if g.w == len(g.buf) || g.rerr != nil {
		return nil
	}
	n, err := g.Conn.Read(g.buf[g.w:])
	g.w += n
	if err != nil && n > 0 && !isTimeout(err) {
		g.rerr = err
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// release returns the buffer to the pool; the connection is done.
func (g *guardConn) release() {
	if g.bp != nil {
		guardBufs.Put(g.bp)
		g.bp, g.buf = nil, nil
		g.r, g.w = 0, 0
	}
}

// advanceChunked consumes chunk framing from the buffer: it reports whether it made
// progress, and done once the trailer section ended the message.
func (g *guardConn) advanceChunked() (progress, done bool) {
	data := g.buf[g.r:g.w]
	switch g.state {
	case stChunkSize:
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if len(data) > maxChunkLine {
				g.state = stBroken
				return true, false
			}
			return false, false
		}
		size, ok := parseChunkLine(data[:i+1])
		if !ok {
			g.state = stBroken
			return true, false
		}
		g.r += i + 1
		if size == 0 {
			g.state = stTrailer
		} else {
			g.state, g.remain, g.afterBody = stBody, size, stChunkCRLF
		}
		return true, false
	case stChunkCRLF:
		if len(data) < 2 {
			return false, false
		}
		if data[0] != '\r' || data[1] != '\n' {
			g.state = stBroken
			return true, false
		}
		g.r += 2
		g.state = stChunkSize
		return true, false
	case stTrailer:
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if len(data) > maxChunkLine {
				g.state = stBroken
				return true, false
			}
			return false, false
		}
		line := data[:i+1]
		if len(line) < 2 || line[len(line)-2] != '\r' {
			g.state = stBroken
			return true, false
		}
		g.r += i + 1
		if len(line) == 2 {
			g.state = g.next
			return true, true
		}
		g.trailers++
		line = line[:len(line)-2]
		if g.trailers > g.maxCount || !validTrailerLine(line) {
			g.state = stBroken
			return true, false
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		if g.trailer == nil {
			g.trailer = http.Header{}
		}
		g.trailer.Add(string(name), string(trimOWS(value)))
		return true, false
	}
	return false, false
}

// parseChunkLine parses "HEX[;ext]\r\n" and returns the chunk size.
func parseChunkLine(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return 0, false
	}
	line = line[:len(line)-2]
	if bytes.IndexByte(line, '\r') >= 0 {
		return 0, false
	}
	hexPart, ext, hasExt := bytes.Cut(line, []byte(";"))
	hexPart = trimOWS(hexPart)
	if len(hexPart) == 0 || len(hexPart) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range hexPart {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	if hasExt {
		for _, c := range ext {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return 0, false
			}
		}
	}
	return n, true
}

func validTrailerLine(line []byte) bool {
	if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
		return false
	}
	name, value, ok := bytes.Cut(line, []byte(":"))
	if !ok || !validToken(string(name)) {
		return false
	}
	for _, c := range value {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// reject counts a refused head and makes the connection unusable for further heads.
func (g *guardConn) reject(he *headError) error {
	if g.onReject != nil {
		g.onReject(he.reason)
	}
	g.state = stBroken
	g.r, g.w = 0, 0 // drop what was buffered: none of it is ever used
	g.rerr = nil
	return he
}
