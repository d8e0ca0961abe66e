// Command sidecar is the proxy beside each service: inbound from peer sidecars to the app,
// outbound from the app to its upstreams, with discovery, load balancing and resilience.
//
//	sidecar -service NAME -id ID -inbound ADDR -app ADDR -upstream NAME=LOCAL_ADDR ... \
//	        -admin ADDR -registry URL
//	sidecar -config FILE
//
// Observability: -metrics ADDR serves GET /metrics alone (advertised as meta metrics_port;
// the admin listener serves it too), -trace-endpoint URL exports spans over OTLP/HTTP (or
// the OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT environment), -trace-sample RATIO and
// -trace-propagation w3c,b3,b3multi tune them, -access-log writes a JSON line per request
// with its trace and span IDs on stderr.
//
// SIGTERM (or SIGINT) deregisters the instance and drains: listeners stop accepting,
// requests and sessions in flight finish until the drain timeout, then the rest is closed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/podmesh/podmesh/sidecar"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sidecar:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg, err := sidecar.Parse(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	setMemoryDefaults()
	level := slog.LevelInfo
	if os.Getenv("PODMESH_LOG_LEVEL") == "debug" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	sc, err := sidecar.New(cfg, log)
	if err != nil {
		return err
	}
	return sc.Run(ctx)
}

// memoryLimit is the soft heap limit applied unless GOMEMLIMIT is set: it makes the
// collector work harder as the heap approaches it, keeping the sidecar's RSS small
// under bursts (the target is 30 MB at 2,000 requests/s). GOGC stays at its default, so
// at low load the limit changes nothing.
const memoryLimit = 20 << 20

func setMemoryDefaults() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
}
