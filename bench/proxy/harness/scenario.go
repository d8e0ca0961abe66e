package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// runner holds what lives across scenarios: the temp dir, the backend, the registry, the
// OTLP sink and the mTLS certificates.
type runner struct {
	cfg      Config
	dir      string
	progress io.Writer

	backend *backend
	reg     *registry
	regErr  error
	sink    *OTLPSink
	certs   *certs
	seq     int
}

// backend is the server at the end of every chain.
type backend struct {
	Kind   string // go or nginx
	H1, H2 string // host:port for HTTP/1.1 and for h2c
	proc   *Proc
}

// chain is one scenario's started processes, from the client's first hop to the backend.
type chain struct {
	path   string
	h1, h2 string // URLs the load generators use
	procs  []*Proc
	roles  []string
	tls    func(requests int64) *TLSStats // nil: no TLS between the proxies
	before func()                         // called once just before the first load (nil: nothing)
	after  func() string                  // called after the last load; returns a note (nil: nothing)
	stops  []func()                       // run in reverse order
	notes  []string
}

func (ch *chain) add(p *Proc, role string) {
	ch.procs = append(ch.procs, p)
	ch.roles = append(ch.roles, role)
}

func (ch *chain) onStop(f func()) { ch.stops = append(ch.stops, f) }

func (ch *chain) stop() {
	for i := len(ch.stops) - 1; i >= 0; i-- {
		ch.stops[i]()
	}
	ch.stops = nil
}

// alive returns the error of the first chain process that has exited.
func (ch *chain) alive() error {
	for _, p := range ch.procs {
		if err := p.Exited(); err != nil {
			return err
		}
	}
	return nil
}

func (r *runner) logf(format string, args ...any) {
	if r.progress != nil {
		fmt.Fprintf(r.progress, "bench/proxy: "+format+"\n", args...)
	}
}

func (r *runner) close() {
	r.reg.stop()
	if r.sink != nil {
		_ = r.sink.Close()
	}
	if r.backend != nil {
		r.backend.proc.Stop(3 * time.Second)
	}
}

// probe is a client that opens a new connection for each request, so readiness probes
// leave no idle connection behind in a proxy.
var probe = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// checkBody GETs url and wants 200 with the backend's body.
func checkBody(url string) error {
	resp, err := probe.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return fmt.Errorf("GET %s: read body: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK || string(b) != string(Body) {
		return fmt.Errorf("GET %s: %d %.80q, want 200 with the backend's %d-byte body", url, resp.StatusCode, b, len(Body))
	}
	return nil
}

// startGoBackend re-executes this program as the Go backend.
func (r *runner) startGoBackend(ctx context.Context) (*backend, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := startProc("go backend", r.cfg.PinSUT, []string{roleEnv + "=backend=" + addr}, nil, r.cfg.Self...)
	if err != nil {
		return nil, err
	}
	b := &backend{Kind: "go", H1: addr, H2: addr, proc: p}
	if err := waitFor(ctx, 10*time.Second, p.Exited, func() error { return checkBody("http://" + addr + "/") }); err != nil {
		p.Stop(time.Second)
		return nil, fmt.Errorf("go backend: %w", err)
	}
	return b, nil
}

// startNginxBackend runs nginx answering the body from memory (return 200), with one
// worker per core.
func (r *runner) startNginxBackend(ctx context.Context) (*backend, error) {
	h1, err := freePort()
	if err != nil {
		return nil, err
	}
	h2, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := startNginx(r.cfg.Nginx, r.cfg.PinSUT, nginxConf{
		Name: "backend", Dir: r.dir, Workers: runtime.NumCPU(), ListenH1: h1, ListenH2: h2, Body: string(Body),
	})
	if err != nil {
		return nil, err
	}
	p.Name = "nginx backend"
	b := &backend{Kind: "nginx", H1: h1, H2: h2, proc: p}
	if err := waitFor(ctx, 10*time.Second, p.Exited, func() error { return checkBody("http://" + h1 + "/") }); err != nil {
		p.Stop(time.Second)
		return nil, fmt.Errorf("nginx backend: %w", err)
	}
	return b, nil
}

