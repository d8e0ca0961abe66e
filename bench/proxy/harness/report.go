package harness

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// collectMeta describes the machine and the tools.
func collectMeta(ctx context.Context, c Config) Meta {
	m := Meta{
		Started:      time.Now().UTC().Truncate(time.Second),
		Cores:        runtime.NumCPU(),
		Kernel:       strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		LoadAvgStart: loadAvg(),
		Tools:        map[string]string{"go (backend, harness)": runtime.Version()},
		Params: Params{
			Warmup: c.Warmup.String(), Duration: c.Duration.String(), VegetaDuration: c.VegetaDuration.String(),
			Conns: c.Conns, Threads: c.Threads, H2Conns: c.H2Conns, H2Streams: c.H2Streams,
			Rate: c.Rate, LoadRate: c.LoadRate, ProxyCores: c.ProxyCores, Rounds: c.Rounds,
			PinLoad: c.PinLoad, PinSUT: c.PinSUT, Quick: c.Quick,
		},
	}
	for line := range strings.SplitSeq(readFile("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			m.CPU = strings.TrimSpace(v)
			break
		}
	}
	for line := range strings.SplitSeq(readFile("/proc/meminfo"), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			m.MemGiB = kb / (1 << 20)
		}
	}
	version := func(name, bin string, args ...string) {
		if bin == "" {
			m.Tools[name] = "not available"
			return
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, bin, args...).CombinedOutput() // wrk -v exits 1
		v := firstLine(string(out))
		v = strings.TrimPrefix(v, "nginx version: ")
		for _, cut := range []string{" Copyright", " - http", " (Library"} {
			if i := strings.Index(v, cut); i > 0 {
				v = v[:i]
			}
		}
		if v == "" {
			v = filepath.Base(bin)
		}
		m.Tools[name] = v
	}
	version("wrk", c.Wrk, "-v")
	version("h2load", c.H2load, "--version")
	version("nginx", c.Nginx, "-v")
	version("haproxy", c.Haproxy, "-v")
	version("openssl", c.Openssl, "version")
	if c.Vegeta != "" {
		m.Tools["vegeta"] = filepath.Base(c.Vegeta) // built from tools/vegeta: -version prints nothing useful
	} else {
		m.Tools["vegeta"] = "not available"
	}
	if existing(c.Sidecar) != "" {
		if fi, err := os.Stat(c.Sidecar); err == nil {
			m.Tools["sidecar"] = c.Sidecar + " (built " + fi.ModTime().UTC().Format(time.DateTime) + ")"
		}
	} else {
		m.Tools["sidecar"] = "not available (" + orNone(c.Sidecar, "sidecar") + ")"
	}
	return m
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func loadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func firstLine(s string) string {
	for line := range strings.SplitSeq(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			if len(line) > 80 {
				line = line[:80]
			}
			return line
		}
	}
	return ""
}

