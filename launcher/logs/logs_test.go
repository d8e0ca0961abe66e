package logs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"golang.org/x/sys/unix"
)

func fixedClock() func() time.Time {
	t0 := time.Date(2025, 11, 26, 17, 0, 0, 0, time.UTC)
	return func() time.Time { return t0 }
}

func TestRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	l, err := Open(path, Policy{MaxSize: 100, MaxFiles: 3})
	if err != nil {
		t.Fatal(err)
	}
	l.now = fixedClock()
	// Each line is 27+7+3+1 = 38 bytes with the prefix: two fit in 100, a third rotates.
	for i := 0; i < 10; i++ {
		if err := l.Line("stdout", fmt.Appendf(nil, "l%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != os.ErrClosed {
		t.Fatalf("second Close = %v; want os.ErrClosed", err)
	}
	files := Files(path, 3)
	if len(files) != 3 || files[0] != path+".2" || files[2] != path {
		t.Fatalf("Files = %v; want .2, .1, current", files)
	}
	for _, f := range files {
		fi, _ := os.Stat(f)
		if fi.Size() > 100 {
			t.Errorf("%s is %d bytes; limit 100", f, fi.Size())
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Error("a fourth file exists; MaxFiles is 3")
	}
	var buf bytes.Buffer
	if err := Copy(&buf, path, 3); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "2025-11-26T17:00:00.000000Z" || f[1] != "stdout" {
			t.Fatalf("malformed line %q", line)
		}
		got = append(got, f[2])
	}
	// 10 lines, 2 per file, 3 files kept: the newest six survive, in order.
	if want := "l04 l05 l06 l07 l08 l09"; strings.Join(got, " ") != want {
		t.Errorf("kept %v; want %s", got, want)
	}
}

func TestRotationSingleFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	l, err := Open(path, Policy{MaxSize: 10, MaxFiles: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < 3; i++ {
		if _, err := l.Write([]byte("0123456789")); err != nil {
			t.Fatal(err)
		}
	}
	if files := Files(path, 1); len(files) != 1 {
		t.Fatalf("Files = %v", files)
	}
	if b, _ := os.ReadFile(path); string(b) != "0123456789" {
		t.Errorf("content %q", b)
	}
}

func TestDefaults(t *testing.T) {
	p := Policy{}.withDefaults()
	if p.MaxSize != 10<<20 || p.MaxFiles != 5 {
		t.Fatalf("defaults = %+v", p)
	}
}

// TestCapture: two writers on two streams; every line arrives whole and tagged.
func TestCapture(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "app.log")
	l, err := Open(path, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	var dones []<-chan struct{}
	for _, stream := range []string{"stdout", "stderr"} {
		w, done, err := l.Capture(stream)
		if err != nil {
			t.Fatal(err)
		}
		dones = append(dones, done)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.Close()
			for i := 0; i < 200; i++ {
				fmt.Fprintf(w, "%s line %d %s\n", stream, i, strings.Repeat("x", i))
			}
			fmt.Fprint(w, "no newline at the end")
		}()
	}
	wg.Wait()
	for _, d := range dones {
		<-d
	}
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 402 {
		t.Fatalf("%d lines; want 402", len(lines))
	}
	for _, line := range lines {
		f := strings.SplitN(line, " ", 3)
		if len(f) != 3 || !(strings.HasPrefix(f[2], f[1]+" line") || f[2] == "no newline at the end") {
			t.Fatalf("mixed or malformed line %q", line)
		}
	}
}

func TestFollowAcrossRotation(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "app.log")
	l, err := Open(path, Policy{MaxSize: 200, MaxFiles: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Notef("before follow")
	ctx, cancel := context.WithCancel(testutil.Context(t, 10*time.Second))
	var mu sync.Mutex
	var buf bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	done := make(chan error, 1)
	go func() { done <- Follow(ctx, w, path, 2, 5*time.Millisecond) }()
	// One line at a time, each seen before the next, so every rotation happens between two
	// reads (the polling reader cannot promise more than MaxFiles-1 rotations per poll).
	for i := 0; i < 20; i++ {
		l.Notef("after %d", i)
		testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
			mu.Lock()
			defer mu.Unlock()
			if !strings.Contains(buf.String(), fmt.Sprintf("after %d\n", i)) {
				return fmt.Errorf("followed so far: %q", buf.String())
			}
			return nil
		})
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	out := buf.String()
	if !strings.Contains(out, "before follow") {
		t.Errorf("Follow missed the existing line: %q", out)
	}
	for i := 0; i < 20; i++ {
		if strings.Count(out, fmt.Sprintf("after %d\n", i)) != 1 {
			t.Errorf("line %d appears %d times across rotations:\n%s", i, strings.Count(out, fmt.Sprintf("after %d\n", i)), out)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func BenchmarkLine(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "app.log"), Policy{MaxSize: 1 << 20, MaxFiles: 2})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	line := []byte("GET /catalog 200 1.2ms\n")
	b.ReportAllocs()
	for b.Loop() {
		_ = l.Line("stdout", line)
	}
}

// TestOnOpenFollowsRotation: SetOnOpen's function gets the current file at once and each
// new file after a rotation; a descriptor it moves there (as the background launcher moves
// its stderr) writes into the current file, not into a rotated one.
func TestOnOpenFollowsRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "launcher.log")
	l, err := Open(path, Policy{MaxSize: 100, MaxFiles: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.now = fixedClock()
	spare, err := os.Open(os.DevNull) // stands for fd 2
	if err != nil {
		t.Fatal(err)
	}
	defer spare.Close()
	opened := 0
	l.SetOnOpen(func(f *os.File) {
		opened++
		if err := unix.Dup3(int(f.Fd()), int(spare.Fd()), unix.O_CLOEXEC); err != nil {
			t.Error(err)
		}
	})
	if opened != 1 {
		t.Fatalf("SetOnOpen called its function %d times; want once, with the current file", opened)
	}
	for i := 0; i < 3; i++ { // the third line rotates
		if err := l.Line("stderr", fmt.Appendf(nil, "l%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if opened != 2 {
		t.Fatalf("after one rotation: called %d times; want 2", opened)
	}
	if _, err := spare.WriteString("crash report\n"); err != nil {
		t.Fatal(err)
	}
	cur, _ := os.ReadFile(path)
	old, _ := os.ReadFile(path + ".1")
	if !strings.Contains(string(cur), "crash report") || strings.Contains(string(old), "crash report") {
		t.Errorf("the moved descriptor wrote elsewhere than the current file:\ncurrent %q\n.1 %q", cur, old)
	}
}
