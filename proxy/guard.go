package proxy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// The guard sits between a listener's connection and net/http's HTTP/1 server. net/http is
// lenient where a proxy must not be: it drops Content-Length when Transfer-Encoding is also
// present, merges identical duplicate Content-Length headers, and accepts bare LF line
// ends. A proxy that forwards what its backend would frame differently is open to request
// smuggling, so every request head is checked here, on the raw bytes, before net/http sees
// it, and the guard tracks each body's framing so that it knows where the next head of a
// keep-alive connection starts.
//
// A rejected head never reaches net/http. In its place the guard hands net/http a short
// synthetic request whose path carries a per-process secret; the proxy's handler answers
// it with the status (400 or 431) and "Connection: close", so the answer is written in
// order after any response still in flight, and the connection ends. An HTTP/2 preface
// switches the connection to pass-through: HTTP/2 framing is checked by net/http's HTTP/2
// server. After a head that asks for an Upgrade the guard holds every further byte until
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
	stHold                          // after an Upgrade head: nothing is released
	stPassthrough                   // HTTP/2 or an established tunnel: everything is released
	stReject                        // the synthetic request, then EOF
	stBroken                        // malformed chunked framing: reads fail
)

// maxChunkLine bounds a chunk-size or trailer line, as net/http does.
const maxChunkLine = 4096

// guardBufSize is the pooled buffer each connection reads through while it has bytes the
// guard has not yet released. Heads up to the head limit grow it beyond this.
const guardBufSize = 4096

var guardBufs = sync.Pool{New: func() any { b := make([]byte, guardBufSize); return &b }}

// rejectSecret makes the synthetic rejection request impossible for a client to forge.
var rejectSecret = func() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}()

// rejectPrefix starts the path of a synthetic rejection request.
var rejectPrefix = "/.podmesh-reject/" + rejectSecret + "/"

// errBroken is returned by reads once chunked framing turned out malformed.
var errBroken = errors.New("proxy: malformed chunked request body")

// errHoldOverflow is returned when a client sends too much before its Upgrade is answered.
var errHoldOverflow = errors.New("proxy: data before the upgrade was answered")

// guardConn validates the HTTP/1.x requests read through it. Reads come from one goroutine
// at a time (net/http's connection reader serializes them), so the state needs no lock.
type guardConn struct {
	net.Conn
	maxHead, maxCount int

	bp        *[]byte // pooled buffer, nil when empty
	buf       []byte
	r, v, w   int // buf[r:v] validated, not yet read; buf[v:w] not yet validated
	state     guardState
	remain    int64      // body or chunk bytes left (stBody)
	afterBody guardState // the state after the current stBody run
	next      guardState // the state after the current message (stHead or stHold)
	scanned   int        // bytes of buf[v:] already searched for the end of the head
	trailers  int        // trailer lines so far
	heads     int        // heads released
	synthetic []byte
	onReject  func(reason string)
	rerr      error // a read error kept until the buffered bytes are consumed
}

func newGuardConn(c net.Conn, lim Limits, onReject func(reason string)) *guardConn {
	return &guardConn{Conn: c, maxHead: lim.MaxHeaderBytes, maxCount: lim.MaxHeaderCount, onReject: onReject}
}

// Passthrough releases every further byte unchecked; the handler calls it once it has
// hijacked the connection for a tunnel.
func (g *guardConn) Passthrough() {
	g.state = stPassthrough
	g.v = g.w
}

// CloseWrite half-closes the underlying connection, for tunnels.
func (g *guardConn) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return g.Conn.Close()
}

