// Package harness is the sidecar benchmark behind `make bench` (bench/proxy.sh): it starts
// a backend, chains of proxies in front of it (none, two nginx, two haproxy, two sidecars,
// with and without mTLS and tracing), drives each chain with wrk, h2load and vegeta with
// the same parameters in one run, samples the proxies' CPU and memory from /proc, and
// prints the results as ratios against the baselines measured in the same run.
//
// It is a report, not a test: a missed target is printed, never an error.
package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Scenario names, in the order they run.
const (
	Direct         = "direct"
	Nginx          = "nginx"
	Haproxy        = "haproxy"
	Sidecar        = "sidecar"
	NginxMTLS      = "nginx-mtls"
	SidecarMTLS    = "sidecar-mtls"
	SidecarTracing = "sidecar-tracing"
)

// AllScenarios lists every scenario in running order.
var AllScenarios = []string{Direct, Nginx, Haproxy, Sidecar, NginxMTLS, SidecarMTLS, SidecarTracing}

// NoWarmup as Config.Warmup runs the loads without a warm-up.
const NoWarmup = time.Duration(-1)

// Config is the benchmark's configuration. The zero value of a field means its default
// (applied by withDefaults); FromEnv fills it from the environment bench/proxy.sh passes.
type Config struct {
	Scenarios []string // default AllScenarios

	Warmup         time.Duration // before wrk and h2load runs (2s; QUICK 1s; NoWarmup: none)
	Duration       time.Duration // each wrk and h2load run (10s; QUICK 3s)
	VegetaDuration time.Duration // each fixed-rate vegeta run (10s; QUICK 3s)
	Conns          int           // wrk connections (64)
	Threads        int           // wrk and h2load threads (2)
	H2Conns        int           // h2load connections (64)
	H2Streams      int           // h2load max concurrent streams per connection (10)
	Rate           int           // vegeta fixed rate for the latency target (1000/s)
	LoadRate       int           // vegeta fixed rate for RSS under load (2000/s)
	Rounds         int           // run every scenario this many times, interleaved; medians reported (1)

	// ProxyCores is each proxy's parallelism: nginx worker_processes, haproxy nbthread and
	// the sidecars' GOMAXPROCS (1: the pair of proxies gets the machine's 2 cores).
	ProxyCores int
	Backend    string // go, nginx or auto (measure both, keep the faster); default auto
	PinLoad    string // taskset CPU list for the load generators; empty: no pinning
	PinSUT     string // taskset CPU list for backend, proxies and registry; empty: no pinning

	// Programs. Empty means "not available": the measurements needing it are skipped
	// with a reason.
	Wrk, H2load, Vegeta, Nginx, Haproxy, Openssl, Consul string
	Sidecar, Registry                                    string // from $BIN; may not exist yet

	// Extra sidecar flags: for both sidecars in every sidecar scenario, for the mTLS
	// scenario, and for the tracing scenario. The two scenarios are skipped while their
	// flags are empty. Placeholders: {otlp} (the OTLP/HTTP sink's http://host:port),
	// {otlp_addr} (host:port), {registry} (the registry URL), {side} (a or b), {tmp}.
	SidecarFlags, SidecarMTLSFlags, SidecarTracingFlags string
	SidecarProtocol                                     string // the app's protocol registered by sidecar B (http)
	HandshakeMetric                                     string // sidecar counter of TLS handshakes (podmesh_tls_handshakes_total)
	// RegistryFlags starts our registry: placeholders {http} (host:port) and {data}.
	RegistryFlags string

	Self    []string // argv that re-executes this program (for the Go backend); default os.Executable
	OutDir  string   // where proxy.json goes; empty: no JSON file
	Quick   bool
	KeepTmp bool // keep the temp dir (configs, certificates, logs) for debugging
}

// FromEnv reads the configuration from environment variables (see bench/proxy.sh).
func FromEnv(getenv func(string) string) (Config, error) {
	var c Config
	var errs []error
	dur := func(name string, dst *time.Duration) {
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				if n, nerr := strconv.Atoi(v); nerr == nil {
					d, err = time.Duration(n)*time.Second, nil
				}
			}
			if err != nil || d <= 0 {
				errs = append(errs, fmt.Errorf("%s: %q: want a duration such as 10s", name, v))
				return
			}
			*dst = d
		}
	}
	num := func(name string, dst *int) {
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				errs = append(errs, fmt.Errorf("%s: %q: want a positive integer", name, v))
				return
			}
			*dst = n
		}
	}
	c.Quick = getenv("QUICK") == "1"
	c.KeepTmp = getenv("BENCH_KEEP_TMP") == "1"
	if v := getenv("BENCH_WARMUP"); v == "0" || v == "0s" {
		c.Warmup = NoWarmup
	} else {
		dur("BENCH_WARMUP", &c.Warmup)
	}
	dur("BENCH_DURATION", &c.Duration)
	dur("BENCH_VEGETA_DURATION", &c.VegetaDuration)
	num("BENCH_CONNS", &c.Conns)
	num("BENCH_THREADS", &c.Threads)
	num("BENCH_H2_CONNS", &c.H2Conns)
	num("BENCH_H2_STREAMS", &c.H2Streams)
	num("BENCH_RATE", &c.Rate)
	num("BENCH_LOAD_RATE", &c.LoadRate)
	num("ROUNDS", &c.Rounds)
	num("PROXY_CORES", &c.ProxyCores)
	if v := getenv("SCENARIOS"); v != "" {
		c.Scenarios = strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' })
	}
	c.Backend = getenv("BACKEND")
	c.PinLoad = getenv("PIN_LOAD")
	c.PinSUT = getenv("PIN_SUT")

	c.Wrk = lookTool("wrk")
	c.H2load = lookTool("h2load")
	c.Nginx = lookTool("nginx")
	c.Haproxy = lookTool("haproxy")
	c.Openssl = lookTool("openssl")
	c.Vegeta = existing(getenv("PODMESH_VEGETA_BIN"))
	c.Consul = existing(getenv("PODMESH_CONSUL_BIN"))
	if bin := getenv("BIN"); bin != "" {
		c.Sidecar = filepath.Join(bin, "sidecar")
		c.Registry = filepath.Join(bin, "registry")
	}
	c.SidecarFlags = getenv("SIDECAR_FLAGS")
	c.SidecarMTLSFlags = getenv("SIDECAR_MTLS_FLAGS")
	c.SidecarTracingFlags = getenv("SIDECAR_TRACING_FLAGS")
	c.SidecarProtocol = getenv("SIDECAR_PROTOCOL")
	c.HandshakeMetric = getenv("SIDECAR_HANDSHAKE_METRIC")
	c.RegistryFlags = getenv("REGISTRY_FLAGS")
	c.OutDir = getenv("BENCH_OUT")
	return c, errors.Join(errs...)
}