// printHeader prints the machine, tools, parameters and the caveats.
func printHeader(w io.Writer, m Meta, c Config) {
	fmt.Fprintf(w, "Podmesh proxy benchmark (bench/proxy), %s\n", m.Started.Format(time.RFC3339))
	fmt.Fprintf(w, "machine: %s, %d cores, %.1f GiB, kernel %s, load average at start %s\n", m.CPU, m.Cores, m.MemGiB, m.Kernel, m.LoadAvgStart)
	var tools []string
	for _, k := range []string{"wrk", "h2load", "vegeta", "nginx", "haproxy", "openssl", "go (backend, harness)"} {
		tools = append(tools, k+": "+m.Tools[k])
	}
	fmt.Fprintf(w, "tools:   %s\n", strings.Join(tools, "; "))
	fmt.Fprintf(w, "sidecar: %s\n", m.Tools["sidecar"])
	quick := ""
	if c.Quick {
		quick = " (QUICK=1: smoke-run durations, numbers are rough)"
	}
	warm := "without warm-up"
	if c.Warmup > 0 {
		warm = "each after a " + c.Warmup.String() + " warm-up"
	}
	fmt.Fprintf(w, "load:    wrk -t%d -c%d -d%v --latency | h2load -t%d -c%d -m%d -D%v (h2c prior knowledge to the first hop), %s\n",
		c.Threads, c.Conns, c.Duration, c.Threads, c.H2Conns, c.H2Streams, c.Duration, warm)
	fmt.Fprintf(w, "         vegeta at a fixed %d/s and %d/s for %v each (open loop, HTTP/1.1 keep-alive)%s; rounds: %d (medians)\n",
		c.Rate, c.LoadRate, c.VegetaDuration, quick, c.Rounds)
	fmt.Fprintf(w, "order:   per scenario: idle RSS, vegeta %d/s (RSS max, CPU), vegeta %d/s (the latency target), wrk, h2load (RSS peak over all)\n",
		c.LoadRate, c.Rate)
	fmt.Fprintf(w, "proxies: %d core(s) each: nginx worker_processes %d, haproxy nbthread %d, sidecar GOMAXPROCS=%d; a pair of proxies has the machine's %d cores\n",
		c.ProxyCores, c.ProxyCores, c.ProxyCores, c.ProxyCores, m.Cores)
	probe := ""
	if len(m.BackendProbe) > 0 {
		var parts []string
		for _, k := range []string{"go", "nginx"} {
			if v, ok := m.BackendProbe[k]; ok {
				parts = append(parts, fmt.Sprintf("%s %.0f req/s", k, v))
			}
		}
		probe = " (picked the faster under wrk alone: " + strings.Join(parts, ", ") + ")"
	}
	fmt.Fprintf(w, "backend: %s, %d-byte body%s\n", m.Backend, BodySize, probe)
	pin := "no CPU pinning: load generator, proxies and backend share all cores"
	if c.PinLoad != "" || c.PinSUT != "" {
		pin = fmt.Sprintf("load generators pinned to CPUs %q, backend/proxies/registry to %q", c.PinLoad, c.PinSUT)
	}
	fmt.Fprintf(w, "caveat:  %s; the load generator's CPU is taken from the proxies' budget in every scenario alike,\n", pin)
	fmt.Fprintf(w, "         so compare the ratios, not the absolute numbers. Other processes on the machine add noise: each scenario\n")
	fmt.Fprintf(w, "         reports the share of the machine's CPU they used during it (\"others' CPU\"); rerun when it is high.\n")
}

func fmtMs(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v < 1:
		return fmt.Sprintf("%.3fms", v)
	case v < 100:
		return fmt.Sprintf("%.2fms", v)
	}
	return fmt.Sprintf("%.0fms", v)
}

func fmtMB(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MB", v)
}

func fmtCPU(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.4f", v)
}

// printScenario prints one scenario's table.
func printScenario(w io.Writer, res Result, c Config) {
	fmt.Fprintf(w, "\n== %s: %s\n", res.Scenario, res.Path)
	if res.Status != StatusOK {
		fmt.Fprintf(w, "   %s: %s\n", res.Status, res.Reason)
		return
	}
	if res.Rounds > 1 {
		fmt.Fprintf(w, "   (median of %d rounds)\n", res.Rounds)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "   load\treq/s\tp50\tp99\tmean\tmax\tfailed\t")
	var errs []string
	row := func(label string, l *Load) {
		if l == nil {
			return
		}
		if l.Error != "" {
			fmt.Fprintf(tw, "   %s\tn/a\t\t\t\t\t\t\n", label)
			errs = append(errs, label+": "+trim(l.Error, 160))
			return
		}
		fmt.Fprintf(tw, "   %s\t%.0f\t%s\t%s\t%s\t%s\t%d\t\n", label, l.RPS, fmtMs(l.P50), fmtMs(l.P99), fmtMs(l.Mean), fmtMs(l.Max), l.Failures)
	}
	row(fmt.Sprintf("vegeta %d/s", c.LoadRate), res.Loaded)
	row(fmt.Sprintf("vegeta %d/s", c.Rate), res.Fixed)
	row(fmt.Sprintf("wrk HTTP/1.1, %d conns", c.Conns), res.Wrk)
	row(fmt.Sprintf("h2load h2c, %d conns × %d", c.H2Conns, c.H2Streams), res.H2)
	_ = tw.Flush()
	for _, e := range errs {
		fmt.Fprintf(w, "   n/a: %s\n", e)
	}
	for _, l := range []*Load{res.Wrk, res.H2, res.Fixed, res.Loaded} {
		if l.ok() && l.Failures > 0 {
			fmt.Fprintf(w, "   WARNING: %s had %d failed requests %s\n", l.Tool, l.Failures, trim(l.FirstFailure, 120))
		}
	}
	for _, v := range []struct {
		l    *Load
		rate int
	}{{res.Fixed, c.Rate}, {res.Loaded, c.LoadRate}} {
		if v.l.ok() && v.l.Sent < 0.95*float64(v.rate) {
			fmt.Fprintf(w, "   WARNING: vegeta could not hold %d/s (sent %.0f/s): its latencies are not at the fixed rate\n", v.rate, v.l.Sent)
		}
	}
	if len(res.Procs) > 0 {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "   process\tRSS idle\tRSS max @%d/s\tRSS peak\tCPU s/1k req: @%d/s\twrk\th2load\t\n", c.LoadRate, c.LoadRate)
		for _, p := range res.Procs {
			name := p.Name
			fmt.Fprintf(tw, "   %s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name, fmtMB(p.RSSIdle), fmtMB(p.RSSLoad), fmtMB(p.RSSPeak),
				fmtCPU(p.CPULoad), fmtCPU(p.CPUWrk), fmtCPU(p.CPUH2))
		}
		_ = tw.Flush()
	}
	if t := res.TLS; t != nil {
		if t.Error != "" {
			fmt.Fprintf(w, "   new TLS handshakes per 1,000 requests: %s (%s)\n", t.Error, t.Source)
		} else {
			resumed := ""
			if t.Resumed >= 0 {
				resumed = fmt.Sprintf(", %d of them resumed", t.Resumed)
			}
			fmt.Fprintf(w, "   new TLS handshakes per 1,000 requests: %.3f (%d handshakes%s, over %d requests; from %s)\n",
				t.Per1k, t.Handshakes, resumed, t.Requests, t.Source)
		}
	}
	for _, n := range res.Notes {
		fmt.Fprintf(w, "   note: %s\n", n)
	}
	if res.OthersCPU >= 0.05 {
		fmt.Fprintf(w, "   note: other processes on the machine used %.0f%% of its CPU during this scenario: its numbers are disturbed\n", res.OthersCPU*100)
	}
}

