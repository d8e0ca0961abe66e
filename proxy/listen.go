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
	kindHTTP2TLS                 // HTTP/2 over TLS (ALPN h2): straight to net/http
)

// listener runs one accept loop: it enforces the connection limit, performs the TLS
// handshake when there is one, and hands each connection to net/http (through a channel
// listener) or to a TCP handler. It tracks TCP sessions and tunnels so that Shutdown can
// drain them.
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

	http   *http.Server
	httpLn *chanListener

	active atomic.Int64 // open accepted connections, for MaxConnections

	mu       sync.Mutex
	ln       net.Listener
	closing  bool
	sessions map[io.Closer]struct{} // TCP sessions and tunnels, for draining

	ctx    context.Context // cancelled when the drain deadline passes
	cancel context.CancelFunc
}

func newListener(ctx context.Context, dir, service string, lim Limits, m *serviceMetrics, logger *slog.Logger, h http.Handler) *listener {
	l := &listener{dir: dir, service: service, limits: lim, metrics: m, log: logger,
		sessions: map[io.Closer]struct{}{}}
	l.ctx, l.cancel = context.WithCancel(ctx)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	l.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		// The guard enforces the head limit first; net/http's own limit (which adds 4 KiB
		// of slack) only backs it up.
		MaxHeaderBytes: lim.MaxHeaderBytes,
		Protocols:      &protos,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: lim.MaxConcurrentStreams,
			// Detect dead peers on idle multiplexed connections.
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     10 * time.Second,
		},
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		// net/http fills Request.TLS only for a *tls.Conn; an HTTP/1.1 connection over TLS
		// reaches it wrapped in the guard, so its state travels in the context.
		ConnContext: tlsStateContext,
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				l.release()
			}
		},
	}
	l.httpLn = newChanListener()
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
	l.httpLn.addr = ln.Addr()
	l.mu.Unlock()

	httpDone := make(chan struct{})
	go func() {
		defer close(httpDone)
		_ = l.http.Serve(l.httpLn)
	}()
	defer func() { <-httpDone }()

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
			l.httpLn.Close()
			return err
		}
		tempDelay = 0
		if l.active.Load() >= int64(l.limits.MaxConnections) {
			l.metrics.overloaded[BreakerConnections].Inc()
			c.Close()
			continue
		}
		l.active.Add(1)
		l.metrics.conns.Inc()
		l.metrics.active.Inc()
		go l.handle(c)
	}
}

// release accounts for one closed connection.
func (l *listener) release() {
	l.active.Add(-1)
	l.metrics.active.Dec()
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
		l.httpLn.push(c)
	default:
		l.httpLn.push(newGuardConn(c, l.limits, l.metrics.reject))
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

func (l *listener) sessionCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sessions)
}

// shutdown stops accepting, lets HTTP requests, TCP sessions and tunnels finish, and when
// ctx ends closes whatever is left. It is idempotent.
func (l *listener) shutdown(ctx context.Context) error {
	l.mu.Lock()
	l.closing = true
	ln := l.ln
	l.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	// net/http drains its own connections (GOAWAY on HTTP/2, close when idle on
	// HTTP/1.1); sessions are polled the way http.Server.Shutdown polls.
	err := l.http.Shutdown(ctx)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for err == nil && l.sessionCount() > 0 {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
		}
	}
	if err != nil {
		// Past the deadline: cut what is left.
		l.cancel()
		_ = l.http.Close()
		l.mu.Lock()
		for c := range l.sessions {
			c.Close()
		}
		l.mu.Unlock()
	}
	l.cancel()
	return err
}

// chanListener is the net.Listener net/http serves: the accept loop pushes connections it
// has classified as HTTP into it.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr {
	if l.addr == nil {
		return &net.TCPAddr{}
	}
	return l.addr
}

// discardLogger returns a logger that drops everything, for components given none.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// tlsStateKey is the context key of the TLS state of a guarded HTTP/1.1 connection.
type tlsStateKey struct{}

func tlsStateContext(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(*guardConn); ok {
		if tc, ok := g.Conn.(*tls.Conn); ok {
			st := tc.ConnectionState()
			return context.WithValue(ctx, tlsStateKey{}, &st)
		}
	}
	return ctx
}

// requestTLS returns the TLS state of the connection a request came on, nil for plaintext.
func requestTLS(r *http.Request) *tls.ConnectionState {
	if r.TLS != nil {
		return r.TLS
	}
	st, _ := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState)
	return st
}
