// Command registry-bench measures the registry beside a real Consul dev agent, in the same run
// on the same machine:
//
//   - watch fan-out: W concurrent blocking queries (GET /v1/health/service/NAME?index=&wait=,
//     exactly what consul/api's Health().Service sends) on one service; one registration (or
//     deregistration) of an instance of that service; the time from sending that write until
//     the last of the W watchers has its answer. Reported as p50 and p99 over the rounds, with
//     the median watcher beside it;
//   - registrations per second through PUT /v1/agent/service/register (one TTL check each),
//     serially from one client and from C concurrent clients.
//
// Consul runs with -dev, which keeps its state in memory; the registry fsyncs every write before
// answering. Both get the same requests over loopback HTTP. bench/registry/run.sh runs it.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

var verbose bool

type config struct {
	registryBin, consulBin string
	watchers, rounds       int
	serial, concurrent     int
	concurrency            int
	settle                 time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.registryBin, "registry", "bin/registry", "`path` of the registry binary")
	flag.StringVar(&c.consulBin, "consul", os.Getenv("PODMESH_CONSUL_BIN"), "`path` of the consul binary (default $PODMESH_CONSUL_BIN)")
	flag.IntVar(&c.watchers, "watchers", 1000, "concurrent blocking watchers on one service")
	flag.IntVar(&c.rounds, "rounds", 20, "measured fan-out rounds (after one warm-up round)")
	flag.IntVar(&c.serial, "serial", 300, "registrations in the serial run")
	flag.IntVar(&c.concurrent, "concurrent", 2000, "registrations in the concurrent run")
	flag.IntVar(&c.concurrency, "concurrency", 32, "clients in the concurrent run")
	flag.DurationVar(&c.settle, "settle", 300*time.Millisecond, "pause after the watchers are sent, so they are all blocked before the write")
	flag.BoolVar(&verbose, "v", false, "print every round")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "registry-bench:", err)
		os.Exit(1)
	}
}

type result struct {
	name                 string
	lastP50, lastP99     time.Duration // time to the last watcher, over rounds
	medianP50            time.Duration // time to the median watcher, p50 over rounds
	writeP50             time.Duration // the write's own latency
	serialRate, concRate float64
}

func run(c config) error {
	if c.consulBin == "" {
		return errors.New("no consul binary: set -consul or PODMESH_CONSUL_BIN (make bench does)")
	}
	fmt.Printf("registry benchmark: %d blocking watchers on one service, %d rounds; %d serial and %d concurrent (%d clients) registrations\n",
		c.watchers, c.rounds, c.serial, c.concurrent, c.concurrency)
	var results []result
	for _, t := range []struct {
		name  string
		start func(dir string) (*server, error)
	}{
		{"registry", func(dir string) (*server, error) { return startRegistry(c.registryBin, dir) }},
		{"consul-1.14.0 -dev", func(dir string) (*server, error) { return startConsul(c.consulBin, dir) }},
	} {
		dir, err := os.MkdirTemp("", "registry-bench-")
		if err != nil {
			return err
		}
		srv, err := t.start(dir)
		if err != nil {
			os.RemoveAll(dir)
			return fmt.Errorf("%s: %w", t.name, err)
		}
		fmt.Printf("\n%s at %s\n", t.name, srv.addr)
		res, err := measure(c, srv)
		srv.stop()
		os.RemoveAll(dir)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		res.name = t.name
		results = append(results, res)
	}
	report(results)
	return nil
}

type server struct {
	addr   string
	cmd    *exec.Cmd
	out    *bytes.Buffer
	exited chan struct{}
}

var errExited = errors.New("process exited")

func (s *server) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-s.exited:
	case <-t.C:
		s.cmd.Process.Kill()
		<-s.exited
	}
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return p, nil
}

