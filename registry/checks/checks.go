// Package checks runs the health checks of agent-registered services, as a Consul agent does:
// TTL, HTTP and TCP checks, with Consul's thresholds (SuccessBeforePassing,
// FailuresBeforeWarning, FailuresBeforeCritical) and DeregisterCriticalServiceAfter reaping.
//
// The Manager keeps one runner per managed check of the local node. It learns what to run
// from the store: state.TopicAgentChecks wakes it whenever checks are added, removed or their
// definitions change, however that happened (agent or catalog endpoints, reaping, a restart).
// Results go back through state.Store.UpdateCheck, which writes status changes at once and
// rate-limits output-only changes.
//
// Defaults follow Consul: intervals below 1s run every 1s, probes time out after 10s, output is
// cut at 4 KiB, the reaper looks every 30s and never reaps before a check has been critical
// for 1m. Config.ReapInterval and Config.MinDeregisterAfter may be lowered (the registry's
// -reap-interval and -min-deregister-critical-after flags, and tests); that is the only way
// this package deviates from Consul.
package checks

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/podmesh/podmesh/registry/state"
)

// Consul's defaults.
const (
	DefaultMinInterval        = time.Second
	DefaultTimeout            = 10 * time.Second
	DefaultReapInterval       = 30 * time.Second
	DefaultMinDeregisterAfter = time.Minute
	DefaultOutputMaxSize      = 4096
	// UserAgent is sent by HTTP checks.
	UserAgent = "Consul Health Check"
)

// Config configures a Manager. Store is required; zero values elsewhere are the defaults.
type Config struct {
	Store *state.Store
	// MinInterval raises shorter check intervals; default DefaultMinInterval.
	MinInterval time.Duration
	// DefaultTimeout is the probe timeout of checks without one; default 10s.
	DefaultTimeout time.Duration
	// ReapInterval is how often critical services are looked at for reaping; default 30s.
	ReapInterval time.Duration
	// MinDeregisterAfter raises shorter DeregisterCriticalServiceAfter values; default 1m.
	MinDeregisterAfter time.Duration
	// OutputMaxSize caps check output in bytes; default 4096.
	OutputMaxSize int
	// OnRun, if set, is called after every probe (once its result is recorded), TTL update
	// or TTL expiry, with the check type ("ttl", "http", "tcp") and the raw result
	// ("passing", "warning", "critical"), for metrics.
	OnRun  func(kind, result string)
	Logger *slog.Logger

	// hook, when set (tests), is called at named points of the runners' work.
	hook func(point string)
}

func (c Config) withDefaults() Config {
	if c.MinInterval <= 0 {
		c.MinInterval = DefaultMinInterval
	}
	if c.DefaultTimeout <= 0 {
		c.DefaultTimeout = DefaultTimeout
	}
	if c.ReapInterval <= 0 {
		c.ReapInterval = DefaultReapInterval
	}
	if c.MinDeregisterAfter <= 0 {
		c.MinDeregisterAfter = DefaultMinDeregisterAfter
	}
	if c.OutputMaxSize <= 0 {
		c.OutputMaxSize = DefaultOutputMaxSize
	}
	if c.OnRun == nil {
		c.OnRun = func(string, string) {}
	}
	if c.hook == nil {
		c.hook = func(string) {}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Manager runs the local node's managed checks.
type Manager struct {
	cfg   Config
	store *state.Store
	log   *slog.Logger

	mu      sync.Mutex
	ctx     context.Context // Run's; nil until Run starts
	started chan struct{}   // closed when Run has started
	running map[string]*runner
	stopped bool
}

// New returns a Manager; nothing runs until Run.
func New(cfg Config) (*Manager, error) {
	if cfg.Store == nil {
		return nil, errors.New("checks: Config.Store is nil")
	}
	cfg = cfg.withDefaults()
	return &Manager{cfg: cfg, store: cfg.Store, log: cfg.Logger, running: map[string]*runner{},
		started: make(chan struct{})}, nil
}

// Run runs the checks and the reaper until ctx ends, then stops every check and returns nil.
// If the store is closed first, it stops every check and returns state.ErrClosed.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.ctx != nil || m.stopped {
		m.mu.Unlock()
		return errors.New("checks: Run called twice")
	}
	m.ctx = ctx
	close(m.started)
	m.mu.Unlock()
	defer m.stopAll()

	reap := time.NewTicker(m.cfg.ReapInterval)
	defer reap.Stop()
	for {
		var ch <-chan struct{}
		var release func()
		m.store.View(func(v *state.View) { ch, release = v.Watch(state.TopicAgentChecks) })
		m.Sync()
		select {
		case <-ch:
		case <-reap.C:
			m.reap()
		case <-ctx.Done():
			release()
			return nil
		case <-m.store.Closed():
			release()
			return state.ErrClosed
		}
		release()
		select {
		case <-m.store.Closed(): // its watches now fire at once
			return state.ErrClosed
		default:
		}
	}
}

