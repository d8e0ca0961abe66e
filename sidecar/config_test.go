package sidecar

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podmesh/podmesh/lb"
	"github.com/podmesh/podmesh/proxy"
	"github.com/podmesh/podmesh/tracing"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestParseFlags(t *testing.T) {
	c, err := Parse([]string{
		"-service", "web", "-inbound", "127.0.0.1:21000", "-app", "127.0.0.1:8080",
		"-upstream", "db=127.0.0.1:5432", "-upstream", "cache=127.0.0.1:6379",
		"-protocol", "HTTP", "-check-http", "/healthz",
	}, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"service":        c.Service == "web",
		"id":             c.ID == "web-127.0.0.1-21000",
		"protocol":       c.Protocol == "http",
		"advertise":      c.Advertise == "127.0.0.1",
		"admin":          c.Admin == DefaultAdmin,
		"registry":       c.Registry == DefaultRegistry,
		"register":       *c.Register,
		"check.http":     c.Check.HTTP == "/healthz",
		"check.interval": c.Check.Interval == Duration(2*time.Second),
		"check.ttl":      c.Check.TTL == Duration(6*time.Second),
		"drain_timeout":  c.DrainTimeout == Duration(8*time.Second),
		"upstreams":      len(c.Upstreams) == 2 && c.Upstreams[0].Name == "db" && c.Upstreams[1].Listen == "127.0.0.1:6379",
		"lb default":     c.Upstreams[0].LB == "least_request",
		"retries":        *c.Upstreams[0].Retries == 2,
		"retry_on":       strings.Join(c.Upstreams[0].RetryOn, ",") == "connect-failure,refused-stream,idempotent",
		"breakers":       c.Upstreams[0].Breakers == Breakers{1024, 1024, 1024, 0},
		"budget":         c.Upstreams[0].Budget == Budget{20, 3},
		"tracing off":    c.TraceEndpoint == "" && *c.TraceSample == 1 && !c.AccessLog,
		"propagation":    c.TracePropagation.String() == "w3c,b3,b3multi",
	}
	for k, ok := range want {
		if ok != true {
			t.Errorf("%s: not as expected in %+v", k, c)
		}
	}
}

func TestParseEnvAndSwitches(t *testing.T) {
	c, err := Parse([]string{"-upstream", "db=127.0.0.1:5432", "-register=false", "-tls=false"},
		env("CONSUL_HTTP_ADDR", "10.0.0.1:8500"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Registry != "http://10.0.0.1:8500" || *c.Register || c.Service != "" {
		t.Errorf("got registry %q register %v service %q", c.Registry, *c.Register, c.Service)
	}
	c, err = Parse([]string{"-upstream", "db=127.0.0.1:5432", "-registry", "https://reg:8501", "-tls=false"},
		env("CONSUL_HTTP_ADDR", "10.0.0.1:8500"), io.Discard)
	if err != nil || c.Registry != "https://reg:8501" {
		t.Errorf("flag should win over CONSUL_HTTP_ADDR: %q %v", c.Registry, err)
	}
}

func TestParseErrors(t *testing.T) {
	svc := []string{"-service", "web", "-inbound", "127.0.0.1:21000", "-app", "127.0.0.1:8080"}
	with := func(extra ...string) []string { return append(append([]string{}, svc...), extra...) }
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"nothing", nil, "config: service: nothing to do: set -service (with -inbound and -app) or at least one -upstream"},
		{"service alone", []string{"-service", "web"}, "config: inbound: \"\": required with service (with app), unless the sidecar has upstreams and serves them only"},
		{"app without service", []string{"-app", "127.0.0.1:1", "-upstream", "a=127.0.0.1:2"}, "config: service: \"\": required with inbound and app"},
		{"bad service name", []string{"-service", "we b", "-inbound", "127.0.0.1:1", "-app", "127.0.0.1:2"}, "config: service: \"we b\": want letters, digits, '-', '_' or '.'"},
		{"upstream without =", []string{"-upstream", "db"}, "invalid value \"db\" for flag -upstream: \"db\": want NAME=LOCAL_ADDR"},
		{"inbound without port", []string{"-service", "web", "-inbound", "127.0.0.1", "-app", "127.0.0.1:8080"}, "config: inbound: \"127.0.0.1\": want host:port"},
		{"bad port", with("-admin", "127.0.0.1:99999"), "config: admin: \"127.0.0.1:99999\": want a port number from 0 to 65535"},
		{"bad protocol", with("-protocol", "udp"), "config: protocol: \"udp\": want tcp, http, http2 or grpc"},
		{"bad registry", with("-registry", "ftp://x"), "config: registry: \"ftp://x\": want an http:// or https:// URL"},
		{"duplicate upstream", with("-upstream", "db=127.0.0.1:1", "-upstream", "db=127.0.0.1:2"), "config: -upstream db: \"db=127.0.0.1:2\": duplicate upstream"},
		{"two listens", with("-upstream", "a=127.0.0.1:1", "-upstream", "b=127.0.0.1:1"), "config: upstreams[1].listen: \"127.0.0.1:1\": already used by a"},
		{"listen on inbound", with("-upstream", "db=127.0.0.1:21000"), "config: upstreams[0].listen: \"127.0.0.1:21000\": already used by inbound"},
		{"bad upstream name", with("-upstream", "d/b=127.0.0.1:1"), "config: upstreams[0].name: \"d/b\": want a service name (letters, digits, '-', '_' or '.')"},
		{"bad drain", with("-drain-timeout", "soon"), "invalid value \"soon\" for flag -drain-timeout: \"soon\" is not a duration (such as 5s) or none"},
		{"bad check path", with("-check-http", "healthz"), "config: check.http: \"healthz\": want a path starting with /"},
		{"stray argument", with("extra"), "unexpected argument \"extra\""},
		{"advertise with port", with("-advertise", "10.0.0.1:80"), "config: advertise: \"10.0.0.1:80\": want a host name or IP address, without a port"},
		{"sample above 1", with("-trace-sample", "1.5"), "config: trace_sample: \"1.5\": want a ratio from 0 to 1"},
		{"negative sample", with("-trace-sample", "-0.1"), "config: trace_sample: \"-0.1\": want a ratio from 0 to 1"},
		{"bad trace endpoint", with("-trace-endpoint", "ftp://collector:4318"), "config: trace_endpoint: \"ftp://collector:4318\": want host:port or an http:// or https:// URL"},
		{"ready fd is stderr", with("-ready-fd", "2"), "config: ready_fd: \"2\": want a descriptor of 3 or above (0, 1 and 2 are stdin, stdout and stderr)"},
		{"bad propagation", with("-trace-propagation", "w3c,jaeger"), "invalid value \"w3c,jaeger\" for flag -trace-propagation: tracing: propagation format \"jaeger\": want w3c, b3, b3multi or all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args, env(), io.Discard)
			if err == nil || err.Error() != tc.want {
				t.Errorf("Parse(%q)\n got: %v\nwant: %s", tc.args, err, tc.want)
			}
		})
	}
}

