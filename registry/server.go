package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/podmesh/podmesh/registry/state"
	"github.com/podmesh/podmesh/tls/authz"
)

// Defaults of Config.
const (
	DefaultMaxBodyBytes    = 1 << 20   // JSON request bodies: 1 MiB
	DefaultMaxKVValueBytes = 512 << 10 // KV values: 512 KiB, Consul's kv_max_value_size
	DefaultQueryWait       = 5 * time.Minute
	MaxQueryWait           = 10 * time.Minute
	// Version is what /v1/agent/self reports; clients gate features on it, so it is the Consul
	// version whose API this registry follows.
	Version = "1.14.0"
)

// CheckRunner is what the API needs from the check runner (package registry/checks). The
// runner learns about added, changed and removed checks from the store itself; the API only
// hands it TTL updates, which must restart the check's timer.
type CheckRunner interface {
	// SetTTL sets a TTL check's status and output and restarts its timer.
	SetTTL(ctx context.Context, checkID, status, output string) error
}

// Config configures a Server. Store is required; zero values elsewhere mean the defaults.
type Config struct {
	Store  *state.Store
	Checks CheckRunner // nil: no checks run (TTL endpoints then write the store directly)
	// ACLToken, when set, is required (X-Consul-Token, Authorization: Bearer, or ?token=) for
	// every write and for KV reads.
	ACLToken string
	// MaxBodyBytes bounds JSON request bodies (413 beyond); default DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxKVValueBytes bounds KV values (413 beyond); default DefaultMaxKVValueBytes.
	MaxKVValueBytes int64
	// DefaultIntentionPolicy decides connections no intention matches: "allow" (the default,
	// Consul's behaviour with ACLs disabled) or "deny". Every response carries it in
	// X-Consul-Default-ACL-Policy, where sidecars read it.
	DefaultIntentionPolicy string
	// RenderCacheBytes bounds the memory of the renderings shared by watchers woken together;
	// default DefaultRenderCacheBytes.
	RenderCacheBytes int64
	// Metrics is the registry the server's metrics go to; nil: a new private one. /metrics
	// serves it.
	Metrics *prometheus.Registry
	Logger  *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxKVValueBytes <= 0 {
		c.MaxKVValueBytes = DefaultMaxKVValueBytes
	}
	if c.RenderCacheBytes <= 0 {
		c.RenderCacheBytes = DefaultRenderCacheBytes
	}
	if c.Metrics == nil {
		c.Metrics = prometheus.NewRegistry()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.DefaultIntentionPolicy == "" {
		c.DefaultIntentionPolicy = "allow"
	}
	return c
}

// Server serves the Consul-compatible HTTP API. It is an http.Handler.
type Server struct {
	cfg     Config
	store   *state.Store
	mux     *http.ServeMux
	log     *slog.Logger
	metrics *metrics
	cache   *renderCache
	token   [32]byte // sha256 of cfg.ACLToken
	leaves  *leafCache
	// policy is the default intention policy; policyHdr its X-Consul-Default-ACL-Policy value.
	policy    authz.Default
	policyHdr []string

	closing   chan struct{}
	closeOnce sync.Once
}

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("registry: Config.Store is nil")
	}
	cfg = cfg.withDefaults()
	policy, err := authz.ParseDefault(cfg.DefaultIntentionPolicy)
	if err != nil {
		return nil, fmt.Errorf("registry: Config.DefaultIntentionPolicy: %w", err)
	}
	s := &Server{
		cfg:     cfg,
		store:   cfg.Store,
		mux:     http.NewServeMux(),
		log:     cfg.Logger,
		cache:   newRenderCache(maxRenderCacheEntries, cfg.RenderCacheBytes),
		closing: make(chan struct{}),
		token:   sha256.Sum256([]byte(cfg.ACLToken)),
		leaves:  newLeafCache(),
		policy:  policy,
	}
	s.policyHdr = []string{policy.String()}
	m, err := newMetrics(cfg.Metrics, s.store)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	s.routes()
	return s, nil
}

// Metrics returns the registry the server's metrics are registered in (to add others).
func (s *Server) Metrics() *prometheus.Registry { return s.cfg.Metrics }

// CountCheckRun records a check run by kind and result, for the check runner's OnRun hook.
func (s *Server) CountCheckRun(kind, result string) {
	s.metrics.checkRuns.WithLabelValues(kind, result).Inc()
}

