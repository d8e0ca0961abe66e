package netns_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/launcher/internal/podtest"
	"github.com/podmesh/podmesh/launcher/netns"
)

// TestDialer: a Dialer's connections start inside the pod's namespace (they reach a
// loopback listener that exists only there), from sockets of the uid it was given, for as
// many dials as asked; after Close it refuses to dial, and a Dialer on a missing namespace
// reports the failure on every Dial.
func TestDialer(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.CheckGoroutines(t)
	bridge, subnet := podtest.Network(t)
	n := netns.Network{Bridge: bridge, Subnet: subnet}
	st, err := netns.EnsureBridge(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.RemoveBridge(n, st) })
	p := netns.Plan(netns.PinName(fmt.Sprintf("dialer%d", os.Getpid()), "svc", 1), subnet.Addr().Next().Next(), n)
	t.Cleanup(func() { _ = netns.Remove(p) })
	if err := netns.Create(n, p); err != nil {
		t.Fatal(err)
	}
	l, err := netns.Listen(p.Pin, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for _, uid := range []int{-1, 65533} {
		d := netns.NewDialer(p.Pin, uid)
		for i := 0; i < 20; i++ {
			c, err := d.Dial(ctx, "tcp", l.Addr().String())
			if err != nil {
				d.Close()
				t.Fatalf("uid %d: dial %d into the pod: %v", uid, i, err)
			}
			want := uid
			if want < 0 {
				want = 0
			}
			if got := sockUID(t, p.Pin, c.LocalAddr().(*net.TCPAddr).Port, port); got != want {
				t.Errorf("uid %d: the socket belongs to uid %d", uid, got)
			}
			c.Close()
		}
		d.Close()
		d.Close() // a second Close does nothing
		if c, err := d.Dial(ctx, "tcp", l.Addr().String()); err == nil {
			c.Close()
			t.Errorf("uid %d: a closed Dialer dialled", uid)
		}
	}

	bad := netns.NewDialer(p.Pin+"-missing", -1)
	defer bad.Close()
	for i := 0; i < 2; i++ {
		if c, err := bad.Dial(ctx, "tcp", l.Addr().String()); err == nil {
			c.Close()
			t.Fatal("a Dialer on a missing namespace dialled")
		} else if !strings.Contains(err.Error(), "-missing") {
			t.Errorf("the error does not name the namespace: %v", err)
		}
	}
}

// sockUID is the owner of the TCP socket from local port lport to rport on 127.0.0.1 in
// the namespace pinned at pin, from its /proc/net/tcp.
func sockUID(t *testing.T, pin string, lport, rport int) int {
	t.Helper()
	var b []byte
	if err := netns.Do(pin, func() error {
		var err error
		b, err = os.ReadFile("/proc/thread-self/net/tcp")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	local, remote := fmt.Sprintf("0100007F:%04X", lport), fmt.Sprintf("0100007F:%04X", rport)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 7 && f[1] == local && f[2] == remote {
			uid, err := strconv.Atoi(f[7])
			if err != nil {
				t.Fatal(err)
			}
			return uid
		}
	}
	t.Fatalf("no socket %s -> %s in the pod:\n%s", local, remote, b)
	return -1
}
