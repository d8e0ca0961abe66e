package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podmesh/podmesh/lb"
	"github.com/podmesh/podmesh/tracing"
)

// Balancer is what an Upstream needs from the load balancer: *lb.Balancer implements it.
// A balancer that also has Stats() lb.Stats shows up in metrics and /config.
type Balancer interface {
	Update(eps []lb.Endpoint)
	Pick(info lb.PickInfo) (*lb.Host, error)
	Changed() <-chan struct{}
}

// statser is the optional capability of reporting balancer state.
type statser interface{ Stats() lb.Stats }

// UpstreamConfig configures one upstream: a local listener the app calls, and the
// instances of the service behind it.
type UpstreamConfig struct {
	Name string // the upstream service's registry name
	// Protocol overrides the instances' meta "protocol". Empty: use the meta of the
	// instances discovery reports; when they have none, TCP (Consul's default).
	Protocol Protocol
	Policy   Policy
	Limits   Limits // the local listener's
	Balancer Balancer
	Security Security     // nil: plaintext
	Metrics  *Metrics     // nil: private
	Log      *slog.Logger // nil: discard
	Pool     BufferPool   // nil: a shared sync.Pool of 32 KiB buffers
	// Source is the local service, the source of metrics and spans ("" when the sidecar
	// has none: UnknownSource).
	Source string
	// Tracer records a SERVER span per request from the app and a CLIENT span per attempt
	// under it, whose context goes to the peer. Nil: no tracing (the app's own trace
	// headers pass through).
	Tracer *tracing.Tracer
	// AccessLog gets one line per request. Nil: none.
	AccessLog *tracing.AccessLog
}

// Upstream is the outbound side for one upstream service: the app connects to its local
// listener; HTTP requests go to a picked instance's sidecar over multiplexed HTTP/2, TCP
// connections over their own connection. It implements the discovery listener interface
// (Update), passing endpoints on to its Balancer.
type Upstream struct {
	name   string
	cfg    UpstreamConfig
	pol    Policy // with defaults, Timeout excepted (it depends on the protocol)
	bal    Balancer
	m      *serviceMetrics
	log    *slog.Logger
	pool   BufferPool
	dialer dialer
	obs    observer

	proto     atomic.Pointer[Protocol] // from meta, when not configured
	known     chan struct{}            // closed at the first Update
	knownOnce sync.Once

	h2       *h2Pool
	conns    *gate // max_connections: HTTP/2 connections plus TCP sessions
	pending  *gate // max_pending_requests
	requests *gate // max_requests
	retries  atomic.Int64

	hashKey string // canonical header name for HashHeader

	ln *listener

	// roundTrip, when set, replaces the HTTP/2 pool: tests measure the proxy's own
	// per-request work with it.
	roundTrip func(*http.Request) (*http.Response, error)
}

func noCancel() {}

// NewUpstream builds an upstream. ctx bounds its background work (connection dials,
// closing connections to departed instances); cancelling it cuts connections, while
// Shutdown drains them.
func NewUpstream(ctx context.Context, cfg UpstreamConfig) (*Upstream, error) {
	if cfg.Name == "" {
		return nil, errors.New("proxy: upstream needs a name")
	}
	if cfg.Balancer == nil {
		return nil, errors.New("proxy: upstream " + cfg.Name + " needs a balancer")
	}
	if cfg.Protocol != "" {
		if _, err := ParseProtocol(string(cfg.Protocol)); err != nil {
			return nil, err
		}
	}
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
	cfg.Limits = cfg.Limits.withDefaults()
	pol := cfg.Policy.withDefaults(HTTP)
	pol.Timeout = cfg.Policy.Timeout
	u := &Upstream{
		name: cfg.Name, cfg: cfg, pol: pol, bal: cfg.Balancer,
		m:        cfg.Metrics.service(DirOutbound, cfg.Source, cfg.Name),
		obs:      newObserver(cfg.Tracer, cfg.AccessLog),
		log:      cfg.Log.With("upstream", cfg.Name),
		pool:     cfg.Pool,
		dialer:   dialer{timeout: pol.ConnectTimeout, sec: cfg.Security, service: cfg.Name},
		known:    make(chan struct{}),
		conns:    newGate(pol.Breakers.MaxConnections),
		pending:  newGate(pol.Breakers.MaxPendingRequests),
		requests: newGate(pol.Breakers.MaxRequests),
	}
	if pol.HashOn.Source == HashHeader {
		u.hashKey = textproto.CanonicalMIMEHeaderKey(pol.HashOn.Name)
	}
	tlsOn := cfg.Security.ClientTLS(cfg.Name) != nil
	u.h2 = newH2Pool(ctx, pol.ConnsPerPeer, tlsOn, func(ctx context.Context, addr string) (net.Conn, error) {
		return u.dialer.dial(ctx, addr, ALPNHTTP2)
	}, u.conns)
	cfg.Metrics.watchBalancer(cfg.Source, cfg.Name, cfg.Balancer)
	u.ln = newListener(ctx, DirOutbound, cfg.Name, cfg.Limits, u.m, u.log, u)
	u.ln.classify = func(string) connKind {
		if u.protocol().IsHTTP() {
			return kindHTTP
		}
		return kindTCP
	}
	u.ln.handleTCP = u.serveTCP
	return u, nil
}

