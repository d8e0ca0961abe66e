// Command proxy is the sidecar benchmark of `make bench`: client → sidecar → sidecar →
// backend beside client → backend and beside nginx (and haproxy) as the two proxies, with
// and without mTLS and tracing, measured with wrk, h2load and vegeta in one run and
// printed as ratios against those baselines. bench/proxy.sh builds and runs it; every
// setting comes from the environment (see that script).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/podmesh/podmesh/bench/proxy/harness"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/proxy:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The same binary serves as the Go backend when re-executed with PODMESH_BENCH_ROLE.
	if ok, err := harness.RunChildIfRequested(ctx); ok {
		return err
	}
	cfg, err := harness.FromEnv(os.Getenv)
	if err != nil {
		return err
	}
	_, err = harness.Run(ctx, cfg, os.Stdout, os.Stderr)
	return err
}