// Close makes every blocked query return its current result now, so an http.Server's
// Shutdown does not wait minutes for long polls. Later blocking queries return at once. A
// second Close returns net.ErrClosed.
func (s *Server) Close() error {
	err := net.ErrClosed
	s.closeOnce.Do(func() {
		close(s.closing)
		err = nil
	})
	return err
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// access is who may call a route when an ACL token is configured.
type access int

const (
	open     access = iota // no token needed
	needAuth               // token needed (writes, KV)
)

func (s *Server) handle(pattern string, acc access, h handlerFunc) {
	s.mux.Handle(pattern, s.wrap(pattern, acc, h))
}

func (s *Server) routes() {
	// Agent.
	s.handle("GET /v1/agent/self", open, s.agentSelf)
	s.handle("GET /v1/agent/members", open, s.agentMembers)
	s.handle("GET /v1/agent/services", open, s.agentServices)
	s.handle("GET /v1/agent/service/{id...}", open, s.agentService)
	s.handle("PUT /v1/agent/service/register", needAuth, s.agentServiceRegister)
	s.handle("PUT /v1/agent/service/deregister/{id...}", needAuth, s.agentServiceDeregister)
	s.handle("PUT /v1/agent/service/maintenance/{id...}", needAuth, s.agentServiceMaintenance)
	s.handle("PUT /v1/agent/maintenance", needAuth, s.agentNodeMaintenance)
	s.handle("GET /v1/agent/checks", open, s.agentChecks)
	s.handle("PUT /v1/agent/check/register", needAuth, s.agentCheckRegister)
	s.handle("PUT /v1/agent/check/deregister/{id...}", needAuth, s.agentCheckDeregister)
	s.handle("PUT /v1/agent/check/pass/{id...}", needAuth, s.agentCheckTTL(state.HealthPassing))
	s.handle("PUT /v1/agent/check/warn/{id...}", needAuth, s.agentCheckTTL(state.HealthWarning))
	s.handle("PUT /v1/agent/check/fail/{id...}", needAuth, s.agentCheckTTL(state.HealthCritical))
	s.handle("PUT /v1/agent/check/update/{id...}", needAuth, s.agentCheckUpdate)
	// Catalog.
	s.handle("PUT /v1/catalog/register", needAuth, s.catalogRegister)
	s.handle("PUT /v1/catalog/deregister", needAuth, s.catalogDeregister)
	s.handle("GET /v1/catalog/datacenters", open, s.catalogDatacenters)
	s.handle("GET /v1/catalog/nodes", open, s.catalogNodes)
	s.handle("GET /v1/catalog/services", open, s.catalogServices)
	s.handle("GET /v1/catalog/service/{name}", open, s.catalogService)
	s.handle("GET /v1/catalog/node/{name}", open, s.catalogNode)
	// Health.
	s.handle("GET /v1/health/service/{name}", open, s.healthService)
	s.handle("GET /v1/health/checks/{name}", open, s.healthChecks)
	s.handle("GET /v1/health/state/{state}", open, s.healthState)
	s.handle("GET /v1/health/node/{name}", open, s.healthNode)
	// KV.
	s.handle("GET /v1/kv/{key...}", needAuth, s.kvGet)
	s.handle("PUT /v1/kv/{key...}", needAuth, s.kvPut)
	s.handle("DELETE /v1/kv/{key...}", needAuth, s.kvDelete)
	// Connect: the mesh CA, authorization and intentions. Roots need no token (Consul's need
	// no ACL); leaves, authorization and the CA configuration (which may show a root key) do.
	s.handle("GET /v1/connect/ca/roots", open, s.caRoots)
	s.handle("GET /v1/agent/connect/ca/roots", open, s.caRoots)
	s.handle("GET /v1/agent/connect/ca/leaf/{service...}", needAuth, s.agentLeaf)
	s.handle("GET /v1/connect/ca/configuration", needAuth, s.caConfiguration)
	s.handle("PUT /v1/connect/ca/configuration", needAuth, s.caSetConfiguration)
	s.handle("POST /v1/agent/connect/authorize", needAuth, s.agentAuthorize)
	s.handle("GET /v1/connect/intentions", open, s.intentionsList)
	s.handle("POST /v1/connect/intentions", needAuth, s.intentionCreate)
	s.handle("GET /v1/connect/intentions/exact", open, s.intentionExactGet)
	s.handle("PUT /v1/connect/intentions/exact", needAuth, s.intentionExactPut)
	s.handle("DELETE /v1/connect/intentions/exact", needAuth, s.intentionExactDelete)
	s.handle("GET /v1/connect/intentions/match", open, s.intentionMatch)
	s.handle("GET /v1/connect/intentions/check", open, s.intentionCheck)
	s.handle("GET /v1/connect/intentions/{id}", open, s.intentionGet)
	s.handle("PUT /v1/connect/intentions/{id}", needAuth, s.intentionUpdate)
	s.handle("DELETE /v1/connect/intentions/{id}", needAuth, s.intentionDelete)
	// Status: single server, always its own leader.
	s.handle("GET /v1/status/leader", open, s.statusLeader)
	s.handle("GET /v1/status/peers", open, s.statusPeers)

	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Metrics, promhttp.HandlerOpts{Registry: s.cfg.Metrics}))
	s.mux.Handle("/", s.wrap("unmatched", open, s.unmatched))
}