// Name returns the upstream's service name.
func (u *Upstream) Name() string { return u.name }

// Update takes a new endpoint set from discovery: it records the instances' protocol and
// passes the endpoints to the balancer. Connections to instances that left are closed
// once their requests finish.
func (u *Upstream) Update(eps []lb.Endpoint) {
	if u.cfg.Protocol == "" {
		for _, ep := range eps {
			if p, err := ParseProtocol(ep.Meta["protocol"]); err == nil && ep.Meta["protocol"] != "" {
				u.proto.Store(&p)
				break
			}
		}
	}
	u.bal.Update(eps)
	keep := make(map[string]bool, len(eps))
	for _, ep := range eps {
		keep[ep.Address] = true
	}
	u.h2.retain(keep)
	u.knownOnce.Do(func() { close(u.known) })
}

// Discovered reports whether discovery has delivered endpoints at least once.
func (u *Upstream) Discovered() bool {
	select {
	case <-u.known:
		return true
	default:
		return false
	}
}

// Protocol returns the protocol the upstream is proxied with now.
func (u *Upstream) Protocol() Protocol { return u.protocol() }

func (u *Upstream) protocol() Protocol {
	if u.cfg.Protocol != "" {
		return u.cfg.Protocol
	}
	if p := u.proto.Load(); p != nil {
		return *p
	}
	return TCP
}

// awaitProtocol waits, up to the connect timeout, for discovery to say what the upstream
// speaks when configuration does not.
func (u *Upstream) awaitProtocol(ctx context.Context) {
	if u.cfg.Protocol != "" || u.Discovered() {
		return
	}
	t := time.NewTimer(u.pol.ConnectTimeout)
	defer t.Stop()
	select {
	case <-u.known:
	case <-t.C:
	case <-ctx.Done():
	}
}

// Serve accepts the app's connections on ln until Shutdown.
func (u *Upstream) Serve(ln net.Listener) error {
	prev := u.ln.classify
	u.ln.classify = func(alpn string) connKind {
		u.awaitProtocol(u.ln.ctx)
		return prev(alpn)
	}
	return u.ln.serve(ln)
}

// Shutdown stops accepting, lets in-flight requests and sessions finish until ctx ends,
// then closes everything. Connections to instances are closed last.
func (u *Upstream) Shutdown(ctx context.Context) error {
	err := u.ln.shutdown(ctx)
	u.h2.close()
	return err
}

// timeout returns the overall timeout for the current protocol (0: none).
func (u *Upstream) timeout() time.Duration {
	switch t := u.cfg.Policy.Timeout; {
	case t < 0:
		return 0
	case t > 0:
		return t
	case u.protocol() == GRPC:
		return 0
	}
	return DefaultTimeout
}

// ServeHTTP proxies one request from the app.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	pm := u.m.base
	pm.active.Inc()
	x := exchange{}
	if u.obs.on {
		var ctx context.Context
		ctx, x.span = u.obs.tr.StartOutbound(r.Context(), r, u.name)
		r = r.WithContext(ctx)
	}
	// Deferred, so that a request whose stream is aborted (a panic) is counted too.
	defer u.obs.finish(r.Context(), pm, x.span, DirOutbound, r, &x, start)
	x.code = u.serveHTTP(w, r, &x)
	if x.code >= 500 || x.code == StatusClientClosed {
		u.log.Debug("request failed", "method", r.Method, "path", r.URL.Path, "status", x.code)
	}
	if x.abort || x.code == StatusClientClosed {
		// Headers are gone, or the request was cancelled (the client went, or a drain
		// ran out of time) with nothing written: the only honest answer is to abort the
		// stream; returning would let the server send an empty 200.
		panic(http.ErrAbortHandler)
	}
}

