package sidecar

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

type answer struct {
	code int
	body string
	err  error
}

func post(url string) answer {
	res, err := http.Post(url, "text/plain", nil)
	if err != nil {
		return answer{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return answer{code: res.StatusCode, body: string(b), err: err}
}

func fetch(c *http.Client, url string) answer {
	res, err := c.Get(url)
	if err != nil {
		return answer{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return answer{code: res.StatusCode, body: string(b), err: err}
}

func waitAnswer(t *testing.T, ch <-chan answer, d time.Duration, what string) answer {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case a := <-ch:
		return a
	case <-timer.C:
		t.Fatalf("%s: no answer after %v", what, d)
		return answer{}
	}
}

// slowApp is an app whose /slow requests wait until release is closed.
func slowApp(t *testing.T, name string) (app *testApp, entered <-chan struct{}, release chan struct{}) {
	in := make(chan struct{}, 16)
	release = make(chan struct{})
	app = startTestApp(t, name, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			in <- struct{}{}
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	})
	return app, in, release
}

// TestDrainInboundKeepsOutbound: POST /drain stops the inbound side from taking new
// connections and answers only once the request in flight to the app has finished, /ready
// says 503 meanwhile, and the app's outbound calls keep being served throughout and after.
func TestDrainInboundKeepsOutbound(t *testing.T) {
	testutil.CheckGoroutines(t)
	needAgent(t)
	startBackend(t, agent.URL(), "drain-api", "drain-api-1", "http", nil)
	app, entered, release := slowApp(t, "drain-web-1")
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	web := runSidecar(t, agent.URL(), func(c *Config) {
		no := false
		c.Register = &no // the launcher registers, deregisters, then drains
	}, "-service", "drain-web", "-id", "drain-web-1", "-protocol", "http",
		"-inbound", "127.0.0.1:0", "-app", app.addr, "-upstream", "drain-api=127.0.0.1:0")
	waitEndpoints(t, web, "drain-api", 1)
	admin := "http://" + web.addrs.Admin
	outbound := "http://" + web.addrs.Upstreams["drain-api"] + "/"
	c := &http.Client{Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()

	slow := make(chan answer, 1)
	go func() { slow <- fetch(c, "http://"+web.addrs.Inbound+"/slow") }()
	timer := time.NewTimer(5 * time.Second)
	select {
	case <-entered:
		timer.Stop()
	case <-timer.C:
		t.Fatal("the slow request never reached the app")
	}

	drained := make(chan answer, 1)
	go func() { drained <- post(admin + "/drain") }()
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if a := fetch(c, admin+"/ready"); a.code != http.StatusServiceUnavailable {
			return fmt.Errorf("/ready while draining: %d %q %v", a.code, a.body, a.err)
		}
		return nil
	})
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		conn, err := net.DialTimeout("tcp", web.addrs.Inbound, time.Second)
		if err == nil {
			conn.Close()
			return fmt.Errorf("the inbound listener still accepts")
		}
		return nil
	})
	// Outbound serves the app while the inbound side drains.
	for i := 0; i < 5; i++ {
		if a := fetch(c, outbound); a.err != nil || a.code != 200 {
			t.Fatalf("outbound call while draining: %d %q %v", a.code, a.body, a.err)
		}
	}
	stillWaiting := time.NewTimer(200 * time.Millisecond)
	select {
	case a := <-drained:
		t.Fatalf("/drain answered %d %q while a request was in flight", a.code, a.body)
	case <-stillWaiting.C:
	}

	close(release)
	if a := waitAnswer(t, slow, 5*time.Second, "the in-flight request"); a.err != nil || a.code != 200 || a.body != "done /slow" {
		t.Errorf("the request in flight during the drain: %d %q %v", a.code, a.body, a.err)
	}
	if a := waitAnswer(t, drained, 5*time.Second, "/drain"); a.err != nil || a.code != 200 {
		t.Fatalf("/drain: %d %q %v", a.code, a.body, a.err)
	}
	// A second call gets the same answer at once; outbound still serves until SIGTERM.
	if a := post(admin + "/drain"); a.code != 200 {
		t.Errorf("second /drain: %d %q %v", a.code, a.body, a.err)
	}
	if a := fetch(c, outbound); a.err != nil || a.code != 200 {
		t.Errorf("outbound call after the drain: %d %q %v", a.code, a.body, a.err)
	}
	if a := fetch(c, admin+"/ready"); a.code != http.StatusServiceUnavailable || a.body != "draining\n" {
		t.Errorf("/ready after the drain: %d %q", a.code, a.body)
	}
	web.stop(t)
}

// TestDrainDeadline: a request that outlives DrainTimeout is cut and /drain answers 504; a
// sidecar without an inbound side answers 200 at once.
func TestDrainDeadline(t *testing.T) {
	testutil.CheckGoroutines(t)
	needAgent(t)
	app, entered, release := slowApp(t, "drain-stuck-1")
	defer close(release)
	sc := runSidecar(t, agent.URL(), func(c *Config) {
		no := false
		c.Register = &no
		c.DrainTimeout = Duration(300 * time.Millisecond)
	}, "-service", "drain-stuck", "-id", "drain-stuck-1", "-protocol", "http",
		"-inbound", "127.0.0.1:0", "-app", app.addr)
	c := &http.Client{Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	slow := make(chan answer, 1)
	go func() { slow <- fetch(c, "http://"+sc.addrs.Inbound+"/slow") }()
	<-entered
	began := time.Now()
	a := post("http://" + sc.addrs.Admin + "/drain")
	if a.code != http.StatusGatewayTimeout {
		t.Errorf("/drain past its deadline: %d %q %v; want 504", a.code, a.body, a.err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("/drain took %v with a 300ms drain timeout", took)
	}
	if a := waitAnswer(t, slow, 5*time.Second, "the cut request"); a.err == nil && a.code == 200 {
		t.Errorf("the request outliving the drain was answered 200: %q", a.body)
	}
	sc.stop(t)

	out := runSidecar(t, agent.URL(), nil, "-upstream", "drain-stuck=127.0.0.1:0")
	if a := post("http://" + out.addrs.Admin + "/drain"); a.code != 200 {
		t.Errorf("/drain without an inbound side: %d %q %v", a.code, a.body, a.err)
	}
	out.stop(t)
}
