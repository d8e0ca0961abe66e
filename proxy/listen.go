package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// connKind is how a listener handles an accepted connection.
type connKind uint8

const (
	kindHTTP     connKind = iota // HTTP/1.1 (guarded) or HTTP/2 prior knowledge
	kindTCP                      // raw TCP
	kindHTTP2TLS                 // HTTP/2 over TLS (ALPN h2): straight to the HTTP/2 server
)

// listener runs one accept loop: it enforces the connection limit, performs the TLS
// handshake when there is one, and serves each connection: HTTP/1.x and HTTP/2 with the
// proxy's own servers (h1server.go, h2server.go), raw TCP with a TCP handler. It tracks
// connections, TCP sessions and tunnels so that Shutdown can drain them.
//
// At the connection limit an idle keep-alive HTTP/1 connection is closed to make room
// (clients retry a request that meets a closed idle connection); when none is idle,
// accepting pauses until a connection ends, and new connections wait in the kernel's
// accept queue. Closing new connections instead would make every burst of connections a
// burst of errors.
type listener struct {
	dir, service string
	limits       Limits
	metrics      *serviceMetrics
	log          *slog.Logger

	// classify decides per connection; for TLS connections it sees the negotiated ALPN
	// protocol, for plaintext ones "".
	classify  func(alpn string) connKind
	handleTCP func(ctx context.Context, c net.Conn)
	serverTLS func() *tls.Config
	// authorize is asked about raw TCP connections, right after the handshake; HTTP
	// connections are authorized per request by the handler.
	authorize func(ctx context.Context, p Peer) (bool, string)
	// handshakeDone, when set, is told the outcome of every TLS handshake.
	handshakeDone func(err error)

	handler http.Handler

	active    atomic.Int64  // open accepted connections, for MaxConnections
	evicting  atomic.Int64  // idle connections closed for the limit, not yet released
	slotFreed chan struct{} // a connection ended or became idle (capacity 1)
	stopping  atomic.Bool   // Shutdown began
	stopped   chan struct{} // closed by Shutdown: the accept loop ends

	mu       sync.Mutex
	ln       net.Listener
	closing  bool
	sessions map[io.Closer]struct{} // TCP sessions and tunnels, for draining
	h1       map[*h1Conn]struct{}   // HTTP/1 connections
	h2       map[*h2Conn]struct{}   // HTTP/2 connections

	ctx    context.Context // cancelled when the drain deadline passes
	cancel context.CancelFunc
}

func newListener(ctx context.Context, dir, service string, lim Limits, m *serviceMetrics, logger *slog.Logger, h http.Handler) *listener {
	l := &listener{dir: dir, service: service, limits: lim, metrics: m, log: logger, handler: h,
		sessions: map[io.Closer]struct{}{}, h1: map[*h1Conn]struct{}{}, h2: map[*h2Conn]struct{}{},
		slotFreed: make(chan struct{}, 1), stopped: make(chan struct{})}
	l.ctx, l.cancel = context.WithCancel(ctx)
	return l
}

// serve accepts until the listener is closed. It returns nil after Shutdown.
func (l *listener) serve(ln net.Listener) error {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		ln.Close()
		return net.ErrClosed
	}
	l.ln = ln
	l.mu.Unlock()

	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			l.mu.Lock()
			closing := l.closing
			l.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				l.log.Warn("accept", "listener", ln.Addr().String(), "err", err, "retry_in", tempDelay)
				t := time.NewTimer(tempDelay)
				<-t.C
				continue
			}
			return err
		}
		tempDelay = 0
		if !l.awaitSlot() {
			c.Close()
			return nil
		}
		l.active.Add(1)
		l.metrics.conns.Inc()
		l.metrics.active.Inc()
		go l.handle(newSysConn(c))
	}
}

// awaitSlot returns once the listener may take the connection it has just accepted:
// below the limit, after closing an idle HTTP/1 connection if need be. Meanwhile further
// connections wait in the kernel's accept queue. It returns false when Shutdown began.
func (l *listener) awaitSlot() bool {
	counted := false
	for l.active.Load() >= int64(l.limits.MaxConnections) {
		if !counted {
			l.metrics.overloaded[BreakerConnections].Inc()
			counted = true
		}
		if l.active.Load()-l.evicting.Load() >= int64(l.limits.MaxConnections) {
			l.evicting.Add(int64(l.closeIdle(1)))
		}
		select {
		case <-l.slotFreed:
		case <-l.stopped:
			return false
		}
	}
	return !l.stopping.Load()
}

// release accounts for one closed connection.
func (l *listener) release() {
	if l.active.Add(-1) < int64(l.limits.MaxConnections) {
		l.wake()
	}
	l.metrics.active.Dec()
}

// wake tells an accept loop waiting in awaitSlot to look again.
func (l *listener) wake() {
	select {
	case l.slotFreed <- struct{}{}:
	default:
	}
}

// addH1 registers an HTTP/1 connection; false when the listener is shutting down.
func (l *listener) addH1(c *h1Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	l.h1[c] = struct{}{}
	return true
}

func (l *listener) removeH1(c *h1Conn) {
	l.mu.Lock()
	delete(l.h1, c)
	l.mu.Unlock()
}

