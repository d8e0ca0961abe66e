package cgroups

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
)

var netErrClosed = net.ErrClosed

// TestMain doubles as the helper processes the real-cgroup tests put in pods (re-exec of the
// test binary, as runc's integration tests do). Each helper waits for a byte on stdin, sent
// once the test has moved it into its cgroup, so everything it does is charged there.
func TestMain(m *testing.M) {
	switch os.Getenv("PODMESH_CGROUPS_HELPER") {
	case "":
		os.Exit(m.Run())
	case "hog": // allocate and touch up to 256 MiB
		waitGo()
		var keep [][]byte
		for i := 0; i < 256; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		os.Exit(len(keep) - 256) // 0: not killed, which the test reports
	case "spin": // use 200ms of CPU time, then wait for stdin to close
		waitGo()
		for cpuTime() < 200*time.Millisecond {
			for i := 0; i < 1e6; i++ {
			}
		}
		os.Stdout.WriteString("spun\n")
		waitGo()
		os.Exit(0)
	case "forker": // start 5 children, print their pids, wait
		waitGo()
		for i := 0; i < 5; i++ {
			c := exec.Command("sleep", "60")
			if err := c.Start(); err != nil {
				os.Exit(3)
			}
			os.Stdout.WriteString(strconv.Itoa(c.Process.Pid) + "\n")
		}
		waitGo()
		os.Exit(0)
	}
	os.Exit(2)
}

func waitGo() {
	var b [1]byte
	os.Stdin.Read(b[:])
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func testContext(t *testing.T) context.Context {
	return testutil.Context(t, 20*time.Second)
}

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithCancel(testContext(t))
}

func contextWithTimeout(t *testing.T, ms int) (context.Context, context.CancelFunc) {
	return context.WithTimeout(testContext(t), time.Duration(ms)*time.Millisecond)
}

func testCheckGoroutines(t *testing.T) { testutil.CheckGoroutines(t) }

func sleep() { time.Sleep(5 * time.Millisecond) }

// recvTimeout receives one value, failing the test after 10s.
func recvTimeout(t *testing.T, ch <-chan uint64) uint64 {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return v
	case <-timer.C:
		t.Fatal("nothing received in 10s")
	}
	return 0
}