// TestSidecarShapes: which combinations of service, inbound, app, upstreams and tls load,
// and what an outbound-only sidecar (a service name for its identity, upstreams, no
// inbound nor app) becomes: nothing registered, its service name as ID.
func TestSidecarShapes(t *testing.T) {
	up := []string{"-upstream", "db=127.0.0.1:5432"}
	with := func(a ...[]string) []string {
		var out []string
		for _, x := range a {
			out = append(out, x...)
		}
		return out
	}
	svc := []string{"-service", "web"}
	in := []string{"-inbound", "127.0.0.1:21000"}
	app := []string{"-app", "127.0.0.1:8080"}
	for _, tc := range []struct {
		name     string
		args     []string
		want     string // the error; "" for a valid configuration
		register bool
		id       string
	}{
		{"serving", with(svc, in, app), "", true, "web-127.0.0.1-21000"},
		{"serving with upstreams", with(svc, in, app, up), "", true, "web-127.0.0.1-21000"},
		{"outbound only", with(svc, up), "", false, "web"},
		{"outbound only with metrics", with(svc, up, []string{"-metrics", "127.0.0.1:9102"}), "", false, "web"},
		{"outbound only with an id", with(svc, up, []string{"-id", "web-7"}), "", false, "web-7"},
		{"outbound only without tls or service", with(up, []string{"-tls=false"}), "", false, ""},
		{"service alone", svc, "config: inbound: \"\": required with service (with app), unless the sidecar has upstreams and serves them only", false, ""},
		{"inbound without app", with(svc, in, up), "config: app: \"\": required with inbound", false, ""},
		{"app without inbound", with(svc, app, up), "config: inbound: \"\": required with app", false, ""},
		{"outbound only asked to register", with(svc, up, []string{"-register=true"}), "config: register: \"true\": an outbound-only sidecar (no inbound) has nothing to register", false, ""},
		{"upstreams with tls and no service", up, "config: service: \"\": required with tls (the sidecar's identity towards its upstreams): set -service (an outbound-only sidecar needs no -inbound nor -app), or -tls=false where no sidecar uses mTLS", false, ""},
		{"outbound only listening on the admin address", with(svc, []string{"-upstream", "db=127.0.0.1:19000"}), "config: upstreams[0].listen: \"127.0.0.1:19000\": already used by admin", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.args, env(), io.Discard)
			if tc.want != "" {
				if err == nil || err.Error() != tc.want {
					t.Errorf("Parse(%q)\n got: %v\nwant: %s", tc.args, err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.args, err)
			}
			if *c.Register != tc.register || c.ID != tc.id {
				t.Errorf("Parse(%q): register %v, id %q; want %v, %q", tc.args, *c.Register, c.ID, tc.register, tc.id)
			}
		})
	}
	// The YAML the launcher writes for a pod without x-podmesh.port, and for its ingress.
	c, err := LoadYAML([]byte("service: shop-ingress\nadmin: 127.0.0.1:0\nregistry: http://127.0.0.1:8500\nregister: false\n" +
		"upstreams:\n  - {name: frontend, listen: '127.0.0.1:18080', protocol: http}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c = c.withDefaults(env()); c.Validate() != nil || *c.Register || c.Inbound != "" || c.App != "" {
		t.Errorf("outbound-only YAML: %v, %+v", c.Validate(), c)
	}
}

