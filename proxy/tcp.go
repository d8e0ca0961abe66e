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
// connections. pipe does not close a or b on a clean end; the caller does.
func pipe(a, b net.Conn, pool BufferPool) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(b, a, pool)
	}()
	copyHalf(a, b, pool)
	<-done
}

// copyHalf copies src to dst, then half-closes dst; on error it closes both.
func copyHalf(dst, src net.Conn, pool BufferPool) {
	var err error
	d, dOK := dst.(*net.TCPConn)
	_, sOK := src.(*net.TCPConn)
	if dOK && sOK {
		_, err = d.ReadFrom(src) // splice(2): no copy through user space
	} else {
		bp := pool.Get()
		_, err = io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
		pool.Put(bp)
	}
	if err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	dst.Close()
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
