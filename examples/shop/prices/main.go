// Command prices is the demo's gRPC price service (h2c).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/podmesh/podmesh/examples/shop/shop"
)

func main() {
	listen := flag.String("listen", envOr("LISTEN", "127.0.0.1:9000"), "address to serve gRPC (h2c) on")
	probe := flag.String("probe", "", "healthcheck: ask the prices service at this address for a price, exit 0 if it answers")
	flag.Parse()
	if *probe != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := shop.ProbePrices(ctx, *probe)
		cancel()
		if err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := run(*listen); err != nil {
		log.Fatal(err)
	}
}

func run(addr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("prices: listen %s: %w", addr, err)
	}
	s := grpc.NewServer()
	shop.RegisterPrices(s, shop.PricesServer{})
	go func() { <-ctx.Done(); s.GracefulStop() }()
	log.Printf("prices serving gRPC on %s", l.Addr())
	return s.Serve(l)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