const goodYAML = `
service: web
protocol: grpc
inbound: 0.0.0.0:21000
advertise: 10.0.0.5
app: 127.0.0.1:8080
metrics: 0.0.0.0:9102
register: false
trace_endpoint: collector:4318
trace_sample: 0.25
trace_propagation: b3,b3multi
access_log: true
tags: [v1]
check:
  http: /healthz
  interval: 1s
drain_timeout: 3s
limits:
  max_header_bytes: 16384
upstreams:
  - name: catalog
    listen: 127.0.0.1:9001
    protocol: http
    lb: ring_hash
    hash_on: header:x-user
    connect_timeout: 250ms
    timeout: none
    per_try_timeout: 2s
    retries: 0
    retry_on: [connect-failure, 5xx]
    breakers: {max_connections: 10, max_pending_requests: 20, max_requests: 30, max_retries: 4}
    retry_budget: {percent: 50, min_concurrent: 5}
    outlier: {consecutive_5xx: 3, base_ejection_time: 5s, max_ejection_percent: 100}
  - name: prices
    listen: 127.0.0.1:9002
`

func TestLoadYAML(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sidecar.yaml")
	if err := os.WriteFile(path, []byte(goodYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	// Flags given explicitly win over the file.
	c, err := Parse([]string{"-config", path, "-upstream", "prices=127.0.0.1:9009"}, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cat, prices := c.Upstreams[0], c.Upstreams[1]
	if c.ID != "web-10.0.0.5-21000" || c.Protocol != "grpc" || *c.Register || c.Check.TTL != Duration(3*time.Second) ||
		c.Limits.MaxHeaderBytes != 16384 || c.DrainTimeout != Duration(3*time.Second) {
		t.Errorf("service fields: %+v", c)
	}
	if c.Metrics != "0.0.0.0:9102" || c.TraceEndpoint != "collector:4318" || *c.TraceSample != 0.25 ||
		c.TracePropagation != tracing.PropagateB3Single|tracing.PropagateB3Multi || !c.AccessLog {
		t.Errorf("observability fields: %+v", c)
	}
	if prices.Listen != "127.0.0.1:9009" || prices.LB != "least_request" {
		t.Errorf("prices: %+v", prices)
	}
	pol, lbc, err := cat.policy()
	if err != nil {
		t.Fatal(err)
	}
	if pol.Timeout >= 0 || pol.PerTryTimeout != 2*time.Second || pol.Retries >= 0 ||
		pol.RetryOn != proxy.RetryConnectFailure|proxy.Retry5xx || pol.ConnectTimeout != 250*time.Millisecond ||
		pol.HashOn != (proxy.HashOn{Source: proxy.HashHeader, Name: "x-user"}) ||
		pol.Breakers != (proxy.Breakers{MaxConnections: 10, MaxPendingRequests: 20, MaxRequests: 30, MaxRetries: 4}) ||
		pol.RetryBudget != (proxy.RetryBudget{Percent: 50, MinConcurrent: 5}) {
		t.Errorf("catalog policy: %+v", pol)
	}
	if lbc.Policy != lb.RingHash || lbc.Outlier.Consecutive5xx != 3 || lbc.Outlier.BaseEjectionTime != 5*time.Second ||
		lbc.Outlier.MaxEjectionPercent != 100 {
		t.Errorf("catalog lb config: %+v", lbc)
	}
}

func TestLoadYAMLErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "service: web\nbogus: 1\n", "yaml: unmarshal errors:\n  line 2: field bogus not found in type sidecar.Config"},
		{"unknown upstream key", "upstreams:\n  - name: a\n    listen: 127.0.0.1:1\n    timeuot: 1s\n", "yaml: unmarshal errors:\n  line 4: field timeuot not found in type sidecar.Upstream"},
		{"bad duration", "drain_timeout: soon\n", "line 1: \"soon\" is not a duration (such as 5s) or none"},
		{"negative duration", "check:\n  interval: -1s\n", "line 2: \"-1s\" is negative"},
		{"wrong type", "upstreams: 3\n", "yaml: unmarshal errors:\n  line 1: cannot unmarshal !!int `3` into []sidecar.Upstream"},
		{"two documents", "service: a\n---\nservice: b\n", "more than one YAML document"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadYAML([]byte(tc.yaml))
			if err == nil || err.Error() != tc.want {
				t.Errorf("got: %v\nwant: %s", err, tc.want)
			}
		})
	}
}

