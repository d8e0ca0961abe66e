package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
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
	p, err := startProc("backend-go", r.cfg.PinSUT, []string{roleEnv + "=backend=" + addr}, nil, r.cfg.Self...)
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

// sidecarChain starts sidecar B (service backend-svc, in front of the backend, registering
// itself) and sidecar A (upstream backend-svc on a local listener), both against the
// registry.
func (r *runner) sidecarChain(ctx context.Context, name string) (*chain, error) {
	c := r.cfg
	extra := c.SidecarFlags
	switch name {
	case SidecarMTLS:
		if strings.TrimSpace(c.SidecarMTLSFlags) == "" {
			return nil, skip("SIDECAR_MTLS_FLAGS is empty: set the sidecar's mTLS flags at the top of bench/proxy.sh")
		}
		extra += " " + c.SidecarMTLSFlags
	case SidecarTracing:
		if strings.TrimSpace(c.SidecarTracingFlags) == "" {
			return nil, skip("SIDECAR_TRACING_FLAGS is empty: set the sidecar's tracing flags (100% sampling, OTLP endpoint {otlp}) at the top of bench/proxy.sh")
		}
		extra += " " + c.SidecarTracingFlags
	}
	if existing(c.Sidecar) == "" {
		return nil, unavailable("sidecar unavailable: " + orNone(c.Sidecar, "sidecar") + " does not exist (build cmd/sidecar into $BIN)")
	}
	if r.reg == nil && r.regErr == nil {
		r.reg, r.regErr = startRegistry(ctx, c, r.dir)
		if r.regErr == nil {
			r.logf("registry: %s at %s", r.reg.Kind, r.reg.URL)
		}
	}
	if r.regErr != nil {
		return nil, unavailable("sidecar unavailable: registry: " + r.regErr.Error())
	}
	if name == SidecarTracing && r.sink == nil {
		var err error
		if r.sink, err = StartOTLPSink(); err != nil {
			return nil, unavailable(err.Error())
		}
	}
	var ports [5]string
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	aOut, aIn, aAdmin, bIn, bAdmin := ports[0], ports[1], ports[2], ports[3], ports[4]
	r.seq++
	idA := fmt.Sprintf("bench-client-%d", r.seq)
	idB := fmt.Sprintf("backend-svc-%d", r.seq)
	vars := map[string]string{"registry": r.reg.URL, "tmp": r.dir}
	env := []string{"GOMAXPROCS=" + strconv.Itoa(c.ProxyCores)}
	drop := []string{"CONSUL_*", "OTEL_*"}
	if r.sink != nil && name == SidecarTracing {
		vars["otlp"], vars["otlp_addr"] = "http://"+r.sink.Addr, r.sink.Addr
		env = append(env, "OTEL_EXPORTER_OTLP_ENDPOINT=http://"+r.sink.Addr, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")
	}
	flags := func(side string) []string {
		vars["side"] = side
		return expand(extra, vars)
	}
	ch := &chain{path: "client → sidecar A outbound (upstream backend-svc) → (HTTP/2 between sidecars) → sidecar B inbound → backend (" + c.SidecarProtocol + ")"}
	if name == SidecarMTLS {
		ch.path = "client → sidecar A → (mTLS, HTTP/2) → sidecar B → backend (" + c.SidecarProtocol + ")"
	}
	b, err := startProc("sidecar B", c.PinSUT, env, drop, append([]string{c.Sidecar,
		"-service", "backend-svc", "-id", idB, "-protocol", c.SidecarProtocol,
		"-inbound", bIn, "-app", r.backend.H1, "-admin", bAdmin, "-registry", r.reg.URL}, flags("b")...)...)
	if err != nil {
		return nil, unavailable("sidecar unavailable: " + err.Error())
	}
	ch.add(b, "proxy")
	ch.onStop(func() { b.Stop(10 * time.Second); r.reg.deregister(idB) })
	a, err := startProc("sidecar A", c.PinSUT, env, drop, append([]string{c.Sidecar,
		"-service", "bench-client", "-id", idA, "-register=false",
		"-inbound", aIn, "-app", r.backend.H1, "-upstream", "backend-svc=" + aOut,
		"-admin", aAdmin, "-registry", r.reg.URL}, flags("a")...)...)
	if err != nil {
		ch.stop()
		return nil, unavailable("sidecar unavailable: " + err.Error())
	}
	ch.add(a, "proxy")
	ch.onStop(func() { a.Stop(10 * time.Second) })
	ch.h1, ch.h2 = "http://"+aOut+"/", "http://"+aOut+"/"
	if err := waitFor(ctx, 30*time.Second, ch.alive, func() error { return checkBody(ch.h1) }); err != nil {
		reason := err.Error()
		if errors.Is(err, context.DeadlineExceeded) || !strings.Contains(reason, "exited") {
			reason += "; sidecar A said: " + lastLines(a.Output(2000), 3) + "; sidecar B said: " + lastLines(b.Output(2000), 3)
		}
		ch.stop()
		return nil, unavailable("sidecar unavailable: " + reason)
	}
	if name == SidecarMTLS {
		var before float64
		var src string
		ch.before = func() { before, src, _ = handshakeCount(bAdmin, c.HandshakeMetric) }
		ch.tls = func(requests int64) *TLSStats {
			after, src2, err := handshakeCount(bAdmin, c.HandshakeMetric)
			t := &TLSStats{Source: "sidecar B /metrics: " + src2, Resumed: -1, Requests: requests}
			switch {
			case err != nil:
				t.Error = "n/a: " + err.Error()
			case src != src2:
				t.Error = "n/a: metric changed during the run"
			default:
				t.Handshakes = int64(after - before)
				if requests > 0 {
					t.Per1k = (after - before) * 1000 / float64(requests)
				}
			}
			return t
		}
	}
	if name == SidecarTracing {
		var n0, b0 int64
		ch.before = func() { n0, b0 = r.sink.Counts() }
		ch.after = func() string {
			n, bytes := r.sink.Counts()
			if n == n0 {
				return "WARNING: the OTLP sink received no export during the load: are SIDECAR_TRACING_FLAGS effective?"
			}
			return fmt.Sprintf("the OTLP sink received %d export requests (%d bytes) during the load", n-n0, bytes-b0)
		}
	}
	return ch, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return "(nothing)"
	}
	return strings.Join(lines, " | ")
}

