package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/podmesh/podmesh/tracing"
)

// InboundConfig configures the listener other sidecars call, in front of the local app.
type InboundConfig struct {
	Service  string   // the local service's name
	Protocol Protocol // what the app speaks; "" means TCP
	App      string   // the app's host:port, reachable only inside the pod
	// ConnectTimeout bounds a connection to the app (DefaultConnectTimeout when zero).
	ConnectTimeout time.Duration
	// MaxRequests bounds requests in flight to the app (DefaultMaxRequests when zero);
	// beyond it peers get a 503 they may retry elsewhere.
	MaxRequests int
	Limits      Limits
	Security    Security     // nil: plaintext, everyone allowed
	Metrics     *Metrics     // nil: private
	Log         *slog.Logger // nil: discard
	Pool        BufferPool   // nil: shared default
	// Tracer records a SERVER span per request, parented on the caller's trace context,
	// and passes that span's context to the app. Nil: no tracing.
	Tracer *tracing.Tracer
	// AccessLog gets one line per request. Nil: none.
	AccessLog *tracing.AccessLog
}

// Inbound forwards what peer sidecars send to the local app. HTTP services accept HTTP/2
// (multiplexed, from peers) and HTTP/1.1 (Upgrade tunnels), and reach the app over pooled
// keep-alive HTTP/1.1 (http) or h2c (http2, grpc). TCP services splice each connection to
// a new connection to the app.
//
// X-Forwarded-For: the inbound side appends the address of the calling peer (the caller's
// pod) to X-Forwarded-For, so the app can tell which pod called it; whatever the caller
// sent before is kept as is and is only as trustworthy as the caller. The outbound side
// adds nothing: its client is the app on loopback.
type Inbound struct {
	cfg      InboundConfig
	m        *serviceMetrics
	log      *slog.Logger
	dialer   dialer
	h1       *h1Client // http apps
	h2       *h2Pool   // http2 and grpc apps
	requests *gate
	ln       *listener
	obs      observer
	// authz: the Security decides per request (everything but plaintext, which allows all).
	authz bool
}

// NewInbound builds the inbound side. ctx bounds its background work; Shutdown drains.
func NewInbound(ctx context.Context, cfg InboundConfig) (*Inbound, error) {
	if cfg.App == "" {
		return nil, errors.New("proxy: inbound needs the app's address")
	}
	p, err := ParseProtocol(string(cfg.Protocol))
	if err != nil {
		return nil, err
	}
	cfg.Protocol = p
	cfg.Metrics = cfg.Metrics.orPrivate()
	if cfg.Log == nil {
		cfg.Log = discardLogger()
	}
	if cfg.Pool == nil {
		cfg.Pool = defaultPool
	}
	if cfg.Security == nil {
		cfg.Security = plaintext{}
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = DefaultMaxRequests
	}
	cfg.Limits = cfg.Limits.withDefaults()
	in := &Inbound{
		cfg:      cfg,
		m:        cfg.Metrics.service(DirInbound, cfg.Service, cfg.Service),
		obs:      newObserver(cfg.Tracer, cfg.AccessLog),
		log:      cfg.Log.With("inbound", cfg.Service),
		dialer:   dialer{timeout: cfg.ConnectTimeout}, // the app is plaintext inside the pod
		requests: newGate(cfg.MaxRequests),
	}
	appDial := func(ctx context.Context, addr string) (net.Conn, error) { return in.dialer.dial(ctx, addr, "") }
	if p.appH2() {
		in.h2 = newH2Pool(ctx, 2, false, appDial, nil)
	} else {
		in.h1 = newH1Client(cfg.App, appDial)
	}
	in.ln = newListener(ctx, DirInbound, cfg.Service, cfg.Limits, in.m, in.log, in)
	in.ln.serverTLS = cfg.Security.ServerTLS
	in.ln.authorize = cfg.Security.Authorize
	if _, ok := cfg.Security.(HandshakeObserver); ok {
		in.ln.handshakeDone = func(err error) { observeHandshake(cfg.Security, DirInbound, cfg.Service, err) }
	}
	_, plain := cfg.Security.(plaintext)
	in.authz = !plain
	in.ln.classify = func(alpn string) connKind {
		switch alpn {
		case ALPNTCP:
			return kindTCP
		case ALPNHTTP2:
			return kindHTTP2TLS
		case ALPNHTTP1:
			return kindHTTP
		}
		if cfg.Protocol.IsHTTP() {
			return kindHTTP
		}
		return kindTCP
	}
	in.ln.handleTCP = in.serveTCP
	return in, nil
}

