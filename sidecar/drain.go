package sidecar

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// inboundDrain is POST /drain on the admin listener: the middle step of the launcher's stop
// order (deregister → drain → the app's stop signal → SIGTERM to the sidecar).
//
// The first call stops the inbound listener from accepting (HTTP/2 peers get a GOAWAY and
// send new requests elsewhere) and lets the requests, sessions and tunnels in flight to the
// app finish, for at most DrainTimeout; /ready answers 503 from then on. The upstream
// listeners keep serving the app's own outbound calls, so an app that finishes its work
// while it stops can still reach its upstreams; they drain on SIGTERM as before.
//
// The answer is 200 once the inbound side is drained, or 504 when DrainTimeout cut the
// drain short (what was left was closed). Every later call waits for the same drain and
// gets the same answer; a caller that gives up does not cancel the drain. A sidecar
// without an inbound side answers 200 at once.
//
// A sidecar that registers its instance itself keeps its registration until SIGTERM: the
// launcher, the caller of /drain, deregisters the instance before asking.
type inboundDrain struct {
	s    *Sidecar
	once sync.Once
	done chan struct{}
	err  error
}

func (s *Sidecar) newInboundDrain() *inboundDrain {
	return &inboundDrain{s: s, done: make(chan struct{})}
}

// start begins the drain once; ctx only carries values, its cancellation is ignored.
func (d *inboundDrain) start(ctx context.Context) {
	d.once.Do(func() {
		s := d.s
		s.draining.Store(true)
		if s.inbound == nil {
			close(d.done)
			return
		}
		s.log.Info("drain requested: inbound stops accepting, outbound keeps serving",
			"deadline", time.Duration(s.cfg.DrainTimeout))
		go func() {
			defer close(d.done)
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(max(s.cfg.DrainTimeout, 0)))
			defer cancel()
			began := time.Now()
			d.err = s.inbound.Shutdown(dctx)
			if d.err != nil {
				s.log.Warn("inbound drain cut short", "err", d.err)
				return
			}
			s.log.Info("inbound drained", "took", time.Since(began).Round(time.Millisecond))
		}()
	})
}

func (d *inboundDrain) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.start(r.Context())
	select {
	case <-d.done:
	case <-r.Context().Done():
		return // the caller gave up; the drain goes on
	}
	if d.err != nil {
		code := http.StatusGatewayTimeout
		if !errors.Is(d.err, context.DeadlineExceeded) {
			code = http.StatusInternalServerError
		}
		http.Error(w, "inbound drain cut short: "+d.err.Error(), code)
		return
	}
	io.WriteString(w, "drained\n")
}