func (u *Upstream) serveHTTP(w http.ResponseWriter, r *http.Request, x *exchange) int {
	if r.ProtoMajor >= 2 && len(r.Header) > u.cfg.Limits.MaxHeaderCount {
		writeError(w, http.StatusRequestHeaderFieldsTooLarge, nil)
		return http.StatusRequestHeaderFieldsTooLarge
	}
	if proto := upgradeType(r.Header); proto != "" && r.ProtoMajor == 1 {
		return u.serveUpgrade(w, r, proto)
	}
	if !u.requests.tryAcquire() {
		return u.overloaded(w, BreakerRequests)
	}
	defer u.requests.release()

	removeHopByHop(r.Header, true)
	body, err := newReqBody(r, u.pol.ReplayBodyBytes)
	if err != nil {
		code := http.StatusBadRequest
		if r.Context().Err() != nil {
			code = StatusClientClosed
		}
		writeError(w, code, err)
		x.err = err
		return code
	}
	defer body.close()
	defer func() { x.reqBytes = body.bytesRead() }()

	ctx := r.Context()
	var overall *timeoutTimer
	if d := u.timeout(); d > 0 {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		overall = startTimeout(d, cancel)
		defer func() {
			if overall != nil {
				overall.stop()
			}
		}()
	}
	out := r.WithContext(ctx)
	url := *r.URL
	url.Scheme = "http"
	out.URL = &url
	out.RequestURI = ""
	out.Close = false
	info := u.pickInfo(r)

	var (
		tried     triedHosts
		lastErr   error
		retrySlot bool // this attempt is a retry holding a budget slot
	)
	defer func() {
		if retrySlot {
			u.releaseRetry()
		}
	}()
	for attempt := 0; ; attempt++ {
		host, err := u.pickHost(ctx, info, &tried)
		if err != nil {
			lastErr = err
			break
		}
		x.upstream, x.attempts = host.Address(), attempt+1
		res, cancelTry, aspan, err := u.try(ctx, out, body, host, attempt)
		if retrySlot {
			u.releaseRetry()
			retrySlot = false
		}
		if err != nil {
			lastErr = err
			if ctx.Err() != nil || attempt >= u.pol.Retries || !u.retryableError(err, r.Method) ||
				!u.retryAllowed(body) {
				break
			}
			if x.span.Recording() {
				x.span.Retry(attempt+2, retryReason(err, nil))
			}
			retrySlot = true
			tried.add(host)
			continue
		}
		if res.StatusCode >= 500 && attempt < u.pol.Retries && u.retryableStatus(res, r.Method) &&
			u.retryAllowed(body) {
			res.Body.Close() // resets the stream; nothing of it reached the client
			cancelTry()
			aspan.End(tracing.Result{Status: res.StatusCode, GRPCStatus: grpcStatus(res)})
			if x.span.Recording() {
				x.span.Retry(attempt+2, retryReason(nil, res))
			}
			retrySlot = true
			tried.add(host)
			continue
		}
		res.Header.Del(headerNotProcessed)
		// From here on the response is the client's. The overall timeout bounds only the
		// wait for headers: stop it, unless it fired already.
		fired := overall != nil && !overall.stop()
		overall = nil
		if fired {
			res.Body.Close()
			cancelTry()
			aspan.End(tracing.Result{Err: errTimeout})
			lastErr = errTimeout
			break
		}
		n, rerr, werr := writeResponse(w, res, u.pool)
		cancelTry()
		x.respBytes, x.grpc = n, grpcStatus(res)
		if rerr != nil || werr != nil {
			x.abort, x.err = true, errors.Join(rerr, werr)
		}
		if u.obs.on {
			aspan.End(tracing.Result{Status: res.StatusCode, GRPCStatus: x.grpc, RequestBytes: body.bytesRead(),
				ResponseBytes: n, Err: rerr})
		}
		return res.StatusCode
	}
	code := statusFor(lastErr, r.Context())
	writeError(w, code, lastErr)
	x.err = lastErr
	return code
}

