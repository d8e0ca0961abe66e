package shop

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// TestShopEndToEnd runs the three services directly (no mesh): frontend → catalog → prices,
// and checks trace headers travel from the frontend's request to the prices call.
func TestShopEndToEnd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 16)
	gs := grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		if v := md.Get("traceparent"); len(v) > 0 {
			seen <- v[0]
		}
		return h(srv, ss)
	}))
	RegisterPrices(gs, PricesServer{})
	go gs.Serve(l)
	t.Cleanup(gs.Stop)

	cc, err := grpc.NewClient("passthrough:///"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	cat := httptest.NewServer((&Catalog{Prices: NewPricesClient(cc), Name: "catalog-1"}).Handler())
	t.Cleanup(cat.Close)
	fe := httptest.NewServer((&Frontend{CatalogURL: cat.URL, Client: cat.Client(), Name: "frontend-1"}).Handler())
	t.Cleanup(fe.Close)

	req, _ := http.NewRequest("GET", fe.URL+"/", nil)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req.Header.Set("traceparent", tp)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page Page
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	var want int64
	for _, p := range products {
		want += PriceOf(p.sku)
	}
	if page.Catalog != "catalog-1" || page.Items != len(products) || page.Total != FormatCents(want) {
		t.Fatalf("page = %+v, want catalog-1, %d items, total %s", page, len(products), FormatCents(want))
	}
	select {
	case got := <-seen:
		if got != tp {
			t.Fatalf("prices saw traceparent %q, want %q", got, tp)
		}
	case <-time.After(time.Second):
		t.Fatal("prices never saw the forwarded traceparent")
	}

	// Unary path.
	resp2, err := http.Get(cat.URL + "/items/tea-01")
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	var items Items
	json.NewDecoder(resp2.Body).Decode(&items)
	if len(items.Items) != 1 || items.Items[0].Price != FormatCents(PriceOf("tea-01")) {
		t.Fatalf("unary price answer = %+v", items)
	}
	pc := NewPricesClient(cc)
	if _, err := pc.Price(context.Background(), ""); err == nil {
		t.Fatal("empty sku: want an InvalidArgument error")
	}
}

func TestFormatCents(t *testing.T) {
	for c, want := range map[int64]string{0: "0.00", 5: "0.05", 199: "1.99", 10000: "100.00"} {
		if got := FormatCents(c); got != want {
			t.Errorf("FormatCents(%d) = %q, want %q", c, got, want)
		}
	}
}

// TestProbes: the healthchecks the services run on themselves pass against a serving
// service and fail against a sick or absent one.
func TestProbes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer ok.Close()
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "sick", 500) }))
	defer sick.Close()
	if err := ProbeHTTP(ctx, ok.URL+"/healthz"); err != nil {
		t.Errorf("probe of a serving app: %v", err)
	}
	if err := ProbeHTTP(ctx, sick.URL+"/healthz"); err == nil {
		t.Error("probe of a sick app passed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	RegisterPrices(gs, PricesServer{})
	go gs.Serve(l)
	defer gs.Stop()
	if err := ProbePrices(ctx, l.Addr().String()); err != nil {
		t.Errorf("probe of a serving prices: %v", err)
	}
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead.Close()
	short, cancel2 := context.WithTimeout(ctx, time.Second)
	defer cancel2()
	if err := ProbePrices(short, dead.Addr().String()); err == nil {
		t.Error("probe of an absent prices passed")
	}
}