// unmatched answers requests no route takes: 405 with Allow when the path exists for other
// methods, as Consul does, and 404 otherwise.
func (s *Server) unmatched(w http.ResponseWriter, r *http.Request) error {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, pattern := s.mux.Handler(r2); pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		return &RequestError{Status: http.StatusMethodNotAllowed, Msg: fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path)}
	}
	return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)}
}

// statusRecorder remembers the status a handler wrote, for metrics.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// wrap adds what every API route shares: metrics by route pattern (never the raw path, to
// bound label cardinality), the token check, the dc and consistency parameters, and error
// rendering.
func (s *Server) wrap(route string, acc access, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		r = r.WithContext(context.WithValue(r.Context(), queryKey{}, r.URL.Query()))
		rec := &statusRecorder{ResponseWriter: w}
		// Every response, errors and writes included, carries the default policy, as Consul's.
		rec.Header()["X-Consul-Default-Acl-Policy"] = s.policyHdr
		err := s.precheck(r, acc)
		if err == nil && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			// Every read carries the query headers (reference §0 rule 1); queries with
			// their own index overwrite X-Consul-Index.
			var idx uint64
			s.store.View(func(v *state.View) { idx = v.Index() })
			s.setQueryHeaders(rec, r, idx)
		}
		if err == nil {
			err = h(rec, r)
		}
		if err != nil {
			s.writeError(rec, r, err)
		}
		code := rec.status
		if code == 0 {
			code = http.StatusOK
		}
		s.metrics.observe(route, r.Method, code, time.Since(start))
	})
}

func (s *Server) precheck(r *http.Request, acc access) error {
	if acc == needAuth && s.cfg.ACLToken != "" {
		got := sha256.Sum256([]byte(requestToken(r)))
		if subtle.ConstantTimeCompare(got[:], s.token[:]) != 1 {
			return &RequestError{Status: http.StatusForbidden, Msg: "Permission denied: a valid token is required (X-Consul-Token, Authorization: Bearer, or ?token=)"}
		}
	}
	q := queryOf(r)
	if dc := q.Get("dc"); dc != "" && dc != s.store.Datacenter() {
		// Consul answers a datacenter it cannot reach with a 500 and this text.
		return &RequestError{Status: http.StatusInternalServerError, Field: "dc", Msg: fmt.Sprintf("No path to datacenter %q", dc)}
	}
	for _, p := range []string{"ns", "partition"} {
		if v := q.Get(p); v != "" && v != "default" {
			return badRequest(p, "%q: namespaces and partitions are not supported; only \"default\"", v)
		}
	}
	if _, stale := q["stale"]; stale {
		if _, cons := q["consistent"]; cons {
			return badRequest("stale", "Cannot specify ?stale with ?consistent, conflicting semantics.")
		}
	}
	return nil
}

type queryKey struct{}

// queryOf returns the request's parsed query parameters, parsed once per request by wrap.
func queryOf(r *http.Request) url.Values {
	if q, ok := r.Context().Value(queryKey{}).(url.Values); ok {
		return q
	}
	return r.URL.Query()
}