// startBackend starts the configured backend; "auto" starts both, runs wrk briefly
// against each and keeps the faster, so the backend is not what limits the chains.
func (r *runner) startBackend(ctx context.Context) (map[string]float64, error) {
	c := r.cfg
	if c.Backend == "go" || (c.Backend == "auto" && (c.Nginx == "" || c.Wrk == "")) {
		b, err := r.startGoBackend(ctx)
		r.backend = b
		return nil, err
	}
	if c.Backend == "nginx" {
		b, err := r.startNginxBackend(ctx)
		r.backend = b
		return nil, err
	}
	probeDur := min(2*time.Second, c.Duration)
	rps := map[string]float64{}
	var best *backend
	for _, start := range []func(context.Context) (*backend, error){r.startGoBackend, r.startNginxBackend} {
		b, err := start(ctx)
		if err != nil {
			r.logf("backend candidate: %v", err)
			continue
		}
		res, _, err := c.wrk(ctx, "http://"+b.H1+"/", probeDur)
		if err != nil || res.Failures() > 0 {
			r.logf("backend %s probe: %v (failures %d)", b.Kind, err, res.Failures())
			b.proc.Stop(time.Second)
			continue
		}
		rps[b.Kind] = res.RPS
		r.logf("backend %s: %.0f requests/s with wrk alone", b.Kind, res.RPS)
		if best == nil || res.RPS > rps[best.Kind] {
			if best != nil {
				best.proc.Stop(time.Second)
			}
			best = b
		} else {
			b.proc.Stop(time.Second)
		}
	}
	if best == nil {
		return rps, errors.New("no backend could be started")
	}
	r.backend = best
	return rps, nil
}

// chainFor starts the processes of a scenario. A nil chain with a nil error never
// happens; skipped and unavailable scenarios come back as a *skipError.
func (r *runner) chainFor(ctx context.Context, name string) (*chain, error) {
	b := r.backend
	switch name {
	case Direct:
		ch := &chain{path: "client → backend", h1: "http://" + b.H1 + "/", h2: "http://" + b.H2 + "/"}
		ch.add(b.proc, "backend")
		return ch, nil
	case Nginx, NginxMTLS:
		return r.nginxChain(ctx, name == NginxMTLS)
	case Haproxy:
		return r.haproxyChain(ctx)
	case Sidecar, SidecarMTLS, SidecarTracing:
		return r.sidecarChain(ctx, name)
	}
	return nil, fmt.Errorf("unknown scenario %q", name)
}

// skipError marks a scenario that was not run: Status says whether it was skipped by
// configuration or could not be started.
type skipError struct {
	Status, Reason string
}

func (e *skipError) Error() string { return e.Status + ": " + e.Reason }

func skip(reason string) error        { return &skipError{StatusSkipped, reason} }
func unavailable(reason string) error { return &skipError{StatusUnavailable, reason} }

