package harness

import (
	"slices"
	"time"
)

// Report is everything one run measured; it is printed and written as proxy.json.
type Report struct {
	Meta      Meta                          `json:"meta"`
	Scenarios []Result                      `json:"scenarios"`
	Ratios    map[string]map[string]float64 `json:"ratios"`
	Targets   []Target                      `json:"targets"`
}

// Meta describes the machine, the tools and the parameters of the run.
type Meta struct {
	Started      time.Time          `json:"started"`
	CPU          string             `json:"cpu"`
	Cores        int                `json:"cores"`
	MemGiB       float64            `json:"mem_gib"`
	Kernel       string             `json:"kernel"`
	LoadAvgStart string             `json:"loadavg_start"`
	LoadAvgEnd   string             `json:"loadavg_end"`
	Tools        map[string]string  `json:"tools"`
	Backend      string             `json:"backend"`
	BackendProbe map[string]float64 `json:"backend_probe_rps,omitempty"`
	Registry     string             `json:"registry,omitempty"`
	Params       Params             `json:"params"`
}

// Params are the load parameters, the same for every scenario.
type Params struct {
	Warmup         string `json:"warmup"`
	Duration       string `json:"duration"`
	VegetaDuration string `json:"vegeta_duration"`
	Conns          int    `json:"wrk_connections"`
	Threads        int    `json:"threads"`
	H2Conns        int    `json:"h2load_connections"`
	H2Streams      int    `json:"h2load_streams"`
	Rate           int    `json:"fixed_rate"`
	LoadRate       int    `json:"load_rate"`
	ProxyCores     int    `json:"proxy_cores"`
	Rounds         int    `json:"rounds"`
	PinLoad        string `json:"pin_load,omitempty"`
	PinSUT         string `json:"pin_sut,omitempty"`
	Quick          bool   `json:"quick"`
}

// Status values of a scenario.
const (
	StatusOK          = "ok"
	StatusSkipped     = "skipped"     // not configured (flags unset, tool missing)
	StatusUnavailable = "unavailable" // could not be started
	StatusFailed      = "failed"      // a process died during the measurements
)

// Result is one scenario's measurements (the median over rounds when Rounds > 1).
type Result struct {
	Scenario string      `json:"scenario"`
	Status   string      `json:"status"`
	Reason   string      `json:"reason,omitempty"`
	Path     string      `json:"path,omitempty"`
	Rounds   int         `json:"rounds,omitempty"`
	Wrk      *Load       `json:"wrk,omitempty"`
	H2       *Load       `json:"h2load,omitempty"`
	Fixed    *Load       `json:"vegeta_fixed,omitempty"` // at Rate
	Loaded   *Load       `json:"vegeta_load,omitempty"`  // at LoadRate
	Procs    []ProcStats `json:"processes,omitempty"`
	TLS      *TLSStats   `json:"tls,omitempty"`
	// OthersCPU is the share of the machine's CPU (all cores) that processes outside the
	// harness used during the measurements: noise.
	OthersCPU float64  `json:"others_cpu_share"`
	Notes     []string `json:"notes,omitempty"`
}

// Load is one load generator run. Latencies are in milliseconds; h2load gives no
// percentiles, so its P50/P99 stay zero and Mean/SD carry its request time.
type Load struct {
	Tool     string  `json:"tool"`
	Requests int64   `json:"requests"`
	RPS      float64 `json:"rps"`
	Sent     float64 `json:"sent_rps,omitempty"` // vegeta: the rate it managed to send at
	P50      float64 `json:"p50_ms,omitempty"`
	P99      float64 `json:"p99_ms,omitempty"`
	Mean     float64 `json:"mean_ms,omitempty"`
	SD       float64 `json:"sd_ms,omitempty"`
	Max      float64 `json:"max_ms,omitempty"`
	Failures int64   `json:"failures"`
	// FirstFailure is vegeta's first error message when some requests failed.
	FirstFailure string `json:"first_failure,omitempty"`
	Error        string `json:"error,omitempty"` // the run produced no numbers
}

// ok reports whether the run produced numbers.
func (l *Load) ok() bool { return l != nil && l.Error == "" }