// closeIdle closes HTTP/1 connections waiting for their next request: with n >= 0 the
// n that have been idle longest (clients reuse their most recent connection first, so
// those are the ones they need least), with n < 0 all of them and the connections that
// have not sent a request yet. It reports how many it closed.
func (l *listener) closeIdle(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n < 0 {
		closed := 0
		for c := range l.h1 {
			if c.state.CompareAndSwap(connIdle, connClosed) || c.state.CompareAndSwap(connNew, connClosed) {
				c.g.Conn.Close()
				closed++
			}
		}
		return closed
	}
	closed := 0
	for ; closed < n; closed++ {
		var oldest *h1Conn
		for c := range l.h1 {
			if c.state.Load() == connIdle && (oldest == nil || c.since.Load() < oldest.since.Load()) {
				oldest = c
			}
		}
		if oldest == nil || !oldest.state.CompareAndSwap(connIdle, connEvicted) {
			break
		}
		oldest.g.Conn.Close()
	}
	return closed
}

// addH2 registers an HTTP/2 connection; false when the listener is shutting down.
func (l *listener) addH2(c *h2Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	l.h2[c] = struct{}{}
	return true
}

func (l *listener) removeH2(c *h2Conn) {
	l.mu.Lock()
	delete(l.h2, c)
	l.mu.Unlock()
}

// shutdownH2 starts the graceful close of every HTTP/2 connection (GOAWAY).
func (l *listener) shutdownH2() {
	l.mu.Lock()
	conns := make([]*h2Conn, 0, len(l.h2))
	for c := range l.h2 {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.shutdown()
	}
}

func (l *listener) connCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.h1) + len(l.h2) + len(l.sessions)
}

func (l *listener) handle(c net.Conn) {
	alpn := ""
	var peer = Peer{Addr: c.RemoteAddr()}
	if l.serverTLS != nil {
		if cfg := l.serverTLS(); cfg != nil {
			cfg = cfg.Clone()
			if len(cfg.NextProtos) == 0 {
				cfg.NextProtos = []string{ALPNHTTP2, ALPNHTTP1, ALPNTCP}
			}
			cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS13)
			tc := tls.Server(c, cfg)
			ctx, cancel := context.WithTimeout(l.ctx, l.limits.ReadHeaderTimeout)
			err := tc.HandshakeContext(ctx)
			cancel()
			if l.handshakeDone != nil {
				l.handshakeDone(err)
			}
			if err != nil {
				l.log.Debug("tls handshake", "peer", peer.Addr.String(), "err", err)
				tc.Close()
				l.release()
				return
			}
			st := tc.ConnectionState()
			peer.TLS = &st
			alpn = st.NegotiatedProtocol
			c = tc
		}
	}
	kind := l.classify(alpn)
	if kind == kindTCP && l.authorize != nil {
		if ok, reason := l.authorize(l.ctx, peer); !ok {
			// A raw TCP peer cannot be told why: the connection ends right after the
			// handshake. The Security counts and logs the decision.
			l.log.Debug("peer not authorized", "peer", peer.Addr.String(), "reason", reason)
			c.Close()
			l.release()
			return
		}
	}
	switch kind {
	case kindTCP:
		done, ok := l.track(c)
		if !ok {
			c.Close()
			l.release()
			return
		}
		l.handleTCP(l.ctx, c)
		done()
		l.release()
	case kindHTTP2TLS:
		l.serveHTTP2(c, peer.TLS)
	default:
		l.serveHTTP1(newGuardConn(c, l.limits, l.metrics.reject))
	}
}

// track registers a long-lived connection (TCP session or tunnel) for draining. It
// returns false when the listener is already shutting down past its deadline.
func (l *listener) track(c io.Closer) (done func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil {
		return nil, false
	}
	l.sessions[c] = struct{}{}
	return func() {
		l.mu.Lock()
		delete(l.sessions, c)
		l.mu.Unlock()
	}, true
}

// shutdown stops accepting, lets HTTP requests, TCP sessions and tunnels finish, and when
// ctx ends closes whatever is left. It is idempotent.
func (l *listener) shutdown(ctx context.Context) error {
	l.mu.Lock()
	first := !l.closing
	l.closing = true
	ln := l.ln
	l.mu.Unlock()
	l.stopping.Store(true)
	if first {
		close(l.stopped)
	}
	if ln != nil {
		ln.Close()
	}
	// HTTP/1 connections close once idle: those idle now at once, busy ones after their
	// response (which says "Connection: close"). HTTP/2 connections get a GOAWAY and close
	// after their last stream. Everything is polled the way http.Server.Shutdown polls.
	l.closeIdle(-1)
	l.shutdownH2()
	var err error
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for err == nil && l.connCount() > 0 {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
			l.closeIdle(-1)
		}
	}
	if err != nil {
		// Past the deadline: cut what is left.
		l.cancel()
		l.mu.Lock()
		for c := range l.h2 {
			c.conn.Close()
		}
		for c := range l.sessions {
			c.Close()
		}
		for c := range l.h1 {
			c.state.Store(connClosed)
			c.g.Conn.Close()
		}
		l.mu.Unlock()
	}
	l.cancel()
	return err
}

// discardLogger returns a logger that drops everything, for components given none.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
