package shop

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ProbeHTTP is a healthcheck the services run on themselves (`frontend -probe URL` in the
// compose file, so the demo needs no curl): nil when GET url answers 2xx.
func ProbeHTTP(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("probe %s: %s", url, resp.Status)
	}
	return nil
}

// ProbePrices is the prices service's healthcheck: a Price call over gRPC (h2c) to addr.
func ProbePrices(ctx context.Context, addr string) error {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("probe prices at %s: %w", addr, err)
	}
	defer cc.Close()
	if _, err := NewPricesClient(cc).Price(ctx, "probe"); err != nil {
		return fmt.Errorf("probe prices at %s: %w", addr, err)
	}
	return nil
}
