package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
)

// startEcho runs a TCP server that reads until EOF, then writes back what it read with a
// prefix and closes: it only answers after the client half-closes.
func startEcho(t *testing.T) string {
	t.Helper()
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				data, err := io.ReadAll(c)
				if err != nil {
					return
				}
				c.Write(append([]byte("echo:"), data...))
			}()
		}
	}()
	return ln.Addr().String()
}

func TestTCPHalfCloseThroughTwoSidecars(t *testing.T) {
	testutil.CheckGoroutines(t)
	app := startEcho(t)
	inAddr, _ := startInbound(t, InboundConfig{Service: "echo", Protocol: TCP, App: app})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "echo"}, []lb.Endpoint{endpoint("e1", inAddr, TCP)})

	for i := range 3 {
		c, err := net.Dial("tcp", upAddr)
		if err != nil {
			t.Fatal(err)
		}
		msg := strings.Repeat(fmt.Sprintf("data-%d ", i), 20000) // bigger than any buffer
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		// The server answers only after seeing EOF, which must cross both sidecars while
		// the way back stays open.
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "echo:"+msg {
			t.Fatalf("got %d bytes, want %d", len(got), len("echo:"+msg))
		}
	}
}

// An upstream of unknown protocol (no meta, no configuration) is proxied as TCP.
func TestTCPIsTheDefaultProtocol(t *testing.T) {
	app := startEcho(t)
	inAddr, _ := startInbound(t, InboundConfig{Service: "echo", App: app})
	upAddr, up := startUpstream(t, UpstreamConfig{Name: "echo"}, []lb.Endpoint{{ID: "e1", Address: inAddr}})
	if up.Protocol() != TCP {
		t.Fatalf("protocol %q", up.Protocol())
	}
	c, err := net.Dial("tcp", upAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "x")
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	if string(got) != "echo:x" {
		t.Fatalf("got %q", got)
	}
}

// The gRPC test service is described by hand (no generated code): unary, server
// streaming, client streaming and bidirectional streaming over StringValue messages.
type echoServer struct{}

func grpcDesc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "podmesh.test.Echo",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Unary",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				if in.Value == "fail" {
					grpc.SetTrailer(ctx, metadata.Pairs("why", "asked-to-fail"))
					return nil, status.Error(codes.NotFound, "nothing here")
				}
				grpc.SetTrailer(ctx, metadata.Pairs("served-by", "echo"))
				return wrapperspb.String("echo:" + in.Value), nil
			},
		}},
		Streams: []grpc.StreamDesc{
			{StreamName: "Server", ServerStreams: true, Handler: func(_ any, s grpc.ServerStream) error {
				in := new(wrapperspb.StringValue)
				if err := s.RecvMsg(in); err != nil {
					return err
				}
				for i := range 3 {
					if err := s.SendMsg(wrapperspb.String(fmt.Sprintf("%s-%d", in.Value, i))); err != nil {
						return err
					}
				}
				return nil
			}},
			{StreamName: "Client", ClientStreams: true, Handler: func(_ any, s grpc.ServerStream) error {
				var all []string
				for {
					in := new(wrapperspb.StringValue)
					if err := s.RecvMsg(in); err == io.EOF {
						break
					} else if err != nil {
						return err
					}
					all = append(all, in.Value)
				}
				return s.SendMsg(wrapperspb.String(strings.Join(all, "+")))
			}},
			{StreamName: "Bidi", ClientStreams: true, ServerStreams: true, Handler: func(_ any, s grpc.ServerStream) error {
				for {
					in := new(wrapperspb.StringValue)
					if err := s.RecvMsg(in); err == io.EOF {
						return nil
					} else if err != nil {
						return err
					}
					if err := s.SendMsg(wrapperspb.String("re:" + in.Value)); err != nil {
						return err
					}
				}
			}},
		},
	}
}

