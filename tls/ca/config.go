package ca

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Defaults applied to a zero Config, Consul's built-in provider defaults.
const (
	DefaultLeafCertTTL         = 72 * time.Hour
	DefaultRootCertTTL         = 10 * 365 * 24 * time.Hour // 87600h
	DefaultRotationPeriod      = 90 * 24 * time.Hour       // 2160h
	DefaultIntermediateCertTTL = 365 * 24 * time.Hour      // 8760h, reported only
	DefaultClockSkew           = time.Minute
)

// Limits on the configurable durations. Consul's minimum leaf TTL is 1h; Podmesh allows
// seconds so that tests can watch leaves rotate.
const (
	MinLeafCertTTL = time.Second
	MaxLeafCertTTL = 365 * 24 * time.Hour
	MinRootCertTTL = time.Hour
)

// Config is the CA's configuration. The zero value means Consul's defaults, applied by
// withDefaults; Validate checks a config after defaults.
type Config struct {
	// LeafCertTTL is the lifetime of each leaf (72h when zero).
	LeafCertTTL time.Duration
	// RootCertTTL is the lifetime of each root (10 years when zero).
	RootCertTTL time.Duration
	// RotationPeriod is how old the active root may get before RotationDue reports true
	// (2160h when zero; negative disables). The registry decides when to call Rotate.
	RotationPeriod time.Duration
	// IntermediateCertTTL is reported in the provider configuration for compatibility; the
	// built-in CA signs leaves with the root directly (8760h when zero).
	IntermediateCertTTL time.Duration
	// ClockSkew is how far NotBefore is set in the past so that peers with slightly slow
	// clocks accept a new certificate at once. It is capped at a tenth of the leaf lifetime
	// so that short test lifetimes still work (1m when zero).
	ClockSkew time.Duration

	// Now is the clock; time.Now when nil. It is not persisted.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.LeafCertTTL == 0 {
		c.LeafCertTTL = DefaultLeafCertTTL
	}
	if c.RootCertTTL == 0 {
		c.RootCertTTL = DefaultRootCertTTL
	}
	if c.RotationPeriod == 0 {
		c.RotationPeriod = DefaultRotationPeriod
	}
	if c.IntermediateCertTTL == 0 {
		c.IntermediateCertTTL = DefaultIntermediateCertTTL
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = DefaultClockSkew
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate checks a config after defaults: each failed check names the field and its value.
func (c Config) Validate() error {
	c = c.withDefaults()
	checks := []struct {
		bad bool
		msg string
	}{
		{c.LeafCertTTL < MinLeafCertTTL, fmt.Sprintf("LeafCertTTL %v: must be at least %v", c.LeafCertTTL, MinLeafCertTTL)},
		{c.LeafCertTTL > MaxLeafCertTTL, fmt.Sprintf("LeafCertTTL %v: must be at most %v", c.LeafCertTTL, MaxLeafCertTTL)},
		{c.RootCertTTL < MinRootCertTTL, fmt.Sprintf("RootCertTTL %v: must be at least %v", c.RootCertTTL, MinRootCertTTL)},
		{c.RootCertTTL <= 2*c.LeafCertTTL, fmt.Sprintf("RootCertTTL %v: must be more than twice LeafCertTTL %v", c.RootCertTTL, c.LeafCertTTL)},
		{c.IntermediateCertTTL < 0, fmt.Sprintf("IntermediateCertTTL %v: must not be negative", c.IntermediateCertTTL)},
		{c.ClockSkew < 0, fmt.Sprintf("ClockSkew %v: must not be negative", c.ClockSkew)},
	}
	var errs []error
	for _, ch := range checks {
		if ch.bad {
			errs = append(errs, errors.New("ca: config: "+ch.msg))
		}
	}
	return errors.Join(errs...)
}

// skew returns the NotBefore backdate for leaves: ClockSkew, at most a tenth of the lifetime.
func (c Config) skew() time.Duration {
	if s := c.LeafCertTTL / 10; s < c.ClockSkew {
		return s
	}
	return c.ClockSkew
}

// ProviderConfig is the "Config" object of GET /v1/connect/ca/configuration for the built-in
// ("consul") provider: durations as strings, key type and size.
func (c Config) ProviderConfig() map[string]any {
	c = c.withDefaults()
	return map[string]any{
		"LeafCertTTL":         FormatDuration(c.LeafCertTTL),
		"RootCertTTL":         FormatDuration(c.RootCertTTL),
		"RotationPeriod":      FormatDuration(c.RotationPeriod),
		"IntermediateCertTTL": FormatDuration(c.IntermediateCertTTL),
		"PrivateKeyType":      PrivateKeyType,
		"PrivateKeyBits":      PrivateKeyBits,
	}
}

// ParseProviderConfig reads the "Config" object of PUT /v1/connect/ca/configuration into a
// Config, starting from base (the current configuration) so that omitted keys keep their
// values. Durations may be strings ("72h") or numbers of nanoseconds, as Consul's
// mapstructure decoding accepts. Keys the built-in CA cannot honour (PrivateKey, RootCert, a
// key type other than "ec" 256) are errors naming the key.
func ParseProviderConfig(raw map[string]any, base Config) (Config, error) {
	out := base
	var errs []error
	for k, v := range raw {
		var dst *time.Duration
		switch strings.ToLower(k) {
		case "leafcertttl", "leaf_cert_ttl":
			dst = &out.LeafCertTTL
		case "rootcertttl", "root_cert_ttl":
			dst = &out.RootCertTTL
		case "rotationperiod", "rotation_period":
			dst = &out.RotationPeriod
		case "intermediatecertttl", "intermediate_cert_ttl":
			dst = &out.IntermediateCertTTL
		case "privatekeytype", "private_key_type":
			if s, ok := v.(string); !ok || (s != "" && s != PrivateKeyType) {
				errs = append(errs, fmt.Errorf("ca: config: %s %v: only %q is supported", k, v, PrivateKeyType))
			}
			continue
		case "privatekeybits", "private_key_bits":
			if n, ok := toInt(v); !ok || (n != 0 && n != PrivateKeyBits) {
				errs = append(errs, fmt.Errorf("ca: config: %s %v: only %d is supported", k, v, PrivateKeyBits))
			}
			continue
		case "privatekey", "private_key", "rootcert", "root_cert":
			if s, ok := v.(string); ok && s == "" {
				continue
			}
			errs = append(errs, fmt.Errorf("ca: config: %s: bringing your own CA key or root is not supported", k))
			continue
		case "csrmaxpersecond", "csrmaxconcurrent", "skipvalidate", "csr_max_per_second", "csr_max_concurrent", "skip_validate":
			continue // accepted and ignored, as these only tune Consul's server
		default:
			errs = append(errs, fmt.Errorf("ca: config: unknown key %q", k))
			continue
		}
		d, err := toDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("ca: config: %s %v: %w", k, v, err))
			continue
		}
		*dst = d
	}
	if len(errs) > 0 {
		return base, errors.Join(errs...)
	}
	if err := out.Validate(); err != nil {
		return base, err
	}
	return out, nil
}

func toDuration(v any) (time.Duration, error) {
	switch x := v.(type) {
	case string:
		return time.ParseDuration(x)
	case float64:
		return time.Duration(x), nil
	case int:
		return time.Duration(x), nil
	case int64:
		return time.Duration(x), nil
	default:
		return 0, fmt.Errorf("want a duration string, got %T", v)
	}
}

func toInt(v any) (int, bool) {
	switch x := v.(type) {
	case float64:
		return int(x), float64(int(x)) == x
	case int:
		return x, true
	case int64:
		return int(x), true
	case string:
		n, err := strconv.Atoi(x)
		return n, err == nil
	}
	return 0, false
}

// FormatDuration formats d the way Consul's configuration shows it: "72h", "90m", "1h30m",
// without the zero minutes and seconds that time.Duration.String adds.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
