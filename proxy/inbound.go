package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
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
		m:        cfg.Metrics.service(DirInbound, cfg.Service),
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
	if in.authz {
		if ok, reason := in.cfg.Security.Authorize(r.Context(), Peer{TLS: r.TLS, RemoteAddr: r.RemoteAddr}); !ok {
			writeDenied(w, in.cfg.Service, reason)
			in.m.request(http.StatusForbidden, start)
			return
		}
	}
	code := in.serveHTTP(w, r)
	in.m.request(code, start)
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

func (in *Inbound) serveHTTP(w http.ResponseWriter, r *http.Request) int {
	if r.ProtoMajor >= 2 && len(r.Header) > in.cfg.Limits.MaxHeaderCount {
		writeError(w, http.StatusRequestHeaderFieldsTooLarge, nil)
		return http.StatusRequestHeaderFieldsTooLarge
	}
	if proto := upgradeType(r.Header); proto != "" && r.ProtoMajor == 1 {
		return in.serveUpgrade(w, r, proto)
	}
	if !in.requests.tryAcquire() {
		in.m.overloaded[BreakerRequests].Inc()
		w.Header().Set(headerNotProcessed, "1")
		writeError(w, http.StatusServiceUnavailable, OverloadedError{Breaker: BreakerRequests})
		return http.StatusServiceUnavailable
	}
	defer in.requests.release()

	removeHopByHop(r.Header, true)
	appendForwardedFor(r.Header, r.RemoteAddr)
	out := r.WithContext(r.Context())
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
		return code
	}
	// These headers speak for the sidecars; an app does not get to set them.
	res.Header.Del(headerNotProcessed)
	res.Header.Del(HeaderOverloaded)
	res.Header.Del(HeaderDenied)
	rerr, werr := writeResponse(w, res, in.cfg.Pool)
	if rerr != nil || werr != nil {
		panic(http.ErrAbortHandler)
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
	ac, err := in.dialer.dial(ctx, in.cfg.App, "")
	if err != nil {
		in.log.Debug("tcp: app unreachable", "err", err)
		return
	}
	done, ok := in.ln.track(ac)
	if ok {
		pipe(c, ac, in.cfg.Pool)
		done()
	}
	ac.Close()
}

var _ http.Handler = (*Inbound)(nil)
