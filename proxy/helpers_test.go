package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
)

// listen returns a loopback listener that the test closes.
func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// startInbound runs an Inbound in front of app and returns its address.
func startInbound(t testing.TB, cfg InboundConfig) (string, *Inbound) {
	t.Helper()
	in, err := NewInbound(testutil.Context(t, time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- in.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		in.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("inbound serve: %v", err)
		}
	})
	return ln.Addr().String(), in
}

// startUpstream runs an Upstream whose endpoints are eps and returns its local address.
func startUpstream(t testing.TB, cfg UpstreamConfig, eps []lb.Endpoint) (string, *Upstream) {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "backend"
	}
	if cfg.Balancer == nil {
		b, err := lb.New(lb.Config{Policy: lb.RoundRobin})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Balancer = b
	}
	u, err := NewUpstream(testutil.Context(t, time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if eps != nil {
		u.Update(eps)
	}
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- u.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		u.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("upstream serve: %v", err)
		}
	})
	return ln.Addr().String(), u
}

// endpoint describes an instance reachable at addr speaking proto.
func endpoint(id, addr string, proto Protocol) lb.Endpoint {
	return lb.Endpoint{ID: id, Address: addr, Meta: map[string]string{"protocol": string(proto)}}
}

// app is an HTTP/1.1 test backend that counts requests and names itself in a header.
type app struct {
	name  string
	addr  string
	hits  atomic.Int64
	srv   *http.Server
	close func()
}

func startApp(t testing.TB, name string, h http.HandlerFunc) *app {
	t.Helper()
	a := &app{name: name}
	ln := listen(t)
	a.addr = ln.Addr().String()
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		w.Header().Set("X-App", name)
		if h != nil {
			h(w, r)
			return
		}
		fmt.Fprintf(w, "hello from %s %s", name, r.URL.Path)
	})}
	go a.srv.Serve(ln)
	a.close = func() { a.srv.Close() }
	t.Cleanup(a.close)
	return a
}

// client is an HTTP/1.1 client with keep-alive to a local upstream address.
func client() *http.Client {
	return &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
		Timeout:   10 * time.Second,
	}
}
