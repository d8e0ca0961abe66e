package proxy

import (
	"bufio"
	"bytes"
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/lb"
)

// rawResponse is what the raw app answers: the bench backend's response (net/http, 100
// bytes of text/plain).
var rawResponse = []byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n" +
	"Date: Wed, 26 Nov 2026 23:00:00 GMT\r\n\r\n" + string(bytes.Repeat([]byte("x"), 100)))

// startRawApp is an HTTP/1.1 app that allocates nothing per request: it reads request
// heads (no bodies) and answers each with rawResponse.
func startRawApp(tb testing.TB) string {
	return testutil.ServeTCP(tb, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if err := skipHead(br); err != nil {
				return
			}
			if _, err := c.Write(rawResponse); err != nil {
				return
			}
		}
	})
}

// skipHead reads one message head, returning its Content-Length (0 when absent).
func skipHead(br *bufio.Reader) error {
	_, err := readHeadLength(br)
	return err
}

func readHeadLength(br *bufio.Reader) (int, error) {
	n := 0
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(line) <= 2 {
			return n, nil
		}
		const cl = "content-length:"
		if len(line) > len(cl) && bytes.EqualFold(line[:len(cl)], []byte(cl)) {
			n, err = strconv.Atoi(string(bytes.TrimSpace(line[len(cl):])))
			if err != nil {
				return 0, err
			}
		}
	}
}

// rawClient is a keep-alive HTTP/1.1 client that allocates nothing per request.
type rawClient struct {
	c   net.Conn
	br  *bufio.Reader
	req []byte
}

func newRawClient(tb testing.TB, addr string) *rawClient {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return &rawClient{c: c, br: bufio.NewReader(c),
		req: []byte("GET / HTTP/1.1\r\nHost: " + addr + "\r\n\r\n")}
}

func (rc *rawClient) get(tb testing.TB) {
	if _, err := rc.c.Write(rc.req); err != nil {
		tb.Fatal(err)
	}
	n, err := readHeadLength(rc.br)
	if err == nil {
		_, err = rc.br.Discard(n)
	}
	if err != nil || n != 100 {
		tb.Fatalf("response: %d bytes, %v", n, err)
	}
}

// BenchmarkPair is a request through both sidecars (outbound → HTTP/2 → inbound → app)
// from a client and to an app that allocate nothing per request: allocs/op are the
// pair's. With and without mutual TLS between the sidecars; serial and from 16
// connections at once.
func BenchmarkPair(b *testing.B) {
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"plain", false}, {"mtls", true}} {
		b.Run(tc.name, func(b *testing.B) {
			var sec Security
			if tc.tls {
				sec = &mtls{pki: newTestPKI(b)}
			}
			app := startRawApp(b)
			inAddr, _ := startInbound(b, InboundConfig{Service: "backend", Protocol: HTTP, App: app, Security: sec})
			upAddr, _ := startUpstream(b, UpstreamConfig{Name: "backend", Security: sec},
				[]lb.Endpoint{endpoint("b1", inAddr, HTTP)})
			b.Run("serial", func(b *testing.B) {
				rc := newRawClient(b, upAddr)
				rc.get(b)
				b.ReportAllocs()
				for b.Loop() {
					rc.get(b)
				}
			})
			b.Run("parallel", func(b *testing.B) {
				var mu sync.Mutex
				b.ReportAllocs()
				b.SetParallelism(8)
				b.RunParallel(func(pb *testing.PB) {
					mu.Lock()
					rc := newRawClient(b, upAddr)
					mu.Unlock()
					for pb.Next() {
						rc.get(b)
					}
				})
			})
		})
	}
}