func TestGRPCThroughTwoSidecars(t *testing.T) {
	testutil.CheckGoroutines(t)
	ln := listen(t)
	gs := grpc.NewServer()
	gs.RegisterService(grpcDesc(), echoServer{})
	go gs.Serve(ln)
	defer gs.Stop()

	inAddr, _ := startInbound(t, InboundConfig{Service: "echo", Protocol: GRPC, App: ln.Addr().String()})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "echo"}, []lb.Endpoint{endpoint("g1", inAddr, GRPC)})

	cc, err := grpc.NewClient(upAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := testutil.Context(t, 10*time.Second)

	// Unary, with trailers.
	var trailer metadata.MD
	out := new(wrapperspb.StringValue)
	if err := cc.Invoke(ctx, "/podmesh.test.Echo/Unary", wrapperspb.String("hi"), out, grpc.Trailer(&trailer)); err != nil {
		t.Fatal(err)
	}
	if out.Value != "echo:hi" || strings.Join(trailer.Get("served-by"), "") != "echo" {
		t.Errorf("unary: %q trailer %v", out.Value, trailer)
	}
	// A gRPC error crosses intact: status in the trailers, with its own trailer metadata.
	err = cc.Invoke(ctx, "/podmesh.test.Echo/Unary", wrapperspb.String("fail"), out, grpc.Trailer(&trailer))
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "nothing here" ||
		strings.Join(trailer.Get("why"), "") != "asked-to-fail" {
		t.Errorf("unary error: %v trailer %v", err, trailer)
	}

	// Server streaming.
	desc := grpcDesc()
	ss, err := cc.NewStream(ctx, &desc.Streams[0], "/podmesh.test.Echo/Server")
	if err != nil {
		t.Fatal(err)
	}
	ss.SendMsg(wrapperspb.String("s"))
	ss.CloseSend()
	var got []string
	for {
		m := new(wrapperspb.StringValue)
		if err := ss.RecvMsg(m); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.Value)
	}
	if strings.Join(got, ",") != "s-0,s-1,s-2" {
		t.Errorf("server stream: %v", got)
	}

	// Client streaming.
	cs, err := cc.NewStream(ctx, &desc.Streams[1], "/podmesh.test.Echo/Client")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"a", "b", "c"} {
		cs.SendMsg(wrapperspb.String(s))
	}
	cs.CloseSend()
	m := new(wrapperspb.StringValue)
	if err := cs.RecvMsg(m); err != nil || m.Value != "a+b+c" {
		t.Errorf("client stream: %q %v", m.Value, err)
	}

	// Bidirectional, in lock step: each answer must arrive before the next message is
	// sent, which only works if every hop flushes each message at once.
	bs, err := cc.NewStream(ctx, &desc.Streams[2], "/podmesh.test.Echo/Bidi")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		msg := fmt.Sprint("m", i)
		if err := bs.SendMsg(wrapperspb.String(msg)); err != nil {
			t.Fatal(err)
		}
		r := new(wrapperspb.StringValue)
		if err := bs.RecvMsg(r); err != nil || r.Value != "re:"+msg {
			t.Fatalf("bidi %d: %q %v", i, r.Value, err)
		}
	}
	bs.CloseSend()
	if err := bs.RecvMsg(new(wrapperspb.StringValue)); err != io.EOF {
		t.Errorf("bidi end: %v", err)
	}
}

func TestWebSocketThroughTwoSidecars(t *testing.T) {
	testutil.CheckGoroutines(t)
	a := startApp(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }).ServeHTTP(w, r)
	})
	inAddr, _ := startInbound(t, InboundConfig{Service: "ws", Protocol: HTTP, App: a.addr})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "ws"}, []lb.Endpoint{endpoint("w1", inAddr, HTTP)})

	ws, err := websocket.Dial("ws://"+upAddr+"/echo", "", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for i := range 3 {
		msg := fmt.Sprint("frame ", i)
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("got %q %v", got, err)
		}
	}
}

// A raw Upgrade tunnel propagates half-close: the app answers only after the client's
// EOF, and the client still reads that answer.
func TestUpgradeHalfClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	a := startApp(t, "up", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "podmesh-test" {
			http.Error(w, "want upgrade", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: podmesh-test\r\n\r\n")
		brw.Flush()
		data, _ := io.ReadAll(brw)
		c.Write([]byte("bye after " + string(data)))
	})
	inAddr, _ := startInbound(t, InboundConfig{Service: "up", Protocol: HTTP, App: a.addr})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "up"}, []lb.Endpoint{endpoint("u1", inAddr, HTTP)})

	c, err := net.Dial("tcp", upAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /t HTTP/1.1\r\nHost: up\r\nConnection: Upgrade\r\nUpgrade: podmesh-test\r\n\r\n")
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", res, err)
	}
	io.WriteString(c, "client data")
	c.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "bye after client data" {
		t.Fatalf("got %q %v", rest, err)
	}

	// A refused upgrade is an ordinary response, and the connection closes after it.
	c2, _ := net.Dial("tcp", upAddr)
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c2, "GET /t HTTP/1.1\r\nHost: up\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n")
	res, err = http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil || res.StatusCode != http.StatusBadRequest || !res.Close {
		t.Fatalf("refused upgrade: %+v %v", res, err)
	}
}
