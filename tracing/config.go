package tracing

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Defaults applied by New to the zero fields of Config.
const (
	// DefaultSampleRatio is the OpenTelemetry SDK's own default (parent-based, always on
	// for roots): every request that arrives without a trace context starts a sampled
	// trace. Lower it for busy meshes.
	DefaultSampleRatio = 1.0
	DefaultQueueSize   = 2048             // spans waiting for export (the SDK's default)
	DefaultBatchSize   = 512              // spans per OTLP request (the SDK's default)
	DefaultBatchDelay  = 5 * time.Second  // longest a span waits for a batch to fill
	DefaultTimeout     = 10 * time.Second // one export request (OTLP's default)
	defaultTracesPath  = "/v1/traces"
)

// The standard OpenTelemetry environment variables Config falls back on. A Config field
// that is set always wins over its variable; a signal-specific variable (…_TRACES_…) wins
// over the general one, as the OTLP exporter specification says.
const (
	EnvEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"        // base URL; /v1/traces is appended
	EnvTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" // full URL, used as is
	EnvHeaders        = "OTEL_EXPORTER_OTLP_HEADERS"         // k=v,k2=v2 (values percent-encoded)
	EnvTracesHeaders  = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
	EnvTimeout        = "OTEL_EXPORTER_OTLP_TIMEOUT" // milliseconds
	EnvTracesTimeout  = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
	EnvServiceName    = "OTEL_SERVICE_NAME"
	EnvSDKDisabled    = "OTEL_SDK_DISABLED" // "true" turns tracing off whatever else is set
)

// Config configures a Tracer. The zero value, with none of the OTEL_* variables above set,
// means tracing is off: New returns a Tracer whose helpers do nothing and cost nothing.
//
// Tracing is on when an endpoint is known (Endpoint, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
// else OTEL_EXPORTER_OTLP_ENDPOINT) or Exporter is set, unless OTEL_SDK_DISABLED=true.
// Other fields have defaults applied in one place (withDefaults) and are validated by a list
// of named checks whose errors name the field (or variable) and the bad value.
type Config struct {
	// ServiceName is this sidecar's service, the service.name of every span it exports.
	// Empty: OTEL_SERVICE_NAME; required when tracing is on.
	ServiceName string
	// InstanceID is the service.instance.id resource attribute (the registry service ID).
	InstanceID string

	// Endpoint is where spans go, over OTLP/HTTP: "host:port" or "http://host:port" (the
	// path /v1/traces is added), or a URL with a path, used as is ("http://h:4318/v1/traces").
	// This is the -trace-endpoint flag; it wins over the environment.
	Endpoint string
	// Headers are sent with every export request (an API key for a hosted collector).
	// Nil: OTEL_EXPORTER_OTLP_TRACES_HEADERS, else OTEL_EXPORTER_OTLP_HEADERS.
	Headers map[string]string
	// ExportTimeout bounds one export request, retries included. Zero:
	// OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, else OTEL_EXPORTER_OTLP_TIMEOUT, else DefaultTimeout.
	ExportTimeout time.Duration

	// SampleRatio is the fraction of requests arriving without a sampling decision (no
	// trace context, or B3 headers that defer the decision) that start a sampled trace,
	// at most 1. Requests with a decision follow it: a sampled caller is always followed, an
	// unsampled one never. Zero means DefaultSampleRatio; a negative value means 0 (start no
	// traces of our own, only join sampled callers). The decision is a function of the trace
	// ID (as the SDK's TraceIDRatioBased), so sidecars with the same ratio agree.
	SampleRatio float64

	// Propagation is the set of header formats written into outgoing requests. Zero means
	// all of them (W3C, B3 single, B3 multi), so a peer that speaks only one still joins the
	// trace. Extraction always accepts every format, W3C first.
	Propagation Propagation

	// QueueSize is how many ended spans may wait for export; when the queue is full, spans
	// are dropped and counted, never waited for. Zero means DefaultQueueSize.
	QueueSize int
	// BatchSize is the most spans sent in one export request; zero means DefaultBatchSize.
	BatchSize int
	// BatchDelay is the longest an ended span waits for its batch to fill before the batch
	// is sent anyway; zero means DefaultBatchDelay.
	BatchDelay time.Duration

	// Logger gets one line when span export starts failing and one when it recovers.
	// Nil discards.
	Logger *slog.Logger

	// Exporter, when set, receives the spans instead of an OTLP/HTTP exporter built from
	// Endpoint (tests use go.opentelemetry.io/otel/sdk/trace/tracetest.InMemoryExporter).
	// Setting it turns tracing on; the Tracer shuts it down.
	Exporter sdktrace.SpanExporter
}

