package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"time"
)

// pipe copies a→b and b→a until both directions end. When one direction reaches EOF its
// destination is half-closed (CloseWrite), so a client that shuts down its sending side
// still receives the rest of the answer. An error in either direction closes both
// connections. pipe does not close a or b on a clean end; the caller does. It returns the
// bytes copied each way.
func pipe(a, b net.Conn, pool BufferPool) (aToB, bToA int64) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		aToB = copyHalf(b, a, pool)
	}()
	bToA = copyHalf(a, b, pool)
	<-done
	return aToB, bToA
}

// copyHalf copies src to dst, then half-closes dst; on error it closes both. It returns
// the bytes copied.
func copyHalf(dst, src net.Conn, pool BufferPool) int64 {
	var err error
	var n int64
	d, dOK := tcpConn(dst)
	s, sOK := tcpConn(src)
	if dOK && sOK {
		n, err = d.ReadFrom(s) // splice(2): no copy through user space
	} else {
		bp := pool.Get()
		n, err = io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
		pool.Put(bp)
	}
	if err != nil {
		dst.Close()
		src.Close()
		return n
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return n
		}
	}
	dst.Close()
	return n
}

// writerOnly and readerOnly hide ReadFrom/WriteTo so that io.CopyBuffer uses the pooled
// buffer instead of allocating its own.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// dialer makes connections to peers and apps with a connect timeout and, when Security
// provides one, TLS with the given ALPN protocol.
type dialer struct {
	timeout time.Duration
	sec     Security
	service string // whose identity the TLS client expects
}

// dial connects to addr. Any failure, TCP or TLS, is a DialError: nothing was sent.
func (d dialer) dial(ctx context.Context, addr, alpn string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	nd := net.Dialer{KeepAlive: 30 * time.Second}
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, DialError{Addr: addr, Err: err}
	}
	c = newSysConn(c)
	if d.sec == nil {
		return c, nil
	}
	cfg := clientTLS(d.sec, d.service, alpn)
	if cfg == nil {
		return c, nil
	}
	tc := tls.Client(c, cfg)
	err = tc.HandshakeContext(ctx)
	if err == nil {
		if got := tc.ConnectionState().NegotiatedProtocol; got != alpn {
			err = fmt.Errorf("%w: peer negotiated ALPN %q, want %q", ErrALPN, got, alpn)
		}
	}
	observeHandshake(d.sec, DirOutbound, d.service, err)
	if err != nil {
		c.Close()
		return nil, DialError{Addr: addr, Err: fmt.Errorf("tls handshake: %w", err)}
	}
	return tc, nil
}
