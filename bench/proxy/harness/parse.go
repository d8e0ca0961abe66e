package harness

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// WrkResult is what the harness reads from `wrk --latency` output.
type WrkResult struct {
	Requests int64         // completed requests in the run
	Elapsed  time.Duration // the run's measured length
	RPS      float64       // Requests/sec
	Mean     time.Duration // Thread Stats Latency Avg
	Max      time.Duration
	P50      time.Duration
	P75      time.Duration
	P90      time.Duration
	P99      time.Duration
	// Socket errors (connect, read, write, timeout) and responses with a status outside
	// 2xx/3xx: a proxy answering 502 quickly must not look fast.
	ConnectErrors, ReadErrors, WriteErrors, Timeouts int64
	Non2xx                                           int64
}

// Failures is the number of failed requests or socket errors in the run.
func (r WrkResult) Failures() int64 {
	return r.ConnectErrors + r.ReadErrors + r.WriteErrors + r.Timeouts + r.Non2xx
}

// ParseWrk parses the output of `wrk --latency`.
func ParseWrk(out string) (WrkResult, error) {
	var r WrkResult
	var haveRPS, haveP50, haveP99, haveTotal bool
	for raw := range strings.SplitSeq(out, "\n") {
		line := strings.TrimSpace(raw)
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case f[0] == "Latency" && len(f) >= 4: // Thread Stats: Avg Stdev Max +/-Stdev
			var err error
			if r.Mean, err = parseUnitDuration(f[1]); err != nil {
				return r, fmt.Errorf("wrk: latency avg in %q: %w", line, err)
			}
			if r.Max, err = parseUnitDuration(f[3]); err != nil {
				return r, fmt.Errorf("wrk: latency max in %q: %w", line, err)
			}
		case len(f) == 2 && strings.HasSuffix(f[0], "%"):
			d, err := parseUnitDuration(f[1])
			if err != nil {
				return r, fmt.Errorf("wrk: percentile in %q: %w", line, err)
			}
			switch f[0] {
			case "50%":
				r.P50, haveP50 = d, true
			case "75%":
				r.P75 = d
			case "90%":
				r.P90 = d
			case "99%":
				r.P99, haveP99 = d, true
			}
		case len(f) >= 4 && f[1] == "requests" && f[2] == "in":
			n, err := parseCount(f[0])
			if err != nil {
				return r, fmt.Errorf("wrk: request count in %q: %w", line, err)
			}
			d, err := parseUnitDuration(strings.TrimSuffix(f[3], ","))
			if err != nil {
				return r, fmt.Errorf("wrk: elapsed time in %q: %w", line, err)
			}
			r.Requests, r.Elapsed, haveTotal = n, d, true
		case f[0] == "Requests/sec:" && len(f) == 2:
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil || v < 0 || math.IsNaN(v) {
				return r, fmt.Errorf("wrk: %q: want a rate", line)
			}
			r.RPS, haveRPS = v, true
		case strings.HasPrefix(line, "Socket errors:"):
			// Socket errors: connect 0, read 0, write 0, timeout 0
			for part := range strings.SplitSeq(strings.TrimPrefix(line, "Socket errors:"), ",") {
				kv := strings.Fields(part)
				if len(kv) != 2 {
					return r, fmt.Errorf("wrk: socket errors %q: want NAME COUNT pairs", line)
				}
				n, err := parseCount(kv[1])
				if err != nil {
					return r, fmt.Errorf("wrk: socket errors %q: %w", line, err)
				}
				switch kv[0] {
				case "connect":
					r.ConnectErrors = n
				case "read":
					r.ReadErrors = n
				case "write":
					r.WriteErrors = n
				case "timeout":
					r.Timeouts = n
				}
			}
		case strings.HasPrefix(line, "Non-2xx or 3xx responses:"):
			n, err := parseCount(strings.TrimSpace(strings.TrimPrefix(line, "Non-2xx or 3xx responses:")))
			if err != nil {
				return r, fmt.Errorf("wrk: %q: %w", line, err)
			}
			r.Non2xx = n
		}
	}
	var missing []string
	for _, m := range []struct {
		ok   bool
		what string
	}{{haveTotal, "N requests in T"}, {haveRPS, "Requests/sec"}, {haveP50, "50% (run wrk with --latency)"}, {haveP99, "99%"}} {
		if !m.ok {
			missing = append(missing, m.what)
		}
	}
	if len(missing) > 0 {
		return r, fmt.Errorf("wrk: output lacks %s: %.200q", strings.Join(missing, ", "), out)
	}
	return r, nil
}

