// Command registry serves Podmesh's service registry: the part of Consul's HTTP API that
// consul/api, Prometheus' consul_sd_configs and the consul CLI use, with a durable catalog,
// health checks, blocking queries and KV, and the mesh's certificate authority and
// intentions (Consul's Connect endpoints). See registry/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/podmesh/podmesh/registry"
	"github.com/podmesh/podmesh/registry/checks"
	"github.com/podmesh/podmesh/registry/state"
	"github.com/podmesh/podmesh/tls/authz"
	"github.com/podmesh/podmesh/tls/ca"
	"github.com/podmesh/podmesh/tls/spiffe"
)

type config struct {
	httpAddr            string
	dataDir             string
	dc                  string
	node                string
	advertise           string
	aclToken            string
	aclTokenFile        string
	checkUpdateInterval time.Duration
	reapInterval        time.Duration
	minDeregisterAfter  time.Duration
	maxBody             int64
	maxKVValue          int64
	logLevel            string
	intentionPolicy     string
	leafCertTTL         time.Duration
	leafCertTTLSet      bool // -leaf-cert-ttl given explicitly
	clusterID           string
	selfRegister        bool
}

// defaultDataDir is $XDG_STATE_HOME/podmesh/registry, or ~/.local/state/podmesh/registry.
func defaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "podmesh", "registry")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "podmesh", "registry")
	}
	return "registry-data"
}

func parseFlags(args []string) (config, error) {
	var c config
	host, _ := os.Hostname()
	if host == "" {
		host = "registry"
	}
	fs := flag.NewFlagSet("registry", flag.ContinueOnError)
	fs.StringVar(&c.httpAddr, "http", "127.0.0.1:8500", "`address` the HTTP API listens on (host:port)")
	fs.StringVar(&c.dataDir, "data", defaultDataDir(), "`directory` of the durable state (one bbolt file, "+state.DBFile+"); the default is $XDG_STATE_HOME/podmesh/registry, or ~/.local/state/podmesh/registry without XDG_STATE_HOME")
	fs.StringVar(&c.dc, "dc", "dc1", "`datacenter` name")
	fs.StringVar(&c.node, "node", host, "`name` of the registry's own node, which holds agent-registered services")
	fs.StringVar(&c.advertise, "advertise", "", "node `address` reported in the catalog; default the -http host, or 127.0.0.1 when that is a wildcard")
	fs.StringVar(&c.aclToken, "acl-token", "", "`token` required for every write and for KV reads (X-Consul-Token, Authorization: Bearer, or ?token=); empty: no ACL")
	fs.StringVar(&c.aclTokenFile, "acl-token-file", "", "`file` holding the ACL token (first line), instead of -acl-token")
	fs.DurationVar(&c.checkUpdateInterval, "check-update-interval", state.DefaultCheckUpdateInterval, "how often at most a check's output is written when its status has not changed (Consul's check_update_interval); status changes are written at once")
	fs.DurationVar(&c.reapInterval, "reap-interval", checks.DefaultReapInterval, "how often services with long-critical checks are looked at for DeregisterCriticalServiceAfter (Consul: 30s; change only for tests)")
	fs.DurationVar(&c.minDeregisterAfter, "min-deregister-critical-after", checks.DefaultMinDeregisterAfter, "lower bound of DeregisterCriticalServiceAfter (Consul: 1m; lowering it deviates from Consul, for tests)")
	fs.Int64Var(&c.maxBody, "max-body", registry.DefaultMaxBodyBytes, "largest JSON request body in `bytes`; larger ones get 413")
	fs.Int64Var(&c.maxKVValue, "max-kv-value", registry.DefaultMaxKVValueBytes, "largest KV value in `bytes` (Consul's kv_max_value_size); larger ones get 413")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	fs.StringVar(&c.intentionPolicy, "default-intention-policy", "allow", "`policy` for connections no intention matches: allow (Consul with ACLs disabled) or deny; sent as X-Consul-Default-ACL-Policy on every response")
	fs.DurationVar(&c.leafCertTTL, "leaf-cert-ttl", ca.DefaultLeafCertTTL, "lifetime of the mesh CA's leaf certificates when the CA is first created, and for a CA configuration that leaves LeafCertTTL out (at least 1s; Consul's minimum is 1h); later changes: PUT /v1/connect/ca/configuration")
	fs.StringVar(&c.clusterID, "cluster-id", "", "cluster `ID` (normally a UUID); the trust domain is <cluster-id>.consul. Default: generated on first start and kept in -data; a different one than stored is an error")
	fs.BoolVar(&c.selfRegister, "self-register", true, "register the registry itself as service "+registry.SelfService+" (ID "+registry.SelfService+"-<node>) at -advertise and the -http port, with meta "+registry.MetricsPortMeta+", so Prometheus' consul_sd_configs scrapes its /metrics; false removes a registration an earlier start made")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: registry [flags]\n\nServes the Consul-compatible registry API over HTTP.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) { c.leafCertTTLSet = c.leafCertTTLSet || f.Name == "leaf-cert-ttl" })
	return c, c.resolve()
}