// handshakeCount reads the sidecar's TLS handshake counter from its admin /metrics: the
// configured metric summed over its series, or, when absent, inbound connections accepted
// (podmesh_proxy_connections_total{direction="inbound"}): each TLS 1.3 connection has
// exactly one handshake.
func handshakeCount(admin, metric string) (float64, string, error) {
	resp, err := probe.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	var own, conns float64
	var haveOwn, haveConns bool
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, labels, v, ok := parseMetricLine(sc.Text())
		if !ok {
			continue
		}
		switch {
		case name == metric:
			own += v
			haveOwn = true
		case name == "podmesh_proxy_connections_total" && strings.Contains(labels, `direction="inbound"`):
			conns += v
			haveConns = true
		}
	}
	switch {
	case haveOwn:
		return own, metric, nil
	case haveConns:
		return conns, `podmesh_proxy_connections_total{direction="inbound"} (no ` + metric + `; one TLS 1.3 handshake per connection)`, nil
	}
	return 0, "", fmt.Errorf("no %s nor podmesh_proxy_connections_total in /metrics", metric)
}

// parseMetricLine splits a Prometheus text-format sample line.
func parseMetricLine(line string) (name, labels string, v float64, ok bool) {
	if line == "" || line[0] == '#' {
		return "", "", 0, false
	}
	rest := line
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", "", 0, false
		}
		name, labels, rest = line[:i], line[i+1:j], line[j+1:]
	} else {
		var found bool
		name, rest, found = strings.Cut(line, " ")
		if !found {
			return "", "", 0, false
		}
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return "", "", 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	return name, labels, v, err == nil
}

