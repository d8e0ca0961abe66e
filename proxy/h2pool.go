package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// h2Pool keeps multiplexed HTTP/2 connections to peers (other sidecars' inbound listeners,
// or an h2c app), a few per address. Requests are spread round robin over a peer's usable
// connections, so that the peer's per-connection frame reader is not a single-core
// bottleneck. Connections are the proxy's own HTTP/2 client (h2client.go).
type h2Pool struct {
	ctx   context.Context // bounds background dials; the connect timeout bounds each
	tlsOn bool
	size  int // connections kept per peer
	dialf func(ctx context.Context, addr string) (net.Conn, error)
	// conns counts open connections for the max_connections breaker (nil: unlimited).
	conns *gate

	mu    sync.Mutex
	peers map[string]*h2Peer
}

type h2Peer struct {
	addr  string
	conns atomic.Pointer[[]*h2ClientConn] // immutable snapshot
	next  atomic.Uint32

	mu      sync.Mutex // serializes changes to conns and dialing
	dialing chan struct{}
	dialErr error
	closed  bool
}

// newH2Pool builds a pool; dial makes the TCP (and TLS, ALPN h2) connection, whose error
// must already be classified (DialError).
func newH2Pool(ctx context.Context, size int, tlsOn bool, dial func(ctx context.Context, addr string) (net.Conn, error), conns *gate) *h2Pool {
	return &h2Pool{ctx: ctx, tlsOn: tlsOn, size: max(size, 1), dialf: dial, conns: conns, peers: map[string]*h2Peer{}}
}

// roundTrip sends req to addr over a pooled connection.
func (p *h2Pool) roundTrip(req *http.Request, addr string) (*http.Response, error) {
	cc, err := p.get(req.Context(), addr)
	if err != nil {
		return nil, err
	}
	res, err := p.send(req.Context(), cc, req, addr)
	if err != nil {
		return nil, classifyRoundTrip(err)
	}
	return res, nil
}

// h2Resends bounds how often send puts a request the peer did not process on another
// connection (net/http's HTTP/2 transport allows 6).
const h2Resends = 6

// send runs req on cc, a connection get returned for addr. When the peer provably did not
// process the stream (a RefusedError: the connection failed or was sent a GOAWAY before
// the stream went out, the stream was above the GOAWAY's last stream, or it was refused
// with REFUSED_STREAM), the request goes out again on another connection to the same peer,
// as net/http's HTTP/2 transport does. A connection being replaced (the peer's graceful
// close, say) is the pool's business: without this, every stream caught on it would cost
// the caller one of its retries and a slot of the retry budget, and with a few requests
// in flight on one peer the budget's floor runs out and requests fail with 503.
func (p *h2Pool) send(ctx context.Context, cc *h2ClientConn, req *http.Request, addr string) (*http.Response, error) {
	for n := 0; ; n++ {
		next, ok := resendable(req)
		res, err := cc.RoundTrip(req)
		if err == nil || n >= h2Resends || ctx.Err() != nil || !isRefused(err) ||
			!(ok || errors.Is(err, errH2NotSent)) {
			return res, err
		}
		if n > 0 {
			// Refused again: give the peer a moment (a stream limit reached, say).
			t := time.NewTimer(time.Duration(n) * 5 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, err
			}
		}
		c, gerr := p.get(ctx, addr)
		if gerr != nil {
			return nil, gerr
		}
		cc, req = c, next
	}
}

// isRefused reports whether err is a RefusedError. (A function of its own: the target
// of errors.As escapes, and send would allocate it for every request.)
func isRefused(err error) bool {
	var re RefusedError
	return errors.As(err, &re)
}

// resendable returns a copy of req that can be sent again whatever the first attempt read
// of its body, and whether there is one: requests without a body or with one in memory.
// Others may go again only if their first attempt never started (errH2NotSent).
func resendable(req *http.Request) (*http.Request, bool) {
	switch b := req.Body.(type) {
	case nil:
		return req, true
	case *bytesBody:
		r := *req
		r.Body = &bytesBody{data: b.data, off: b.off}
		return &r, true
	}
	if req.Body == http.NoBody {
		return req, true
	}
	return req, false
}

func (p *h2Pool) peer(addr string) *h2Peer {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr := p.peers[addr]
	if pr == nil {
		pr = &h2Peer{addr: addr}
		empty := []*h2ClientConn{}
		pr.conns.Store(&empty)
		p.peers[addr] = pr
	}
	return pr
}