func (r *runner) nginxChain(ctx context.Context, mtls bool) (*chain, error) {
	c := r.cfg
	if c.Nginx == "" {
		return nil, skip("nginx not installed")
	}
	ch := &chain{path: "client → nginx A → nginx B → backend (HTTP/1.1 keep-alive between hops)"}
	var crt *certs
	if mtls {
		if c.Openssl == "" {
			return nil, skip("openssl not installed")
		}
		if r.certs == nil {
			dir := filepath.Join(r.dir, "certs")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("bench: certs dir: %w", err)
			}
			var err error
			if r.certs, err = makeCerts(ctx, c.Openssl, dir); err != nil {
				return nil, unavailable(err.Error())
			}
		}
		crt = r.certs
		ch.path = "client → nginx A → (TLS 1.3, client certs, keep-alive) → nginx B → backend"
	}
	ports := make([]string, 3)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	tag := "b"
	connLog := ""
	if mtls {
		tag = "b-mtls"
		connLog = filepath.Join(r.dir, "nginx-b-mtls-connections.log")
	}
	pb, err := startNginx(c.Nginx, c.PinSUT, nginxConf{
		Name: tag, Dir: r.dir, Workers: c.ProxyCores, ListenH1: ports[0], Upstream: r.backend.H1,
		ServerTLS: mtls, Certs: crt, ConnLog: connLog,
	})
	if err != nil {
		return nil, err
	}
	ch.add(pb, "proxy")
	ch.onStop(func() { pb.StopWith(syscall.SIGQUIT, 5*time.Second) })
	pa, err := startNginx(c.Nginx, c.PinSUT, nginxConf{
		Name: strings.Replace(tag, "b", "a", 1), Dir: r.dir, Workers: c.ProxyCores, ListenH1: ports[1], ListenH2: ports[2],
		Upstream: ports[0], UpstreamTLS: mtls, Certs: crt,
	})
	if err != nil {
		ch.stop()
		return nil, err
	}
	ch.add(pa, "proxy")
	ch.onStop(func() { pa.StopWith(syscall.SIGQUIT, 5*time.Second) })
	pa.Name, pb.Name = "nginx A", "nginx B"
	ch.h1, ch.h2 = "http://"+ports[1]+"/", "http://"+ports[2]+"/"
	if err := waitFor(ctx, 15*time.Second, ch.alive, func() error { return checkBody(ch.h1) }); err != nil {
		ch.stop()
		return nil, unavailable("nginx pair: " + err.Error())
	}
	if mtls {
		ch.tls = func(requests int64) *TLSStats {
			// B writes its buffered connection log when it stops gracefully.
			pb.StopWith(syscall.SIGQUIT, 5*time.Second)
			n, resumed, err := countConnLog(connLog)
			t := &TLSStats{Source: "nginx B log: one line per new connection ($connection_requests = 1), $ssl_session_reused",
				Handshakes: n, Resumed: resumed, Requests: requests}
			if err != nil {
				t.Error = err.Error()
			} else if requests > 0 {
				t.Per1k = float64(n) * 1000 / float64(requests)
			}
			return t
		}
	}
	return ch, nil
}

func (r *runner) haproxyChain(ctx context.Context) (*chain, error) {
	c := r.cfg
	if c.Haproxy == "" {
		return nil, skip("haproxy not installed")
	}
	pa, err := freePort()
	if err != nil {
		return nil, err
	}
	pb, err := freePort()
	if err != nil {
		return nil, err
	}
	ch := &chain{path: "client → haproxy A → (h2c, multiplexed) → haproxy B → backend (HTTP/1.1)"}
	b, err := startHaproxy(c.Haproxy, c.PinSUT, haproxyConf{Name: "b", Dir: r.dir, Threads: c.ProxyCores, Listen: pb, BindH2: true, Upstream: r.backend.H1})
	if err != nil {
		return nil, err
	}
	b.Name = "haproxy B"
	ch.add(b, "proxy")
	ch.onStop(func() { b.Stop(3 * time.Second) })
	a, err := startHaproxy(c.Haproxy, c.PinSUT, haproxyConf{Name: "a", Dir: r.dir, Threads: c.ProxyCores, Listen: pa, Upstream: pb, UpH2: true})
	if err != nil {
		ch.stop()
		return nil, err
	}
	a.Name = "haproxy A"
	ch.add(a, "proxy")
	ch.onStop(func() { a.Stop(3 * time.Second) })
	ch.h1, ch.h2 = "http://"+pa+"/", "http://"+pa+"/"
	if err := waitFor(ctx, 15*time.Second, ch.alive, func() error { return checkBody(ch.h1) }); err != nil {
		ch.stop()
		return nil, unavailable("haproxy pair: " + err.Error())
	}
	return ch, nil
}
