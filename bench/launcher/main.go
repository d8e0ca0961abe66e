// Command launcher is the pod-start benchmark of `make bench` (issue 5 acceptance 6), run by
// bench/launcher.sh: the time from `launcher up` to the first request served through each
// pod's sidecar (from the host to POD_IP:15001, the real sidecar, a trivial app), for 1 and
// 20 replicas, beside, in the same run, the same processes started by hand (ip netns, a veth
// with its peer created in the namespace, addresses by ip, then `ip netns exec … unshare
// --pid --mount --uts --ipc --fork` running the sidecar and the app) and the app started
// alone on the host. It prints the launcher's own overhead per pod, launcher minus by hand,
// against the target of 30 ms per pod; a missed target is reported, never a failure.
//
// It is also the trivial app: `launcher app -listen ADDR` answers every GET with 200.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/launcher/netns"
	"github.com/podmesh/podmesh/launcher/pod"
)

// TargetPerPod is acceptance 6's target for the launcher's own overhead.
const TargetPerPod = 30 * time.Millisecond

func main() {
	if len(os.Args) > 1 && os.Args[1] == "app" {
		os.Exit(app(os.Args[2:]))
	}
	var c config
	flag.StringVar(&c.bin, "bin", "bin", "directory of the built programs (launcher, sidecar, registry, podmesh-init)")
	flag.StringVar(&c.replicas, "replicas", "1,20", "comma-separated pod counts")
	flag.IntVar(&c.rounds, "rounds", 3, "rounds per pod count and way of starting; the median is reported")
	subnet := flag.String("subnet", "10.86.0.0/24", "pod subnet of the benchmark's own bridge (at least 2×max replicas+2 addresses)")
	flag.StringVar(&c.bridge, "bridge", "pmbench0", "the benchmark's bridge (created and removed by it)")
	flag.StringVar(&c.tmp, "tmp", "", "work directory (default: a new temp dir, removed at the end)")
	flag.StringVar(&c.ways, "ways", "alone,hand,launcher,fixed", "the ways of starting to run (for profiling one of them alone)")
	flag.Parse()
	var err error
	if c.subnet, err = netip.ParsePrefix(*subnet); err != nil {
		fmt.Fprintln(os.Stderr, "launcherbench: -subnet:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, c)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "launcherbench:", err)
		os.Exit(1)
	}
}

type config struct {
	bin, replicas, bridge, tmp, ways string
	rounds                           int
	subnet                           netip.Prefix
}

// app is the trivial app: an HTTP server answering 200 "ok".
func app(args []string) int {
	fs := flag.NewFlagSet("app", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})}
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		srv.Close()
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return 1
	}
	return 0
}

// bench holds what every round shares.
type bench struct {
	config
	self     string // this program, the trivial app
	work     string
	gateway  netip.Addr
	registry string // http://GATEWAY:PORT, reachable from the host and from pods
	client   *http.Client
	scheme   string      // of the probes: http, or https once the sidecars speak mutual TLS
	probeTLS *tls.Config // of the probes to the pods' sidecars, nil for plaintext
}

