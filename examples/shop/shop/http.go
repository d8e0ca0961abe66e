package shop

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
)

// Item is one product of the catalog.
type Item struct {
	SKU   string `json:"sku"`
	Name  string `json:"name"`
	Price string `json:"price"`
}

// Items is the catalog's answer.
type Items struct {
	ServedBy string `json:"served_by"`
	Items    []Item `json:"items"`
}

// Page is the frontend's answer.
type Page struct {
	Frontend string `json:"frontend"`
	Catalog  string `json:"catalog"`
	Items    int    `json:"items"`
	Total    string `json:"total"`
}

var products = []struct{ sku, name string }{
	{"tea-01", "Green tea"}, {"cup-02", "Tea cup"}, {"pot-03", "Teapot"}, {"kettle-04", "Kettle"},
}

// traceHeaders are the trace-context headers an instrumented app forwards from the request
// it serves to the requests it makes, so the sidecars' spans join one trace.
var traceHeaders = []string{"traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
	"x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-request-id"}

type traceKey struct{}

// withTrace remembers the trace headers of an incoming request in its context.
func withTrace(r *http.Request) context.Context {
	h := http.Header{}
	for _, k := range traceHeaders {
		if v := r.Header.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	return context.WithValue(r.Context(), traceKey{}, h)
}

// forwardTrace copies the remembered trace headers onto an outgoing request.
func forwardTrace(ctx context.Context, out *http.Request) {
	if h, ok := ctx.Value(traceKey{}).(http.Header); ok {
		for k, v := range h {
			out.Header[k] = v
		}
	}
}

// traceMetadata turns the remembered trace headers into gRPC metadata.
func traceMetadata(ctx context.Context) context.Context {
	h, ok := ctx.Value(traceKey{}).(http.Header)
	if !ok || len(h) == 0 {
		return ctx
	}
	md := metadata.MD{}
	for k, v := range h {
		md.Set(strings.ToLower(k), v...)
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// Hostname names this replica in answers (the launcher sets it to <service>-<replica>).
func Hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

// Catalog serves /items (prices over one bidirectional gRPC stream) and /items/{sku}
// (a unary gRPC call).
type Catalog struct {
	Prices *PricesClient
	Name   string // replica name reported in answers
}

// Handler returns the catalog's HTTP routes.
func (c *Catalog) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /items", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(traceMetadata(withTrace(r)), 5*time.Second)
		defer cancel()
		skus := make([]string, len(products))
		for i, p := range products {
			skus[i] = p.sku
		}
		prices, err := c.Prices.Watch(ctx, skus)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		out := Items{ServedBy: c.Name, Items: make([]Item, len(products))}
		for i, p := range products {
			out.Items[i] = Item{SKU: p.sku, Name: p.name, Price: FormatCents(prices[i])}
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /items/{sku}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(traceMetadata(withTrace(r)), 5*time.Second)
		defer cancel()
		sku := r.PathValue("sku")
		p, err := c.Prices.Price(ctx, sku)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		writeJSON(w, Items{ServedBy: c.Name, Items: []Item{{SKU: sku, Price: FormatCents(p)}}})
	})
	return mux
}

// Frontend serves / by asking the catalog for its items.
type Frontend struct {
	CatalogURL string // e.g. http://catalog
	Client     *http.Client
	Name       string
}

// Handler returns the frontend's HTTP routes.
func (f *Frontend) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(withTrace(r), 5*time.Second)
		defer cancel()
		items, err := f.items(ctx)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		var total int64
		for _, it := range items.Items {
			var units, cents int64
			fmt.Sscanf(it.Price, "%d.%d", &units, &cents)
			total += units*100 + cents
		}
		w.Header().Set("X-Catalog", items.ServedBy)
		writeJSON(w, Page{Frontend: f.Name, Catalog: items.ServedBy, Items: len(items.Items), Total: FormatCents(total)})
	})
	return mux
}

func (f *Frontend) items(ctx context.Context) (*Items, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(f.CatalogURL, "/")+"/items", nil)
	if err != nil {
		return nil, fmt.Errorf("frontend: build catalog request: %w", err)
	}
	forwardTrace(ctx, req)
	resp, err := f.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("frontend: call catalog: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("frontend: catalog answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var items Items
	if err := json.NewDecoder(resp.Body).Decode(&items); err != nil {
		return nil, fmt.Errorf("frontend: decode catalog answer: %w", err)
	}
	return &items, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
