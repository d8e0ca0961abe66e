package tracing

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestConfigResolve(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		env     map[string]string
		off     bool
		want    func(t *testing.T, s settings)
		wantErr []string // substrings the error must contain
	}{
		{name: "zero value is off", cfg: Config{}, off: true},
		{name: "zero value with only unrelated env is off", env: map[string]string{EnvHeaders: "a=b", EnvTimeout: "5"}, off: true},
		{name: "flag host:port", cfg: Config{ServiceName: "s", Endpoint: "jaeger:4318"},
			want: func(t *testing.T, s settings) { wantEq(t, "endpoint", s.endpoint, "http://jaeger:4318/v1/traces") }},
		{name: "flag base URL gets the traces path", cfg: Config{ServiceName: "s", Endpoint: "https://collector.example/"},
			want: func(t *testing.T, s settings) {
				wantEq(t, "endpoint", s.endpoint, "https://collector.example/v1/traces")
			}},
		{name: "flag URL with a path is used as is", cfg: Config{ServiceName: "s", Endpoint: "http://c:4318/otlp/v1/traces"},
			want: func(t *testing.T, s settings) { wantEq(t, "endpoint", s.endpoint, "http://c:4318/otlp/v1/traces") }},
		{name: "general env endpoint is a base URL", cfg: Config{ServiceName: "s"},
			env:  map[string]string{EnvEndpoint: "http://c:4318"},
			want: func(t *testing.T, s settings) { wantEq(t, "endpoint", s.endpoint, "http://c:4318/v1/traces") }},
		{name: "traces env endpoint is used as is and wins over the general one", cfg: Config{ServiceName: "s"},
			env:  map[string]string{EnvEndpoint: "http://general:4318", EnvTracesEndpoint: "http://traces:4318/custom"},
			want: func(t *testing.T, s settings) { wantEq(t, "endpoint", s.endpoint, "http://traces:4318/custom") }},
		{name: "flag wins over env", cfg: Config{ServiceName: "s", Endpoint: "flag:4318"},
			env:  map[string]string{EnvEndpoint: "http://general:4318", EnvTracesEndpoint: "http://traces:4318"},
			want: func(t *testing.T, s settings) { wantEq(t, "endpoint", s.endpoint, "http://flag:4318/v1/traces") }},
		{name: "OTEL_SDK_DISABLED turns it off", cfg: Config{ServiceName: "s", Endpoint: "c:4318"},
			env: map[string]string{EnvSDKDisabled: "TRUE"}, off: true},
		{name: "defaults", cfg: Config{ServiceName: "s", Endpoint: "c:4318"},
			want: func(t *testing.T, s settings) {
				wantEq(t, "ratio", s.ratio, DefaultSampleRatio)
				wantEq(t, "queue", s.queueSize, DefaultQueueSize)
				wantEq(t, "batch", s.batchSize, DefaultBatchSize)
				wantEq(t, "delay", s.batchDelay, DefaultBatchDelay)
				wantEq(t, "timeout", s.timeout, DefaultTimeout)
				wantEq(t, "propagation", s.propagation, propagateAll)
			}},
		{name: "negative ratio is zero", cfg: Config{ServiceName: "s", Endpoint: "c:4318", SampleRatio: -1},
			want: func(t *testing.T, s settings) { wantEq(t, "ratio", s.ratio, 0.0) }},
		{name: "small queue caps the default batch", cfg: Config{ServiceName: "s", Endpoint: "c:4318", QueueSize: 8},
			want: func(t *testing.T, s settings) { wantEq(t, "batch", s.batchSize, 8) }},
		{name: "service name from env", cfg: Config{Endpoint: "c:4318"}, env: map[string]string{EnvServiceName: "catalog"},
			want: func(t *testing.T, s settings) { wantEq(t, "service", s.service, "catalog") }},
		{name: "headers and timeout from env, traces-specific first", cfg: Config{ServiceName: "s", Endpoint: "c:4318"},
			env: map[string]string{EnvHeaders: "general=1", EnvTracesHeaders: "api-key=se%20cret, x-team = mesh",
				EnvTimeout: "1000", EnvTracesTimeout: "2500"},
			want: func(t *testing.T, s settings) {
				wantEq(t, "headers", len(s.headers), 2)
				wantEq(t, "api-key", s.headers["api-key"], "se cret")
				wantEq(t, "x-team", s.headers["x-team"], "mesh")
				wantEq(t, "timeout", s.timeout, 2500*time.Millisecond)
			}},
		{name: "fields win over env headers and timeout", cfg: Config{ServiceName: "s", Endpoint: "c:4318",
			Headers: map[string]string{"k": "v"}, ExportTimeout: time.Second},
			env: map[string]string{EnvHeaders: "general=1", EnvTimeout: "7"},
			want: func(t *testing.T, s settings) {
				wantEq(t, "headers", len(s.headers), 1)
				wantEq(t, "timeout", s.timeout, time.Second)
			}},
		{name: "exporter turns it on without an endpoint", cfg: Config{ServiceName: "s", Exporter: &fakeExporter{}},
			env:  map[string]string{EnvEndpoint: "http://ignored:4318"},
			want: func(t *testing.T, s settings) { wantEq(t, "endpoint", s.endpoint, "") }},

		{name: "service name required when on", cfg: Config{Endpoint: "c:4318"}, wantErr: []string{"ServiceName"}},
		{name: "ratio above 1", cfg: Config{SampleRatio: 1.5}, wantErr: []string{"SampleRatio 1.5"}},
		{name: "negative sizes", cfg: Config{QueueSize: -1, BatchSize: -2}, wantErr: []string{"QueueSize -1", "BatchSize -2"}},
		{name: "negative durations", cfg: Config{BatchDelay: -time.Second, ExportTimeout: -time.Millisecond},
			wantErr: []string{"BatchDelay -1s", "ExportTimeout -1ms"}},
		{name: "batch larger than queue", cfg: Config{ServiceName: "s", Endpoint: "c:4318", QueueSize: 10, BatchSize: 20},
			wantErr: []string{"BatchSize 20", "QueueSize 10"}},
		{name: "unknown propagation bits", cfg: Config{Propagation: 0x80}, wantErr: []string{"Propagation 0x80"}},
		{name: "bad endpoint scheme", cfg: Config{ServiceName: "s", Endpoint: "ftp://c:21"}, wantErr: []string{`Endpoint "ftp://c:21"`, "scheme"}},
		{name: "bad endpoint port", cfg: Config{ServiceName: "s", Endpoint: "c:99999"}, wantErr: []string{`Endpoint "c:99999"`, "port"}},
		{name: "endpoint with a query", cfg: Config{ServiceName: "s", Endpoint: "http://c:4318/?x=1"}, wantErr: []string{"query"}},
		{name: "bad env endpoint names the variable", cfg: Config{ServiceName: "s"},
			env: map[string]string{EnvTracesEndpoint: "http://"}, wantErr: []string{EnvTracesEndpoint, "no host"}},
		{name: "bad env timeout", cfg: Config{ServiceName: "s", Endpoint: "c:4318"}, env: map[string]string{EnvTimeout: "10s"},
			wantErr: []string{EnvTimeout, `"10s"`, "milliseconds"}},
		{name: "bad env headers name the key, not the secret", cfg: Config{ServiceName: "s", Endpoint: "c:4318"},
			env: map[string]string{EnvHeaders: "authorization=Bearer%zzsecret"}, wantErr: []string{EnvHeaders, `"authorization"`}},
		{name: "all errors at once", cfg: Config{SampleRatio: 2, QueueSize: -1, Endpoint: "gopher://x"},
			wantErr: []string{"SampleRatio 2", "QueueSize -1", `Endpoint "gopher://x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tt.cfg.resolve(func(k string) string { return tt.env[k] })
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error, want one containing %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q leaks a header value", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("resolve: %v", err)
			}
			if s.enabled == tt.off {
				t.Fatalf("enabled = %v, want %v", s.enabled, !tt.off)
			}
			if tt.want != nil {
				tt.want(t, s)
			}
		})
	}
}

func wantEq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// TestNewReadsEnvironment: New itself consults the process environment (t.Setenv), and the
// validation error reaches the caller.
func TestNewReadsEnvironment(t *testing.T) {
	clearOTELEnv(t)
	tr, err := New(context.Background(), Config{})
	if err != nil || tr.Enabled() {
		t.Fatalf("New(zero) = enabled %v, %v; want off", tr.Enabled(), err)
	}
	t.Setenv(EnvEndpoint, "http://127.0.0.1:1")
	t.Setenv(EnvServiceName, "from-env")
	tr, err = New(context.Background(), Config{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer tr.Shutdown(context.Background())
	if !tr.Enabled() || tr.Endpoint() != "http://127.0.0.1:1/v1/traces" {
		t.Errorf("enabled %v endpoint %q, want on at http://127.0.0.1:1/v1/traces", tr.Enabled(), tr.Endpoint())
	}
	if _, err := New(context.Background(), Config{SampleRatio: 3}); err == nil || !strings.Contains(err.Error(), "SampleRatio 3") {
		t.Errorf("New with a bad ratio: %v, want an error naming SampleRatio 3", err)
	}
}
