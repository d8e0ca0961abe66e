package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// An Upgrade request (WebSocket and friends) travels over a dedicated HTTP/1.1 connection:
// the request is written on it, and if the answer is 101 Switching Protocols both
// connections are hijacked and spliced, with half-close propagated. Any other answer is
// forwarded as a normal response and the connection to the client is closed afterwards
// (the request-head guard has held the client's bytes since the Upgrade head).

// upgradeRequest returns the request to write on the dedicated connection.
func upgradeRequest(r *http.Request, proto string) *http.Request {
	out := r.Clone(r.Context())
	removeHopByHop(out.Header, false)
	out.Header["Connection"] = []string{"Upgrade"}
	out.Header["Upgrade"] = []string{proto}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""} // keep Request.Write from adding Go's
	}
	out.RequestURI = ""
	out.Close = false
	return out
}

// errUpgradeMismatch is a 101 answer switching to another protocol than requested.
var errUpgradeMismatch = errors.New("proxy: backend switched to a protocol the client did not ask for")

// tunnel runs the upgrade of r over conn (already dialled; tunnel takes ownership). It
// returns the status the client got and, when the tunnel ran, nil; a non-nil error means
// nothing was sent to the client and conn is closed. track registers the spliced pair for
// draining.
func tunnel(w http.ResponseWriter, r *http.Request, conn net.Conn, proto string, pool BufferPool,
	track func(io.Closer) (func(), bool)) (int, error) {
	out := upgradeRequest(r, proto)
	stop := context.AfterFunc(r.Context(), func() { conn.SetDeadline(time.Unix(1, 0)) })
	if err := out.Write(conn); err != nil {
		stop()
		conn.Close()
		return 0, classifyRoundTrip(err)
	}
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, out)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = r.Context().Err()
		}
		return 0, err
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		// The client's connection was held after its Upgrade head; end it after this answer.
		w.Header().Set("Connection", "close")
		_, rerr, werr := writeResponse(w, res, pool)
		conn.Close()
		if rerr != nil || werr != nil {
			panic(http.ErrAbortHandler)
		}
		return res.StatusCode, nil
	}
	if got := upgradeType(res.Header); !strings.EqualFold(got, proto) {
		res.Body.Close()
		conn.Close()
		return 0, fmt.Errorf("%w: asked %q, got %q", errUpgradeMismatch, proto, got)
	}

	cconn, cbuf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		conn.Close()
		return 0, fmt.Errorf("proxy: hijack client connection: %w", err)
	}
	if g, ok := cconn.(*guardConn); ok {
		g.Passthrough()
	}
	cconn.SetDeadline(time.Time{})
	// The 101 with the backend's headers (Connection and Upgrade included).
	fmt.Fprintf(cbuf, "HTTP/1.1 101 %s\r\n", http.StatusText(http.StatusSwitchingProtocols))
	res.Header.Write(cbuf)
	cbuf.WriteString("\r\n")
	// Bytes each side sent early, already buffered on our side.
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		cbuf.Write(b)
	}
	if err := cbuf.Flush(); err != nil {
		cconn.Close()
		conn.Close()
		return http.StatusSwitchingProtocols, nil
	}
	if n := cbuf.Reader.Buffered(); n > 0 {
		b, _ := cbuf.Peek(n)
		if _, err := conn.Write(b); err != nil {
			cconn.Close()
			conn.Close()
			return http.StatusSwitchingProtocols, nil
		}
	}
	done1, ok1 := track(cconn)
	done2, ok2 := track(conn)
	if ok1 && ok2 {
		pipe(cconn, conn, pool)
	}
	if ok1 {
		done1()
	}
	if ok2 {
		done2()
	}
	cconn.Close()
	conn.Close()
	return http.StatusSwitchingProtocols, nil
}