// settings is a Config resolved against the environment, with defaults applied.
type settings struct {
	enabled     bool
	service     string
	instance    string
	endpoint    string // full URL of the traces endpoint; empty when Exporter is set
	headers     map[string]string
	timeout     time.Duration
	ratio       float64
	propagation Propagation
	queueSize   int
	batchSize   int
	batchDelay  time.Duration
	exporter    sdktrace.SpanExporter
}

// resolve applies the environment (through getenv) and the defaults, then validates. It is
// the one place defaults live.
func (c Config) resolve(getenv func(string) string) (settings, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	s := settings{
		service:     c.ServiceName,
		instance:    c.InstanceID,
		headers:     c.Headers,
		timeout:     c.ExportTimeout,
		ratio:       c.SampleRatio,
		propagation: c.Propagation,
		queueSize:   c.QueueSize,
		batchSize:   c.BatchSize,
		batchDelay:  c.BatchDelay,
		exporter:    c.Exporter,
	}

	// Hard checks on the fields themselves, whether or not tracing ends up on, so a bad
	// flag is reported even when the endpoint is missing.
	check(checkRatio(c.SampleRatio))
	check(checkNonNegative("QueueSize", c.QueueSize))
	check(checkNonNegative("BatchSize", c.BatchSize))
	check(checkDuration("BatchDelay", c.BatchDelay))
	check(checkDuration("ExportTimeout", c.ExportTimeout))
	if c.Propagation&^propagateAll != 0 {
		check(fmt.Errorf("tracing: Propagation %#x: unknown format bits", uint8(c.Propagation)))
	}
	if c.Endpoint != "" {
		u, err := endpointURL(c.Endpoint, true)
		if err != nil {
			check(fmt.Errorf("tracing: Endpoint %q: %w", c.Endpoint, err))
		}
		s.endpoint = u
	}

	disabled := strings.EqualFold(strings.TrimSpace(getenv(EnvSDKDisabled)), "true")
	if s.endpoint == "" && c.Endpoint == "" && c.Exporter == nil && !disabled {
		if v := getenv(EnvTracesEndpoint); v != "" {
			u, err := endpointURL(v, false)
			if err != nil {
				check(fmt.Errorf("tracing: %s %q: %w", EnvTracesEndpoint, v, err))
			}
			s.endpoint = u
		} else if v := getenv(EnvEndpoint); v != "" {
			u, err := endpointURL(v, true)
			if err != nil {
				check(fmt.Errorf("tracing: %s %q: %w", EnvEndpoint, v, err))
			}
			s.endpoint = u
		}
	}
	if s.exporter != nil {
		s.endpoint = ""
	}
	s.enabled = !disabled && (s.endpoint != "" || s.exporter != nil)
	if len(errs) > 0 {
		return settings{}, errors.Join(errs...)
	}
	if !s.enabled {
		return settings{}, nil
	}

	// Tracing is on: the environment fills what the fields left empty, then defaults.
	if s.service == "" {
		s.service = strings.TrimSpace(getenv(EnvServiceName))
	}
	if s.service == "" {
		check(fmt.Errorf("tracing: ServiceName %q: required when tracing is on (or set %s)", c.ServiceName, EnvServiceName))
	}
	if s.headers == nil && s.exporter == nil {
		for _, name := range []string{EnvTracesHeaders, EnvHeaders} {
			if v := getenv(name); v != "" {
				h, err := parseHeaders(v)
				if err != nil {
					check(fmt.Errorf("tracing: %s: %w", name, err))
				}
				s.headers = h
				break
			}
		}
	}
	if s.timeout == 0 {
		for _, name := range []string{EnvTracesTimeout, EnvTimeout} {
			if v := getenv(name); v != "" {
				ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil || ms <= 0 || ms > math.MaxInt64/int64(time.Millisecond) {
					check(fmt.Errorf("tracing: %s %q: must be a positive number of milliseconds", name, v))
				}
				s.timeout = time.Duration(ms) * time.Millisecond
				break
			}
		}
	}
	for k := range s.headers {
		if k == "" || strings.ContainsAny(k, " \t\r\n:") {
			check(fmt.Errorf("tracing: Headers key %q: not a valid header name", k))
		}
	}
	s = s.withDefaults()
	if s.batchSize > s.queueSize {
		check(fmt.Errorf("tracing: BatchSize %d: larger than QueueSize %d", s.batchSize, s.queueSize))
	}
	if len(errs) > 0 {
		return settings{}, errors.Join(errs...)
	}
	return s, nil
}