// timeoutTimer cancels a request's context with errTimeout when the overall timeout
// passes. Pooled: a request does not allocate a timer and a closure for it.
type timeoutTimer struct {
	t      *time.Timer
	cancel context.CancelCauseFunc
}

var timeoutTimers = sync.Pool{New: func() any {
	tt := &timeoutTimer{}
	tt.t = time.AfterFunc(time.Hour, tt.fire)
	tt.t.Stop()
	return tt
}}

// startTimeout calls cancel(errTimeout) after d, unless stopped first.
func startTimeout(d time.Duration, cancel context.CancelCauseFunc) *timeoutTimer {
	tt := timeoutTimers.Get().(*timeoutTimer)
	tt.cancel = cancel
	tt.t.Reset(d)
	return tt
}

func (tt *timeoutTimer) fire() { tt.cancel(errTimeout) }

// stop stops the timer, once; false means it fired (or is firing) already. A stopped
// timer goes back to the pool; one that fired does not, as fire may still run.
func (tt *timeoutTimer) stop() bool {
	if !tt.t.Stop() {
		return false
	}
	tt.cancel = nil
	timeoutTimers.Put(tt)
	return true
}

// retryAllowed takes a retry budget slot and rewinds the body; false if either fails.
func (u *Upstream) retryAllowed(body *reqBody) bool {
	if !u.acquireRetry() {
		return false
	}
	if !body.rewind() {
		u.releaseRetry()
		return false
	}
	return true
}

// try runs one attempt against host. On success the caller owns res and must call
// cancelTry once the body is done, and end the attempt's span; on failure try ends it.
func (u *Upstream) try(ctx context.Context, out *http.Request, body *reqBody, host *lb.Host, attempt int) (*http.Response, func(), tracing.Span, error) {
	if attempt > 0 {
		// A failed attempt's transport may still hold its request: retries get their own.
		o, url := *out, *out.URL
		o.URL = &url
		if u.obs.on {
			o.Header = out.Header.Clone() // the attempt's span context goes in it
		}
		out = &o
	}
	actx, cancel := ctx, noCancel
	if d := u.pol.PerTryTimeout; d > 0 {
		c, cc := context.WithCancelCause(ctx)
		t := time.AfterFunc(d, func() { cc(errPerTryTimeout) })
		actx = c
		cancel = func() { t.Stop(); cc(nil) }
		out = out.WithContext(actx)
	}
	out.URL.Host = host.Address()
	out.Body = body.attempt()

	if !u.pending.tryAcquire() {
		cancel()
		u.m.overloaded[BreakerPending].Inc()
		return nil, nil, tracing.Span{}, OverloadedError{Breaker: BreakerPending}
	}
	var span tracing.Span
	if u.obs.on {
		_, span = u.obs.tr.StartAttempt(ctx, out, u.name, attempt+1)
	}
	ejected := host.Ejected()
	host.Begin()
	// sent is when the request went out on a connection: a success's latency, the load
	// balancer's signal, leaves out the dial and TLS handshake of a new connection, a
	// one-off cost that would otherwise keep a freshly (re)started host out of rotation
	// for the EWMA's decay time. A failure's counts from start: a slow dial is the host's.
	start := time.Now()
	sent := start
	var res *http.Response
	var err error
	if u.roundTrip != nil {
		u.pending.release()
		res, err = u.roundTrip(out)
	} else {
		var cc *h2ClientConn
		cc, err = u.h2.get(actx, host.Address())
		u.pending.release()
		if err == nil {
			sent = time.Now()
			res, err = u.h2.send(actx, cc, out, host.Address())
			if err != nil {
				err = classifyRoundTrip(err)
			}
		}
	}
	latency := time.Since(start)
	if err != nil {
		if cause := context.Cause(actx); cause != nil && (errors.Is(cause, errPerTryTimeout) || errors.Is(cause, errTimeout)) {
			err = cause
		}
		var oe OverloadedError
		outcome := lb.GatewayFailure
		switch {
		case errors.As(err, &oe):
			outcome = lb.Success // our breaker, not the host's fault
		case isDialError(err):
			outcome = lb.ConnectFailure
		case ctx.Err() != nil && context.Cause(ctx) == context.Canceled:
			outcome = lb.ClientError // the client left
		}
		host.Done(latency, outcome)
		if span.Recording() && !ejected && host.Ejected() {
			span.Ejected(host.Address(), outcomeName(outcome))
		}
		span.End(tracing.Result{Err: err})
		cancel()
		return nil, nil, tracing.Span{}, err
	}
	outcome := outcomeOf(res)
	host.Done(time.Since(sent), outcome)
	if span.Recording() && !ejected && host.Ejected() {
		span.Ejected(host.Address(), outcomeName(outcome))
	}
	return res, cancel, span, nil
}