func trim(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// printSummary prints every scenario on one line.
func printSummary(w io.Writer, rs []Result, c Config) {
	fmt.Fprintf(w, "\n== summary\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "   scenario\twrk req/s\tp50\tp99\th2load req/s\tmean\t@%d/s p50\tp99\t@%d/s p50\tp99\tfailed\tothers' CPU\t\n", c.Rate, c.LoadRate)
	for _, r := range rs {
		if r.Status != StatusOK {
			fmt.Fprintf(tw, "   %s\t%s\t\t\t\t\t\t\t\t\t\t\n", r.Scenario, r.Status)
			continue
		}
		var fails int64
		cell := func(l *Load, f func(*Load) string) string {
			if !l.ok() {
				return "n/a"
			}
			return f(l)
		}
		rps := func(l *Load) string { return fmt.Sprintf("%.0f", l.RPS) }
		p50 := func(l *Load) string { return fmtMs(l.P50) }
		p99 := func(l *Load) string { return fmtMs(l.P99) }
		mean := func(l *Load) string { return fmtMs(l.Mean) }
		for _, l := range []*Load{r.Wrk, r.H2, r.Fixed, r.Loaded} {
			if l.ok() {
				fails += l.Failures
			}
		}
		fmt.Fprintf(tw, "   %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%.0f%%\t\n", r.Scenario,
			cell(r.Wrk, rps), cell(r.Wrk, p50), cell(r.Wrk, p99), cell(r.H2, rps), cell(r.H2, mean),
			cell(r.Fixed, p50), cell(r.Fixed, p99), cell(r.Loaded, p50), cell(r.Loaded, p99), fails, r.OthersCPU*100)
	}
	_ = tw.Flush()
}

// comparisons lists the (scenario, baseline) pairs the ratio section prints.
var comparisons = [][2]string{
	{Nginx, Direct}, {Haproxy, Direct}, {Sidecar, Direct}, {NginxMTLS, Direct}, {SidecarMTLS, Direct}, {SidecarTracing, Direct},
	{Haproxy, Nginx}, {Sidecar, Nginx}, {SidecarMTLS, Nginx},
	{NginxMTLS, Nginx}, {SidecarMTLS, NginxMTLS}, {SidecarMTLS, Sidecar},
	{SidecarTracing, Sidecar},
}

// ratios computes scenario ÷ baseline for every comparable pair.
func ratios(rs []Result) map[string]map[string]float64 {
	by := map[string]Result{}
	for _, r := range rs {
		if r.Status == StatusOK {
			by[r.Scenario] = r
		}
	}
	out := map[string]map[string]float64{}
	for _, cmp := range comparisons {
		s, okS := by[cmp[0]]
		b, okB := by[cmp[1]]
		if !okS || !okB {
			continue
		}
		m := map[string]float64{}
		div := func(key string, sl, bl *Load, f func(*Load) float64) {
			if sl.ok() && bl.ok() && f(bl) > 0 {
				m[key] = f(sl) / f(bl)
			}
		}
		rps := func(l *Load) float64 { return l.RPS }
		p50 := func(l *Load) float64 { return l.P50 }
		p99 := func(l *Load) float64 { return l.P99 }
		mean := func(l *Load) float64 { return l.Mean }
		div("wrk_rps", s.Wrk, b.Wrk, rps)
		div("wrk_p50", s.Wrk, b.Wrk, p50)
		div("wrk_p99", s.Wrk, b.Wrk, p99)
		div("h2load_rps", s.H2, b.H2, rps)
		div("h2load_mean", s.H2, b.H2, mean)
		div("fixed_p50", s.Fixed, b.Fixed, p50)
		div("fixed_p99", s.Fixed, b.Fixed, p99)
		if s.Fixed.ok() && b.Fixed.ok() {
			m["fixed_p50_added_ms"] = s.Fixed.P50 - b.Fixed.P50
			m["fixed_p99_added_ms"] = s.Fixed.P99 - b.Fixed.P99
		}
		if len(m) > 0 {
			out[cmp[0]+"/"+cmp[1]] = m
		}
	}
	return out
}

func printRatios(w io.Writer, rat map[string]map[string]float64, c Config) {
	fmt.Fprintf(w, "\n== ratios (scenario ÷ baseline, same run; req/s above 1× is faster, latency above 1× is slower)\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "   scenario ÷ baseline\twrk req/s\twrk p50\twrk p99\th2load req/s\th2load mean\t@%d/s p50\tp99\tadded p50\tadded p99\t\n", c.Rate)
	x := func(m map[string]float64, k string) string {
		if v, ok := m[k]; ok {
			return fmt.Sprintf("%.2f×", v)
		}
		return "n/a"
	}
	add := func(m map[string]float64, k string) string {
		if v, ok := m[k]; ok {
			return fmt.Sprintf("%+.3fms", v)
		}
		return "n/a"
	}
	if len(rat) == 0 {
		fmt.Fprintln(tw, "   (no scenario and baseline both measured)")
	}
	for _, cmp := range comparisons {
		key := cmp[0] + "/" + cmp[1]
		m, ok := rat[key]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "   %s ÷ %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", cmp[0], cmp[1],
			x(m, "wrk_rps"), x(m, "wrk_p50"), x(m, "wrk_p99"), x(m, "h2load_rps"), x(m, "h2load_mean"),
			x(m, "fixed_p50"), x(m, "fixed_p99"), add(m, "fixed_p50_added_ms"), add(m, "fixed_p99_added_ms"))
	}
	_ = tw.Flush()
}

// Target statuses.
const (
	Met    = "met"
	NotMet = "NOT MET"
	NA     = "n/a"
	Info   = "report"
)

// targets checks the issues' targets against the results.
func targets(rs []Result, c Config) []Target {
	by := map[string]Result{}
	for _, r := range rs {
		by[r.Scenario] = r
	}
	var out []Target
	why := func(names ...string) string {
		for _, n := range names {
			r, ok := by[n]
			switch {
			case !ok:
				return n + " not run (SCENARIOS)"
			case r.Status != StatusOK:
				return n + " " + r.Status
			}
		}
		return ""
	}
	failNote := func(ls ...*Load) string {
		for _, l := range ls {
			if l.ok() && l.Failures > 0 {
				return " (with failed requests)"
			}
		}
		return ""
	}
	throughput := func(issue, s, base string) {
		for _, tool := range []string{"wrk", "h2load"} {
			t := Target{Issue: issue, Target: fmt.Sprintf("%s throughput (%s) ≥ the %s pair's", s, tool, base)}
			if w := why(s, base); w != "" {
				t.Measured, t.Status = w, NA
				out = append(out, t)
				continue
			}
			sl, bl := by[s].Wrk, by[base].Wrk
			if tool == "h2load" {
				sl, bl = by[s].H2, by[base].H2
			}
			if !sl.ok() || !bl.ok() {
				t.Measured, t.Status = tool+" n/a", NA
				out = append(out, t)
				continue
			}
			t.Measured = fmt.Sprintf("%.0f vs %.0f req/s (%.2f×)%s", sl.RPS, bl.RPS, sl.RPS/bl.RPS, failNote(sl, bl))
			t.Status = metIf(sl.RPS >= bl.RPS && sl.Failures == 0)
			out = append(out, t)
		}
	}
	throughput("3", Sidecar, Nginx)

	t := Target{Issue: "3", Target: fmt.Sprintf("added p50 over direct at a fixed %d/s ≤ 0.2 ms", c.Rate)}
	if w := why(Sidecar, Direct); w != "" {
		t.Measured, t.Status = w, NA
	} else if s, d := by[Sidecar].Fixed, by[Direct].Fixed; !s.ok() || !d.ok() {
		t.Measured, t.Status = "vegeta n/a", NA
	} else {
		added := s.P50 - d.P50
		t.Measured = fmt.Sprintf("%+.3f ms (p50 %.3f vs %.3f ms)%s", added, s.P50, d.P50, failNote(s, d))
		t.Status = metIf(added <= 0.2 && s.Failures == 0)
	}
	out = append(out, t)

	rss := func(target string, limit float64, get func(ProcStats) float64) {
		t := Target{Issue: "3", Target: target}
		if w := why(Sidecar); w != "" {
			t.Measured, t.Status = w, NA
			out = append(out, t)
			return
		}
		var parts []string
		ok := true
		for _, p := range by[Sidecar].Procs {
			if p.Role != "proxy" {
				continue
			}
			v := get(p)
			parts = append(parts, fmt.Sprintf("%s %.1f MB", p.Name, v))
			ok = ok && v > 0 && v <= limit
		}
		if len(parts) == 0 {
			t.Measured, t.Status = "no sample", NA
		} else {
			t.Measured, t.Status = strings.Join(parts, ", "), metIf(ok)
		}
		out = append(out, t)
	}
	rss("idle RSS of each sidecar ≤ 15 MB", 15, func(p ProcStats) float64 { return p.RSSIdle })
	rss(fmt.Sprintf("RSS of each sidecar ≤ 30 MB at %d/s", c.LoadRate), 30, func(p ProcStats) float64 { return p.RSSLoad })

	throughput("4", SidecarMTLS, NginxMTLS)
	t = Target{Issue: "4", Target: "new TLS handshakes per 1,000 requests (no target; printed)", Status: Info}
	var hs []string
	for _, n := range []string{SidecarMTLS, NginxMTLS} {
		r := by[n]
		switch {
		case r.Status != StatusOK:
			hs = append(hs, n+" "+orStatus(r.Status))
		case r.TLS == nil || r.TLS.Error != "":
			hs = append(hs, n+" n/a")
		default:
			hs = append(hs, fmt.Sprintf("%s %.3f", n, r.TLS.Per1k))
		}
	}
	t.Measured = strings.Join(hs, ", ")
	out = append(out, t)

	t = Target{Issue: "6", Target: "cost of tracing at 100% sampling vs off (no target; printed)", Status: Info}
	if w := why(SidecarTracing, Sidecar); w != "" {
		t.Measured, t.Status = w, NA
	} else {
		s, b := by[SidecarTracing], by[Sidecar]
		var parts []string
		if s.Wrk.ok() && b.Wrk.ok() {
			parts = append(parts, fmt.Sprintf("wrk %.2f× req/s", s.Wrk.RPS/b.Wrk.RPS))
		}
		if s.Fixed.ok() && b.Fixed.ok() {
			parts = append(parts, fmt.Sprintf("%+.3f ms p50 at %d/s", s.Fixed.P50-b.Fixed.P50, c.Rate))
		}
		if cs, cb := cpuSum(s), cpuSum(b); cs > 0 && cb > 0 {
			parts = append(parts, fmt.Sprintf("%.2f× sidecar CPU per request at %d/s", cs/cb, c.LoadRate))
		}
		t.Measured = strings.Join(parts, ", ")
	}
	out = append(out, t)
	return out
}

func orStatus(s string) string {
	if s == "" {
		return "not run"
	}
	return s
}

// cpuSum is the proxies' CPU seconds per 1,000 requests at LoadRate.
func cpuSum(r Result) float64 {
	var s float64
	for _, p := range r.Procs {
		if p.Role == "proxy" {
			s += p.CPULoad
		}
	}
	return s
}

func metIf(ok bool) string {
	if ok {
		return Met
	}
	return NotMet
}

func printTargets(w io.Writer, ts []Target) {
	fmt.Fprintf(w, "\n== targets (a report: a missed target does not fail the run)\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "   issue\ttarget\tmeasured\tstatus")
	for _, t := range ts {
		fmt.Fprintf(tw, "   #%s\t%s\t%s\t%s\n", t.Issue, t.Target, t.Measured, t.Status)
	}
	_ = tw.Flush()
}