// ProcStats are one measured process's (or process tree's, for nginx) CPU and memory.
type ProcStats struct {
	Name string `json:"name"`
	Role string `json:"role"` // proxy or backend
	Pid  int    `json:"pid"`
	// RSS in MB (10^6 bytes): after start, before load; the maximum sampled every 100ms
	// during the LoadRate run (the first load); and the maximum over all the loads. For
	// nginx and haproxy trees, the PSS of master and workers summed.
	RSSIdle float64 `json:"rss_idle_mb"`
	RSSLoad float64 `json:"rss_load_mb"`
	RSSPeak float64 `json:"rss_peak_mb"`
	// CPU seconds per 1,000 requests during the wrk run, the h2load run (warm-up
	// included on both sides of the division) and the LoadRate run.
	CPUWrk  float64 `json:"cpu_s_per_1k_wrk"`
	CPUH2   float64 `json:"cpu_s_per_1k_h2load"`
	CPULoad float64 `json:"cpu_s_per_1k_load"`
}

// TLSStats counts the TLS handshakes between the two proxies of an mTLS scenario.
type TLSStats struct {
	Source     string  `json:"source"`
	Handshakes int64   `json:"handshakes"`
	Resumed    int64   `json:"resumed"` // -1: unknown
	Requests   int64   `json:"requests"`
	Per1k      float64 `json:"per_1k_requests"`
	Error      string  `json:"error,omitempty"`
}

// Target is one of the issues' targets next to its measured value.
type Target struct {
	Issue    string `json:"issue"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Status   string `json:"status"` // met, not met, n/a
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// mergeRounds folds the rounds of one scenario into one Result holding the median of
// every number over the rounds that completed.
func mergeRounds(rs []Result) Result {
	var ok []Result
	for _, r := range rs {
		if r.Status == StatusOK {
			ok = append(ok, r)
		}
	}
	if len(ok) == 0 {
		return rs[0]
	}
	out := ok[0]
	out.Rounds = len(ok)
	if len(ok) == 1 {
		return out
	}
	pick := func(get func(Result) *Load) *Load {
		var ls []*Load
		for _, r := range ok {
			if l := get(r); l.ok() {
				ls = append(ls, l)
			}
		}
		if len(ls) == 0 {
			return get(ok[0])
		}
		f := func(g func(*Load) float64) float64 {
			var v []float64
			for _, l := range ls {
				v = append(v, g(l))
			}
			return median(v)
		}
		m := *ls[0]
		m.Requests = int64(f(func(l *Load) float64 { return float64(l.Requests) }))
		m.RPS = f(func(l *Load) float64 { return l.RPS })
		m.Sent = f(func(l *Load) float64 { return l.Sent })
		m.P50 = f(func(l *Load) float64 { return l.P50 })
		m.P99 = f(func(l *Load) float64 { return l.P99 })
		m.Mean = f(func(l *Load) float64 { return l.Mean })
		m.SD = f(func(l *Load) float64 { return l.SD })
		m.Max = f(func(l *Load) float64 { return l.Max })
		var fails int64
		for _, l := range ls {
			fails += l.Failures
		}
		m.Failures = fails // failures are summed, not medianed: any failure is news
		return &m
	}
	out.Wrk = pick(func(r Result) *Load { return r.Wrk })
	out.H2 = pick(func(r Result) *Load { return r.H2 })
	out.Fixed = pick(func(r Result) *Load { return r.Fixed })
	out.Loaded = pick(func(r Result) *Load { return r.Loaded })
	out.Procs = slices.Clone(ok[0].Procs)
	for i := range out.Procs {
		f := func(g func(ProcStats) float64) float64 {
			var v []float64
			for _, r := range ok {
				if i < len(r.Procs) {
					v = append(v, g(r.Procs[i]))
				}
			}
			return median(v)
		}
		p := &out.Procs[i]
		p.RSSIdle = f(func(s ProcStats) float64 { return s.RSSIdle })
		p.RSSLoad = f(func(s ProcStats) float64 { return s.RSSLoad })
		p.RSSPeak = f(func(s ProcStats) float64 { return s.RSSPeak })
		p.CPUWrk = f(func(s ProcStats) float64 { return s.CPUWrk })
		p.CPUH2 = f(func(s ProcStats) float64 { return s.CPUH2 })
		p.CPULoad = f(func(s ProcStats) float64 { return s.CPULoad })
	}
	var others []float64
	for _, r := range ok {
		others = append(others, r.OthersCPU)
	}
	out.OthersCPU = median(others)
	if out.TLS != nil {
		var per []float64
		for _, r := range ok {
			if r.TLS != nil && r.TLS.Error == "" {
				per = append(per, r.TLS.Per1k)
			}
		}
		t := *out.TLS
		if len(per) > 0 {
			t.Per1k = median(per)
		}
		out.TLS = &t
	}
	seen := map[string]bool{}
	out.Notes = nil
	for _, r := range ok {
		for _, n := range r.Notes {
			if !seen[n] {
				seen[n] = true
				out.Notes = append(out.Notes, n)
			}
		}
	}
	return out
}