func isDialError(err error) bool {
	var de DialError
	return errors.As(err, &de)
}

// outcomeOf classifies a response for passive health. A 503 that a peer sidecar marks
// as not processed means its app is unreachable: as good as a connect failure.
func outcomeOf(res *http.Response) lb.Outcome {
	switch {
	case res.StatusCode < 400:
		return lb.Success
	case res.StatusCode < 500:
		return lb.ClientError
	case res.StatusCode == http.StatusServiceUnavailable && res.Header.Get(HeaderOverloaded) != "":
		return lb.Success // the peer shed load on purpose; not a failure to eject for
	case res.Header.Get(headerNotProcessed) != "":
		return lb.ConnectFailure
	case res.StatusCode == http.StatusBadGateway, res.StatusCode == http.StatusServiceUnavailable,
		res.StatusCode == http.StatusGatewayTimeout:
		return lb.GatewayFailure
	}
	return lb.ServerError
}

// retryableError decides whether a failed attempt may be retried.
func (u *Upstream) retryableError(err error, method string) bool {
	on := u.pol.RetryOn
	var re RefusedError
	var oe OverloadedError
	switch {
	case errors.Is(err, errTimeout), errors.As(err, &oe):
		return false
	case isDialError(err):
		return on&RetryConnectFailure != 0
	case errors.As(err, &re):
		return on&RetryRefusedStream != 0
	case errors.Is(err, errPerTryTimeout):
		return on&RetryIdempotent != 0 && idempotent(method)
	}
	return on&RetryIdempotent != 0 && idempotent(method)
}

// retryableStatus decides whether a 5xx response may be retried.
func (u *Upstream) retryableStatus(res *http.Response, method string) bool {
	on := u.pol.RetryOn
	h := res.Header
	switch {
	case h.Get(headerNotProcessed) != "" && on&RetryConnectFailure != 0:
		return true
	case h.Get(HeaderOverloaded) != "" && on&RetryRefusedStream != 0:
		return true
	case on&Retry5xx != 0:
		return true
	case on&RetryGatewayError != 0 && (res.StatusCode == 502 || res.StatusCode == 503 || res.StatusCode == 504):
		return true
	}
	return on&RetryIdempotent != 0 && idempotent(method)
}

// acquireRetry takes a slot in the retry budget: at most Percent of the requests in flight,
// but never fewer than MinConcurrent, and no more than MaxRetries when that is set.
func (u *Upstream) acquireRetry() bool {
	limit := int64(float64(u.requests.load()) * u.pol.RetryBudget.Percent / 100)
	limit = max(limit, int64(u.pol.RetryBudget.MinConcurrent))
	if m := u.pol.Breakers.MaxRetries; m > 0 {
		limit = min(limit, int64(m))
	}
	if u.retries.Add(1) > limit {
		u.retries.Add(-1)
		u.m.exhausted.Inc()
		return false
	}
	u.m.retries.Inc()
	return true
}

func (u *Upstream) releaseRetry() { u.retries.Add(-1) }

