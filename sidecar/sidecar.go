package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/podmesh/podmesh/discovery"
	"github.com/podmesh/podmesh/lb"
	"github.com/podmesh/podmesh/proxy"
	"github.com/podmesh/podmesh/tls/identity"
	"github.com/podmesh/podmesh/tracing"
)

// Sidecar is one running sidecar: the inbound listener in front of the app, a local
// listener per upstream, a discovery watch per upstream feeding its balancer, the
// instance's registration and the admin listener.
type Sidecar struct {
	cfg     Config
	log     *slog.Logger
	client  *api.Client
	reg     *prometheus.Registry
	metrics *proxy.Metrics
	sec     proxy.Security
	ident   *identity.Source // mutual TLS material and intentions; nil with TLS off
	tracer  *tracing.Tracer  // nil until Run; off unless an endpoint is configured
	alog    *tracing.AccessLog
	alogW   io.Writer // where the access log goes (stderr)

	inbound   *proxy.Inbound
	upstreams []*upstream

	start     time.Time
	listening atomic.Bool
	draining  atomic.Bool

	health healthState

	mu        sync.Mutex
	inboundLn net.Listener
	metricsLn net.Listener
	adminLn   net.Listener
}

type upstream struct {
	cfg   Upstream
	bal   *lb.Balancer
	proxy *proxy.Upstream
	watch *discovery.Watcher
	ln    net.Listener
}

// healthState is the latest app probe and registration status, for /config.
type healthState struct {
	mu         sync.Mutex
	Registered bool      `json:"registered"`
	Status     string    `json:"status"`
	Output     string    `json:"output"`
	LastProbe  time.Time `json:"last_probe,omitzero"`
	LastError  string    `json:"last_error,omitempty"`
}

// Option customizes a Sidecar beyond its Config.
type Option func(*Sidecar)

// WithSecurity plugs transport security and authorization in instead of the mutual TLS
// that Config.TLS configures.
func WithSecurity(sec proxy.Security) Option { return func(s *Sidecar) { s.sec = sec } }

// WithAccessLogWriter sends the access log (Config.AccessLog) to w instead of stderr.
func WithAccessLogWriter(w io.Writer) Option { return func(s *Sidecar) { s.alogW = w } }

