// Command loadgen is the shop demo's load generator: GET a URL at a fixed rate for a fixed
// time, record the status, latency and X-Catalog header (the catalog replica that served
// it) of every answer, and print a summary: requests, errors, latency percentiles, how the
// answers spread over the catalog replicas.
//
//	loadgen -url http://127.0.0.1:18080/ -rate 100 -duration 3s
//
// It exits 1 when more than -max-errors requests failed (a transport error or a status
// other than 200), so a script can assert "no failed request".
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	var c config
	flag.StringVar(&c.url, "url", "http://127.0.0.1:18080/", "URL to GET")
	flag.IntVar(&c.rate, "rate", 100, "requests per second (open loop: one starts every 1/rate, whatever the answers)")
	flag.DurationVar(&c.duration, "duration", 3*time.Second, "how long to send")
	flag.DurationVar(&c.timeout, "timeout", 5*time.Second, "per-request timeout")
	flag.IntVar(&c.maxInFlight, "max-in-flight", 256, "requests in flight at most; beyond, a tick is counted as an error")
	flag.IntVar(&c.maxErrors, "max-errors", 0, "exit 1 when more requests than this failed")
	flag.StringVar(&c.label, "label", "load", "name of this run in the summary")
	flag.Parse()
	if err := c.check(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	results := run(ctx, c)
	s := summarize(results)
	s.print(os.Stdout, c)
	if s.errors > c.maxErrors {
		fmt.Fprintf(os.Stderr, "loadgen: %d failed requests (at most %d allowed)\n", s.errors, c.maxErrors)
		os.Exit(1)
	}
}

type config struct {
	url         string
	rate        int
	duration    time.Duration
	timeout     time.Duration
	maxInFlight int
	maxErrors   int
	label       string
}

func (c config) check() error {
	switch {
	case c.rate < 1 || c.rate > 10000:
		return fmt.Errorf("-rate %d: want 1 to 10000", c.rate)
	case c.duration <= 0 || c.duration > 10*time.Minute:
		return fmt.Errorf("-duration %v: want up to 10m", c.duration)
	case c.timeout <= 0:
		return fmt.Errorf("-timeout %v: want a positive duration", c.timeout)
	case c.maxInFlight < 1:
		return fmt.Errorf("-max-in-flight %d: want at least 1", c.maxInFlight)
	case !strings.HasPrefix(c.url, "http://") && !strings.HasPrefix(c.url, "https://"):
		return fmt.Errorf("-url %q: want an http:// URL", c.url)
	}
	return nil
}

// result is one request's outcome.
type result struct {
	at      time.Duration // since the start, when it was sent
	latency time.Duration
	status  int    // 0: no answer
	catalog string // X-Catalog
	err     string // "" when it succeeded (status 200)
}

// run sends rate×duration requests, one every 1/rate, and returns their results in the
// order they were sent.
func run(ctx context.Context, c config) []result {
	client := &http.Client{Timeout: c.timeout, Transport: &http.Transport{MaxIdleConnsPerHost: c.maxInFlight}}
	defer client.CloseIdleConnections()
	n := int(int64(c.rate) * int64(c.duration) / int64(time.Second))
	results := make([]result, n)
	sem := make(chan struct{}, c.maxInFlight)
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(c.rate)
	start := time.Now()
	t := time.NewTicker(interval)
	defer t.Stop()
	for i := 0; i < n; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				results = results[:i]
				wg.Wait()
				return results
			case <-t.C:
			}
		}
		at := time.Since(start)
		select {
		case sem <- struct{}{}:
		default:
			results[i] = result{at: at, err: fmt.Sprintf("more than %d requests in flight", c.maxInFlight)}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i] = get(ctx, client, c.url, at)
		}()
	}
	wg.Wait()
	return results
}

func get(ctx context.Context, c *http.Client, url string, at time.Duration) result {
	r := result{at: at}
	began := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		r.err = err.Error()
		return r
	}
	resp, err := c.Do(req)
	if err != nil {
		r.latency, r.err = time.Since(began), err.Error()
		return r
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	r.latency, r.status, r.catalog = time.Since(began), resp.StatusCode, resp.Header.Get("X-Catalog")
	switch {
	case err != nil:
		r.err = "reading the body: " + err.Error()
	case resp.StatusCode != http.StatusOK:
		r.err = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return r
}

// summary is what the demo prints about a run.
type summary struct {
	requests, errors int
	p50, p90, p99    time.Duration
	max              time.Duration
	statuses         map[int]int
	catalogs         map[string]int
	failures         []result // the first few
}

func summarize(rs []result) summary {
	s := summary{requests: len(rs), statuses: map[int]int{}, catalogs: map[string]int{}}
	var lat []time.Duration
	for _, r := range rs {
		s.statuses[r.status]++
		if r.err != "" {
			s.errors++
			if len(s.failures) < 5 {
				s.failures = append(s.failures, r)
			}
			continue
		}
		lat = append(lat, r.latency)
		if r.catalog != "" {
			s.catalogs[r.catalog]++
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	s.p50, s.p90, s.p99 = percentile(lat, 50), percentile(lat, 90), percentile(lat, 99)
	if len(lat) > 0 {
		s.max = lat[len(lat)-1]
	}
	return s
}

// percentile of sorted latencies, nearest rank; 0 for none.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 × n)
	return sorted[max(rank, 1)-1]
}

func (s summary) print(w io.Writer, c config) {
	pct := func(n int) float64 {
		if s.requests == 0 {
			return 0
		}
		return 100 * float64(n) / float64(s.requests)
	}
	fmt.Fprintf(w, "%s: %d requests at %d/s for %v to %s\n", c.label, s.requests, c.rate, c.duration, c.url)
	fmt.Fprintf(w, "  errors    %d (%.2f%%)\n", s.errors, pct(s.errors))
	fmt.Fprintf(w, "  latency   p50 %v  p90 %v  p99 %v  max %v\n", round(s.p50), round(s.p90), round(s.p99), round(s.max))
	var codes []int
	for code := range s.statuses {
		codes = append(codes, code)
	}
	sort.Ints(codes)
	var parts []string
	for _, code := range codes {
		name := fmt.Sprint(code)
		if code == 0 {
			name = "no answer"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", name, s.statuses[code]))
	}
	fmt.Fprintf(w, "  statuses  %s\n", strings.Join(parts, ", "))
	var names []string
	for name := range s.catalogs {
		names = append(names, name)
	}
	sort.Strings(names)
	parts = parts[:0]
	for _, name := range names {
		parts = append(parts, fmt.Sprintf("%s %d (%.1f%%)", name, s.catalogs[name], pct(s.catalogs[name])))
	}
	if len(parts) == 0 {
		parts = append(parts, "none (no X-Catalog header)")
	}
	fmt.Fprintf(w, "  catalog   %s\n", strings.Join(parts, ", "))
	for _, f := range s.failures {
		fmt.Fprintf(w, "  failed at +%v: %s\n", f.at.Round(time.Millisecond), f.err)
	}
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