func TestValidateYAMLPolicies(t *testing.T) {
	base := "service: web\ninbound: 127.0.0.1:1\napp: 127.0.0.1:2\nupstreams:\n  - name: a\n    listen: 127.0.0.1:3\n"
	for _, tc := range []struct{ name, extra, want string }{
		{"lb", "    lb: fastest\n", "upstreams[0].lb: \"fastest\": want round_robin, random, least_request, ring_hash or maglev"},
		{"hash without ring", "    hash_on: header:x\n", "upstreams[0].hash_on: \"header:x\": only ring_hash and maglev use a hash key"},
		{"bad hash", "    lb: maglev\n    hash_on: body\n", "upstreams[0].hash_on: \"body\": want header:NAME, cookie:NAME or source_ip"},
		{"retry_on", "    retry_on: [teapot]\n", "upstreams[0].retry_on: \"teapot\": unknown retry condition \"teapot\" (want connect-failure, refused-stream, idempotent, 5xx or gateway-error)"},
		{"retries", "    retries: 11\n", "upstreams[0].retries: \"11\": want at most 10"},
		{"budget", "    retry_budget: {percent: 120}\n", "upstreams[0].retry_budget.percent: \"120\": want 0 to 100"},
		{"outlier", "    outlier: {max_ejection_percent: 101}\n", "upstreams[0].outlier: lb: config outlier.max_ejection_percent = 101: want between 1 and 100"},
		{"protocol", "    protocol: quic\n", "upstreams[0].protocol: \"quic\": want tcp, http, http2 or grpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadYAML([]byte(base + tc.extra))
			if err != nil {
				t.Fatal(err)
			}
			c = c.withDefaults(env())
			err = c.Validate()
			if err == nil || err.Error() != tc.want {
				t.Errorf("got: %v\nwant: %s", err, tc.want)
			}
		})
	}
}

// FuzzLoadYAML: the loader never panics, and whatever it accepts survives defaults and
// validation without panicking.
func FuzzLoadYAML(f *testing.F) {
	f.Add([]byte(goodYAML))
	f.Add([]byte("service: web\nbogus: 1\n"))
	f.Add([]byte("upstreams:\n  - {name: a, listen: '127.0.0.1:1', timeout: none}\n"))
	f.Add([]byte("drain_timeout: [1]\n"))
	f.Add([]byte("service: a\ninbound: 127.0.0.1:1\napp: 127.0.0.1:2\ntls: {enabled: false}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := LoadYAML(data)
		if err != nil {
			return
		}
		c = c.withDefaults(env())
		if c.Validate() != nil {
			return
		}
		for _, u := range c.Upstreams {
			if _, _, err := u.policy(); err != nil {
				t.Fatalf("validated upstream %+v has no policy: %v", u, err)
			}
		}
	})
}

// The observability flags override the file, and tracing follows the OTEL_* environment
// when no endpoint is configured.
func TestParseObservability(t *testing.T) {
	c, err := Parse([]string{"-upstream", "db=127.0.0.1:5432", "-tls=false", "-metrics", "127.0.0.1:15090",
		"-trace-endpoint", "http://127.0.0.1:4318", "-trace-sample", "0", "-trace-propagation", "w3c", "-access-log"},
		env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Metrics != "127.0.0.1:15090" || c.TraceEndpoint != "http://127.0.0.1:4318" || *c.TraceSample != 0 ||
		c.TracePropagation != tracing.PropagateW3C || !c.AccessLog {
		t.Errorf("%+v", c)
	}

	c, err = Parse([]string{"-upstream", "db=127.0.0.1:5432", "-tls=false"}, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env, val string
		on       bool
		endpoint string
	}{
		{"", "", false, ""},
		{tracing.EnvEndpoint, "http://127.0.0.1:4318", true, "http://127.0.0.1:4318/v1/traces"},
		{tracing.EnvTracesEndpoint, "http://127.0.0.1:4319/v1/traces", true, "http://127.0.0.1:4319/v1/traces"},
	} {
		t.Run(tc.env, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv(tc.env, tc.val)
			}
			s, err := New(c, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.startTracing(t.Context()); err != nil {
				t.Fatal(err)
			}
			defer s.stopTracing(t.Context())
			if s.Tracer().Enabled() != tc.on || s.Tracer().Endpoint() != tc.endpoint {
				t.Errorf("enabled %v endpoint %q", s.Tracer().Enabled(), s.Tracer().Endpoint())
			}
		})
	}
}
