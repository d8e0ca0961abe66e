package backoff

import (
	"context"
	"testing"
	"time"
)

func TestWaiterSequence(t *testing.T) {
	tests := []struct {
		name string
		w    Waiter
		want []time.Duration
	}{
		{"defaults", Waiter{}, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}},
		{"capped", Waiter{Min: time.Second, Max: 3 * time.Second}, []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}},
		{"factor 3", Waiter{Min: time.Millisecond, Factor: 3}, []time.Duration{time.Millisecond, 3 * time.Millisecond, 9 * time.Millisecond}},
		{"max below min", Waiter{Min: 5 * time.Second, Max: time.Second}, []time.Duration{5 * time.Second, 5 * time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for i, want := range tc.want {
				if got := tc.w.Next(); got != want {
					t.Fatalf("wait %d = %v, want %v", i, got, want)
				}
			}
			tc.w.Reset()
			if got := tc.w.Next(); got != tc.want[0] {
				t.Fatalf("after Reset: %v, want %v", got, tc.want[0])
			}
		})
	}
}

func TestWaiterJitterStaysInRange(t *testing.T) {
	w := Waiter{Min: time.Second, Max: time.Second, Jitter: 0.5}
	for range 1000 {
		if d := w.Next(); d < 500*time.Millisecond || d > time.Second {
			t.Fatalf("jittered wait %v outside [0.5s, 1s]", d)
		}
	}
}

func TestWaitHonoursCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w := Waiter{Min: time.Hour}
	start := time.Now()
	if err := w.Wait(ctx); err != context.Canceled {
		t.Fatalf("Wait on a cancelled context = %v, want context.Canceled", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("Wait did not return promptly on cancel")
	}
}