func run(ctx context.Context, c config) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, veths, cgroups)")
	}
	for _, p := range []string{"launcher", "sidecar", "registry", "podmesh-init"} {
		if _, err := os.Stat(filepath.Join(c.bin, p)); err != nil {
			return fmt.Errorf("%s: %w (run make build)", p, err)
		}
	}
	for _, tool := range []string{"ip", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s: %w", tool, err)
		}
	}
	var counts []int
	for _, s := range strings.Split(c.replicas, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 1 || n > 100 {
			return fmt.Errorf("-replicas %q: want counts from 1 to 100", c.replicas)
		}
		counts = append(counts, n)
	}
	b := &bench{config: c, scheme: "http", client: &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	if b.work = c.tmp; b.work == "" {
		if b.work, err = os.MkdirTemp("", "podmesh-bench-launcher"); err != nil {
			return err
		}
		defer os.RemoveAll(b.work)
	}
	// The bridge and the registry on its gateway address, for all three ways.
	network := netns.Network{Bridge: c.bridge, Subnet: c.subnet}
	st, err := netns.EnsureBridge(network)
	if err != nil {
		return err
	}
	defer func() {
		if rerr := netns.RemoveBridge(network, st); rerr != nil && err == nil {
			err = rerr
		}
	}()
	b.gateway = network.Gateway()
	stopRegistry, err := b.startRegistry(ctx)
	if err != nil {
		return err
	}
	defer stopRegistry()
	if err := b.meshClient(); err != nil {
		return err
	}

	fmt.Printf("pod start: from the start to the first request served through each pod's sidecar (host → POD_IP:%d → sidecar → app),\n", pod.InboundPort)
	fmt.Printf("median of %d rounds; the same real sidecar and trivial app in every way; load average %s\n\n", c.rounds, loadavg())
	type row struct {
		n                             int
		alone, byHand, launchr, fixed result
	}
	var rows []row
	for _, n := range counts {
		var alone, hand, launch, fixed []result
		for r := 0; r < c.rounds; r++ {
			// Interleaved, so that the machine's moods spread over the ways.
			for _, way := range []struct {
				key, name string
				n         int
				fn        func(context.Context, int, int) (result, error)
				out       *[]result
			}{
				{"alone", "app alone", n, b.appAlone, &alone}, {"hand", "by hand", n, b.byHand, &hand},
				{"launcher", "launcher", n, b.launcher, &launch}, {"fixed", "launcher", 0, b.launcher, &fixed},
			} {
				if !strings.Contains(","+c.ways+",", ","+way.key+",") {
					*way.out = append(*way.out, result{})
					continue
				}
				res, err := way.fn(ctx, way.n, r)
				if err != nil {
					return fmt.Errorf("%d replicas, %s, round %d: %w", way.n, way.name, r+1, err)
				}
				what := "all answering"
				if way.n == 0 {
					what = "started (no pod)"
				}
				fmt.Printf("  %2d pods  %-10s round %d: %s after %v (per pod: first %v, mean %v)\n",
					way.n, way.name, r+1, what, ms(res.all), ms(res.first), ms(res.mean))
				*way.out = append(*way.out, res)
			}
		}
		rows = append(rows, row{n: n, alone: median(alone), byHand: median(hand), launchr: median(launch), fixed: median(fixed)})
	}

	fmt.Println()
	fmt.Printf("%-5s  %-10s  %-10s  %-10s  %-15s  %-19s  %-14s  %s\n", "PODS", "APP ALONE", "BY HAND", "LAUNCHER",
		"LAUNCHER FIXED", "LAUNCHER - BY HAND", "OVERHEAD/POD", "TARGET ≤ 30 ms/pod")
	for _, r := range rows {
		over := r.launchr.all - r.byHand.all
		per := (over - r.fixed.all) / time.Duration(r.n)
		verdict := "met"
		if per > TargetPerPod {
			verdict = "not met"
		}
		fmt.Printf("%-5d  %-10v  %-10v  %-10v  %-15v  %-19v  %-14v  %s\n", r.n, ms(r.alone.all), ms(r.byHand.all),
			ms(r.launchr.all), ms(r.fixed.all), ms(over), ms(per), verdict)
	}
	fmt.Println()
	fmt.Println("APP ALONE: the apps exec'd on the host, no namespace, no sidecar (the app's own start).")
	fmt.Println("BY HAND: per pod, a shell runs ip netns add, ip link add … peer … netns, ip addr/link set, then ip netns exec NS")
	fmt.Println("  unshare --pid --mount --uts --ipc --fork --mount-proc bash -c: the sidecar, a 5 ms poll of its /ready (bash")
	fmt.Println("  /dev/tcp), the app (the launcher's order: the app starts once its sidecar is ready); all pods at once.")
	fmt.Println("LAUNCHER: launcher up (foreground) on a compose file with N replicas, using the registry above; it also")
	fmt.Println("  makes the pod cgroups with limits, runs podmesh-init as each pod's PID 1, a private /proc and /tmp,")
	fmt.Println("  /etc/hosts, the pod firewall, waits for the sidecar's READY=1 (on a pipe, -ready-fd) before the app, and")
	fmt.Println("  health-checks the app.")
	fmt.Println("LAUNCHER FIXED: launcher up with 0 replicas, from exec to \"started\": its own process start, the compose file,")
	fmt.Println("  bridge, cgroups and registry relay; paid once per `up`, whatever the number of pods.")
	fmt.Println("OVERHEAD/POD = (LAUNCHER - BY HAND - LAUNCHER FIXED) / PODS: what the launcher adds per pod beyond the")
	fmt.Println("  same processes' own start.")
	fmt.Printf("PROBES: the same in every way: each pod's namespace watched for its app's listening socket (/proc/net/tcp\n")
	fmt.Printf("  every %v), then requests through its sidecar every %v on a kept-alive connection until a 200.\n", ListenPoll, ProbeInterval)
	fmt.Printf("Load average at the end: %s (2 cores: above 2, other work shares the machine and the times grow).\n", loadavg())
	return nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// result is one start of n pods: when the last, the first, and on average a pod answered.
type result struct{ all, first, mean time.Duration }

func median(rs []result) result {
	pick := func(f func(result) time.Duration) time.Duration {
		v := make([]time.Duration, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		return v[len(v)/2]
	}
	return result{
		all:   pick(func(r result) time.Duration { return r.all }),
		first: pick(func(r result) time.Duration { return r.first }),
		mean:  pick(func(r result) time.Duration { return r.mean }),
	}
}

func ms(d time.Duration) time.Duration {
	if d < 0 {
		return -ms(-d)
	}
	if d >= 10*time.Millisecond {
		return d.Round(time.Millisecond)
	}
	return d.Round(10 * time.Microsecond)
}

// startRegistry runs the registry on the gateway address.
func (b *bench) startRegistry(ctx context.Context) (func(), error) {
	l, err := net.Listen("tcp", netip.AddrPortFrom(b.gateway, 0).String())
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(filepath.Join(b.bin, "registry"), "-http", addr, "-data", filepath.Join(b.work, "registry"), "-log-level", "warn")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	b.registry = "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := b.client.Get(b.registry + "/v1/status/leader")
		if err == nil {
			resp.Body.Close()
			return stop, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return nil, fmt.Errorf("registry at %s: %w", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// meshClient makes the probes speak mutual TLS when the registry runs a Connect CA (the
// sidecars then accept only mesh peers on their inbound listeners): a leaf certificate for
// the identity "pmbench-probe", the CA's roots, ALPN http/1.1, and the pod sidecar's chain
// checked against the roots (its name is a SPIFFE URI, not a host name).
func (b *bench) meshClient() error {
	resp, err := b.client.Get(b.registry + "/v1/agent/connect/ca/roots")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil // no CA: the sidecars speak plaintext
	}
	cfg := api.DefaultConfig()
	cfg.Address = strings.TrimPrefix(b.registry, "http://")
	client, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	roots, _, err := client.Agent().ConnectCARoots(nil)
	if err != nil {
		return fmt.Errorf("connect CA roots: %w", err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots.Roots {
		pool.AppendCertsFromPEM([]byte(r.RootCertPEM))
	}
	leaf, _, err := client.Agent().ConnectCALeaf("pmbench-probe", nil)
	if err != nil {
		return fmt.Errorf("connect CA leaf: %w", err)
	}
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		return fmt.Errorf("connect CA leaf: %w", err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"http/1.1"},
		MinVersion:   tls.VersionTLS13,
		// The peer is verified below against the mesh's roots, without a host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no peer certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter})
			return err
		},
	}
	b.probeTLS = tc
	b.scheme = "https"
	fmt.Println("the registry runs a Connect CA: the probes speak mutual TLS to the sidecars, as pmbench-probe")
	return nil
}

// podAddr is the address of pod i (0-based) in round r: the launcher allocates from the
// gateway up; by hand uses the upper half, so a slow teardown never collides.
func (b *bench) podAddr(i int, upper bool) netip.Addr {
	a := b.gateway.Next()
	if upper {
		for k := 0; k < (1<<(32-b.subnet.Bits()))/2; k++ {
			a = a.Next()
		}
	}
	for k := 0; k < i; k++ {
		a = a.Next()
	}
	return a
}

// The probes. A request through a pod's sidecar before its app listens only makes the
// sidecar refuse it (a mutual TLS handshake, a refused dial to the app, a 502): with 20 pods
// probed every millisecond, that cost the sidecars more CPU than their own start on 2 cores,
// and the longer a way kept its sidecars waiting for their apps, the more of it that way
// paid — the probes measured themselves. So each pod is first watched, cheaply, for its app's
// listening socket (its namespace's /proc/net/tcp, every ListenPoll), and only then probed
// through its sidecar, every ProbeInterval on a kept-alive connection, until a 200. The
// time reported is still that of the first request served through the sidecar.
const (
	ListenPoll    = 2 * time.Millisecond
	ProbeInterval = time.Millisecond
	AppPort       = 8080
)

// waitAll probes every URL until it answers 200, each first waiting for its app to listen
// in the namespace pinned at pins[i] (when pins is given) and for its veth (when named) to
// be up: a request to an address nobody holds yet would wait out a failed ARP resolution,
// about a second, which is not start-up time. It returns the times since t0.
func (b *bench) waitAll(ctx context.Context, t0 time.Time, urls, veths, pins []string) (result, error) {
	tr := &http.Transport{TLSClientConfig: b.probeTLS, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: time.Second, Transport: tr}
	var wg sync.WaitGroup
	times := make([]time.Duration, len(urls))
	errs := make([]error, len(urls))
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if pins != nil {
				if err := waitListening(ctx, pins[i], AppPort); err != nil {
					errs[i] = err
					return
				}
			}
			if veths != nil {
				for ctx.Err() == nil {
					if b, err := os.ReadFile("/sys/class/net/" + veths[i] + "/operstate"); err == nil && strings.TrimSpace(string(b)) == "up" {
						break
					}
					time.Sleep(500 * time.Microsecond)
				}
			}
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
				if resp, err := client.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						times[i] = time.Since(t0)
						return
					}
				}
				time.Sleep(ProbeInterval)
			}
			errs[i] = fmt.Errorf("%s never answered", u)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return result{}, err
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	var sum time.Duration
	for _, t := range times {
		sum += t
	}
	return result{all: times[len(times)-1], first: times[0], mean: sum / time.Duration(len(times))}, nil
}

// appAlone starts n apps on the host's loopback.
func (b *bench) appAlone(ctx context.Context, n, _ int) (result, error) {
	var urls []string
	var cmds []*exec.Cmd
	defer func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	ports := make([]string, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return result{}, err
		}
		ports[i] = l.Addr().String()
		l.Close()
	}
	t0 := time.Now()
	for i := 0; i < n; i++ {
		c := exec.Command(b.self, "app", "-listen", ports[i])
		if err := c.Start(); err != nil {
			return result{}, err
		}
		cmds = append(cmds, c)
		urls = append(urls, "http://"+ports[i]+"/")
	}
	return b.waitAll(ctx, t0, urls, nil, nil)
}