// measure runs the same loads against a started chain.
func (r *runner) measure(ctx context.Context, name string, ch *chain) (res Result) {
	c := r.cfg
	res = Result{Scenario: name, Status: StatusOK, Path: ch.path, Notes: ch.notes}
	fail := func(err error) Result {
		res.Status, res.Reason = StatusFailed, err.Error()
		return res
	}
	procs := make([]ProcStats, len(ch.procs))
	for i, p := range ch.procs {
		procs[i] = ProcStats{Name: p.Name, Role: ch.roles[i], Pid: p.Pid()}
	}
	sleepCtx(ctx, 500*time.Millisecond)
	if share0, err := takeCPUShare(); err == nil {
		defer func() {
			if share1, err := takeCPUShare(); err == nil {
				f := othersFraction(share0, share1, runtime.NumCPU())
				res.OthersCPU = f
				if f >= 0.05 {
					res.Notes = append(res.Notes, fmt.Sprintf("other processes on the machine used %.0f%% of its CPU during this scenario: its numbers are disturbed", f*100))
				}
			}
		}()
	}
	for i, p := range ch.procs {
		if n, err := p.RSS(); err == nil {
			procs[i].RSSIdle = mb(n)
		}
	}
	if ch.before != nil {
		ch.before()
	}
	outBefore := make([]int64, len(ch.procs))
	for i, p := range ch.procs {
		outBefore[i] = p.OutputBytes()
	}
	defer func() {
		for i, p := range ch.procs {
			if n := p.OutputBytes() - outBefore[i]; n > 64<<10 {
				res.Notes = append(res.Notes, fmt.Sprintf("%s wrote %d KB of logs during the loads (their cost is in its CPU)", p.Name, n>>10))
			}
		}
	}()
	var total int64 // every request sent, warm-ups included (for handshakes per 1,000)
	cpuWindow := func(run func() int64, into func(*ProcStats, float64)) {
		before := make([]time.Duration, len(ch.procs))
		for i, p := range ch.procs {
			before[i], _ = p.CPU()
		}
		n := run()
		for i, p := range ch.procs {
			after, err := p.CPU()
			if err == nil && n > 0 {
				into(&procs[i], (after-before[i]).Seconds()*1000/float64(n))
			}
		}
	}

	check := func() error {
		if err := ch.alive(); err != nil {
			return err
		}
		return ctx.Err()
	}
	stopPeak := sampleRSS(ch.procs, func(i int, v float64) { procs[i].RSSPeak = max(procs[i].RSSPeak, v) })
	defer stopPeak()

	// The open-loop runs come first, on a chain no saturating load has grown yet: RSS at
	// LoadRate is then the steady state at that rate, not what h2load's 640 concurrent
	// streams left behind. The LoadRate run also warms the chain for the Rate run.
	r.logf("%s: vegeta %d/s for %v, sampling RSS", name, c.LoadRate, c.VegetaDuration)
	stopSampling := sampleRSS(ch.procs, func(i int, v float64) { procs[i].RSSLoad = max(procs[i].RSSLoad, v) })
	cpuWindow(func() int64 {
		v, err := c.vegeta(ctx, r.dir, ch.h1, c.LoadRate)
		res.Loaded = vegetaLoad(v, err)
		total += v.Requests
		return v.Requests
	}, func(p *ProcStats, v float64) { p.CPULoad = v })
	stopSampling()
	if !res.Loaded.ok() {
		for i := range procs {
			procs[i].RSSLoad, procs[i].CPULoad = 0, 0 // sampled during no load
		}
	}
	if err := check(); err != nil {
		return fail(err)
	}

	sleepCtx(ctx, 300*time.Millisecond)
	r.logf("%s: vegeta %d/s for %v", name, c.Rate, c.VegetaDuration)
	v, err := c.vegeta(ctx, r.dir, ch.h1, c.Rate)
	res.Fixed = vegetaLoad(v, err)
	total += v.Requests
	if err := check(); err != nil {
		return fail(err)
	}

	// wrk: warm-up, then the measured run.
	sleepCtx(ctx, 300*time.Millisecond)
	if c.Wrk != "" && c.Warmup > 0 {
		r.logf("%s: wrk warm-up %v", name, c.Warmup)
		if w, _, err := c.wrk(ctx, ch.h1, c.Warmup); err == nil {
			total += w.Requests
		}
	}
	cpuWindow(func() int64 {
		r.logf("%s: wrk %v, %d connections", name, c.Duration, c.Conns)
		w, _, err := c.wrk(ctx, ch.h1, c.Duration)
		res.Wrk = wrkLoad(w, err)
		total += w.Requests
		return w.Requests
	}, func(p *ProcStats, v float64) { p.CPUWrk = v })
	if err := check(); err != nil {
		return fail(err)
	}

	sleepCtx(ctx, 300*time.Millisecond)
	cpuWindow(func() int64 {
		r.logf("%s: h2load %v, %d connections × %d streams", name, c.Duration, c.H2Conns, c.H2Streams)
		h, _, err := c.h2load(ctx, ch.h2)
		res.H2 = h2Load(h, err)
		all := h.Status2xx + h.Status3xx + h.Status4xx + h.Status5xx // warm-up included
		total += all
		return all
	}, func(p *ProcStats, v float64) { p.CPUH2 = v })
	if err := check(); err != nil {
		return fail(err)
	}
	stopPeak()
	res.Procs = procs
	if ch.tls != nil {
		res.TLS = ch.tls(total)
	}
	if ch.after != nil {
		res.Notes = append(res.Notes, ch.after())
	}
	return res
}