// pickHost picks an instance, avoiding those already tried when it can. Before discovery
// has answered it waits for endpoints up to the connect timeout, so that a fresh sidecar
// does not fail its first requests.
func (u *Upstream) pickHost(ctx context.Context, info lb.PickInfo, tried *triedHosts) (*lb.Host, error) {
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
			u.pending.release()
		}
	}()
	if tried.n > 0 {
		info.Avoid = tried.h[tried.n-1] // lb passes over it unless it is the only one left
	}
	for {
		changed := u.bal.Changed()
		h, err := u.bal.Pick(info)
		if err == nil {
			// After two failures, up to a few more picks to avoid the earlier ones too. A
			// hash key would pick the same host again, so these re-picks go without it.
			for i := 0; i < 3 && tried.has(h); i++ {
				if h2, err := u.bal.Pick(lb.PickInfo{Avoid: info.Avoid}); err == nil {
					h = h2
				}
			}
			return h, nil
		}
		if !errors.Is(err, lb.ErrNoHost) || u.Discovered() {
			return nil, err
		}
		if t == nil {
			// Waiting for discovery makes this a pending request.
			if !u.pending.tryAcquire() {
				u.m.overloaded[BreakerPending].Inc()
				return nil, OverloadedError{Breaker: BreakerPending}
			}
			t = time.NewTimer(u.pol.ConnectTimeout) // released with the slot on return
		}
		select {
		case <-changed:
		case <-u.known:
		case <-t.C:
			return nil, err
		case <-ctx.Done():
			return nil, err
		}
	}
}

// triedHosts remembers the hosts of earlier attempts without allocating.
type triedHosts struct {
	h [4]*lb.Host
	n int
}

func (t *triedHosts) add(h *lb.Host) {
	if t.n < len(t.h) {
		t.h[t.n] = h
		t.n++
	}
}

func (t *triedHosts) has(h *lb.Host) bool {
	for i := 0; i < t.n; i++ {
		if t.h[i] == h {
			return true
		}
	}
	return false
}

func (u *Upstream) overloaded(w http.ResponseWriter, breaker string) int {
	u.m.overloaded[breaker].Inc()
	writeError(w, http.StatusServiceUnavailable, OverloadedError{Breaker: breaker})
	return http.StatusServiceUnavailable
}

// serveUpgrade tunnels an Upgrade request to an instance over a dedicated connection,
// retrying connect failures on other instances.
func (u *Upstream) serveUpgrade(w http.ResponseWriter, r *http.Request, proto string) int {
	ctx := r.Context()
	info := u.pickInfo(r)
	var tried triedHosts
	var lastErr error
	for attempt := 0; attempt <= u.pol.Retries; attempt++ {
		host, err := u.pickHost(ctx, info, &tried)
		if err != nil {
			lastErr = err
			break
		}
		if !u.conns.tryAcquire() {
			lastErr = OverloadedError{Breaker: BreakerConnections}
			u.m.overloaded[BreakerConnections].Inc()
			break
		}
		host.Begin()
		start := time.Now()
		conn, err := u.dialer.dial(ctx, host.Address(), ALPNHTTP1)
		if err != nil {
			host.Done(time.Since(start), lb.ConnectFailure)
			u.conns.release()
			lastErr = err
			tried.add(host)
			continue
		}
		code, err := tunnel(w, r, conn, proto, u.pool, u.ln.track)
		host.Done(time.Since(start), lb.Success)
		u.conns.release()
		if err != nil {
			lastErr = err
			break
		}
		return code
	}
	w.Header().Set("Connection", "close")
	code := statusFor(lastErr, r.Context())
	writeError(w, code, lastErr)
	return code
}

// serveTCP proxies one raw TCP connection from the app to an instance.
func (u *Upstream) serveTCP(ctx context.Context, c net.Conn) {
	defer c.Close()
	if !u.conns.tryAcquire() {
		u.m.overloaded[BreakerConnections].Inc()
		return
	}
	defer u.conns.release()
	var info lb.PickInfo
	if u.pol.HashOn.Source == HashSourceIP {
		info = hashInfo(hostOf(c.RemoteAddr().String()))
	}
	var tried triedHosts
	pm := u.m.base
	for attempt := 0; attempt <= u.pol.Retries; attempt++ {
		host, err := u.pickHost(ctx, info, &tried)
		if err != nil {
			u.log.Debug("tcp: no instance", "err", err)
			return
		}
		host.Begin()
		start := time.Now()
		pc, err := u.dialer.dial(ctx, host.Address(), ALPNTCP)
		if err != nil {
			host.Done(time.Since(start), lb.ConnectFailure)
			tried.add(host)
			continue
		}
		host.Done(time.Since(start), lb.Success)
		pm.tcpOpened.Inc()
		done, ok := u.ln.track(pc)
		if ok {
			sent, received := pipe(c, pc, u.pool)
			done()
			pm.tcpDone(sent, received)
		} else {
			pm.tcpDone(0, 0)
		}
		pc.Close()
		return
	}
}

var _ http.Handler = (*Upstream)(nil)
