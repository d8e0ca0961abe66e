package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

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