func (m *Manager) stopAll() {
	m.mu.Lock()
	m.stopped = true
	rs := m.running
	m.running = map[string]*runner{}
	m.mu.Unlock()
	for _, r := range rs {
		r.stop()
	}
}

// sameCheck reports whether a running check still matches the stored one.
func sameCheck(a, b *state.Check) bool {
	return a.Type == b.Type && a.ServiceID == b.ServiceID && a.Definition.Equal(&b.Definition)
}

// Sync starts, restarts and stops runners so they match the managed checks in the store. Run
// calls it whenever the store reports a change to the managed checks (state.TopicAgentChecks);
// call it directly only to not wait for that. It does nothing before Run starts. Its cost is
// one pass over the local node's checks, with work only for those that changed.
func (m *Manager) Sync() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil || m.stopped {
		return
	}
	var stop []*runner
	seen := make(map[string]bool, len(m.running))
	m.store.View(func(v *state.View) {
		v.ManagedChecks(v.LocalNode(), func(c *state.Check) {
			seen[c.CheckID] = true
			r := m.running[c.CheckID]
			if r != nil && (r.check == c || sameCheck(r.check, c)) {
				return
			}
			if r != nil {
				stop = append(stop, r)
			}
			m.running[c.CheckID] = m.start(c)
		})
	})
	for id, r := range m.running {
		if !seen[id] {
			stop = append(stop, r)
			delete(m.running, id)
		}
	}
	if len(stop) > 0 {
		// Stopping waits for in-flight probes to notice; do not hold the lock meanwhile.
		m.mu.Unlock()
		for _, r := range stop {
			r.stop()
		}
		m.mu.Lock()
	}
}

// SetTTL sets a TTL check's status and output (truncated to OutputMaxSize as Consul does)
// and restarts its TTL timer.
func (m *Manager) SetTTL(ctx context.Context, checkID, status, output string) error {
	r := m.ttlRunner(checkID)
	if r == nil {
		// Run starts beside the HTTP server: an update arriving before it has started
		// waits for it rather than finding no runner (404 for a registered check).
		select {
		case <-m.started:
		case <-ctx.Done():
			return ctx.Err()
		}
		m.Sync()
		if r = m.ttlRunner(checkID); r == nil {
			return &state.NotFoundError{Kind: "TTL check", ID: checkID}
		}
	}
	return r.setTTL(ctx, status, output)
}

func (m *Manager) ttlRunner(id string) *runner {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.running[id]; r != nil && r.check.Type == state.CheckTypeTTL {
		return r
	}
	return nil
}

// Running returns the IDs of the checks being run (for tests).
func (m *Manager) Running() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.running))
	for id := range m.running {
		out = append(out, id)
	}
	return out
}

