package proxy

import "testing"

// TestH2RecvWindow: received bytes count against the window, an overrun is refused and
// takes nothing, and consumed credit goes back in batches of half the window, never after
// the end of the stream.
func TestH2RecvWindow(t *testing.T) {
	w := newH2RecvWindow(100)
	if !w.take(60) || w.win != 40 {
		t.Fatalf("take 60 of 100: ok, window %d; want 40", w.win)
	}
	if w.take(41) || w.win != 40 {
		t.Fatalf("take 41 of 40: accepted or window moved to %d", w.win)
	}
	for _, c := range []struct {
		n    int64
		more bool
		want int64
		win  int64
	}{
		{30, true, 0, 40},   // debt 30 < 50
		{30, true, 60, 100}, // debt 60 ≥ 50: all of it back
		{10, true, 0, 100},
		{45, false, 0, 100}, // the stream ended: nothing more
	} {
		if got := w.consumed(c.n, c.more); got != c.want || w.win != c.win {
			t.Errorf("consumed(%d, %v) = %d, window %d; want %d, %d", c.n, c.more, got, w.win, c.want, c.win)
		}
	}
}