// get returns a connection to addr that can take a request now, dialling if none can.
func (p *h2Pool) get(ctx context.Context, addr string) (*h2ClientConn, error) {
	pr := p.peer(addr)
	for {
		conns := *pr.conns.Load()
		n := len(conns)
		if n > 0 {
			start := int(pr.next.Add(1))
			for i := 0; i < n; i++ {
				cc := conns[(start+i)%n]
				if cc.Err() == nil && cc.Available() > 0 {
					if n < p.size {
						p.dialAsync(pr) // grow towards size without making this request wait
					}
					return cc, nil
				}
			}
		}
		// No usable connection: prune dead ones and dial (one dial per peer at a time;
		// concurrent requests wait for it, counted as pending by the caller).
		if err := p.dialWait(ctx, pr); err != nil {
			// With live but saturated connections, queue on one of them rather than fail.
			if cc := leastLoaded(*pr.conns.Load()); cc != nil {
				return cc, nil
			}
			return nil, err
		}
	}
}

func leastLoaded(conns []*h2ClientConn) *h2ClientConn {
	var best *h2ClientConn
	for _, cc := range conns {
		if cc.Err() == nil && (best == nil || cc.InFlight() < best.InFlight()) {
			best = cc
		}
	}
	return best
}

// dialWait starts a dial to pr unless one is running, and waits for it.
func (p *h2Pool) dialWait(ctx context.Context, pr *h2Peer) error {
	pr.mu.Lock()
	ch := pr.dialing
	if ch == nil {
		ch = p.startDialLocked(pr)
	}
	pr.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	pr.mu.Lock()
	err := pr.dialErr
	pr.mu.Unlock()
	return err
}

func (p *h2Pool) dialAsync(pr *h2Peer) {
	pr.mu.Lock()
	if pr.dialing == nil && !pr.closed {
		p.startDialLocked(pr)
	}
	pr.mu.Unlock()
}

// startDialLocked starts a dial in the background; pr.mu must be held.
func (p *h2Pool) startDialLocked(pr *h2Peer) chan struct{} {
	ch := make(chan struct{})
	pr.dialing = ch
	go func() {
		cc, err := p.dial(pr)
		pr.mu.Lock()
		defer pr.mu.Unlock()
		pr.dialing = nil
		pr.dialErr = err
		old := *pr.conns.Load()
		next := make([]*h2ClientConn, 0, len(old)+1)
		for _, c := range old {
			if c.Err() == nil {
				next = append(next, c)
			} else {
				p.conns.release()
			}
		}
		if cc != nil {
			if pr.closed {
				cc.Close()
				p.conns.release()
			} else {
				next = append(next, cc)
			}
		}
		pr.conns.Store(&next)
		close(ch)
	}()
	return ch
}

func (p *h2Pool) dial(pr *h2Peer) (*h2ClientConn, error) {
	if !p.conns.tryAcquire() {
		return nil, OverloadedError{Breaker: BreakerConnections}
	}
	// The dial outlives the request that triggered it; the connect timeout bounds it.
	c, err := p.dialf(p.ctx, pr.addr)
	if err != nil {
		p.conns.release()
		return nil, err
	}
	cc, err := newH2ClientConn(c, p.tlsOn)
	if err != nil {
		p.conns.release()
		return nil, DialError{Addr: pr.addr, Err: err}
	}
	return cc, nil
}

// retain closes the connections to peers not in keep, once their requests finish.
func (p *h2Pool) retain(keep map[string]bool) {
	p.mu.Lock()
	var gone []*h2Peer
	for addr, pr := range p.peers {
		if !keep[addr] {
			gone = append(gone, pr)
			delete(p.peers, addr)
		}
	}
	p.mu.Unlock()
	for _, pr := range gone {
		go p.closePeer(pr, 30*time.Second)
	}
}

// closePeer closes pr's connections when they are idle, or after grace.
func (p *h2Pool) closePeer(pr *h2Peer, grace time.Duration) {
	pr.mu.Lock()
	pr.closed = true
	conns := *pr.conns.Load()
	empty := []*h2ClientConn{}
	pr.conns.Store(&empty)
	pr.mu.Unlock()
	deadline := time.Now().Add(grace)
	for _, cc := range conns {
		for !cc.dead() && cc.InFlight() > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		cc.Close()
		p.conns.release()
	}
}

// close closes every connection now.
func (p *h2Pool) close() {
	p.mu.Lock()
	peers := p.peers
	p.peers = map[string]*h2Peer{}
	p.mu.Unlock()
	for _, pr := range peers {
		p.closePeer(pr, 0)
	}
}

// gate is a counting semaphore that never blocks: a circuit breaker's threshold.
type gate struct {
	n   atomic.Int64
	max int64
}

func newGate(max int) *gate { return &gate{max: int64(max)} }

// tryAcquire takes a slot if one is free. A nil gate is unlimited.
func (g *gate) tryAcquire() bool {
	if g == nil {
		return true
	}
	if g.n.Add(1) > g.max {
		g.n.Add(-1)
		return false
	}
	return true
}

func (g *gate) release() {
	if g != nil {
		g.n.Add(-1)
	}
}

func (g *gate) load() int64 {
	if g == nil {
		return 0
	}
	return g.n.Load()
}