func (s settings) withDefaults() settings {
	switch {
	case s.ratio == 0:
		s.ratio = DefaultSampleRatio
	case s.ratio < 0:
		s.ratio = 0
	}
	if s.propagation == 0 {
		s.propagation = propagateAll
	}
	if s.queueSize == 0 {
		s.queueSize = DefaultQueueSize
	}
	if s.batchSize == 0 {
		s.batchSize = min(DefaultBatchSize, s.queueSize)
	}
	if s.batchDelay == 0 {
		s.batchDelay = DefaultBatchDelay
	}
	if s.timeout == 0 {
		s.timeout = DefaultTimeout
	}
	return s
}

func checkRatio(r float64) error {
	if math.IsNaN(r) || r > 1 {
		return fmt.Errorf("tracing: SampleRatio %v: must be at most 1", r)
	}
	return nil
}

func checkNonNegative(field string, n int) error {
	if n < 0 {
		return fmt.Errorf("tracing: %s %d: must not be negative", field, n)
	}
	return nil
}

func checkDuration(field string, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("tracing: %s %v: must not be negative", field, d)
	}
	return nil
}

// endpointURL turns an endpoint setting into the URL spans are posted to. A bare host:port
// means plain HTTP. When base is true (the flag and OTEL_EXPORTER_OTLP_ENDPOINT), an empty
// or "/" path gets /v1/traces; a signal-specific URL is used as is.
func endpointURL(v string, base bool) (string, error) {
	v = strings.TrimSpace(v)
	if !strings.Contains(v, "://") {
		v = "http://" + v
	}
	u, err := url.Parse(v)
	if err != nil {
		return "", fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("scheme %q: must be http or https", u.Scheme)
	}
	if u.Hostname() == "" {
		return "", errors.New("no host")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("port %q: must be 1-65535", p)
		}
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("must not have user info, a query or a fragment")
	}
	if base {
		// The specification appends the signal path to the base URL's path.
		if u.Path == "" || u.Path == "/" {
			u.Path = defaultTracesPath
		}
	} else if u.Path == "" {
		u.Path = "/"
	}
	return u.String(), nil
}

// parseHeaders reads the OTEL_EXPORTER_OTLP_HEADERS format: comma-separated key=value pairs,
// values percent-encoded. Errors name the entry's key only: values are often secrets.
func parseHeaders(v string) (map[string]string, error) {
	h := map[string]string{}
	for i, entry := range strings.Split(v, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		k, val, ok := strings.Cut(entry, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("entry %d (key %q): want key=value", i+1, k)
		}
		dec, err := url.PathUnescape(strings.TrimSpace(val))
		if err != nil {
			return nil, fmt.Errorf("entry %d (key %q): bad percent-encoding in the value", i+1, k)
		}
		h[k] = dec
	}
	return h, nil
}
