// Command registry-demo walks a running registry through a short scenario with consul/api,
// printing what a blocking watch sees: instances come, change health, go into maintenance
// and go away. It starts its own tiny HTTP servers for the HTTP health checks, and exits 0 only
// if the watch saw every expected change. examples/demo.sh runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

func main() {
	addr := flag.String("registry", "127.0.0.1:8500", "`address` of the registry's HTTP API")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *addr); err != nil {
		fmt.Fprintln(os.Stderr, "registry-demo:", err)
		os.Exit(1)
	}
}

var start = time.Now()

func logf(format string, args ...any) {
	fmt.Printf("[%6.2fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// backend is a tiny HTTP server whose /health answers 200 or 500.
type backend struct {
	url     string
	healthy atomic.Bool
	srv     *http.Server
}

func newBackend() (*backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &backend{url: "http://" + ln.Addr().String() + "/health"}
	b.healthy.Store(true)
	b.srv = &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if b.healthy.Load() {
			fmt.Fprintln(w, "ok")
			return
		}
		http.Error(w, "database unreachable", http.StatusInternalServerError)
	})}
	go b.srv.Serve(ln)
	return b, nil
}

// instance is what the watch knows about one service instance.
type instance struct {
	service, status, output string
}

// watcher follows services with blocking queries and reports every change.
type watcher struct {
	mu     sync.Mutex
	state  map[string]instance // by service ID
	events int
	notify chan struct{} // closed and replaced on every change
	seen   map[string]time.Time
}

func (w *watcher) follow(ctx context.Context, c *api.Client, service string) {
	var index uint64
	for ctx.Err() == nil {
		entries, meta, err := c.Health().Service(service, "", false, (&api.QueryOptions{WaitIndex: index, WaitTime: 30 * time.Second}).WithContext(ctx))
		if err != nil {
			if ctx.Err() == nil {
				logf("watch %s: %v (retrying)", service, err)
				time.Sleep(200 * time.Millisecond)
			}
			continue
		}
		if meta.LastIndex < index {
			index = 0 // the index went backwards: start over, as Consul's docs ask
		} else {
			index = meta.LastIndex
		}
		w.update(service, entries, meta.LastIndex)
	}
}

