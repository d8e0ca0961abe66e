package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The samples in testdata were captured from the real tools on this project's machines
// (wrk 4.1.0, h2load nghttp2 1.52.0, vegeta v12.13.0).
func TestParseWrk(t *testing.T) {
	tests := []struct {
		file string
		want WrkResult
	}{
		{"wrk-ok.txt", WrkResult{
			Requests: 65297, Elapsed: 3090 * time.Millisecond, RPS: 21125.22,
			Mean: 3650 * time.Microsecond, Max: 64990 * time.Microsecond,
			P50: 2220 * time.Microsecond, P75: 4140 * time.Microsecond, P90: 7110 * time.Microsecond, P99: 30680 * time.Microsecond,
		}},
		{"wrk-502.txt", WrkResult{
			Requests: 33000, Elapsed: time.Second, RPS: 32931.80,
			Mean: 374440 * time.Nanosecond, Max: 18020 * time.Microsecond,
			P50: 70 * time.Microsecond, P75: 93 * time.Microsecond, P90: 437 * time.Microsecond, P99: 6450 * time.Microsecond,
			Non2xx: 33000,
		}},
		{"wrk-timeouts.txt", WrkResult{
			Requests: 15, Elapsed: 4020 * time.Millisecond, RPS: 3.73,
			Mean: 1110 * time.Millisecond, Max: 1250 * time.Millisecond,
			P50: 1210 * time.Millisecond, P75: 1240 * time.Millisecond, P90: 1250 * time.Millisecond, P99: 1250 * time.Millisecond,
			Timeouts: 5,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := ParseWrk(readTestdata(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("ParseWrk:\n got %+v\nwant %+v", got, tt.want)
			}
			if got.Failures() != tt.want.Non2xx+tt.want.Timeouts {
				t.Errorf("Failures() = %d", got.Failures())
			}
		})
	}
}

func TestParseWrkErrors(t *testing.T) {
	ok := readTestdata(t, "wrk-ok.txt")
	tests := []struct {
		name, out, wantErr string
	}{
		{"empty", "", "lacks"},
		{"no --latency", strings.Join(dropLines(ok, "Latency Distribution", "50%", "75%", "90%", "99%"), "\n"), "50%"},
		{"refused", "unable to connect to 127.0.0.1:1 Connection refused\n", "lacks"},
		{"bad unit", strings.Replace(ok, "2.22ms", "2.22xs", 1), "unknown unit"},
		{"bad count", strings.Replace(ok, "65297 requests", "6x5297 requests", 1), "request count"},
		{"bad socket errors", ok + "  Socket errors: connect 0, read zero\n", "socket errors"},
		{"negative count", strings.Replace(ok, "65297 requests", "-65297 requests", 1), "negative"},
		{"negative rate", strings.Replace(ok, "Requests/sec:  21125.22", "Requests/sec:  -1", 1), "want a rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseWrk(tt.out)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseWrk error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// dropLines returns s's lines without those containing any of subs.
func dropLines(s string, subs ...string) []string {
	var out []string
outer:
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) {
				continue outer
			}
		}
		out = append(out, l)
	}
	return out
}

func TestParseH2load(t *testing.T) {
	tests := []struct {
		file         string
		want         H2loadResult
		wantFailures int64
	}{
		{"h2load-ok.txt", H2loadResult{
			Requests: 49712, Succeeded: 49712, Status2xx: 49777, RPS: 16570.67, Elapsed: 4020 * time.Millisecond,
			Min: 115 * time.Microsecond, Max: 169390 * time.Microsecond, Mean: 38350 * time.Microsecond, SD: 25870 * time.Microsecond,
		}, 0},
		{"h2load-502.txt", H2loadResult{
			Requests: 100, Failed: 100, Status5xx: 100, RPS: 3602.44, Elapsed: 27760 * time.Microsecond,
			Min: 58 * time.Microsecond, Max: 2740 * time.Microsecond, Mean: 557 * time.Microsecond, SD: 786 * time.Microsecond,
		}, 100},
		{"h2load-refused.txt", H2loadResult{
			Requests: 10, Failed: 10, Errored: 10, Elapsed: 4370 * time.Microsecond,
		}, 10},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := ParseH2load(readTestdata(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("ParseH2load:\n got %+v\nwant %+v", got, tt.want)
			}
			if got.Failures() != tt.wantFailures {
				t.Errorf("Failures() = %d, want %d", got.Failures(), tt.wantFailures)
			}
		})
	}
}

