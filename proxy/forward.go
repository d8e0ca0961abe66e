package proxy

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

// reqBody hands a request's body to successive attempts. A body of known length up to the
// replay limit is read whole before the first attempt and replayed from memory; any other
// body streams, and a retry is allowed only if no attempt has read a byte of it.
type reqBody struct {
	src      io.ReadCloser
	data     []byte // the whole body when buffered
	buffered bool
	empty    bool
	cur      *streamBody
	read     atomic.Int64 // bytes the attempts read from a streamed body
}

// newReqBody prepares r's body. Reading a buffered body can fail when the client does;
// the error is returned as is.
func newReqBody(r *http.Request, limit int) (*reqBody, error) {
	b := &reqBody{src: r.Body}
	switch {
	case r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0:
		b.empty = true
	case r.ContentLength > 0 && r.ContentLength <= int64(limit):
		b.data = make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, b.data); err != nil {
			return nil, err
		}
		b.buffered = true
	}
	return b, nil
}

// attempt returns the body for the next attempt.
func (b *reqBody) attempt() io.ReadCloser {
	switch {
	case b.empty:
		return http.NoBody
	case b.buffered:
		return &bytesBody{data: b.data}
	}
	b.cur = &streamBody{src: b.src, n: &b.read}
	return b.cur
}

// bytesRead returns the body bytes read from the client so far.
func (b *reqBody) bytesRead() int64 {
	if b.buffered {
		return int64(len(b.data))
	}
	return b.read.Load()
}

// rewind reports whether another attempt may send the body again, and if so makes sure
// the previous attempt can no longer read from the source.
func (b *reqBody) rewind() bool {
	if b.empty || b.buffered || b.cur == nil {
		return true
	}
	return b.cur.claim()
}

// close closes the client's body.
func (b *reqBody) close() {
	if b.src != nil {
		b.src.Close()
	}
}

// bytesBody replays a buffered body. Close is a no-op: transports close bodies, possibly
// after a retry has started, and the data is shared by every attempt.
type bytesBody struct {
	data []byte
	off  int
}

func (b *bytesBody) Read(p []byte) (int, error) {
	if b.off >= len(b.data) {
		return 0, io.EOF
	}
	n := copy(p, b.data[b.off:])
	b.off += n
	return n, nil
}

func (b *bytesBody) Close() error { return nil }

// streamBody passes one attempt's reads to the client's body and remembers whether any
// happened. Once claimed by a retry it refuses further reads, so that a transport still
// finishing the failed attempt cannot steal bytes from the next one.
type streamBody struct {
	src     io.Reader
	n       *atomic.Int64 // counts the bytes read, for metrics
	mu      sync.Mutex
	read    bool
	reading bool
	dead    bool
}

var errAttemptOver = errors.New("proxy: request body of a finished attempt")

func (s *streamBody) Read(p []byte) (int, error) {
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return 0, errAttemptOver
	}
	s.reading = true
	s.mu.Unlock()
	n, err := s.src.Read(p)
	s.n.Add(int64(n))
	s.mu.Lock()
	s.reading = false
	if n > 0 || err != nil {
		s.read = true
	}
	s.mu.Unlock()
	return n, err
}

func (s *streamBody) Close() error { return nil }

// claim ends this attempt's access to the body if it never read from it.
func (s *streamBody) claim() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.read || s.reading {
		return false
	}
	s.dead = true
	return true
}

// writeResponse sends res to w: headers without hop-by-hop fields, the status, the body
// (flushed at every write when the response streams) and the trailers. It closes
// res.Body. An error means the response was cut short after the status went out; the
// caller must abort the client's stream. n is the body bytes written.
func writeResponse(w http.ResponseWriter, res *http.Response, pool BufferPool) (n int64, rerr, werr error) {
	h := w.Header()
	copyResponseHeader(h, res.Header)
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	w.WriteHeader(res.StatusCode)
	n, rerr, werr = copyBody(w, res.Body, pool, streaming(res))
	res.Body.Close() // populates res.Trailer
	if rerr != nil || werr != nil {
		return n, rerr, werr
	}
	if len(res.Trailer) > 0 {
		// Flush so that net/http chunks the response instead of computing a length.
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		if len(res.Trailer) == announced {
			for k, vv := range res.Trailer {
				h[k] = vv
			}
		} else {
			for k, vv := range res.Trailer {
				h[http.TrailerPrefix+k] = vv
			}
		}
	}
	return n, nil, nil
}

// streaming reports whether a response must be flushed at every write: unknown length
// (gRPC, chunked streams) or server-sent events.
func streaming(res *http.Response) bool {
	if res.ContentLength == -1 {
		return true
	}
	ct := res.Header["Content-Type"]
	if len(ct) == 0 || !strings.HasPrefix(ct[0], "text/event-stream") {
		return false
	}
	mt, _, _ := mime.ParseMediaType(ct[0])
	return mt == "text/event-stream"
}

// writeError answers a request that failed before any response was forwarded.
func writeError(w http.ResponseWriter, status int, err error) {
	if status == StatusClientClosed {
		return // nobody to tell
	}
	h := w.Header()
	var oe OverloadedError
	if errors.As(err, &oe) {
		h.Set(HeaderOverloaded, oe.Breaker)
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, http.StatusText(status)+"\n")
}
