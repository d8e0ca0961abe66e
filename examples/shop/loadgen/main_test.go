package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		var out []time.Duration
		for _, n := range ns {
			out = append(out, time.Duration(n)*time.Millisecond)
		}
		return out
	}
	for _, tt := range []struct {
		lat  []time.Duration
		p    int
		want time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 50, 7 * time.Millisecond},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{ms(1, 2, 3, 4), 99, 4 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
	} {
		if got := percentile(tt.lat, tt.p); got != tt.want {
			t.Errorf("percentile(%v, %d) = %v; want %v", tt.lat, tt.p, got, tt.want)
		}
	}
}

// TestRunAndSummary: a fixed number of requests at the rate, statuses, errors and the
// X-Catalog spread counted from a real server.
func TestRunAndSummary(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		if i%10 == 0 {
			http.Error(w, "boom", http.StatusBadGateway)
			return
		}
		w.Header().Set("X-Catalog", []string{"catalog-1", "catalog-2"}[i%2])
		w.Write([]byte("{}"))
	}))
	defer srv.Close()
	c := config{url: srv.URL, rate: 200, duration: 250 * time.Millisecond, timeout: 2 * time.Second, maxInFlight: 16, label: "test"}
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	rs := run(context.Background(), c)
	if took := time.Since(began); took < 200*time.Millisecond {
		t.Errorf("50 requests at 200/s took %v; want about 250ms", took)
	}
	s := summarize(rs)
	if s.requests != 50 || s.errors != 5 || s.statuses[200] != 45 || s.statuses[502] != 5 {
		t.Errorf("summary %+v; want 50 requests, 5 errors (every 10th is a 502)", s)
	}
	if s.catalogs["catalog-1"]+s.catalogs["catalog-2"] != 45 || s.catalogs["catalog-1"] == 0 || s.catalogs["catalog-2"] == 0 {
		t.Errorf("catalog spread %v", s.catalogs)
	}
	if s.p50 <= 0 || s.p99 < s.p50 || s.max < s.p99 {
		t.Errorf("latencies p50 %v p99 %v max %v", s.p50, s.p99, s.max)
	}
	var out bytes.Buffer
	s.print(&out, c)
	for _, want := range []string{"test: 50 requests at 200/s", "errors    5 (10.00%)", "200: 45, 502: 5", "catalog-1 ", "failed at +", "502 Bad Gateway: boom"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

func TestConfigCheck(t *testing.T) {
	good := config{url: "http://127.0.0.1:1/", rate: 10, duration: time.Second, timeout: time.Second, maxInFlight: 1}
	for _, bad := range []func(*config){
		func(c *config) { c.rate = 0 },
		func(c *config) { c.duration = 0 },
		func(c *config) { c.timeout = 0 },
		func(c *config) { c.maxInFlight = 0 },
		func(c *config) { c.url = "ftp://x" },
	} {
		c := good
		bad(&c)
		if c.check() == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
	if err := good.check(); err != nil {
		t.Errorf("good config: %v", err)
	}
}
