package proxy

import (
	"iter"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2MaxWindow is the largest flow-control window (RFC 9113 §6.9.1).
const h2MaxWindow = 1<<31 - 1

// h2Flow is what the peer's SETTINGS and WINDOW_UPDATE frames change on the sending side
// of an HTTP/2 connection, the server's (h2Conn) and the client's (h2ClientConn) alike:
// the connection's send window, a new stream's window and the largest frame. The
// connection's wmu guards it.
type h2Flow struct {
	sendWin     int64 // the connection's send window
	peerInitWin int64 // SETTINGS_INITIAL_WINDOW_SIZE: a new stream's send window
	peerMaxSize int   // SETTINGS_MAX_FRAME_SIZE
}

// h2RecvWindow is one receiving flow-control window, a connection's or a stream's, on
// either side: what the peer may still send, and what the reader has consumed but not yet
// given back. Credit goes back in batches of half the full window, so a WINDOW_UPDATE is
// not sent for every read. The owner's lock guards it.
type h2RecvWindow struct {
	win  int64 // what the peer may still send
	debt int64 // consumed, not yet returned
	full int64 // the window advertised
}

func newH2RecvWindow(full int64) h2RecvWindow { return h2RecvWindow{win: full, full: full} }

// take counts n received bytes against the window; false when the peer overran it (a
// FLOW_CONTROL_ERROR, RFC 9113 §6.9.1), and nothing is taken.
func (w *h2RecvWindow) take(n int64) bool {
	if n > w.win {
		return false
	}
	w.win -= n
	return true
}

// consumed records n bytes the reader used and returns the increment of the WINDOW_UPDATE
// to send now: the accumulated credit once it reaches half the window, else 0. A window
// that will receive nothing more (more false: the stream has ended) returns nothing.
func (w *h2RecvWindow) consumed(n int64, more bool) int64 {
	w.debt += n
	if w.debt < w.full/2 || !more {
		return 0
	}
	incr := w.debt
	w.debt = 0
	w.win += incr
	return incr
}

// newH2Flow is the state before the peer's first SETTINGS (RFC 9113 §6.5.2, §6.9.2).
func newH2Flow() h2Flow { return h2Flow{sendWin: 65535, peerInitWin: 65535, peerMaxSize: 16384} }

// windowUpdateLocked adds a WINDOW_UPDATE's increment to the connection's send window
// (streamWin nil) or to a stream's. A window pushed beyond 2^31-1 is a FLOW_CONTROL_ERROR
// (RFC 9113 §6.9.1): for the connection's window a connection error, returned; for a
// stream's, streamErr is true and the caller resets the stream with that code.
func (f *h2Flow) windowUpdateLocked(streamWin *int64, inc uint32) (streamErr bool, err error) {
	if streamWin == nil {
		f.sendWin += int64(inc)
		if f.sendWin > h2MaxWindow {
			return false, http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		return false, nil
	}
	*streamWin += int64(inc)
	return *streamWin > h2MaxWindow, nil
}

// settingsLocked applies the peer's SETTINGS frame (not an ACK) to the sending side: each
// setting is validated; the HPACK table size bounds enc; a new initial window moves every
// open stream's window (streams yields them) by the difference, and one pushed beyond
// 2^31-1 is a connection FLOW_CONTROL_ERROR (RFC 9113 §6.9.2); the frame size is kept.
// other, when not nil, gets every setting, for those the connection handles itself.
func (f *h2Flow) settingsLocked(sf *http2.SettingsFrame, enc *hpack.Encoder, streams iter.Seq[*int64],
	other func(http2.Setting)) error {
	return sf.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingHeaderTableSize:
			enc.SetMaxDynamicTableSizeLimit(s.Val)
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - f.peerInitWin
			f.peerInitWin = int64(s.Val)
			overflow := false
			for w := range streams {
				*w += delta
				overflow = overflow || *w > h2MaxWindow
			}
			if overflow {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
		case http2.SettingMaxFrameSize:
			f.peerMaxSize = int(s.Val)
		}
		if other != nil {
			other(s)
		}
		return nil
	})
}
