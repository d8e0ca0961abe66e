package pod

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/podmesh/podmesh/launcher/netns"
)

// Cadence of checks before the first success, so a pod becomes healthy a few milliseconds
// after its app listens rather than one full interval later: the TCP check every tcpPoll,
// a compose healthcheck (a process in the pod) from firstCheck doubling up to the
// healthcheck's interval, at most maxStartupInterval. Failures in this phase do not count;
// it lasts until the first success or max(start_period, interval).
const (
	tcpPoll            = 5 * time.Millisecond
	firstCheck         = 10 * time.Millisecond
	maxStartupInterval = 250 * time.Millisecond
	// The check used when a meshed service has no healthcheck: a TCP connect to the app.
	defaultTCPInterval = time.Second
	defaultTCPTimeout  = time.Second
	defaultTCPRetries  = 3
	maxCheckOutput     = 4 << 10
	// outputGrace is how long a finished check's output may still come, from processes it
	// left behind, before the launcher stops reading it.
	outputGrace = 100 * time.Millisecond
)

type result struct {
	healthy, unhealthy bool
	output             string
}

// checker runs one run's health checks in a goroutine and reports on results.
type checker struct {
	results chan result
	cancel  context.CancelFunc
	done    chan struct{}
}

func newChecker(p *Pod, r *run) *checker {
	ctx, cancel := context.WithCancel(context.WithoutCancel(context.TODO()))
	c := &checker{results: make(chan result), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.loop(ctx, p, r)
	}()
	return c
}

func (c *checker) stop() {
	c.cancel()
	<-c.done
}

func (c *checker) send(ctx context.Context, res result) bool {
	select {
	case c.results <- res:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *checker) loop(ctx context.Context, p *Pod, r *run) {
	hc := p.cfg.Service.Healthcheck
	var check func(context.Context) (bool, string)
	var interval, timeout, startPeriod time.Duration
	var retries int
	switch {
	case hc != nil:
		interval, timeout, startPeriod, retries = hc.Interval, hc.Timeout, hc.StartPeriod, hc.Retries
		check = func(ctx context.Context) (bool, string) { return p.execCheck(ctx, r, hc.Test, timeout) }
	case p.Meshed():
		interval, timeout, startPeriod, retries = defaultTCPInterval, defaultTCPTimeout, p.cfg.ReadyTimeout, defaultTCPRetries
		addr := fmt.Sprintf("127.0.0.1:%d", p.cfg.Service.Mesh.Port)
		// One thread kept in the pod's namespace for every check (every tcpPoll while
		// the app starts), rather than a new one per check.
		d := netns.NewDialer(p.cfg.Net.Pin, -1)
		defer d.Close()
		check = func(ctx context.Context) (bool, string) {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			conn, err := d.Dial(ctx, "tcp", addr)
			if err != nil {
				return false, err.Error()
			}
			conn.Close()
			return true, "tcp " + addr + " accepts connections"
		}
	default:
		// Nothing to check: a started app counts as healthy.
		c.send(ctx, result{healthy: true, output: "started (no healthcheck)"})
		return
	}
	if interval <= 0 {
		interval = 30 * time.Second
	}
	if retries <= 0 {
		retries = 3
	}
	began := time.Now()
	startup := max(startPeriod, interval)
	succeeded := false
	fails := 0
	wait, growth := firstCheck, 2
	if hc == nil {
		wait, growth = tcpPoll, 1
		startProbing()
		defer func() {
			if !succeeded {
				stopProbing()
			}
		}()
	}
	for {
		ok, out := check(ctx)
		if ctx.Err() != nil {
			return
		}
		inStartup := !succeeded && time.Since(began) < startup
		switch {
		case ok:
			if !succeeded && hc == nil {
				stopProbing()
			}
			succeeded, fails = true, 0
			if !c.send(ctx, result{healthy: true, output: out}) {
				return
			}
		case !inStartup:
			fails++
			if fails >= retries {
				c.send(ctx, result{unhealthy: true, output: fmt.Sprintf("%d checks failed, last: %s", fails, out)})
				return
			}
		}
		next := interval
		if !succeeded && time.Since(began) < startup {
			next = min(wait, interval, maxStartupInterval)
			if hc == nil {
				next = probeEvery(next)
			}
			wait *= time.Duration(growth)
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// execCheck runs a compose healthcheck test inside the pod, through init, in the app's
// cgroup, killing it after timeout.
func (p *Pod) execCheck(ctx context.Context, r *run, test []string, timeout time.Duration) (bool, string) {
	var argv []string
	switch {
	case len(test) >= 2 && test[0] == "CMD":
		argv = test[1:]
	case len(test) == 2 && test[0] == "CMD-SHELL":
		argv = []string{"/bin/sh", "-c", test[1]}
	default:
		return false, fmt.Sprintf("unsupported healthcheck test %q", test)
	}
	spec, err := p.appSpec("health", argv)
	if err != nil {
		return false, err.Error()
	}
	rd, w, err := os.Pipe()
	if err != nil {
		return false, err.Error()
	}
	var out tail
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 4096)
		for {
			n, err := rd.Read(buf)
			out.write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	// The output ends when every process holding the pipe has: the check, and whatever it
	// left running in the background (sh -c 'daemon &'). Once the check itself is done its
	// output gets outputGrace more, then the read end is closed, so a leftover never holds
	// the check up.
	finish := func() {
		t := time.NewTimer(outputGrace)
		defer t.Stop()
		select {
		case <-read:
		case <-t.C:
		}
		rd.Close()
		<-read
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	proc, err := r.init.Spawn(sctx, spec, w, w, func(pid int) error { return p.cg.Add("app", pid) })
	w.Close()
	if err != nil {
		finish()
		return false, err.Error()
	}
	select {
	case <-proc.Done():
	case <-sctx.Done():
		_ = r.init.Signal("health", syscall.SIGKILL)
		<-proc.Done()
		finish()
		return false, fmt.Sprintf("timed out after %v", timeout)
	}
	finish()
	e := proc.Exit()
	msg := out.String()
	if !e.OK() {
		msg = e.String() + ": " + msg
	}
	return e.OK(), msg
}

// tail keeps the last maxCheckOutput bytes written to it.
type tail struct{ b []byte }

func (t *tail) write(p []byte) {
	t.b = append(t.b, p...)
	if len(t.b) > maxCheckOutput {
		t.b = t.b[len(t.b)-maxCheckOutput:]
	}
}

func (t *tail) String() string { return string(t.b) }

// probing counts the pods whose launcher is polling, every few milliseconds, their app's
// port while it starts (the sidecar's readiness is not polled: it says so on a pipe). Each probe costs the launcher (and
// the sidecar) a little CPU; with many pods starting at once on few cores, that CPU is taken
// from the very processes being waited for, so probeEvery spaces each pod's probes out as
// more pods poll together, keeping the total rate near what probingAlone pods would make.
var probing atomic.Int64

const (
	probingAlone = 4
	maxProbe     = 40 * time.Millisecond
)

func startProbing() { probing.Add(1) }
func stopProbing()  { probing.Add(-1) }

// probeEvery is the wait before a pod's next probe: base while at most probingAlone pods
// poll, growing in proportion beyond (at most maxProbe).
func probeEvery(base time.Duration) time.Duration {
	return probeInterval(base, probing.Load())
}

func probeInterval(base time.Duration, n int64) time.Duration {
	if n <= probingAlone {
		return base
	}
	return max(base, min(base*time.Duration(n)/probingAlone, maxProbe))
}