func (w *watcher) update(service string, entries []*api.ServiceEntry, index uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := map[string]instance{}
	for _, e := range entries {
		out := ""
		for _, c := range e.Checks {
			if c.Status != api.HealthPassing && c.Output != "" {
				out = c.Output
			}
		}
		now[e.Service.ID] = instance{service: service, status: e.Checks.AggregatedStatus(), output: out}
	}
	changed := false
	for id, in := range now {
		old, ok := w.state[id]
		switch {
		case !ok:
			logf("watch  %-6s %-7s appeared, %s   (X-Consul-Index %d)", service, id, in.status, index)
		case old.status != in.status:
			detail := ""
			if in.output != "" {
				detail = fmt.Sprintf(" (%s)", firstLine(in.output))
			}
			logf("watch  %-6s %-7s %s -> %s%s   (X-Consul-Index %d)", service, id, old.status, in.status, detail, index)
		default:
			continue
		}
		w.state[id] = in
		w.seen[id+"="+in.status] = time.Now()
		changed = true
	}
	for id, old := range w.state {
		if _, ok := now[id]; !ok && old.service == service {
			logf("watch  %-6s %-7s deregistered   (X-Consul-Index %d)", service, id, index)
			delete(w.state, id)
			w.seen[id+"=gone"] = time.Now()
			changed = true
		}
	}
	if changed {
		w.events++
		close(w.notify)
		w.notify = make(chan struct{})
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 70 {
		s = s[:70] + "..."
	}
	return s
}

// await waits until the watch has seen id in status ("gone" for deregistered), and reports
// how long after since it saw it.
func (w *watcher) await(ctx context.Context, id, status string, since time.Time, timeout time.Duration) (time.Duration, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		at, ok := w.seen[id+"="+status]
		ch := w.notify
		w.mu.Unlock()
		if ok && !at.Before(since) {
			return at.Sub(since), nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return 0, fmt.Errorf("the watch did not see %s become %s within %v", id, status, timeout)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

type step struct {
	what    string
	latency time.Duration
}

func run(ctx context.Context, addr string) error {
	cfg := api.DefaultConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	if _, err := c.Agent().Self(); err != nil {
		return fmt.Errorf("registry at %s: %w", addr, err)
	}
	web1, err := newBackend()
	if err != nil {
		return err
	}
	web2, err := newBackend()
	if err != nil {
		return err
	}
	defer web1.srv.Close()
	defer web2.srv.Close()

	w := &watcher{state: map[string]instance{}, notify: make(chan struct{}), seen: map[string]time.Time{}}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, s := range []string{"web", "api"} {
		wg.Add(1)
		go func() { defer wg.Done(); w.follow(wctx, c, s) }()
	}
	defer func() { cancel(); wg.Wait() }()

	var steps []step
	var prevStart time.Time
	// do runs act and waits until the watch sees id in status. A step without an action waits
	// for something the previous step set off, so it counts from that step's start.
	do := func(what string, act func() error, id, status string, timeout time.Duration) error {
		logf("demo   %s", what)
		t0 := time.Now()
		if act == nil {
			t0 = prevStart
		} else if err := act(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		prevStart = t0
		lat, err := w.await(ctx, id, status, t0, timeout)
		if err != nil {
			return err
		}
		steps = append(steps, step{what, lat})
		return nil
	}
	agent := c.Agent()
	register := func(id string, b *backend) func() error {
		return func() error {
			return agent.ServiceRegister(&api.AgentServiceRegistration{
				ID: id, Name: "web", Port: 8080, Tags: []string{"v1"}, Meta: map[string]string{"version": "1"},
				Check: &api.AgentServiceCheck{CheckID: id + "-http", HTTP: b.url, Interval: "1s", Timeout: "1s"},
			})
		}
	}
	scenario := []struct {
		what       string
		act        func() error
		id, status string
		timeout    time.Duration
	}{
		{"register web-1 with an HTTP check every 1s (critical until probed, as in Consul)", register("web-1", web1), "web-1", "critical", 5 * time.Second},
		{"...its first HTTP probe passes", nil, "web-1", "passing", 5 * time.Second},
		{"register web-2 the same way", register("web-2", web2), "web-2", "passing", 5 * time.Second},
		{"register api-1 with a 2s TTL check, passing", func() error {
			return agent.ServiceRegister(&api.AgentServiceRegistration{ID: "api-1", Name: "api", Port: 9090,
				Check: &api.AgentServiceCheck{CheckID: "api-1-ttl", TTL: "2s", Status: api.HealthPassing}})
		}, "api-1", "passing", 5 * time.Second},
		{"...api-1 sends no heartbeat: its TTL expires", nil, "api-1", "critical", 6 * time.Second},
		{"web-2's backend starts failing its health endpoint (HTTP 500)", func() error { web2.healthy.Store(false); return nil }, "web-2", "critical", 5 * time.Second},
		{"web-2's backend recovers", func() error { web2.healthy.Store(true); return nil }, "web-2", "passing", 5 * time.Second},
		{"api-1 heartbeats again (PUT /v1/agent/check/pass)", func() error { return agent.PassTTL("api-1-ttl", "back") }, "api-1", "passing", 5 * time.Second},
		{"web-2 enters maintenance mode", func() error { return agent.EnableServiceMaintenance("web-2", "upgrading") }, "web-2", "maintenance", 5 * time.Second},
		{"web-2 leaves maintenance mode", func() error { return agent.DisableServiceMaintenance("web-2") }, "web-2", "passing", 5 * time.Second},
		{"deregister web-1", func() error { return agent.ServiceDeregister("web-1") }, "web-1", "gone", 5 * time.Second},
	}
	for _, s := range scenario {
		if err := do(s.what, s.act, s.id, s.status, s.timeout); err != nil {
			return err
		}
	}

	fmt.Println()
	fmt.Println("Summary")
	fmt.Printf("  %-84s %s\n", "step", "seen by the watch after")
	for _, s := range steps {
		fmt.Printf("  %-84s %v\n", s.what, s.latency.Round(time.Millisecond))
	}
	w.mu.Lock()
	ids := make([]string, 0, len(w.state))
	for id := range w.state {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	fmt.Printf("  watch updates with a change: %d; instances now:", w.events)
	for _, id := range ids {
		fmt.Printf(" %s=%s", id, w.state[id].status)
	}
	fmt.Println()
	w.mu.Unlock()
	if len(steps) != len(scenario) {
		return errors.New("not every step was seen")
	}
	return nil
}
