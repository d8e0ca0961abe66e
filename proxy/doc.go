// Package proxy is the sidecar's traffic layer: listeners and forwarding for HTTP/1.1,
// HTTP/2 (h2c, and TLS through Security), gRPC, Upgrade tunnels and raw TCP, with retries,
// timeouts, circuit breakers, passive health reporting and graceful drain.
//
// # Shape
//
// An Upstream is one service the app calls: a local listener, a Balancer over the
// service's instances (fed by discovery through Update), and a pool of multiplexed HTTP/2
// connections to the instances' sidecars (ConnsPerPeer per instance, default 2, so that
// the peer's frame reading is spread over both cores). An Inbound is the listener peer
// sidecars call; it forwards to the app over pooled keep-alive HTTP/1.1 (http) or h2c
// (http2, grpc), or splices TCP.
//
// # Protocols
//
// A service's protocol is declared, never sniffed: the inbound side uses its own
// configured protocol; the outbound side uses the upstream's configuration or else the
// instances' meta "protocol", and TCP when neither says anything (Consul's default). Until
// discovery has answered once, a new connection waits up to the connect timeout to learn
// the protocol. HTTP listeners accept HTTP/1.1 and HTTP/2 prior knowledge on the same
// port. Upgrade requests (WebSocket) travel over a dedicated HTTP/1.1 connection to the
// peer and are spliced with half-close; everything else between sidecars is HTTP/2.
//
// # Resilience defaults (Policy; each settable per upstream)
//
//   - connect timeout 5s; overall timeout 15s until response headers (none for grpc),
//     per-try timeout none; once headers are forwarded the body streams without a deadline
//   - 2 retries: on connect failure and refused streams (REFUSED_STREAM, GOAWAY before
//     processing, a peer breaker, a peer that could not reach its app) for every method;
//     on 5xx, resets and per-try timeouts for idempotent methods (GET, HEAD, OPTIONS,
//     TRACE, PUT, DELETE), or for every method with RetryOn 5xx / gateway-error; never
//     after response bytes reached the client; on another instance when there is one
//   - request bodies up to 64 KiB of known length are buffered for replay; larger or
//     streaming bodies are retried only if not a byte was sent
//   - retry budget 20% of requests in flight, at least 3 concurrent retries
//   - breakers 1024 connections, 1024 pending requests, 1024 requests; retries bounded by
//     the budget unless MaxRetries is set. An open breaker answers 503 with
//     "X-Podmesh-Overloaded: <breaker>"
//   - every attempt's outcome goes to lb (Host.Begin/Done), which does outlier ejection
//   - statusFor maps failures: timeout 504, client gone 499 (logged, not sent), no instance
//     or connect failure or breaker 503, anything else 502
//
// # Abuse limits (Limits)
//
// 32 KiB of request head (431 beyond), 100 header fields (431), 10s to read a head, 60s
// keep-alive idle, 1024 connections per listener, 250 streams per HTTP/2 connection. At
// the connection limit an idle keep-alive connection is closed to make room, and when
// none is idle accepting pauses (new connections wait in the kernel's accept queue)
// rather than closing them. Every HTTP/1 request head is validated on the raw bytes before
// it is parsed (see guard.go): Content-Length with Transfer-Encoding, duplicate or
// malformed Content-Length, Transfer-Encoding other than one "chunked", obs-fold, bare CR
// or LF, invalid header names or values, missing or repeated Host, oversized heads: 400 or
// 431, never forwarded.
//
// # HTTP/1 serving
//
// HTTP/1.x and HTTP/2 are served by the proxy's own servers, not net/http's, whose
// goroutine hand-offs and allocations cost more than the rest of the proxy. HTTP/1.x
// (h1server.go): one goroutine per connection, the handler called in it, no per-request
// background read (a client that goes away is noticed for requests running longer than
// 100ms). HTTP/2 (h2server.go; prior knowledge, or ALPN h2): the connection's goroutine
// reads and handles frames, a goroutine per stream runs the handler, which writes its
// frames into the connection's buffer itself (a short response is one write). Between
// sidecars, and to h2c apps, the proxy's own HTTP/2 client (h2client.go) writes a request
// in the caller's goroutine. The inbound side reaches HTTP/1.1 apps with its own client
// (h1client.go), in the handler's goroutine.
//
// # Headers
//
// Hop-by-hop headers (RFC 7230 §6.1, and those named by Connection) are removed in both
// directions; "Te: trailers" is kept. Trailers pass through, announced or not. Responses
// of unknown length and server-sent events are flushed at every write. The inbound side
// appends the calling peer's address to X-Forwarded-For; the outbound side adds nothing
// (its client is the app on loopback).
//
// # Security
//
// A Security (security.go) supplies the TLS configurations and the authorization. With one,
// the inbound listener speaks TLS 1.3 only (plaintext connections fail the handshake) and
// dispatches on ALPN; raw TCP peers are authorized once, right after the handshake, and a
// denied one is closed; HTTP peers are authorized on every request, so that a changed
// decision applies to pooled HTTP/2 connections at once, and a denied request gets a 403
// with the reason in X-Podmesh-Denied. A Security that is also a HandshakeObserver is told
// the outcome of every handshake, in both directions, to count them.
//
// # Drain
//
// Shutdown stops accepting, lets requests, TCP sessions and tunnels in flight finish
// (HTTP/2 peers get a GOAWAY and send new requests elsewhere), and when its context ends
// closes what is left.
package proxy