func TestParseH2loadErrors(t *testing.T) {
	ok := readTestdata(t, "h2load-ok.txt")
	tests := []struct {
		name, out, wantErr string
	}{
		{"empty", "", "lacks"},
		{"no request time", strings.Join(dropLines(ok, "time for request"), "\n"), "lacks"},
		{"bad rate", strings.Replace(ok, "16570.67 req/s", "fast req/s", 1), "finished in"},
		{"bad counts", strings.Replace(ok, "49712 succeeded", "succeeded", 1), "want COUNT NAME"},
		{"short request time", strings.Replace(ok, "time for request:      115us    169.39ms     38.35ms     25.87ms    74.92%", "time for request: 1us", 1), "want min max mean sd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseH2load(tt.out)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseH2load error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseVegeta(t *testing.T) {
	got, err := ParseVegeta([]byte(readTestdata(t, "vegeta-ok.json")))
	if err != nil {
		t.Fatal(err)
	}
	if got.Requests != 2000 || got.P50 != 370790 || got.P99 != 10038802 || got.Max != 23357779 ||
		got.Min != 76675 || got.Success != 1 || got.StatusCodes["200"] != 2000 || got.Failures() != 0 {
		t.Errorf("ParseVegeta(ok) = %+v", got)
	}
	if got.Rate < 1000.48 || got.Rate > 1000.49 || got.Throughput < 1000.35 || got.Throughput > 1000.36 {
		t.Errorf("rate %v throughput %v", got.Rate, got.Throughput)
	}

	got, err = ParseVegeta([]byte(readTestdata(t, "vegeta-refused.json")))
	if err != nil {
		t.Fatal(err)
	}
	if got.Requests != 20 || got.Success != 0 || got.Failures() != 20 || got.StatusCodes["0"] != 20 ||
		len(got.Errors) != 1 || !strings.Contains(got.Errors[0], "connection refused") {
		t.Errorf("ParseVegeta(refused) = %+v", got)
	}

	for _, bad := range []string{
		``, `{`, `[]`, `{"requests": 3}`, `{"latencies": {"50th": 1}}`,
		`{"latencies": {"50th": -1, "99th": 1}, "requests": 1}`,
		`{"latencies": {"min": 5, "max": 1}, "requests": 1}`,
		`{"latencies": {}, "requests": 1, "success": 1.5}`,
		`{"latencies": {}, "requests": -1}`,
	} {
		if _, err := ParseVegeta([]byte(bad)); err == nil {
			t.Errorf("ParseVegeta(%q) succeeded", bad)
		}
	}
}

func TestParseUnitDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"492.00us", 492 * time.Microsecond, true},
		{"492µs", 492 * time.Microsecond, true},
		{"1.45ms", 1450 * time.Microsecond, true},
		{"3.00s", 3 * time.Second, true},
		{"2.5m", 150 * time.Second, true},
		{"1h", time.Hour, true},
		{"0us", 0, true},
		{"12ns", 12, true},
		{"ms", 0, false},
		{"1.2", 0, false},
		{"1.2.3ms", 0, false},
		{"-1ms", 0, false},
		{"1e400h", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, err := parseUnitDuration(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseUnitDuration(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseStat(t *testing.T) {
	// A command name with spaces and a parenthesis, as the kernel allows.
	line := "4242 (nginx: worker) p) S 4241 4241 4241 0 -1 4194624 512 0 0 0 250 130 0 0 20 0 1 0 1234 12345678 900 18446744073709551615"
	st, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != 4241 || st.cpu != 3800*time.Millisecond {
		t.Errorf("parseStat = %+v, want ppid 4241, cpu 3.8s", st)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S x 1 1 1 0 -1 0 0 0 0 0 1 1", "1 (x S 1 1 1 1 0 -1 0 0 0 0 0 1 1"} {
		if _, err := parseStat(bad); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
	// The harness's own stat parses.
	if _, err := readStat(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}

func TestParseKBField(t *testing.T) {
	status := "Name:\tnginx\nVmPeak:\t  20000 kB\nVmRSS:\t    6144 kB\nThreads:\t1\n"
	if n, err := parseRSS(status); err != nil || n != 6144<<10 {
		t.Errorf("parseRSS = %d, %v; want %d", n, err, 6144<<10)
	}
	rollup := "55d0-7ffd [rollup]\nRss:                6144 kB\nPss:                2048 kB\n"
	if n, err := parseKBField(rollup, "Pss:"); err != nil || n != 2048<<10 {
		t.Errorf("Pss = %d, %v", n, err)
	}
	for _, bad := range []string{"", "VmRSS:\t12 MB\n", "VmRSS:\tx kB\n", "Name:\tzombie\n"} {
		if _, err := parseRSS(bad); err == nil {
			t.Errorf("parseRSS(%q) succeeded", bad)
		}
	}
	if n, err := readRSS(os.Getpid()); err != nil || n <= 0 {
		t.Errorf("readRSS(self) = %d, %v", n, err)
	}
}

func TestParseMetricLine(t *testing.T) {
	tests := []struct {
		line, name, labels string
		v                  float64
		ok                 bool
	}{
		{`podmesh_proxy_connections_total{direction="inbound",service="backend-svc"} 17`, "podmesh_proxy_connections_total", `direction="inbound",service="backend-svc"`, 17, true},
		{`podmesh_tls_handshakes_total 3`, "podmesh_tls_handshakes_total", "", 3, true},
		{`x{a="}"} 2.5e3 1700000000`, "x", `a="}"`, 2500, true},
		{`# HELP x y`, "", "", 0, false},
		{``, "", "", 0, false},
		{`x`, "", "", 0, false},
		{`x{a="1"}`, "", "", 0, false},
		{`x NaNish`, "", "", 0, false},
	}
	for _, tt := range tests {
		name, labels, v, ok := parseMetricLine(tt.line)
		if ok != tt.ok || (ok && (name != tt.name || labels != tt.labels || v != tt.v)) {
			t.Errorf("parseMetricLine(%q) = %q, %q, %v, %v", tt.line, name, labels, v, ok)
		}
	}
}

func FuzzParseWrk(f *testing.F) {
	for _, name := range []string{"wrk-ok.txt", "wrk-502.txt", "wrk-timeouts.txt"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseWrk(s)
		if err == nil && (r.Requests < 0 || r.Non2xx < 0 || r.Timeouts < 0 || r.ConnectErrors < 0 ||
			r.ReadErrors < 0 || r.WriteErrors < 0 || r.RPS < 0 || r.P50 < 0 || r.P99 < 0 || r.Elapsed < 0) {
			t.Errorf("ParseWrk accepted negative values: %+v", r)
		}
	})
}

func FuzzParseH2load(f *testing.F) {
	for _, name := range []string{"h2load-ok.txt", "h2load-502.txt", "h2load-refused.txt"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseH2load(s)
		if err == nil && (r.Requests < 0 || r.Succeeded < 0 || r.Failures() < 0 || r.RPS < 0 || r.Mean < 0 || r.Status5xx < 0) {
			t.Errorf("ParseH2load accepted negative values: %+v", r)
		}
	})
}

func FuzzParseVegeta(f *testing.F) {
	for _, name := range []string{"vegeta-ok.json", "vegeta-refused.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseVegeta(b)
		if err == nil && (r.Success < 0 || r.Success > 1 || r.Max < r.Min) {
			t.Errorf("ParseVegeta accepted impossible values: %+v", r)
		}
	})
}

func TestCPUShare(t *testing.T) {
	stat := "cpu  100 5 50 1000 7 3 2 1 0 0\ncpu0 50 2 25 500 3 1 1 0 0 0\n"
	busy, err := parseProcStatBusy(stat)
	if err != nil || busy != 1610*time.Millisecond { // (100+5+50+3+2+1) ticks
		t.Errorf("parseProcStatBusy = %v, %v; want 1.61s", busy, err)
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu 1 2 x 4 5 6 7 8"} {
		if _, err := parseProcStatBusy(bad); err == nil {
			t.Errorf("parseProcStatBusy(%q) succeeded", bad)
		}
	}
	self := "77 (proxybench) S 1 77 77 0 -1 0 0 0 0 0 10 20 30 40 20 0 9 0"
	if d, err := parseSelfAndReaped(self); err != nil || d != time.Second {
		t.Errorf("parseSelfAndReaped = %v, %v; want 1s", d, err)
	}
	a := cpuShare{at: time.Unix(0, 0), busy: 10 * time.Second, ours: 4 * time.Second}
	b := cpuShare{at: time.Unix(10, 0), busy: 20 * time.Second, ours: 9 * time.Second}
	// 10s busy in 10s on 2 cores, 5s of it ours: others used 5s of 20s.
	if f := othersFraction(a, b, 2); f != 0.25 {
		t.Errorf("othersFraction = %v, want 0.25", f)
	}
	if s, err := takeCPUShare(); err != nil || s.busy <= 0 || s.ours <= 0 {
		t.Errorf("takeCPUShare = %+v, %v", s, err)
	}
}
