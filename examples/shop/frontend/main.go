// Command frontend is the demo's entry service: it answers / by asking the catalog.
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

	"github.com/podmesh/podmesh/examples/shop/shop"
)

func main() {
	listen := flag.String("listen", envOr("LISTEN", "127.0.0.1:8080"), "address to serve HTTP on")
	catalog := flag.String("catalog", envOr("CATALOG_URL", "http://catalog"), "base URL of the catalog service")
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
	if err := run(*listen, *catalog); err != nil {
		log.Fatal(err)
	}
}

func run(addr, catalogURL string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	f := &shop.Frontend{
		CatalogURL: catalogURL,
		Client:     &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		Name:       shop.Hostname(),
	}
	srv := &http.Server{Addr: addr, Handler: f.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Printf("frontend %s serving HTTP on %s, catalog at %s", f.Name, addr, catalogURL)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("frontend: serve: %w", err)
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
