// Package standin holds the stand-ins the launcher's tests run inside pods until the real
// sidecar (cmd/sidecar) exists: a sidecar that reads the launcher's YAML config, serves
// /ready and /drain on its admin address and forwards inbound TCP to the app; and a small
// HTTP app. Test binaries become one of them when started under a name from Names (the tests
// symlink the test binary), see Main.
//
// The stand-in sidecar implements the contract the launcher expects of the real one:
//   - GET /ready on the admin address: 200 once listening, 503 while draining.
//   - POST /drain: stop accepting inbound connections, answer 200 once the inbound
//     connections in flight have finished; outbound keeps working.
//   - SIGTERM: exit (after draining inbound if /drain was not called).
//
// Outbound, it listens on each upstream's local address and forwards each connection to a
// passing instance from the registry (round robin, trying the next instance when a dial
// fails). No mTLS, no HTTP awareness, no retries after a connection is established.
package standin

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"
)

// Names under which a test binary acts as a stand-in.
const (
	SidecarName = "standin-sidecar"
	AppName     = "standin-app"
)

// Main runs a stand-in when os.Args[0] names one, and reports whether it did and the exit
// code to end with.
func Main(ctx context.Context) (bool, int) {
	switch filepath.Base(os.Args[0]) {
	case SidecarName:
		return true, sidecar(os.Args[1:])
	case AppName:
		return true, app(ctx, os.Args[1:])
	}
	return false, 0
}

// Link creates, in dir, a symlink named name to the running executable and returns it.
func Link(dir, name string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if err := os.Symlink(exe, p); err != nil {
		return "", err
	}
	return p, nil
}

type config struct {
	ID        string `yaml:"id"`
	Inbound   string `yaml:"inbound"`
	App       string `yaml:"app"`
	Admin     string `yaml:"admin"`
	Registry  string `yaml:"registry"`
	Upstreams []struct {
		Name   string `yaml:"name"`
		Listen string `yaml:"listen"`
	} `yaml:"upstreams"`
}

func sidecar(args []string) int {
	fs := flag.NewFlagSet(SidecarName, flag.ContinueOnError)
	cfgPath := fs.String("config", "", "YAML config")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	b, err := os.ReadFile(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var c config
	if err := yaml.Unmarshal(b, &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	in, err := net.Listen("tcp", c.Inbound)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	adm, err := net.Listen("tcp", c.Admin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var (
		mu       sync.Mutex
		draining bool
		inflight sync.WaitGroup
	)
	drain := func() {
		mu.Lock()
		if !draining {
			draining = true
			in.Close()
		}
		mu.Unlock()
		inflight.Wait()
	}
	go func() {
		for {
			conn, err := in.Accept()
			if err != nil {
				return
			}
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				forward(conn, c.App)
			}()
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		d := draining
		mu.Unlock()
		if d {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println("stand-in sidecar: drain requested")
		drain()
		fmt.Fprintln(w, "drained")
	})
	go func() { _ = http.Serve(adm, mux) }()
	for _, u := range c.Upstreams {
		l, err := net.Listen("tcp", u.Listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ob := &outbound{name: u.Name, registry: c.Registry}
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				go ob.forward(conn)
			}
		}()
	}
	fmt.Printf("stand-in sidecar %s: inbound %s -> %s, admin %s\n", c.ID, c.Inbound, c.App, c.Admin)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	drain()
	fmt.Println("stand-in sidecar: exiting")
	return 0
}

func forward(conn net.Conn, to string) {
	defer conn.Close()
	up, err := net.DialTimeout("tcp", to, 5*time.Second)
	if err != nil {
		return
	}
	splice(conn, up)
}

// outbound picks passing instances of one upstream from the registry's health API.
type outbound struct {
	name, registry string
	mu             sync.Mutex
	next           int
}

func (o *outbound) instances() ([]string, error) {
	resp, err := http.Get(o.registry + "/v1/health/service/" + o.name + "?passing=1")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var entries []struct {
		Service struct {
			Address string
			Port    int
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&entries); err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		out = append(out, net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port)))
	}
	return out, nil
}

func (o *outbound) forward(conn net.Conn) {
	defer conn.Close()
	addrs, err := o.instances()
	if err != nil || len(addrs) == 0 {
		fmt.Fprintf(os.Stderr, "outbound %s: no instance (%v)\n", o.name, err)
		return
	}
	o.mu.Lock()
	start := o.next
	o.next++
	o.mu.Unlock()
	for i := range addrs {
		addr := addrs[(start+i)%len(addrs)]
		up, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			continue
		}
		splice(conn, up)
		return
	}
}

func splice(a, b net.Conn) {
	defer b.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, a); closeWrite(b); done <- struct{}{} }()
	go func() { _, _ = io.Copy(a, b); closeWrite(a); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// app is a small HTTP server: GET / answers "hello from HOSTNAME"; -alloc-mib allocates
// and touches that much memory in steps before serving (an OOM test); -exit-after ends it.
func app(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet(AppName, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "address")
	allocMiB := fs.Int("alloc-mib", 0, "MiB to allocate and touch, 8 MiB at a time")
	exitAfter := fs.Duration("exit-after", 0, "exit with status 3 after this long")
	ignoreTerm := fs.Bool("ignore-term", false, "ignore SIGTERM")
	upstream := fs.String("upstream", "", "URL whose answer GET / passes on (through the sidecar)")
	failAfter := fs.Duration("fail-after", 0, "answer 500 once it has run this long (a failing healthcheck)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	var hold [][]byte
	for i := 0; i < *allocMiB/8; i++ {
		b := make([]byte, 8<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		hold = append(hold, b)
		fmt.Printf("allocated %d MiB\n", (i+1)*8)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	host, _ := os.Hostname()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	began := time.Now()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if *failAfter > 0 && time.Since(began) > *failAfter {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		if *upstream == "" {
			fmt.Fprintf(w, "hello from %s\n", host)
			return
		}
		resp, err := client.Get(*upstream)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			http.Error(w, fmt.Sprintf("upstream %s: %v", resp.Status, err), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "%s via %s", b, host)
	})}
	go func() { _ = srv.Serve(l) }()
	fmt.Printf("stand-in app on %s (%s), holding %d MiB, env %s\n", l.Addr(), host, len(hold)*8, strings.Join(os.Environ(), " "))
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *exitAfter > 0 {
		t := time.NewTimer(*exitAfter)
		select {
		case <-t.C:
			return 3
		case <-ctx.Done():
		}
	}
	<-ctx.Done()
	fmt.Println("stand-in app: stopping on signal")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.Canceled) {
		return 1
	}
	return 0
}