// requestToken returns the token from X-Consul-Token, Authorization: Bearer, or ?token=.
func requestToken(r *http.Request) string {
	if t := r.Header.Get("X-Consul-Token"); t != "" {
		return t
	}
	if a := r.Header.Get("Authorization"); a != "" {
		if scheme, tok, ok := strings.Cut(a, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
	}
	return queryOf(r).Get("token")
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	msg := err.Error()
	var re *RequestError
	var ie *state.InvalidError
	var nf *state.NotFoundError
	var mb *http.MaxBytesError
	var ce *state.ConflictError
	switch {
	case errors.As(err, &re):
		status = re.Status
	case errors.As(err, &ie):
		status = http.StatusBadRequest
	case errors.As(err, &ce):
		status = http.StatusConflict
	case errors.As(err, &nf):
		status = http.StatusNotFound
	case errors.As(err, &mb):
		status = http.StatusRequestEntityTooLarge
		msg = fmt.Sprintf("body: request body larger than the limit of %d bytes", mb.Limit)
	case errors.Is(err, state.ErrClosed):
		status = http.StatusServiceUnavailable
	}
	if status >= 500 && re == nil {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	io.WriteString(w, msg)
}

// readBody reads a request body of at most limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, err
		}
		return nil, badRequest("body", "read: %v", err)
	}
	return b, nil
}

// setQueryHeaders sets what every read carries: X-Consul-Index (never 0: clients would spin),
// X-Consul-LastContact and X-Consul-KnownLeader (the Go client stops parsing the metadata at
// the first of them missing), the effective consistency, and the default ACL policy.
func (s *Server) setQueryHeaders(w http.ResponseWriter, r *http.Request, index uint64) {
	if index == 0 {
		index = 1
	}
	// Keys are already canonical and the constant values shared: a woken watcher of a busy
	// service sets these a thousand times at once.
	h := w.Header()
	h["X-Consul-Index"] = []string{strconv.FormatUint(index, 10)}
	h["X-Consul-Lastcontact"] = hdrZero
	h["X-Consul-Knownleader"] = hdrTrue
	q := queryOf(r)
	consistency := hdrLeader
	if _, ok := q["stale"]; ok {
		consistency = hdrStale
	} else if _, ok := q["consistent"]; ok {
		consistency = hdrConsistent
	}
	h["X-Consul-Effective-Consistency"] = consistency
	h["X-Consul-Default-Acl-Policy"] = s.policyHdr
}

var (
	hdrZero, hdrTrue                   = []string{"0"}, []string{"true"}
	hdrLeader, hdrStale, hdrConsistent = []string{"leader"}, []string{"stale"}, []string{"consistent"}
	hdrJSON                            = []string{"application/json"}
)

// encodeJSON renders v, indented with ?pretty.
func encodeJSON(v any, pretty bool) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	if pretty {
		enc.SetIndent("", "    ")
	}
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("registry: encode response: %w", err)
	}
	return buf.Bytes(), nil
}

func wantPretty(r *http.Request) bool {
	v, ok := queryOf(r)["pretty"]
	return ok && (len(v) == 0 || v[0] != "0" && v[0] != "false")
}

// writeJSON writes a non-blocking read or a write's result with status 200.
func (s *Server) writeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := encodeJSON(v, wantPretty(r))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b) // a failed write means the client went away; nothing to tell it
	return nil
}

// writeOK answers a successful agent write: 200 with an empty body, as Consul.
func writeOK(w http.ResponseWriter) error {
	w.WriteHeader(http.StatusOK)
	return nil
}

// serverAddr is the Consul server RPC address clients expect from /v1/status/leader: the
// node address with Consul's server port. Nothing listens there; clients only test that a
// leader exists.
func (s *Server) serverAddr() string {
	addr := "127.0.0.1"
	s.store.View(func(v *state.View) {
		if n := v.Node(v.LocalNode()); n != nil {
			addr = n.Address
		}
	})
	return net.JoinHostPort(addr, "8300")
}

func (s *Server) statusLeader(w http.ResponseWriter, r *http.Request) error {
	return s.writeJSON(w, r, s.serverAddr())
}

func (s *Server) statusPeers(w http.ResponseWriter, r *http.Request) error {
	return s.writeJSON(w, r, []string{s.serverAddr()})
}