// New builds a sidecar from a validated configuration; Run starts it.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Sidecar, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sidecar{cfg: cfg, log: log, reg: prometheus.NewRegistry(), alogW: os.Stderr}
	for _, o := range opts {
		o(s)
	}
	if cfg.AccessLog {
		s.alog = tracing.NewAccessLog(s.alogW)
	}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := proxy.NewMetrics(s.reg)
	if err != nil {
		return nil, fmt.Errorf("sidecar: metrics: %w", err)
	}
	s.metrics = m
	u, err := url.Parse(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("sidecar: registry %q: %w", cfg.Registry, err)
	}
	acfg := api.DefaultConfig() // keeps CONSUL_HTTP_TOKEN and TLS settings from the environment
	acfg.Address, acfg.Scheme = u.Host, u.Scheme
	if s.client, err = api.NewClient(acfg); err != nil {
		return nil, fmt.Errorf("sidecar: registry client for %q: %w", cfg.Registry, err)
	}
	if s.sec == nil && cfg.TLS.On() {
		if err := s.setupTLS(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// setupTLS makes the identity source (leaf, roots and intentions for the service, from
// the registry) and the Security over it, with its metrics.
func (s *Sidecar) setupTLS() error {
	src, err := identity.New(identity.Config{Client: s.client, Service: s.cfg.Service, Logger: s.log})
	if err != nil {
		return fmt.Errorf("sidecar: tls: %w", err)
	}
	m, err := newSecurityMetrics(s.reg, s.cfg.Service, src)
	if err != nil {
		return fmt.Errorf("sidecar: tls metrics: %w", err)
	}
	s.ident = src
	s.sec = newSecurity(src, s.cfg.Service, m, s.log)
	return nil
}

// Run starts everything, serves until ctx is cancelled (SIGTERM in the main), then
// deregisters the instance and drains: listeners stop accepting, requests and sessions in
// flight finish until DrainTimeout, then what is left is closed.
func (s *Sidecar) Run(ctx context.Context) error {
	s.start = time.Now()
	// Components live until the drain is over, not until ctx ends.
	life, endLife := context.WithCancel(context.WithoutCancel(ctx))
	defer endLife()
	if err := s.startTracing(life); err != nil {
		return err
	}
	defer s.stopTracing(life)
	if err := s.build(life); err != nil {
		return err
	}
	if err := s.bind(); err != nil {
		s.closeListeners()
		return err
	}

	g, gctx := errgroup.WithContext(life)
	admin := &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error { return serveHTTP(admin, s.adminLn) })
	var metricsSrv *http.Server
	if s.metricsLn != nil {
		metricsSrv = &http.Server{Handler: s.metricsOnly(), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error { return serveHTTP(metricsSrv, s.metricsLn) })
	}
	watchCtx, stopWatches := context.WithCancel(life)
	defer stopWatches()
	if s.ident != nil {
		// Until the drain is over: connections made while draining need the material too.
		g.Go(func() error { return s.ident.Run(watchCtx) })
	}
	for _, u := range s.upstreams {
		g.Go(func() error { return u.watch.Run(watchCtx) })
		g.Go(func() error { return u.proxy.Serve(u.ln) })
	}
	if s.inbound != nil {
		g.Go(func() error { return s.inbound.Serve(s.inboundLn) })
	}
	regCtx, stopRegistration := context.WithCancel(life)
	regDone := make(chan struct{})
	if s.inbound != nil && *s.cfg.Register {
		go func() { defer close(regDone); s.keepRegistered(regCtx) }()
	} else {
		close(regDone)
	}
	s.listening.Store(true)
	s.log.Info("sidecar running", "service", s.cfg.Service, "id", s.cfg.ID, "upstreams", len(s.upstreams))
	if s.cfg.ReadyFD > 0 {
		go s.notifyReady(gctx, os.NewFile(uintptr(s.cfg.ReadyFD), "ready-fd"))
	}

	select {
	case <-ctx.Done():
		s.log.Info("draining", "deadline", time.Duration(s.cfg.DrainTimeout))
	case <-gctx.Done():
		s.log.Error("a listener failed; shutting down")
	}
	s.draining.Store(true)

	// Deregister first, so that peers stop picking this instance while it drains.
	stopRegistration()
	<-regDone
	if s.inbound != nil && *s.cfg.Register {
		dctx, cancel := context.WithTimeout(life, 2*time.Second)
		err := s.client.Agent().ServiceDeregisterOpts(s.cfg.ID, (&api.QueryOptions{}).WithContext(dctx))
		cancel()
		if err != nil {
			s.log.Warn("deregister failed; the TTL check will expire", "err", err)
		}
	}

	drain, cancel := context.WithTimeout(life, time.Duration(max(s.cfg.DrainTimeout, 0)))
	defer cancel()
	var wg sync.WaitGroup
	shut := func(f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(drain); err != nil {
				s.log.Warn("drain cut short", "err", err)
			}
		}()
	}
	if s.inbound != nil {
		shut(s.inbound.Shutdown)
	}
	for _, u := range s.upstreams {
		shut(u.proxy.Shutdown)
	}
	wg.Wait()
	stopWatches()
	for _, u := range s.upstreams {
		u.bal.Close()
	}
	admin.Close()
	if metricsSrv != nil {
		metricsSrv.Close()
	}
	err := g.Wait()
	s.log.Info("sidecar stopped")
	return err
}