func (g *guardConn) Read(p []byte) (int, error) {
	for {
		if g.v > g.r {
			n := copy(p, g.buf[g.r:g.v])
			g.r += n
			g.releaseIfEmpty()
			return n, nil
		}
		switch g.state {
		case stReject:
			if len(g.synthetic) > 0 {
				n := copy(p, g.synthetic)
				g.synthetic = g.synthetic[n:]
				return n, nil
			}
			return 0, io.EOF
		case stBroken:
			return 0, errBroken
		case stPassthrough:
			return g.Conn.Read(p)
		case stBody:
			if g.w > g.v {
				n := min(int64(g.w-g.v), g.remain)
				g.v += int(n)
				g.bodyConsumed(n)
				continue
			}
			if g.rerr != nil {
				return 0, g.takeErr()
			}
			// Nothing buffered: read the body straight into the caller's buffer.
			if int64(len(p)) > g.remain {
				p = p[:g.remain]
			}
			n, err := g.Conn.Read(p)
			g.bodyConsumed(int64(n))
			return n, err
		}
		if g.advance() {
			continue
		}
		if g.rerr != nil {
			return 0, g.takeErr()
		}
		if err := g.fill(); err != nil {
			return 0, err
		}
	}
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
		g.v -= g.r
		g.r = 0
	}
	if g.w == len(g.buf) {
		limit := g.maxHead + 4
		if g.state != stHead {
			limit = maxChunkLine + 4
		}
		if g.state == stHold {
			limit = 64 << 10
		}
		if len(g.buf) >= limit {
			// advance would have rejected an over-long head or line already.
			return errHoldOverflow
		}
		nb := make([]byte, min(2*len(g.buf), limit))
		copy(nb, g.buf[:g.w])
		g.buf = nb // the pooled buffer goes back when the connection drains
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

// releaseIfEmpty returns the buffer to the pool when nothing is buffered, so that idle
// keep-alive connections hold no buffer.
func (g *guardConn) releaseIfEmpty() {
	if g.r != g.w || g.bp == nil {
		return
	}
	guardBufs.Put(g.bp) // bp is always the pooled 4 KiB buffer, even if buf grew past it
	g.bp, g.buf = nil, nil
	g.r, g.v, g.w = 0, 0, 0
}

// advance validates what it can of buf[v:w] and reports whether it made progress.
func (g *guardConn) advance() bool {
	data := g.buf[g.v:g.w]
	switch g.state {
	case stHead:
		// Search only what earlier calls have not, so that a head trickling in byte by
		// byte costs linear time.
		from := max(g.scanned-3, 0)
		end := bytes.Index(data[from:], []byte("\r\n\r\n"))
		if end < 0 {
			// A bare LF can never become part of a valid head; say so without waiting.
			for i := max(g.scanned, 0); i < len(data); i++ {
				if data[i] == '\n' && (i == 0 || data[i-1] != '\r') {
					g.reject(bad(reasonLineEnding))
					return true
				}
			}
			g.scanned = len(data)
			if len(data) > g.maxHead {
				g.reject(tooLarge(reasonHeadTooLarge))
				return true
			}
			return false
		}
		end += from
		g.scanned = 0
		head := data[:end+4]
		if len(head) > g.maxHead {
			g.reject(tooLarge(reasonHeadTooLarge))
			return true
		}
		info, err := validateHead(head, g.maxCount)
		if err != nil {
			var he *headError
			if !errors.As(err, &he) {
				he = bad(reasonRequestLine)
			}
			g.reject(he)
			return true
		}
		if info.h2Preface {
			if g.heads > 0 {
				g.reject(bad(reasonVersion))
				return true
			}
			g.Passthrough()
			return true
		}
		g.heads++
		g.v += len(head)
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
		return true
	case stChunkSize:
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if len(data) > maxChunkLine {
				g.state = stBroken
				return true
			}
			return false
		}
		size, ok := parseChunkLine(data[:i+1])
		if !ok {
			g.state = stBroken
			return true
		}
		g.v += i + 1
		if size == 0 {
			g.state = stTrailer
		} else {
			g.state, g.remain, g.afterBody = stBody, size, stChunkCRLF
		}
		return true
	case stChunkCRLF:
		if len(data) < 2 {
			return false
		}
		if data[0] != '\r' || data[1] != '\n' {
			g.state = stBroken
			return true
		}
		g.v += 2
		g.state = stChunkSize
		return true
	case stTrailer:
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if len(data) > maxChunkLine {
				g.state = stBroken
				return true
			}
			return false
		}
		line := data[:i+1]
		if len(line) < 2 || line[len(line)-2] != '\r' {
			g.state = stBroken
			return true
		}
		g.v += i + 1
		if len(line) == 2 {
			g.state = g.next
			return true
		}
		g.trailers++
		if g.trailers > g.maxCount || !validTrailerLine(line[:len(line)-2]) {
			g.state = stBroken
		}
		return true
	case stHold:
		// Keep reading so that net/http's background read can be aborted by a deadline,
		// but release nothing.
		return false
	}
	return false
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

// reject replaces the rest of the connection with the synthetic rejection request.
func (g *guardConn) reject(he *headError) {
	if g.onReject != nil {
		g.onReject(he.reason)
	}
	g.state = stReject
	g.synthetic = []byte("GET " + rejectPrefix + strconv.Itoa(he.status) + "/" + he.reason +
		" HTTP/1.1\r\nHost: podmesh\r\nConnection: close\r\n\r\n")
	g.v, g.w = g.r, g.r // drop what was buffered: none of it is ever released
	g.rerr = nil
	g.releaseIfEmpty()
}

// serveRejection answers a synthetic rejection request and reports whether r was one.
func serveRejection(w http.ResponseWriter, r *http.Request) bool {
	if r.ProtoMajor != 1 || !strings.HasPrefix(r.URL.Path, rejectPrefix) {
		return false
	}
	code, reason, _ := strings.Cut(r.URL.Path[len(rejectPrefix):], "/")
	status, err := strconv.Atoi(code)
	if err != nil || (status != http.StatusBadRequest && status != http.StatusRequestHeaderFieldsTooLarge) {
		status = http.StatusBadRequest
	}
	h := w.Header()
	h.Set("Connection", "close")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, strconv.Itoa(status)+" "+http.StatusText(status)+": "+reason+"\n")
	return true
}
