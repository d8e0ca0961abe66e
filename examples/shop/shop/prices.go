// Package shop holds the three demo microservices: frontend (HTTP) → catalog (HTTP, two
// replicas) → prices (gRPC). They know nothing about the mesh: they call their upstreams by
// name (http://catalog/, prices:80) and the pod's /etc/hosts sends those names to the
// sidecar's local listeners.
package shop

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The gRPC service is written out by hand (no protoc on these machines) over protobuf's
// well-known wrapper messages, so the wire format is ordinary protobuf.
const (
	pricesService = "podmesh.shop.Prices"
	priceMethod   = "/" + pricesService + "/Price"
	watchMethod   = "/" + pricesService + "/Watch"
)

// PriceOf is the deterministic price of a SKU, in cents, so every replica agrees.
func PriceOf(sku string) int64 {
	h := fnv.New32a()
	h.Write([]byte(sku))
	return 100 + int64(h.Sum32()%9900)
}

// PricesServer answers Price (unary) and Watch (bidirectional stream: a price for every SKU
// the client sends).
type PricesServer struct{}

// Price returns the price of one SKU.
func (PricesServer) Price(_ context.Context, sku *wrapperspb.StringValue) (*wrapperspb.Int64Value, error) {
	if sku.GetValue() == "" {
		return nil, status.Error(codes.InvalidArgument, "prices: empty sku")
	}
	return wrapperspb.Int64(PriceOf(sku.GetValue())), nil
}

// Watch answers each SKU received on the stream with its price.
func (PricesServer) Watch(stream grpc.ServerStream) error {
	for {
		var sku wrapperspb.StringValue
		if err := stream.RecvMsg(&sku); err != nil {
			return nil // io.EOF or a cancelled client both end the stream
		}
		if err := stream.SendMsg(wrapperspb.Int64(PriceOf(sku.GetValue()))); err != nil {
			return err
		}
	}
}

type pricesAPI interface {
	Price(context.Context, *wrapperspb.StringValue) (*wrapperspb.Int64Value, error)
	Watch(grpc.ServerStream) error
}

// RegisterPrices registers srv on s.
func RegisterPrices(s *grpc.Server, srv PricesServer) {
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: pricesService,
		HandlerType: (*pricesAPI)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Price",
			Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				if icpt == nil {
					return srv.(pricesAPI).Price(ctx, in)
				}
				info := &grpc.UnaryServerInfo{Server: srv, FullMethod: priceMethod}
				return icpt(ctx, in, info, func(ctx context.Context, req any) (any, error) {
					return srv.(pricesAPI).Price(ctx, req.(*wrapperspb.StringValue))
				})
			},
		}},
		Streams: []grpc.StreamDesc{{
			StreamName:    "Watch",
			ServerStreams: true,
			ClientStreams: true,
			Handler: func(srv any, stream grpc.ServerStream) error {
				return srv.(pricesAPI).Watch(stream)
			},
		}},
	}, srv)
}

// PricesClient calls the prices service.
type PricesClient struct{ cc grpc.ClientConnInterface }

// NewPricesClient wraps a connection.
func NewPricesClient(cc grpc.ClientConnInterface) *PricesClient { return &PricesClient{cc: cc} }

// Price asks for the price of one SKU.
func (c *PricesClient) Price(ctx context.Context, sku string) (int64, error) {
	out := new(wrapperspb.Int64Value)
	if err := c.cc.Invoke(ctx, priceMethod, wrapperspb.String(sku), out); err != nil {
		return 0, fmt.Errorf("prices: price of %q: %w", sku, err)
	}
	return out.GetValue(), nil
}

// Watch streams prices for many SKUs over one bidirectional stream and returns them in order.
func (c *PricesClient) Watch(ctx context.Context, skus []string) ([]int64, error) {
	stream, err := c.cc.NewStream(ctx, &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true, ClientStreams: true}, watchMethod)
	if err != nil {
		return nil, fmt.Errorf("prices: open watch: %w", err)
	}
	out := make([]int64, 0, len(skus))
	for _, sku := range skus {
		if err := stream.SendMsg(wrapperspb.String(sku)); err != nil {
			return nil, fmt.Errorf("prices: send %q: %w", sku, err)
		}
		var p wrapperspb.Int64Value
		if err := stream.RecvMsg(&p); err != nil {
			return nil, fmt.Errorf("prices: receive price of %q: %w", sku, err)
		}
		out = append(out, p.GetValue())
	}
	if err := stream.CloseSend(); err != nil {
		return nil, fmt.Errorf("prices: close watch: %w", err)
	}
	return out, nil
}

// FormatCents renders cents as a price string.
func FormatCents(c int64) string {
	return fmt.Sprintf("%d.%02d", c/100, int64(math.Abs(float64(c%100))))
}