// byHand starts n pods with ip and unshare, one shell each, all at once.
func (b *bench) byHand(ctx context.Context, n, round int) (res result, err error) {
	dir := filepath.Join(b.work, fmt.Sprintf("hand-%d-%d", n, round))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return result{}, err
	}
	var urls, veths, names []string
	var cmds []*exec.Cmd
	defer func() {
		for _, c := range cmds {
			_ = c.Process.Signal(syscall.SIGKILL) // unshare --kill-child ends the pod's processes
			_ = c.Wait()
		}
		for i, name := range names {
			_ = exec.Command("ip", "link", "del", veths[i]).Run()
			_ = exec.Command("ip", "netns", "del", name).Run()
		}
		err = errors.Join(err, b.checkGone(names, veths))
	}()
	var scripts []string
	prefix := b.subnet.Bits()
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("pmbench-hand-%d", i)
		veth := fmt.Sprintf("pmbh%d", i)
		addr := b.podAddr(i, true)
		cfg := pod.SidecarConfig{
			Service: "handweb", ID: fmt.Sprintf("handweb-%d", i), Protocol: "http",
			Inbound: netip.AddrPortFrom(addr, pod.InboundPort).String(), App: "127.0.0.1:8080",
			Admin: fmt.Sprintf("127.0.0.1:%d", pod.AdminPort), Registry: b.registry,
		}
		y, err := cfg.Marshal()
		if err != nil {
			return result{}, err
		}
		cfgPath := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(cfgPath, y, 0o644); err != nil {
			return result{}, err
		}
		scripts = append(scripts, fmt.Sprintf(`set -e
ip netns add %[1]s
ip link add %[2]s type veth peer name eth0 netns %[1]s
ip link set %[2]s master %[3]s up
ip -n %[1]s addr add %[4]s/%[5]d dev eth0
ip -n %[1]s link set lo up
ip -n %[1]s link set eth0 up
exec ip netns exec %[1]s unshare --pid --mount --uts --ipc --fork --kill-child --mount-proc \
  bash -c '%[6]s -config %[7]s &
    ready() { exec 3<>/dev/tcp/127.0.0.1/%[9]d && printf "GET /ready HTTP/1.0\r\n\r\n" >&3 && read -r l <&3 && [[ $l == *" 200 "* ]]; }
    until (ready) 2>/dev/null; do sleep 0.005; done
    exec %[8]s app -listen 127.0.0.1:8080'
`, name, veth, b.bridge, addr, prefix, filepath.Join(b.bin, "sidecar"), cfgPath, b.self, pod.AdminPort))
		names = append(names, name)
		veths = append(veths, veth)
		urls = append(urls, fmt.Sprintf("%s://%s:%d/", b.scheme, addr, pod.InboundPort))
	}
	logf, err := os.Create(filepath.Join(dir, "pods.log"))
	if err != nil {
		return result{}, err
	}
	defer logf.Close()
	t0 := time.Now()
	for _, s := range scripts {
		c := exec.Command("bash", "-c", s)
		c.Stdout, c.Stderr = logf, logf
		if err := c.Start(); err != nil {
			return result{}, err
		}
		cmds = append(cmds, c)
	}
	return b.waitAll(ctx, t0, urls, veths, pinPaths(names))
}