// reap deregisters every agent service with a check that has been critical for longer than
// its DeregisterCriticalServiceAfter (at least MinDeregisterAfter). It picks candidates from a
// view; the store decides again inside the write (state.Store.ReapAgentService), so a check
// that recovers meanwhile saves its service.
func (m *Manager) reap() {
	now := m.store.Now()
	var victims []string
	seen := map[string]bool{}
	m.store.View(func(v *state.View) {
		node := v.LocalNode()
		v.ManagedChecks(node, func(c *state.Check) {
			if !seen[c.ServiceID] && state.Reapable(c, v.CriticalSince(node, c.CheckID), now, m.cfg.MinDeregisterAfter) {
				seen[c.ServiceID] = true
				victims = append(victims, c.ServiceID)
			}
		})
	})
	if len(victims) > 0 {
		m.cfg.hook("reap-decided")
	}
	defer m.cfg.hook("reap-done")
	reaped := false
	for _, id := range victims {
		ok, err := m.store.ReapAgentService(m.ctx, id, m.cfg.MinDeregisterAfter)
		switch {
		case err != nil:
			m.log.Warn("reaping critical service failed", "service", id, "err", err)
		case ok:
			reaped = true
			m.log.Info("deregistered service whose check stayed critical", "service", id)
		}
	}
	if reaped {
		m.Sync()
	}
}

// runner runs one check.
type runner struct {
	m      *Manager
	check  *state.Check
	ctx    context.Context // ends when the runner is stopped
	cancel context.CancelFunc
	done   chan struct{}

	// TTL checks. mu is held across the store writes of setTTL and expire, so that they
	// reach the store in the order they were decided: an expiry can never land after a pass
	// that was acknowledged. deadline is when the current TTL runs out.
	mu         sync.Mutex
	timer      *time.Timer
	deadline   time.Time
	lastOutput string

	// Threshold counters (HTTP, TCP), touched only by the runner's goroutine.
	successes, failures int
}

