package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
)

// readResponseFast parses the common response head of an app straight from br's buffer:
// "HTTP/1.1", a final status that allows a body, header fields that are plain
// "Name: value" lines, exactly one Content-Length, and no Transfer-Encoding, Connection
// Trailer or Pragma (which http.ReadResponse may complete with a Cache-Control) field,
// and no Connection field listing "close". The Response is what http.ReadResponse returns for such a head (the
// tests compare them), for a tenth of its allocations. ok is false, with nothing
// consumed, for anything else, which the caller leaves to http.ReadResponse: other
// versions, interim and bodiless statuses, HEAD, chunked or close-delimited bodies,
// obsolete line folding, bare LF line ends, invalid bytes, and a head not yet read whole.
// The body (Content-Length bytes) is left in br.
func readResponseFast(br *bufio.Reader, req *http.Request) (res *http.Response, ok bool) {
	if req.Method == http.MethodHead {
		return nil, false
	}
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		return nil, false
	}
	head := buf[:end+4]
	// The status line: "HTTP/1.1 NNN reason\r\n".
	eol := bytes.IndexByte(head, '\n')
	if eol < 13 || head[eol-1] != '\r' || string(head[:9]) != "HTTP/1.1 " ||
		!isDigit(head[9]) || !isDigit(head[10]) || !isDigit(head[11]) ||
		!(eol == 13 || head[12] == ' ' && validFieldValue(head[13:eol-1])) {
		return nil, false // (eol == 13: no reason phrase)
	}
	code := int(head[9]-'0')*100 + int(head[10]-'0')*10 + int(head[11]-'0')
	if code < 200 || code == http.StatusNoContent || code == http.StatusNotModified {
		return nil, false
	}
	// The fields: validated here, parsed by parseHeader.
	cl := int64(-1)
	for rest := head[eol+1:]; len(rest) > 2; {
		i := bytes.IndexByte(rest, '\n') // found: the head ends in CRLFCRLF
		if i < 1 || rest[i-1] != '\r' {
			return nil, false // a bare LF
		}
		line := rest[:i-1]
		rest = rest[i+1:]
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !validFieldValue(line[colon+1:]) {
			return nil, false // obs-fold (leading white space) fails here too
		}
		name := line[:colon]
		for _, c := range name {
			if !isTchar(c) {
				return nil, false
			}
		}
		switch {
		case asciiEqualFold(name, "content-length"):
			n, ok := parseContentLength(trimOWS(line[colon+1:]))
			if !ok || cl >= 0 {
				return nil, false
			}
			cl = n
		case asciiEqualFold(name, "connection"):
			// "keep-alive" and the like say nothing in HTTP/1.1; "close" is left to
			// http.ReadResponse (which drops the field and sets Close).
			if hasCloseToken(line[colon+1:]) {
				return nil, false
			}
		case asciiEqualFold(name, "transfer-encoding"), asciiEqualFold(name, "trailer"),
			asciiEqualFold(name, "pragma"):
			return nil, false
		}
	}
	if cl < 0 {
		return nil, false
	}
	s := string(head)
	status := s[9 : eol-1]
	if eol == 13 {
		status = s[9:12]
	}
	res = &http.Response{
		Status:        status,
		StatusCode:    code,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        parseHeader(s[eol+1:]),
		ContentLength: cl,
		Request:       req,
	}
	br.Discard(len(head))
	return res, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// validFieldValue reports whether a field value (or reason phrase) has only the bytes
// net/textproto accepts: no control characters but tab, no DEL.
func validFieldValue(v []byte) bool {
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// hasCloseToken reports whether a Connection value lists "close" (in any case).
func hasCloseToken(v []byte) bool {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte{','})
		if asciiEqualFold(bytes.Trim(t, " \t"), "close") {
			return true
		}
	}
	return false
}

// fixedBody is a response body of known length read from the connection's reader. A
// connection that ends before the last byte is io.ErrUnexpectedEOF, as in net/http.
type fixedBody struct {
	br *bufio.Reader
	n  int64 // bytes left
}

func (f *fixedBody) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > f.n {
		p = p[:f.n]
	}
	n, err := f.br.Read(p)
	f.n -= int64(n)
	switch {
	case f.n == 0:
		return n, io.EOF
	case err == io.EOF:
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func (f *fixedBody) Close() error { return nil }