// launcher runs `launcher up` on a compose file with n replicas of the trivial app. With
// n = 0 it measures the launcher's fixed cost: from exec to "project … started" (process
// start, compose file, bridge, cgroups, registry relay), with no pod.
func (b *bench) launcher(ctx context.Context, n, round int) (res result, err error) {
	dir := filepath.Join(b.work, fmt.Sprintf("launcher-%d-%d", n, round))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return result{}, err
	}
	project := "pmbench"
	compose := fmt.Sprintf(`name: %s
x-podmesh: {subnet: %s, bridge: %s}
services:
  web:
    command: [%q, app, -listen, "127.0.0.1:8080"]
    deploy: {replicas: %d}
    x-podmesh: {port: 8080}
`, project, b.subnet, b.bridge, b.self, n)
	file := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(file, []byte(compose), 0o644); err != nil {
		return result{}, err
	}
	var urls, veths, names []string
	for i := 0; i < n; i++ {
		pin := netns.PinName(project, "web", i+1)
		names = append(names, pin)
		veths = append(veths, netns.HostIfName(pin))
		urls = append(urls, fmt.Sprintf("%s://%s:%d/", b.scheme, b.podAddr(i, false), pod.InboundPort))
	}
	logf, err := os.Create(filepath.Join(dir, "launcher.log"))
	if err != nil {
		return result{}, err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(b.bin, "launcher"), "-state-dir", filepath.Join(dir, "state"), "-log-dir", filepath.Join(dir, "logs"),
		"-registry", b.registry, "-relay-port", "18500", "up", "-f", file)
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return result{}, err
	}
	// "project NAME started": everything shared is up and every pod launched.
	started := make(chan time.Duration, 1)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if strings.Contains(sc.Text(), " started") {
				select {
				case started <- time.Since(t0):
				default:
				}
			}
		}
	}()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		err = errors.Join(err, b.checkGone(names, veths))
		if err != nil {
			if log, rerr := os.ReadFile(filepath.Join(dir, "launcher.log")); rerr == nil {
				err = fmt.Errorf("%w\nlauncher log:\n%s", err, log)
			}
		}
	}()
	if n == 0 {
		t := time.NewTimer(time.Minute)
		defer t.Stop()
		select {
		case d := <-started:
			return result{all: d, first: d, mean: d}, nil
		case <-t.C:
			return result{}, errors.New("the launcher never said it had started")
		case <-ctx.Done():
			return result{}, ctx.Err()
		}
	}
	return b.waitAll(ctx, t0, urls, veths, pinPaths(names))
}