func serveHTTP(srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// build makes the inbound side and one upstream (balancer, proxy, watch) per entry.
func (s *Sidecar) build(life context.Context) error {
	c := s.cfg
	lim := c.Limits.proxy()
	log := s.log
	if c.Service != "" && c.Inbound != "" { // without an inbound: outbound only
		in, err := proxy.NewInbound(life, proxy.InboundConfig{
			Service: c.Service, Protocol: proxy.Protocol(c.Protocol), App: c.App,
			MaxRequests: c.MaxRequests, Limits: lim, Security: s.sec, Metrics: s.metrics, Log: log,
			Tracer: s.tracer, AccessLog: s.alog,
		})
		if err != nil {
			return fmt.Errorf("sidecar: inbound: %w", err)
		}
		s.inbound = in
	}
	for _, uc := range c.Upstreams {
		pol, lbc, err := uc.policy()
		if err != nil {
			return fmt.Errorf("sidecar: upstream %s: %w", uc.Name, err)
		}
		name := uc.Name
		lbc.OnEvent = func(e lb.Event) {
			log.Info("outlier "+e.Kind.String(), "upstream", name, "endpoint", e.Endpoint.ID,
				"address", e.Endpoint.Address, "reason", e.Reason, "until", e.Until)
		}
		bal, err := lb.New(lbc)
		if err != nil {
			return fmt.Errorf("sidecar: upstream %s: %w", uc.Name, err)
		}
		up, err := proxy.NewUpstream(life, proxy.UpstreamConfig{
			Name: uc.Name, Protocol: proxy.Protocol(uc.Protocol), Policy: pol, Limits: lim,
			Balancer: bal, Security: s.sec, Metrics: s.metrics, Log: log,
			Source: c.Service, Tracer: s.tracer, AccessLog: s.alog,
		})
		if err != nil {
			return fmt.Errorf("sidecar: upstream %s: %w", uc.Name, err)
		}
		w, err := discovery.New(discovery.Config{Client: s.client, Service: uc.Name, Listener: up, Log: log})
		if err != nil {
			return fmt.Errorf("sidecar: upstream %s: %w", uc.Name, err)
		}
		s.upstreams = append(s.upstreams, &upstream{cfg: uc, bal: bal, proxy: up, watch: w})
	}
	return nil
}

// startTracing makes the tracer (off without an endpoint) and registers its metrics.
func (s *Sidecar) startTracing(ctx context.Context) error {
	c := s.cfg
	name := c.Service
	if name == "" && os.Getenv(tracing.EnvServiceName) == "" {
		name = "podmesh-sidecar"
	}
	ratio := tracing.DefaultSampleRatio
	if c.TraceSample != nil {
		ratio = *c.TraceSample
		if ratio == 0 {
			ratio = -1 // tracing.Config: zero is the default, negative starts no trace
		}
	}
	t, err := tracing.New(ctx, tracing.Config{
		ServiceName: name, InstanceID: c.ID, Endpoint: c.TraceEndpoint,
		SampleRatio: ratio, Propagation: c.TracePropagation, Logger: s.log,
	})
	if err != nil {
		return fmt.Errorf("sidecar: tracing: %w", err)
	}
	if err := t.Register(s.reg); err != nil {
		_ = t.Shutdown(ctx)
		return fmt.Errorf("sidecar: tracing metrics: %w", err)
	}
	s.tracer = t
	if t.Enabled() {
		s.log.Info("tracing on", "endpoint", t.Endpoint(), "sample", ratio, "propagation", c.TracePropagation.String())
	}
	return nil
}

// stopTracing exports what is queued, for at most a second (the drain has used most of
// the stop grace by then).
func (s *Sidecar) stopTracing(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := s.tracer.Shutdown(ctx); err != nil {
		s.log.Warn("tracing: shutdown", "err", err)
	}
}

// Tracer returns the sidecar's tracer (nil before Run; off without an endpoint).
func (s *Sidecar) Tracer() *tracing.Tracer { return s.tracer }

// bind opens every listener before anything serves, so that a port conflict fails the
// start instead of leaving a half-running sidecar.
func (s *Sidecar) bind() error {
	lis := func(what, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("sidecar: listen %s on %s: %w", what, addr, err)
		}
		return ln, nil
	}
	var err error
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.adminLn, err = lis("admin", s.cfg.Admin); err != nil {
		return err
	}
	if s.cfg.Metrics != "" {
		if s.metricsLn, err = lis("metrics", s.cfg.Metrics); err != nil {
			return err
		}
	}
	if s.inbound != nil {
		if s.inboundLn, err = lis("inbound", s.cfg.Inbound); err != nil {
			return err
		}
	}
	for _, u := range s.upstreams {
		if u.ln, err = lis("upstream "+u.cfg.Name, u.cfg.Listen); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sidecar) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ln := range []net.Listener{s.adminLn, s.metricsLn, s.inboundLn} {
		if ln != nil {
			ln.Close()
		}
	}
	for _, u := range s.upstreams {
		if u.ln != nil {
			u.ln.Close()
		}
	}
}