// sampleRSS passes each process's RSS in MB to record every 100ms until the returned func
// is called (which is idempotent). The process trees are listed once: scanning /proc ten
// times a second would cost the harness more CPU than it should take from the proxies.
func sampleRSS(ps []*Proc, record func(i int, mb float64)) (stop func()) {
	trees := make([][]int, len(ps))
	for i, p := range ps {
		trees[i] = p.Tree()
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			for i, tree := range trees {
				if n, err := treeRSS(tree); err == nil {
					record(i, mb(n))
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// mb converts bytes to MB (10^6 bytes, the unit of the issues' targets).
func mb(n int64) float64 { return float64(n) / 1e6 }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func wrkLoad(w WrkResult, err error) *Load {
	if err != nil {
		return &Load{Tool: "wrk", Error: err.Error()}
	}
	return &Load{Tool: "wrk", Requests: w.Requests, RPS: w.RPS, P50: ms(w.P50), P99: ms(w.P99),
		Mean: ms(w.Mean), Max: ms(w.Max), Failures: w.Failures()}
}

func h2Load(h H2loadResult, err error) *Load {
	if err != nil {
		return &Load{Tool: "h2load", Error: err.Error()}
	}
	return &Load{Tool: "h2load", Requests: h.Requests, RPS: h.RPS, Mean: ms(h.Mean), SD: ms(h.SD),
		Max: ms(h.Max), Failures: h.Failures()}
}

func vegetaLoad(v VegetaResult, err error) *Load {
	if err != nil {
		return &Load{Tool: "vegeta", Error: err.Error()}
	}
	l := &Load{Tool: "vegeta", Requests: v.Requests, RPS: v.Throughput, Sent: v.Rate, P50: ms(v.P50), P99: ms(v.P99),
		Mean: ms(v.Mean), Max: ms(v.Max), Failures: v.Failures()}
	if len(v.Errors) > 0 {
		l.FirstFailure = v.Errors[0]
	}
	return l
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