func startProcess(addr string, bin string, args ...string) (*server, error) {
	out := &bytes.Buffer{}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{addr: addr, cmd: cmd, out: out, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return nil, fmt.Errorf("exited early: %w; output:\n%s", errExited, out.String())
		default:
		}
		resp, err := http.Get("http://" + addr + "/v1/status/leader")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && len(b) > 2 && string(b) != "\"\"" {
				// Consul also needs its own node in the catalog before agent registrations sync.
				resp, err := http.Get("http://" + addr + "/v1/catalog/nodes")
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if strings.Contains(string(b), `"Node"`) {
						return s, nil
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.stop()
	return nil, fmt.Errorf("did not become ready; output:\n%s", out.String())
}

func startRegistry(bin, dir string) (*server, error) {
	p, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + p
	return startProcess(addr, bin, "-http", addr, "-data", filepath.Join(dir, "data"), "-node", "bench", "-log-level", "warn")
}

// startConsul starts the Consul dev agent, on new ports if another process took one between
// choosing and binding it.
func startConsul(bin, dir string) (*server, error) {
	for attempt := 1; ; attempt++ {
		s, err := tryStartConsul(bin, dir)
		if err == nil || attempt == 3 || !errors.Is(err, errExited) {
			return s, err
		}
	}
}

func tryStartConsul(bin, dir string) (*server, error) {
	var ports [4]string
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	addr := "127.0.0.1:" + ports[0]
	// Consul limits HTTP connections per client address to 200 by default; the watchers
	// all come from 127.0.0.1 (reference §0 rule 9), so lift the limit.
	return startProcess(addr, bin, "agent", "-dev", "-node", "bench", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", ports[0], "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-serf-lan-port", ports[1], "-serf-wan-port", ports[2], "-server-port", ports[3],
		"-data-dir", dir, "-log-level", "warn", "-hcl", "limits { http_max_conns_per_client = 4096 }")
}

// client is shared by all watchers: one kept-alive connection per watcher.
func newClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{
			MaxIdleConns:        conns * 2,
			MaxIdleConnsPerHost: conns * 2,
			IdleConnTimeout:     5 * time.Minute,
			DisableCompression:  true,
		},
	}
}

func do(cl *http.Client, method, url, body string) (int, http.Header, []byte, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

func indexOf(h http.Header) uint64 {
	v, _ := strconv.ParseUint(h.Get("X-Consul-Index"), 10, 64)
	return v
}

func register(cl *http.Client, base, id, name string) error {
	body := fmt.Sprintf(`{"ID":%q,"Name":%q,"Port":8080,"Tags":["bench"],"Check":{"CheckID":%q,"TTL":"10m","Status":"passing"}}`, id, name, id+"-ttl")
	code, _, b, err := do(cl, http.MethodPut, base+"/v1/agent/service/register", body)
	if err != nil {
		return err
	}
	if code != 200 {
		return fmt.Errorf("register %s: %d %s", id, code, b)
	}
	return nil
}

func deregister(cl *http.Client, base, id string) error {
	code, _, b, err := do(cl, http.MethodPut, base+"/v1/agent/service/deregister/"+id, "")
	if err != nil {
		return err
	}
	if code != 200 {
		return fmt.Errorf("deregister %s: %d %s", id, code, b)
	}
	return nil
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s)-1) + 0.5)
	return s[i]
}