// Addrs reports the bound addresses (useful when configured with port 0).
type Addrs struct {
	Admin, Metrics, Inbound string
	Upstreams               map[string]string
}

// Addrs returns the listeners' addresses once Run has bound them.
func (s *Sidecar) Addrs() Addrs {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := Addrs{Upstreams: map[string]string{}}
	if s.adminLn != nil {
		a.Admin = s.adminLn.Addr().String()
	}
	if s.metricsLn != nil {
		a.Metrics = s.metricsLn.Addr().String()
	}
	if s.inboundLn != nil {
		a.Inbound = s.inboundLn.Addr().String()
	}
	for _, u := range s.upstreams {
		if u.ln != nil {
			a.Upstreams[u.cfg.Name] = u.ln.Addr().String()
		}
	}
	return a
}

// awaitReady returns once Ready would answer true (nil), or when ctx ends first. It waits on
// the same events Ready looks at, without polling: the mutual TLS material, then every
// upstream's first discovery answer until ReadyTimeout after the start.
func (s *Sidecar) awaitReady(ctx context.Context) error {
	if s.ident != nil {
		select {
		case <-s.ident.Ready():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	deadline := time.NewTimer(time.Until(s.start.Add(time.Duration(s.cfg.ReadyTimeout))))
	defer deadline.Stop()
	for _, u := range s.upstreams {
		select {
		case <-u.watch.Ready():
		case <-deadline.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// notifyReady writes READY=1 to f once the sidecar is ready, unless it stops first, and
// closes f either way.
func (s *Sidecar) notifyReady(ctx context.Context, f *os.File) {
	defer f.Close()
	if err := s.awaitReady(ctx); err != nil || s.draining.Load() {
		return
	}
	if _, err := io.WriteString(f, "READY=1\n"); err != nil {
		s.log.Warn("readiness notification failed", "fd", s.cfg.ReadyFD, "err", err)
	}
}

// Ready reports whether the sidecar is ready, and if not why.
func (s *Sidecar) Ready() (bool, string) {
	if !s.listening.Load() {
		return false, "starting"
	}
	if s.draining.Load() {
		return false, "draining"
	}
	if s.ident != nil {
		// Not ready means not able to serve mTLS yet, however long it takes.
		select {
		case <-s.ident.Ready():
		default:
			return false, "waiting for the registry's Connect CA: leaf certificate, trust bundle and intentions for " + s.cfg.Service
		}
	}
	if time.Since(s.start) >= time.Duration(s.cfg.ReadyTimeout) {
		return true, "ready"
	}
	for _, u := range s.upstreams {
		select {
		case <-u.watch.Ready():
		default:
			return false, "waiting for the registry to answer about " + u.cfg.Name
		}
	}
	return true, "ready"
}

// registration describes the instance: its inbound address, meta protocol (and
// metrics_port), and a TTL check that the sidecar keeps passing while the app answers.
func (s *Sidecar) registration(status, output string) *api.AgentServiceRegistration {
	_, port, _ := net.SplitHostPort(s.inboundLn.Addr().String())
	p, _ := strconv.Atoi(port)
	meta := map[string]string{}
	for k, v := range s.cfg.Meta {
		meta[k] = v
	}
	meta["protocol"] = s.cfg.Protocol
	if s.metricsLn != nil {
		_, mp, _ := net.SplitHostPort(s.metricsLn.Addr().String())
		meta["metrics_port"] = mp
	}
	return &api.AgentServiceRegistration{
		ID: s.cfg.ID, Name: s.cfg.Service, Address: s.cfg.Advertise, Port: p,
		Tags: s.cfg.Tags, Meta: meta,
		Check: &api.AgentServiceCheck{
			CheckID: s.checkID(), Name: "app health through the sidecar",
			TTL: time.Duration(s.cfg.Check.TTL).String(), Status: status, Notes: output,
			DeregisterCriticalServiceAfter: time.Duration(s.cfg.Check.DeregisterAfter).String(),
		},
	}
}

func (s *Sidecar) checkID() string { return "sidecar:" + s.cfg.ID }