// lookTool returns the path of a command on PATH or in /usr/sbin, or "".
func lookTool(name string) string {
	for _, dir := range append(filepath.SplitList(os.Getenv("PATH")), "/usr/sbin", "/sbin") {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// existing returns p when it names an existing file, else "".
func existing(p string) string {
	if p == "" {
		return ""
	}
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// withDefaults applies every default, in one place.
func (c Config) withDefaults() Config {
	if len(c.Scenarios) == 0 {
		c.Scenarios = AllScenarios
	}
	def := func(d *time.Duration, normal, quick time.Duration) {
		if *d == 0 {
			*d = normal
			if c.Quick {
				*d = quick
			}
		}
	}
	def(&c.Warmup, 2*time.Second, time.Second)
	def(&c.Duration, 10*time.Second, 3*time.Second)
	def(&c.VegetaDuration, 10*time.Second, 3*time.Second)
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	defInt(&c.Conns, 64)
	defInt(&c.Threads, 2)
	defInt(&c.H2Conns, 64)
	defInt(&c.H2Streams, 10)
	defInt(&c.Rate, 1000)
	defInt(&c.LoadRate, 2000)
	defInt(&c.Rounds, 1)
	defInt(&c.ProxyCores, 1)
	if c.Backend == "" {
		c.Backend = "auto"
	}
	if c.SidecarProtocol == "" {
		c.SidecarProtocol = "http"
	}
	if c.HandshakeMetric == "" {
		c.HandshakeMetric = "podmesh_tls_handshakes_total"
	}
	if c.RegistryFlags == "" {
		c.RegistryFlags = "-http {http} -data {data}"
	}
	if len(c.Self) == 0 {
		if exe, err := os.Executable(); err == nil {
			c.Self = []string{exe}
		}
	}
	return c
}

// Validate checks the configuration after defaults; errors name the setting and value.
func (c Config) Validate() error {
	var errs []error
	known := map[string]bool{}
	for _, s := range AllScenarios {
		known[s] = true
	}
	for _, s := range c.Scenarios {
		if !known[s] {
			errs = append(errs, fmt.Errorf("SCENARIOS: %q: want some of %s", s, strings.Join(AllScenarios, ",")))
		}
	}
	switch c.Backend {
	case "go", "nginx", "auto":
	default:
		errs = append(errs, fmt.Errorf("BACKEND: %q: want go, nginx or auto", c.Backend))
	}
	if c.Backend == "nginx" && c.Nginx == "" {
		errs = append(errs, errors.New("BACKEND: \"nginx\": nginx is not installed"))
	}
	if len(c.Self) == 0 {
		errs = append(errs, errors.New("self: cannot find this program's path to start the Go backend"))
	}
	if c.Duration < time.Second || c.VegetaDuration < time.Second {
		errs = append(errs, fmt.Errorf("BENCH_DURATION/BENCH_VEGETA_DURATION: %v/%v: want at least 1s", c.Duration, c.VegetaDuration))
	}
	if c.Warmup < 0 && c.Warmup != NoWarmup {
		errs = append(errs, fmt.Errorf("BENCH_WARMUP: %v: want a positive duration or 0 for none", c.Warmup))
	}
	if c.Duration > 10*time.Minute || c.VegetaDuration > 10*time.Minute || c.Warmup > time.Minute || c.Rounds > 20 {
		errs = append(errs, fmt.Errorf("durations %v/%v, warm-up %v, rounds %d: too long for a benchmark run", c.Duration, c.VegetaDuration, c.Warmup, c.Rounds))
	}
	if c.Conns < c.Threads {
		errs = append(errs, fmt.Errorf("BENCH_CONNS: %d: want at least BENCH_THREADS (%d)", c.Conns, c.Threads))
	}
	for _, p := range []struct{ name, v string }{{"PIN_LOAD", c.PinLoad}, {"PIN_SUT", c.PinSUT}} {
		if strings.Trim(p.v, "0123456789,-") != "" {
			errs = append(errs, fmt.Errorf("%s: %q: want a taskset CPU list such as 0 or 0-1", p.name, p.v))
		}
	}
	return errors.Join(errs...)
}

// expand replaces the {name} placeholders of a flag string and splits it into arguments
// (on spaces; no quoting).
func expand(flags string, vars map[string]string) []string {
	for k, v := range vars {
		flags = strings.ReplaceAll(flags, "{"+k+"}", v)
	}
	return strings.Fields(flags)
}
