package sidecar

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/podmesh/podmesh/discovery"
	"github.com/podmesh/podmesh/lb"
	"github.com/podmesh/podmesh/tls/identity"
	"github.com/podmesh/podmesh/tracing"
)

// adminHandler serves the admin listener (loopback by default):
//
//	/live     200 while the process serves
//	/ready    200 once listeners are up, the mutual TLS material and intentions are loaded
//	          (when TLS is on, without a timeout), and every upstream's first discovery
//	          answer came (or ReadyTimeout passed); 503 before, and while draining
//	/config   the effective configuration, every upstream's endpoints and state, and the
//	          tracing export counters, as JSON
//	/metrics  Prometheus metrics
//	/drain    POST: inbound stops accepting and drains, outbound keeps serving (drain.go)
//	/debug/pprof/  Go profiles
func (s *Sidecar) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "live\n")
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := s.Ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		io.WriteString(w, why+"\n")
	})
	mux.Handle("POST /drain", s.newInboundDrain())
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Snapshot())
	})
	mux.Handle("GET /metrics", s.metricsHandler())
	// Profiles, on the admin listener only (loopback by default).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func (s *Sidecar) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})
}

// metricsOnly serves the separate -metrics listener: GET /metrics and nothing else, so
// the address Prometheus scrapes exposes no admin endpoint.
func (s *Sidecar) metricsOnly() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metricsHandler())
	return mux
}

// Snapshot is what /config shows.
type Snapshot struct {
	Config       Config             `json:"config"`
	Ready        bool               `json:"ready"`
	Status       string             `json:"status"`
	Uptime       string             `json:"uptime"`
	Addrs        Addrs              `json:"addresses"`
	Registration *RegistrationState `json:"registration,omitempty"`
	TLS          *TLSState          `json:"tls,omitempty"`
	Tracing      *TracingState      `json:"tracing,omitempty"`
	Upstreams    []UpstreamState    `json:"upstreams"`
}

// TracingState is where spans go and the export counters, when tracing is on.
type TracingState struct {
	Endpoint string `json:"endpoint"`
	tracing.Stats
}

// RegistrationState is the instance's registration and app probe.
type RegistrationState struct {
	ID         string    `json:"id"`
	Registered bool      `json:"registered"`
	Status     string    `json:"status"`
	Output     string    `json:"output"`
	LastProbe  time.Time `json:"last_probe,omitzero"`
	LastError  string    `json:"last_error,omitempty"`
}

// TLSState is the mutual TLS material in use: the leaf's identity and expiry, the trust
// bundle, the intentions, and the fetch counters.
type TLSState struct {
	Ready    bool   `json:"ready"`
	Identity string `json:"identity,omitempty"`
	identity.Stats
}

// UpstreamState is one upstream's runtime state: what it proxies as, the watch, and the
// balancer's endpoints with active requests, latency EWMA and ejection.
type UpstreamState struct {
	Name       string          `json:"name"`
	Listen     string          `json:"listen"`
	Protocol   string          `json:"protocol"`
	Discovered bool            `json:"discovered"`
	Watch      discovery.State `json:"watch"`
	Balancer   lb.Stats        `json:"balancer"`
	LB         lb.Config       `json:"lb_config"`
}

// Snapshot returns the sidecar's current state.
func (s *Sidecar) Snapshot() Snapshot {
	ok, why := s.Ready()
	snap := Snapshot{Config: s.cfg, Ready: ok, Status: why, Addrs: s.Addrs(),
		Uptime: time.Since(s.start).Round(time.Second).String(), Upstreams: []UpstreamState{}}
	if s.inbound != nil && *s.cfg.Register {
		s.health.mu.Lock()
		snap.Registration = &RegistrationState{ID: s.cfg.ID, Registered: s.health.Registered,
			Status: s.health.Status, Output: s.health.Output, LastProbe: s.health.LastProbe,
			LastError: s.health.LastError}
		s.health.mu.Unlock()
	}
	if s.ident != nil {
		st := &TLSState{Stats: s.ident.Stats()}
		select {
		case <-s.ident.Ready():
			st.Ready = true
		default:
		}
		if id, ok := s.ident.Identity(); ok {
			st.Identity = id.String()
		}
		snap.TLS = st
	}
	if s.tracer.Enabled() {
		snap.Tracing = &TracingState{Endpoint: s.tracer.Endpoint(), Stats: s.tracer.Stats()}
	}
	for _, u := range s.upstreams {
		snap.Upstreams = append(snap.Upstreams, UpstreamState{
			Name: u.cfg.Name, Listen: snap.Addrs.Upstreams[u.cfg.Name],
			Protocol: string(u.proxy.Protocol()), Discovered: u.proxy.Discovered(),
			Watch: u.watch.State(), Balancer: u.bal.Stats(), LB: u.bal.Config().WithDefaults(),
		})
	}
	return snap
}
