package proxy

import (
	"io"
	"net/http"
	"sync"
)

// BufferPool supplies the buffers that bodies and tunnels are copied through, as in
// net/http/httputil.ReverseProxy.
type BufferPool interface {
	Get() *[]byte
	Put(*[]byte)
}

// copyBufferSize is the size of pooled copy buffers. 32 KiB matches io.Copy and
// ReverseProxy; HTTP/2 DATA frames are at most 16 KiB by default, so one read rarely fills
// it, but HTTP/1 bodies from the app do.
const copyBufferSize = 32 << 10

// defaultPool holds *[]byte rather than []byte so that Put does not allocate a slice
// header (see Caddy's streamingBufPool comment).
type syncBufferPool struct{ p sync.Pool }

func (s *syncBufferPool) Get() *[]byte {
	if b, ok := s.p.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, copyBufferSize)
	return &b
}

func (s *syncBufferPool) Put(b *[]byte) {
	if cap(*b) != copyBufferSize {
		return
	}
	s.p.Put(b)
}

var defaultPool BufferPool = &syncBufferPool{}

// copyBody copies src to dst through a pooled buffer. With flush set, every write is
// flushed at once (streaming responses: gRPC, server-sent events, unknown length). It
// stops at the first error, reported as a read error (src) or a write error (dst); a clean
// EOF is no error.
func copyBody(dst io.Writer, src io.Reader, pool BufferPool, flush bool) (n int64, rerr, werr error) {
	bp := pool.Get()
	defer pool.Put(bp)
	buf := *bp
	var flusher http.Flusher
	if flush {
		flusher, _ = dst.(http.Flusher)
	}
	for {
		nr, err := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, nil, werr
			}
			if nw != nr {
				return n, nil, io.ErrShortWrite
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err != nil {
			if err == io.EOF {
				return n, nil, nil
			}
			return n, err, nil
		}
	}
}