// resolve applies derived defaults and validates the flags, naming the bad one.
func (c *config) resolve() error {
	host, _, err := net.SplitHostPort(c.httpAddr)
	if err != nil {
		return fmt.Errorf("-http %q: %w", c.httpAddr, err)
	}
	if c.aclToken != "" && c.aclTokenFile != "" {
		return errors.New("-acl-token and -acl-token-file are exclusive")
	}
	if c.aclTokenFile != "" {
		b, err := os.ReadFile(c.aclTokenFile)
		if err != nil {
			return fmt.Errorf("-acl-token-file: %w", err)
		}
		c.aclToken = strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
		if c.aclToken == "" {
			return fmt.Errorf("-acl-token-file %q: empty token", c.aclTokenFile)
		}
	}
	if c.advertise == "" {
		c.advertise = "127.0.0.1"
		if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
			c.advertise = a.String()
		}
	}
	switch {
	case c.node == "":
		return errors.New("-node must not be empty")
	case c.dc == "":
		return errors.New("-dc must not be empty")
	case c.dataDir == "":
		return errors.New("-data must not be empty")
	case c.maxBody <= 0:
		return fmt.Errorf("-max-body %d: must be positive", c.maxBody)
	case c.maxKVValue <= 0:
		return fmt.Errorf("-max-kv-value %d: must be positive", c.maxKVValue)
	case c.reapInterval <= 0:
		return fmt.Errorf("-reap-interval %v: must be positive", c.reapInterval)
	case c.minDeregisterAfter <= 0:
		return fmt.Errorf("-min-deregister-critical-after %v: must be positive", c.minDeregisterAfter)
	}
	if _, err := authz.ParseDefault(c.intentionPolicy); err != nil {
		return fmt.Errorf("-default-intention-policy %q: want allow or deny", c.intentionPolicy)
	}
	if err := (ca.Config{LeafCertTTL: c.leafCertTTL}).Validate(); err != nil || c.leafCertTTL <= 0 {
		return fmt.Errorf("-leaf-cert-ttl %v: must be between %v and %v", c.leafCertTTL, ca.MinLeafCertTTL, ca.MaxLeafCertTTL)
	}
	if c.clusterID != "" {
		if _, err := spiffe.TrustDomainFromClusterID(c.clusterID); err != nil {
			return fmt.Errorf("-cluster-id %q: %w", c.clusterID, err)
		}
	}
	return nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return fmt.Errorf("-log-level %q: %w", cfg.logLevel, err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	store, err := state.Open(ctx, state.Options{
		Dir: cfg.dataDir, Datacenter: cfg.dc, NodeName: cfg.node, NodeAddress: cfg.advertise,
		CheckUpdateInterval: cfg.checkUpdateInterval, Logger: log,
		CA: state.CAOptions{ClusterID: cfg.clusterID, LeafCertTTL: cfg.leafCertTTL},
	})
	if err != nil {
		return err
	}
	defer store.Close()
	if got := store.CAConfigOf().LeafCertTTL; cfg.leafCertTTLSet && got != cfg.leafCertTTL {
		log.Warn("-leaf-cert-ttl applies when the CA is created; the stored CA configuration keeps its own (change it with PUT /v1/connect/ca/configuration)",
			"flag", cfg.leafCertTTL, "configured", got)
	}

	var api *registry.Server
	mgr, err := checks.New(checks.Config{
		Store: store, ReapInterval: cfg.reapInterval, MinDeregisterAfter: cfg.minDeregisterAfter,
		Logger: log, OnRun: func(kind, result string) { api.CountCheckRun(kind, result) },
	})
	if err != nil {
		return err
	}
	api, err = registry.New(registry.Config{
		Store: store, Checks: mgr, ACLToken: cfg.aclToken, MaxBodyBytes: cfg.maxBody,
		MaxKVValueBytes: cfg.maxKVValue, DefaultIntentionPolicy: cfg.intentionPolicy, Logger: log,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		return fmt.Errorf("listen on -http %s: %w", cfg.httpAddr, err)
	}
	if cfg.selfRegister {
		err = registry.RegisterSelf(ctx, store, cfg.advertise, ln.Addr().(*net.TCPAddr).Port)
	} else {
		err = registry.DeregisterSelf(ctx, store)
	}
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 10 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	log.Info("registry listening", "http", ln.Addr().String(), "data", cfg.dataDir, "node", cfg.node, "dc", cfg.dc,
		"acl", cfg.aclToken != "", "self_register", cfg.selfRegister, "trust_domain", store.TrustDomain(), "default_intention_policy", cfg.intentionPolicy)

	checksCtx, stopChecks := context.WithCancel(context.WithoutCancel(ctx))
	defer stopChecks()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return mgr.Run(checksCtx) })
	g.Go(func() error { return api.Run(checksCtx) })
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve HTTP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down")
		api.Close() // blocked queries answer now instead of at their timeout
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 10*time.Second)
		defer cancel()
		err := srv.Shutdown(sctx)
		stopChecks()
		return err
	})
	return g.Wait()
}