// start starts a runner for c; m.mu is held.
func (m *Manager) start(c *state.Check) *runner {
	ctx, cancel := context.WithCancel(m.ctx)
	r := &runner{m: m, check: c, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	// Consul starts the counters at their thresholds, so the first result counts at once.
	r.successes = c.Definition.SuccessBeforePassing
	r.failures = c.Definition.FailuresBeforeCritical
	if c.Type == state.CheckTypeTTL {
		r.deadline = time.Now().Add(c.Definition.TTL)
		r.timer = time.AfterFunc(c.Definition.TTL, r.expire)
		close(r.done)
		return r
	}
	go r.loop(ctx)
	return r
}

func (r *runner) stop() {
	r.cancel()
	if r.timer != nil {
		r.mu.Lock()
		r.timer.Stop()
		r.mu.Unlock()
	}
	<-r.done
}

func (r *runner) update(ctx context.Context, status, output string) {
	err := r.m.store.UpdateCheck(ctx, r.check.Node, r.check.CheckID, status, output)
	if err != nil && !errors.Is(err, state.ErrNotFound) && !errors.Is(err, state.ErrClosed) && ctx.Err() == nil {
		r.m.log.Warn("recording check result failed", "check", r.check.CheckID, "err", err)
	}
}

// truncate cuts output to max bytes the way Consul reports it.
func truncate(output string, max int) string {
	if len(output) <= max {
		return output
	}
	return fmt.Sprintf("%s ... (captured %d of %d bytes)", output[:max], max, len(output))
}

func (r *runner) setTTL(ctx context.Context, status, output string) error {
	output = truncate(output, r.m.cfg.OutputMaxSize)
	r.m.cfg.OnRun(state.CheckTypeTTL, status)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.m.store.UpdateCheck(ctx, r.check.Node, r.check.CheckID, status, output); err != nil {
		return err
	}
	r.lastOutput = output
	r.deadline = time.Now().Add(r.check.Definition.TTL)
	r.timer.Reset(r.check.Definition.TTL)
	return nil
}

// expire runs when a TTL passes without an update. An update that arrives while it runs
// either waits for its write (and then overwrites it) or, having come first, moved the
// deadline, and expire then does nothing: the timer it re-armed will call expire again.
func (r *runner) expire() {
	r.m.cfg.hook("expire")
	defer r.m.cfg.hook("expire-end")
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx.Err() != nil {
		return // stopped: the check was removed or replaced
	}
	if time.Now().Before(r.deadline) {
		return // an update arrived after the timer fired
	}
	out := "TTL expired"
	if r.lastOutput != "" {
		out = "TTL expired (last output before timeout follows): " + r.lastOutput
	}
	r.m.cfg.hook("expire-write")
	r.m.cfg.OnRun(state.CheckTypeTTL, state.HealthCritical)
	r.update(r.ctx, state.HealthCritical, out)
}

// loop runs an HTTP or TCP check every interval, the first time after a random stagger in
// [0, interval) so checks registered together do not probe together.
func (r *runner) loop(ctx context.Context) {
	defer close(r.done)
	interval := max(r.check.Definition.Interval, r.m.cfg.MinInterval)
	timeout := r.check.Definition.Timeout
	if timeout <= 0 {
		timeout = r.m.cfg.DefaultTimeout
	}
	var client *http.Client
	if r.check.Type == state.CheckTypeHTTP {
		client = &http.Client{
			Timeout: timeout,
			Transport: &http.Transport{
				Proxy:             http.ProxyFromEnvironment,
				DisableKeepAlives: true, // as Consul: a kept-alive connection hides a dead listener
				TLSClientConfig: &tls.Config{
					InsecureSkipVerify: r.check.Definition.TLSSkipVerify, // the registration asked for it
					ServerName:         r.check.Definition.TLSServerName,
				},
			},
		}
		defer client.CloseIdleConnections()
	}
	t := time.NewTimer(rand.N(interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var status, output string
		if client != nil {
			status, output = r.probeHTTP(ctx, client)
		} else {
			status, output = r.probeTCP(ctx, timeout)
		}
		if ctx.Err() != nil {
			return
		}
		r.record(ctx, status, output)
		r.m.cfg.OnRun(r.check.Type, status)
		t.Reset(interval)
	}
}

// record applies Consul's thresholds: a passing (or warning) result counts toward
// SuccessBeforePassing, a critical one toward FailuresBeforeWarning (then warning) and
// FailuresBeforeCritical (then critical); below the thresholds the status stays as it is.
func (r *runner) record(ctx context.Context, status, output string) {
	d := &r.check.Definition
	if status == state.HealthPassing || status == state.HealthWarning {
		r.successes++
		r.failures = 0
		if r.successes >= d.SuccessBeforePassing {
			r.update(ctx, status, output)
		}
		return
	}
	r.failures++
	r.successes = 0
	warnAfter := d.FailuresBeforeWarning
	if warnAfter == 0 {
		warnAfter = d.FailuresBeforeCritical
	}
	switch {
	case r.failures >= d.FailuresBeforeCritical:
		r.update(ctx, status, output)
	case r.failures >= warnAfter:
		r.update(ctx, state.HealthWarning, output)
	}
}

func (r *runner) probeHTTP(ctx context.Context, client *http.Client) (status, output string) {
	d := &r.check.Definition
	method := d.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, d.HTTP, strings.NewReader(d.Body))
	if err != nil {
		return state.HealthCritical, err.Error()
	}
	for k, vs := range d.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if host := req.Header.Get("Host"); host != "" {
		req.Host = host
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", UserAgent)
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "text/plain, text/*, */*")
	}
	resp, err := client.Do(req)
	if err != nil {
		return state.HealthCritical, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, int64(r.m.cfg.OutputMaxSize)))
	output = fmt.Sprintf("HTTP %s %s: %s Output: %s", method, d.HTTP, resp.Status, body)
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode <= 299:
		return state.HealthPassing, output
	case resp.StatusCode == http.StatusTooManyRequests:
		return state.HealthWarning, output
	default:
		return state.HealthCritical, output
	}
}

func (r *runner) probeTCP(ctx context.Context, timeout time.Duration) (status, output string) {
	addr := r.check.Definition.TCP
	dialer := net.Dialer{Timeout: timeout}
	conn, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return state.HealthCritical, err.Error()
	}
	conn.Close()
	return state.HealthPassing, fmt.Sprintf("TCP connect %s: Success", addr)
}
