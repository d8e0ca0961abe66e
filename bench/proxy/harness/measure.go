package harness

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"
)

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
				res.OthersCPU = othersFraction(share0, share1, runtime.NumCPU())
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