// H2loadResult is what the harness reads from h2load output. h2load gives no
// percentiles, only min, max, mean and standard deviation of the request time.
type H2loadResult struct {
	Requests, Succeeded, Failed, Errored, Timeout int64
	Status2xx, Status3xx, Status4xx, Status5xx    int64
	RPS                                           float64
	Elapsed                                       time.Duration
	Min, Max, Mean, SD                            time.Duration // time for request
}

// Failures is the number of requests that did not succeed (h2load counts errored within
// failed, and timeout within errored).
func (r H2loadResult) Failures() int64 { return max(r.Requests-r.Succeeded, r.Failed, 0) }

// ParseH2load parses h2load's summary.
func ParseH2load(out string) (H2loadResult, error) {
	var r H2loadResult
	var haveFinished, haveRequests, haveTime bool
	for raw := range strings.SplitSeq(out, "\n") {
		line := strings.TrimSpace(raw)
		switch {
		case strings.HasPrefix(line, "finished in "):
			// finished in 4.02s, 16570.67 req/s, 1.93MB/s
			parts := strings.Split(strings.TrimPrefix(line, "finished in "), ",")
			if len(parts) < 2 {
				return r, fmt.Errorf("h2load: %q: want 'finished in T, N req/s'", line)
			}
			d, err := parseUnitDuration(strings.TrimSpace(parts[0]))
			if err != nil {
				return r, fmt.Errorf("h2load: %q: %w", line, err)
			}
			rps, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(parts[1]), " req/s"), 64)
			if err != nil || rps < 0 || math.IsNaN(rps) {
				return r, fmt.Errorf("h2load: %q: want 'N req/s'", line)
			}
			r.Elapsed, r.RPS, haveFinished = d, rps, true
		case strings.HasPrefix(line, "requests: "):
			// requests: 100 total, 100 started, 100 done, 0 succeeded, 100 failed, 0 errored, 0 timeout
			m, err := countPairs(strings.TrimPrefix(line, "requests: "))
			if err != nil {
				return r, fmt.Errorf("h2load: %q: %w", line, err)
			}
			r.Requests, r.Succeeded, r.Failed, r.Errored, r.Timeout = m["total"], m["succeeded"], m["failed"], m["errored"], m["timeout"]
			haveRequests = true
		case strings.HasPrefix(line, "status codes: "):
			m, err := countPairs(strings.TrimPrefix(line, "status codes: "))
			if err != nil {
				return r, fmt.Errorf("h2load: %q: %w", line, err)
			}
			r.Status2xx, r.Status3xx, r.Status4xx, r.Status5xx = m["2xx"], m["3xx"], m["4xx"], m["5xx"]
		case strings.HasPrefix(line, "time for request:"):
			f := strings.Fields(strings.TrimPrefix(line, "time for request:"))
			if len(f) < 4 {
				return r, fmt.Errorf("h2load: %q: want min max mean sd", line)
			}
			var ds [4]time.Duration
			for i := range ds {
				d, err := parseUnitDuration(f[i])
				if err != nil {
					return r, fmt.Errorf("h2load: %q: %w", line, err)
				}
				ds[i] = d
			}
			r.Min, r.Max, r.Mean, r.SD = ds[0], ds[1], ds[2], ds[3]
			haveTime = true
		}
	}
	if !haveFinished || !haveRequests || !haveTime {
		return r, fmt.Errorf("h2load: output lacks the 'finished in', 'requests:' or 'time for request:' line: %.300q", out)
	}
	return r, nil
}

// countPairs parses "N name, N name, ..." into name → N.
func countPairs(s string) (map[string]int64, error) {
	m := map[string]int64{}
	for part := range strings.SplitSeq(s, ",") {
		f := strings.Fields(part)
		if len(f) != 2 {
			return nil, fmt.Errorf("%q: want COUNT NAME", strings.TrimSpace(part))
		}
		n, err := parseCount(f[0])
		if err != nil {
			return nil, fmt.Errorf("%q: %w", strings.TrimSpace(part), err)
		}
		m[f[1]] = n
	}
	return m, nil
}

