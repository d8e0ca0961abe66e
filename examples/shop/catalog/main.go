// Command catalog is the demo's catalog service: HTTP in, gRPC out to prices.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/podmesh/podmesh/examples/shop/shop"
)

func main() {
	listen := flag.String("listen", envOr("LISTEN", "127.0.0.1:8080"), "address to serve HTTP on")
	prices := flag.String("prices", envOr("PRICES_ADDR", "prices:80"), "gRPC address of the prices service")
	probe := flag.String("probe", "", "healthcheck: GET this URL, exit 0 if it answers 2xx")
	flag.Parse()
	if *probe != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := shop.ProbeHTTP(ctx, *probe)
		cancel()
		if err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := run(*listen, *prices); err != nil {
		log.Fatal(err)
	}
}

func run(addr, pricesAddr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cc, err := grpc.NewClient("passthrough:///"+pricesAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("catalog: dial prices %s: %w", pricesAddr, err)
	}
	defer cc.Close()
	c := &shop.Catalog{Prices: shop.NewPricesClient(cc), Name: shop.Hostname()}
	srv := &http.Server{Addr: addr, Handler: c.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Printf("catalog %s serving HTTP on %s, prices at %s", c.Name, addr, pricesAddr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("catalog: serve: %w", err)
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