// Serve accepts peers' connections on ln until Shutdown.
func (in *Inbound) Serve(ln net.Listener) error { return in.ln.serve(ln) }

// Shutdown stops accepting (HTTP/2 peers get a GOAWAY and retry elsewhere), lets requests
// and sessions in flight finish until ctx ends, then closes everything.
func (in *Inbound) Shutdown(ctx context.Context) error {
	err := in.ln.shutdown(ctx)
	if in.h1 != nil {
		in.h1.closeIdle(true)
	}
	if in.h2 != nil {
		in.h2.close()
	}
	return err
}

// ServeHTTP forwards one request from a peer to the app.
func (in *Inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	cs := r.TLS
	source := peerService(in.cfg.Security, cs)
	pm := in.m.from(source)
	pm.active.Inc()
	var span tracing.Span
	if in.obs.on {
		var ctx context.Context
		ctx, span = in.obs.tr.StartInbound(r.Context(), r, source)
		r = r.WithContext(ctx)
		in.obs.tr.Inject(ctx, r.Header) // the app continues the trace under this span
	}
	x := exchange{upstream: in.cfg.App, attempts: 1}
	// Deferred, so that a request whose stream is aborted (a panic) is counted too.
	defer in.obs.finish(r.Context(), pm, span, DirInbound, r, &x, start)
	if r.ContentLength >= 0 {
		x.reqBytes = r.ContentLength
	} else if r.Body != nil && r.Body != http.NoBody {
		x.bodyCount = &countingBody{ReadCloser: r.Body}
		r.Body = x.bodyCount
	}
	if ok, reason := in.authorize(r, cs); !ok {
		writeDenied(w, in.cfg.Service, reason)
		x.code, x.reqBytes, x.bodyCount = http.StatusForbidden, 0, nil
	} else {
		x.code = in.serveHTTP(w, r, &x)
	}
	if x.abort || x.code == StatusClientClosed {
		// Headers are gone, or the request was cancelled (the peer went, or the drain
		// deadline passed) with nothing written: abort the stream, never an empty 200.
		panic(http.ErrAbortHandler)
	}
}

// authorize asks the Security whether the peer may call the app (everyone may, plaintext).
func (in *Inbound) authorize(r *http.Request, cs *tls.ConnectionState) (bool, string) {
	if !in.authz {
		return true, ""
	}
	return in.cfg.Security.Authorize(r.Context(), Peer{TLS: cs, RemoteAddr: r.RemoteAddr})
}

// writeDenied answers a request the Security did not authorize: 403, the reason in
// HeaderDenied, and a short body. The peer sidecar passes it on to its app as is.
func writeDenied(w http.ResponseWriter, service, reason string) {
	h := w.Header()
	h.Set(HeaderDenied, reason)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusForbidden)
	_, _ = io.WriteString(w, "403 Forbidden: podmesh: not authorized to call "+service+": "+reason+"\n")
}