// VegetaResult is what the harness reads from `vegeta report -type=json`.
type VegetaResult struct {
	Requests    int64
	Rate        float64 // requests/s sent
	Throughput  float64 // successful requests/s
	Success     float64 // ratio of 2xx/3xx
	Min, Mean   time.Duration
	P50, P90    time.Duration
	P95, P99    time.Duration
	Max         time.Duration
	StatusCodes map[string]int64
	Errors      []string
}

// Failures is the number of requests that did not succeed.
func (r VegetaResult) Failures() int64 {
	return r.Requests - int64(math.Round(r.Success*float64(r.Requests)))
}

// ParseVegeta parses `vegeta report -type=json` (latencies in nanoseconds).
func ParseVegeta(b []byte) (VegetaResult, error) {
	var raw struct {
		Latencies *struct {
			Mean int64 `json:"mean"`
			P50  int64 `json:"50th"`
			P90  int64 `json:"90th"`
			P95  int64 `json:"95th"`
			P99  int64 `json:"99th"`
			Max  int64 `json:"max"`
			Min  int64 `json:"min"`
		} `json:"latencies"`
		Requests    *int64           `json:"requests"`
		Rate        float64          `json:"rate"`
		Throughput  float64          `json:"throughput"`
		Success     float64          `json:"success"`
		StatusCodes map[string]int64 `json:"status_codes"`
		Errors      []string         `json:"errors"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return VegetaResult{}, fmt.Errorf("vegeta: decode report %.200q: %w", b, err)
	}
	if raw.Latencies == nil || raw.Requests == nil {
		return VegetaResult{}, fmt.Errorf("vegeta: report %.200q lacks latencies or requests", b)
	}
	l := raw.Latencies
	if *raw.Requests < 0 || l.Min < 0 || l.Mean < 0 || l.P50 < 0 || l.P90 < 0 || l.P95 < 0 || l.P99 < 0 ||
		l.Max < l.Min || raw.Success < 0 || raw.Success > 1 {
		return VegetaResult{}, fmt.Errorf("vegeta: report %.200q has impossible values", b)
	}
	return VegetaResult{
		Requests:    *raw.Requests,
		Rate:        raw.Rate,
		Throughput:  raw.Throughput,
		Success:     raw.Success,
		Min:         time.Duration(l.Min),
		Mean:        time.Duration(l.Mean),
		P50:         time.Duration(l.P50),
		P90:         time.Duration(l.P90),
		P95:         time.Duration(l.P95),
		P99:         time.Duration(l.P99),
		Max:         time.Duration(l.Max),
		StatusCodes: raw.StatusCodes,
		Errors:      raw.Errors,
	}, nil
}

// parseCount parses a non-negative decimal count.
func parseCount(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("count %q: negative", s)
	}
	return n, nil
}

// parseUnitDuration parses the durations wrk and h2load print: a decimal number and one
// of the units ns, us, µs, ms, s, m, h ("492.00us", "1.45ms", "3.00s", "2.5m").
func parseUnitDuration(s string) (time.Duration, error) {
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i <= 0 {
		return 0, fmt.Errorf("duration %q: want a number and a unit", s)
	}
	v, err := strconv.ParseFloat(s[:i], 64)
	if err != nil {
		return 0, fmt.Errorf("duration %q: %w", s, err)
	}
	var unit time.Duration
	switch s[i:] {
	case "ns":
		unit = time.Nanosecond
	case "us", "µs":
		unit = time.Microsecond
	case "ms":
		unit = time.Millisecond
	case "s":
		unit = time.Second
	case "m":
		unit = time.Minute
	case "h":
		unit = time.Hour
	default:
		return 0, fmt.Errorf("duration %q: unknown unit %q", s, s[i:])
	}
	d := v * float64(unit)
	if d > math.MaxInt64 || math.IsNaN(d) {
		return 0, errors.New("duration " + strconv.Quote(s) + ": out of range")
	}
	return time.Duration(math.Round(d)), nil
}