func measure(c config, srv *server) (result, error) {
	var res result
	base := "http://" + srv.addr
	cl := newClient(c.watchers)
	defer cl.CloseIdleConnections()
	if err := register(cl, base, "fan-0", "fan"); err != nil {
		return res, err
	}
	_, h, _, err := do(cl, http.MethodGet, base+"/v1/health/service/fan", "")
	if err != nil {
		return res, err
	}
	index := indexOf(h)

	var lasts, medians, writes []time.Duration
	for round := 0; round <= c.rounds; round++ { // round 0 warms up the connections
		type answer struct {
			at    time.Time
			index uint64
			code  int
			err   error
		}
		answers := make(chan answer, c.watchers)
		url := fmt.Sprintf("%s/v1/health/service/fan?index=%d&wait=60000ms", base, index)
		var sent sync.WaitGroup
		for range c.watchers {
			sent.Add(1)
			go func() {
				sent.Done()
				code, h, _, err := do(cl, http.MethodGet, url, "")
				answers <- answer{time.Now(), indexOf(h), code, err}
			}()
		}
		sent.Wait()
		time.Sleep(c.settle)
		t0 := time.Now()
		if round%2 == 0 {
			err = register(cl, base, "fan-x", "fan")
		} else {
			err = deregister(cl, base, "fan-x")
		}
		if err != nil {
			return res, err
		}
		ack := time.Since(t0)
		var lat []time.Duration
		for range c.watchers {
			a := <-answers
			if a.err != nil || a.code != 200 || a.index <= index {
				return res, fmt.Errorf("round %d: watcher answer %d index %d (was %d): %v", round, a.code, a.index, index, a.err)
			}
			lat = append(lat, a.at.Sub(t0))
		}
		// Every watcher saw the same new index; the next round blocks on it.
		_, h, _, err := do(cl, http.MethodGet, base+"/v1/health/service/fan", "")
		if err != nil {
			return res, err
		}
		index = indexOf(h)
		if round == 0 {
			continue
		}
		slices.Sort(lat)
		if verbose {
			fmt.Printf("    round %2d: write %v, first %v, median %v, last %v\n", round, ack.Round(10*time.Microsecond),
				lat[0].Round(10*time.Microsecond), lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
		}
		lasts = append(lasts, lat[len(lat)-1])
		medians = append(medians, lat[len(lat)/2])
		writes = append(writes, ack)
	}
	res.lastP50, res.lastP99 = pct(lasts, 0.5), pct(lasts, 0.99)
	res.medianP50 = pct(medians, 0.5)
	res.writeP50 = pct(writes, 0.5)
	fmt.Printf("  fan-out: last watcher p50 %v p99 %v; median watcher p50 %v; the write itself p50 %v\n",
		res.lastP50.Round(10*time.Microsecond), res.lastP99.Round(10*time.Microsecond),
		res.medianP50.Round(10*time.Microsecond), res.writeP50.Round(10*time.Microsecond))
	cl.CloseIdleConnections()

	// Registrations per second.
	rcl := newClient(c.concurrency)
	t0 := time.Now()
	for i := range c.serial {
		if err := register(rcl, base, fmt.Sprintf("serial-%d", i), "serial"); err != nil {
			return res, err
		}
	}
	res.serialRate = float64(c.serial) / time.Since(t0).Seconds()
	ids := make(chan int, c.concurrent)
	for i := range c.concurrent {
		ids <- i
	}
	close(ids)
	var wg sync.WaitGroup
	errs := make(chan error, c.concurrency)
	t0 = time.Now()
	for range c.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ids {
				if err := register(rcl, base, fmt.Sprintf("conc-%d", i), "conc"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	res.concRate = float64(c.concurrent) / time.Since(t0).Seconds()
	close(errs)
	if err := <-errs; err != nil {
		return res, err
	}
	fmt.Printf("  registrations/s: serial %.0f, %d concurrent clients %.0f\n", res.serialRate, c.concurrency, res.concRate)
	return res, nil
}

func report(rs []result) {
	if len(rs) != 2 {
		return
	}
	reg, con := rs[0], rs[1]
	fmt.Println()
	fmt.Printf("%-44s %14s %20s %8s\n", "", reg.name, con.name, "ratio")
	row := func(name string, a, b time.Duration) {
		fmt.Printf("%-44s %14v %20v %7.2fx\n", name, a.Round(10*time.Microsecond), b.Round(10*time.Microsecond), float64(b)/float64(a))
	}
	row("fan-out, last watcher answered: p50", reg.lastP50, con.lastP50)
	row("fan-out, last watcher answered: p99", reg.lastP99, con.lastP99)
	row("fan-out, median watcher answered: p50", reg.medianP50, con.medianP50)
	row("the registration write itself: p50", reg.writeP50, con.writeP50)
	rate := func(name string, a, b float64) {
		fmt.Printf("%-44s %14.0f %20.0f %7.2fx\n", name, a, b, a/b)
	}
	rate("registrations/s, serial", reg.serialRate, con.serialRate)
	rate("registrations/s, concurrent", reg.concRate, con.concRate)
	fmt.Println("ratio: consul/registry for times (above 1: the registry is faster), registry/consul for rates.")
	fmt.Println("consul -dev keeps state in memory; the registry fsyncs every write before answering.")
}