func (in *Inbound) serveHTTP(w http.ResponseWriter, r *http.Request, x *exchange) int {
	if r.ProtoMajor >= 2 && len(r.Header) > in.cfg.Limits.MaxHeaderCount {
		writeError(w, http.StatusRequestHeaderFieldsTooLarge, nil)
		return http.StatusRequestHeaderFieldsTooLarge
	}
	if proto := upgradeType(r.Header); proto != "" && r.ProtoMajor == 1 {
		return in.serveUpgrade(w, r, proto)
	}
	if !in.requests.tryAcquire() {
		in.m.from(peerService(in.cfg.Security, r.TLS)).breakers[BreakerRequests].Inc()
		w.Header().Set(headerNotProcessed, "1")
		writeError(w, http.StatusServiceUnavailable, OverloadedError{Breaker: BreakerRequests})
		return http.StatusServiceUnavailable
	}
	defer in.requests.release()

	removeHopByHop(r.Header, true)
	appendForwardedFor(r.Header, r.RemoteAddr)
	// The request is the proxy's own (its HTTP/2 or HTTP/1 server made it, and only the
	// method, path and protocol are looked at once this returns): it goes on as it is,
	// with a URL of its own.
	out := r
	url := *r.URL
	url.Scheme = "http"
	url.Host = in.cfg.App
	out.URL = &url
	out.RequestURI = ""
	out.Close = false

	var res *http.Response
	var err error
	if in.h2 != nil {
		res, err = in.h2.roundTrip(out, in.cfg.App)
	} else {
		res, err = in.h1.roundTrip(out)
	}
	if err != nil {
		code := statusFor(err, r.Context())
		if isDialError(err) {
			// The app never saw it: the caller may retry elsewhere whatever the method.
			w.Header().Set(headerNotProcessed, "1")
		}
		writeError(w, code, err)
		x.err = err
		return code
	}
	// These headers speak for the sidecars; an app does not get to set them.
	res.Header.Del(headerNotProcessed)
	res.Header.Del(HeaderOverloaded)
	res.Header.Del(HeaderDenied)
	n, rerr, werr := writeResponse(w, res, in.cfg.Pool)
	x.respBytes, x.grpc = n, grpcStatus(res)
	if rerr != nil || werr != nil {
		x.abort, x.err = true, errors.Join(rerr, werr)
	}
	return res.StatusCode
}

// appendForwardedFor adds the peer's address to X-Forwarded-For.
func appendForwardedFor(h http.Header, remoteAddr string) {
	ip := hostOf(remoteAddr)
	if ip == "" {
		return
	}
	if prior := h["X-Forwarded-For"]; len(prior) > 0 {
		joined := prior[0]
		for _, p := range prior[1:] {
			joined += ", " + p
		}
		ip = joined + ", " + ip
	}
	h["X-Forwarded-For"] = []string{ip}
}

func (in *Inbound) serveUpgrade(w http.ResponseWriter, r *http.Request, proto string) int {
	appendForwardedFor(r.Header, r.RemoteAddr)
	conn, err := in.dialer.dial(r.Context(), in.cfg.App, "")
	if err == nil {
		var code int
		code, err = tunnel(w, r, conn, proto, in.cfg.Pool, in.ln.track)
		if err == nil {
			return code
		}
	}
	w.Header().Set("Connection", "close")
	if isDialError(err) {
		w.Header().Set(headerNotProcessed, "1")
	}
	code := statusFor(err, r.Context())
	writeError(w, code, err)
	return code
}

// serveTCP splices one peer connection to a new connection to the app.
func (in *Inbound) serveTCP(ctx context.Context, c net.Conn) {
	defer c.Close()
	pm := in.m.from(peerService(in.cfg.Security, connTLS(c)))
	pm.tcpOpened.Inc()
	var sent, received int64
	defer func() { pm.tcpDone(sent, received) }()
	ac, err := in.dialer.dial(ctx, in.cfg.App, "")
	if err != nil {
		in.log.Debug("tcp: app unreachable", "err", err)
		return
	}
	done, ok := in.ln.track(ac)
	if ok {
		sent, received = pipe(c, ac, in.cfg.Pool)
		done()
	}
	ac.Close()
}

var _ http.Handler = (*Inbound)(nil)