func pinPaths(names []string) []string {
	var p []string
	for _, n := range names {
		p = append(p, filepath.Join(netns.PinDir, n))
	}
	return p
}

// waitListening returns once a socket listens on port in the network namespace pinned at
// pin, reading that namespace's /proc/net/tcp every ListenPoll.
func waitListening(ctx context.Context, pin string, port int) error {
	var table *os.File
	for table == nil {
		// The pin is an empty file until the namespace is mounted on it: try again.
		f, err := openTCPTable(pin)
		if err == nil {
			table = f
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", pin, err)
		}
		time.Sleep(ListenPoll)
	}
	defer table.Close()
	want := fmt.Sprintf(":%04X ", port)
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		n, err := table.ReadAt(buf, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: read tcp table: %w", pin, err)
		}
		// "  sl  local_address rem_address   st ...": a local address ending in :PORT in state 0A (LISTEN).
		for _, line := range strings.Split(string(buf[:n]), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) > 3 && strings.HasSuffix(f[1]+" ", want) && f[3] == "0A" {
				return nil
			}
		}
		time.Sleep(ListenPoll)
	}
	return fmt.Errorf("%s: nothing listened on port %d", pin, port)
}

// openTCPTable opens /proc/thread-self/net/tcp from a thread that entered the namespace
// pinned at pin: the open file keeps showing that namespace's sockets after the thread is
// gone (a thread that changed namespace is not given back to the runtime: it exits with
// its goroutine).
func openTCPTable(pin string) (*os.File, error) {
	type opened struct {
		f   *os.File
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		ns, err := os.Open(pin)
		if err != nil {
			ch <- opened{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- opened{err: fmt.Errorf("setns: %w", err)}
			return
		}
		f, err := os.Open("/proc/thread-self/net/tcp")
		ch <- opened{f, err}
	}()
	o := <-ch
	return o.f, o.err
}

// checkGone fails when a pod's namespace or veth is still there after a few seconds (the
// kernel dismantles a namespace asynchronously once its last process is gone).
func (b *bench) checkGone(names, veths []string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := leftovers(names, veths)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("left behind: %s", strings.Join(left, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func leftovers(names, veths []string) []string {
	var left []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(netns.PinDir, n)); err == nil {
			left = append(left, "netns "+n)
		}
	}
	for _, v := range veths {
		if _, err := os.Stat("/sys/class/net/" + v); err == nil {
			left = append(left, "veth "+v)
		}
	}
	return left
}
