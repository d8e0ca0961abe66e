package lb

import (
	"fmt"
	"testing"
	"time"
)

var policies = []Policy{RoundRobin, Random, LeastRequest, RingHash, Maglev}

// TestNoAllocs asserts that picking and recording an attempt allocate nothing, for every
// policy, with and without a hash key, weighted or not, and through the skip path of a stale
// picker.
func TestNoAllocs(t *testing.T) {
	for _, policy := range policies {
		for _, weighted := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/weighted=%v", policy, weighted), func(t *testing.T) {
				var weights []uint32
				if weighted {
					weights = []uint32{1, 2, 3}
				}
				b := newTestBalancer(t, Config{Policy: policy, Rand: nil}, endpoints(3, weights...))
				b.cfg.Rand = seededRand(9) // not safe for concurrency, but this test is sequential
				stale := b.Picker()
				fail(b.host(t, "b"), 5, ConnectFailure) // stale now holds an ejected host
				var key uint64
				ha, hc := b.host(t, "a"), b.host(t, "c")
				for name, f := range map[string]func(){
					"Pick":           func() { _, _ = b.Pick(PickInfo{}) },
					"Pick/hash":      func() { key++; _, _ = b.Pick(PickInfo{Hash: key, HasHash: true}) },
					"Pick/stale":     func() { key++; _, _ = stale.Pick(PickInfo{Hash: key, HasHash: key%2 == 0}) },
					"Pick/avoid":     func() { key++; _, _ = stale.Pick(PickInfo{Hash: key, HasHash: key%2 == 0, Avoid: ha}) },
					"Begin/Done":     func() { ha.Begin(); ha.Done(time.Millisecond, Success) },
					"Begin/Done/5xx": func() { hc.Begin(); hc.Done(time.Millisecond, ServerError); hc.Begin(); hc.Done(0, Success) },
				} {
					if n := testing.AllocsPerRun(1000, f); n != 0 {
						t.Errorf("%s: %v allocs per run, want 0", name, n)
					}
				}
			})
		}
	}
}

func BenchmarkPick(b *testing.B) {
	for _, policy := range policies {
		for _, n := range []int{3, 100} {
			b.Run(fmt.Sprintf("%s/hosts=%d", policy, n), func(b *testing.B) {
				bal, err := New(Config{Policy: policy})
				if err != nil {
					b.Fatal(err)
				}
				defer bal.Close()
				bal.Update(endpoints(n))
				info := PickInfo{Hash: Hash("user-42"), HasHash: true}
				b.ReportAllocs()
				for b.Loop() {
					info.Hash++
					if _, err := bal.Pick(info); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkPickParallel is Pick plus Begin/Done from every core at once, as the proxy does.
func BenchmarkPickParallel(b *testing.B) {
	for _, policy := range policies {
		b.Run(string(policy), func(b *testing.B) {
			bal, err := New(Config{Policy: policy})
			if err != nil {
				b.Fatal(err)
			}
			defer bal.Close()
			bal.Update(endpoints(3))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				info := PickInfo{HasHash: true}
				for pb.Next() {
					info.Hash++
					h, err := bal.Pick(info)
					if err != nil {
						b.Error(err)
						return
					}
					h.Begin()
					h.Done(time.Millisecond, Success)
				}
			})
		})
	}
}

func BenchmarkBeginDone(b *testing.B) {
	bal, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer bal.Close()
	bal.Update(endpoints(3))
	h := bal.Hosts()[0]
	b.ReportAllocs()
	for b.Loop() {
		h.Begin()
		h.Done(time.Millisecond, Success)
	}
}

// BenchmarkBuild is the cost of publishing a new picker (Update, ejection, return).
func BenchmarkBuild(b *testing.B) {
	for _, policy := range policies {
		b.Run(string(policy), func(b *testing.B) {
			bal, err := New(Config{Policy: policy})
			if err != nil {
				b.Fatal(err)
			}
			defer bal.Close()
			bal.Update(endpoints(10))
			b.ReportAllocs()
			for b.Loop() {
				bal.mu.Lock()
				bal.publishLocked()
				bal.mu.Unlock()
			}
		})
	}
}
