package netns_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutil"
	"github.com/podmesh/podmesh/launcher/internal/podtest"
	"github.com/podmesh/podmesh/launcher/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestAllocate(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	tests := []struct {
		name   string
		subnet netip.Prefix
		used   []string
		want   string
		err    string
	}{
		{name: "first", subnet: p("10.89.0.0/16"), want: "10.89.0.2"},
		{name: "unmasked subnet", subnet: p("10.89.3.7/24"), want: "10.89.3.2"},
		{name: "skips used", subnet: p("10.89.0.0/16"), used: []string{"10.89.0.2", "10.89.0.3"}, want: "10.89.0.4"},
		{name: "fills a hole", subnet: p("10.89.0.0/16"), used: []string{"10.89.0.3"}, want: "10.89.0.2"},
		{name: "crosses an octet", subnet: p("10.89.0.0/16"), used: seq("10.89.0.2", 254), want: "10.89.1.0"},
		{name: "slash 30 has one", subnet: p("10.89.0.0/30"), want: "10.89.0.2"},
		{name: "slash 30 full", subnet: p("10.89.0.0/30"), used: []string{"10.89.0.2"}, err: "all 1 pod addresses in use"},
		{name: "never broadcast", subnet: p("10.89.0.0/29"), used: seq("10.89.0.2", 5), err: "in use"},
		{name: "ipv6 refused", subnet: p("fd00::/64"), err: "not an IPv4 prefix"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			used := map[netip.Addr]bool{}
			for _, u := range tc.used {
				used[a(u)] = true
			}
			got, err := netns.Allocate(tc.subnet, used)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Allocate = %v, %v; want error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != a(tc.want) {
				t.Fatalf("Allocate = %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func seq(from string, n int) []string {
	a := netip.MustParseAddr(from)
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, a.String())
		a = a.Next()
	}
	return out
}

func TestHostIfName(t *testing.T) {
	a := netns.HostIfName(netns.PinName("shop", "catalog", 1))
	b := netns.HostIfName(netns.PinName("shop", "catalog", 2))
	if len(a) != 15 || !strings.HasPrefix(a, netns.Prefix) {
		t.Fatalf("HostIfName = %q: want 15 characters starting with %q", a, netns.Prefix)
	}
	if a == b {
		t.Fatalf("two replicas share the veth name %q", a)
	}
	if a != netns.HostIfName(netns.PinName("shop", "catalog", 1)) {
		t.Fatal("HostIfName is not deterministic")
	}
}

// TestPinNameInjective: projects and services whose names differ only in where a '-' falls
// get different pins (and so veths): "a-b" + "c" is not "a" + "b-c".
func TestPinNameInjective(t *testing.T) {
	seen := map[string]string{}
	for _, c := range []struct {
		project, service string
		replica          int
	}{
		{"reviewq-a", "b", 1}, {"reviewq", "a-b", 1}, {"reviewq-a-b", "c", 1}, {"reviewq", "a-b-c", 1},
		{"p", "a-1", 2}, {"p", "a", 12}, {"p-a", "1", 2}, {"p_a", "b", 1}, {"p", "a-b", 1},
	} {
		name := netns.PinName(c.project, c.service, c.replica)
		key := fmt.Sprintf("%s/%s/%d", c.project, c.service, c.replica)
		if other, ok := seen[name]; ok {
			t.Errorf("%s and %s share the pin %s", other, key, name)
		}
		seen[name] = key
		if hi := netns.HostIfName(name); seen[hi] != "" {
			t.Errorf("%s and %s share the veth %s", seen[hi], key, hi)
		} else {
			seen[hi] = key
		}
	}
}

func TestNetworkValidate(t *testing.T) {
	tests := []struct {
		n   netns.Network
		err string
	}{
		{netns.Network{Bridge: "podmesh0", Subnet: netip.MustParsePrefix("10.89.0.0/16")}, ""},
		{netns.Network{Bridge: "", Subnet: netip.MustParsePrefix("10.89.0.0/16")}, "bridge name"},
		{netns.Network{Bridge: "a-very-long-bridge-name", Subnet: netip.MustParsePrefix("10.89.0.0/16")}, "bridge name"},
		{netns.Network{Bridge: "podmesh0", Subnet: netip.MustParsePrefix("10.89.0.0/31")}, "too small"},
		{netns.Network{Bridge: "podmesh0"}, "must be an IPv4 prefix"},
	}
	for _, tc := range tests {
		err := tc.n.Validate()
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Validate(%+v) = %v; want error containing %q", tc.n, err, tc.err)
		}
	}
}

// nsOf returns the network namespace identity of a path such as /proc/self/ns/net.
func nsOf(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

// threadNamespaces returns the distinct network namespaces of this process's threads.
func threadNamespaces(t *testing.T) map[string]bool {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, task := range tasks {
		out[nsOf(t, filepath.Join("/proc/self/task", task.Name(), "ns/net"))] = true
	}
	return out
}

// TestPodNetwork builds two pods on a bridge of the test's own, checks that each has its
// own namespace with the planned address, that the pods reach each other and the gateway,
// that no thread of the test process is left in a pod namespace, and that removal leaves
// nothing behind.
func TestPodNetwork(t *testing.T) {
	testutil.RequirePrivileged(t)
	bridge, subnet := podtest.Network(t)
	n := netns.Network{Bridge: bridge, Subnet: subnet}
	marker := fmt.Sprintf("nstest%d", os.Getpid())
	before := podtest.Leftovers(t, marker)

	st, err := netns.EnsureBridge(n)
	if err != nil {
		t.Fatal(err)
	}
	if !st.CreatedLink || !st.AddedAddr {
		t.Fatalf("EnsureBridge on a new bridge = %+v; want both created", st)
	}
	if st2, err := netns.EnsureBridge(n); err != nil || st2.CreatedLink || st2.AddedAddr {
		t.Fatalf("second EnsureBridge = %+v, %v; want nothing created", st2, err)
	}
	hostNS := nsOf(t, "/proc/self/ns/net")

	var pods []netns.Pod
	used := map[netip.Addr]bool{}
	for i := 1; i <= 2; i++ {
		addr, err := netns.Allocate(subnet, used)
		if err != nil {
			t.Fatal(err)
		}
		used[addr] = true
		p := netns.Plan(netns.PinName(marker, "svc", i), addr, n)
		p.Open = []uint16{8080}
		t.Cleanup(func() { _ = netns.Remove(p) })
		if err := netns.Create(n, p); err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	vethNames := []string{pods[0].HostIf, pods[1].HostIf}

	for _, p := range pods {
		if got := nsOf(t, p.Pin); got == hostNS {
			t.Errorf("pod %s shares the host's network namespace %s", p.Name, got)
		}
		l, err := netlink.LinkByName(p.HostIf)
		if err != nil {
			t.Fatalf("host end of %s: %v", p.Name, err)
		}
		if br, _ := netlink.LinkByName(bridge); l.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("veth %s is not attached to %s", p.HostIf, bridge)
		}
		// The pod's view: eth0 with the planned address, lo up, default route via gateway.
		err = netns.Do(p.Pin, func() error {
			eth, err := netlink.LinkByName(netns.PodIfName)
			if err != nil {
				return err
			}
			addrs, err := netlink.AddrList(eth, netlink.FAMILY_V4)
			if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != p.Addr.String() {
				return fmt.Errorf("eth0 addresses %v (%v), want %v", addrs, err, p.Addr)
			}
			routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == n.Gateway().String() {
					return nil
				}
			}
			return fmt.Errorf("no default route via %v in %v", n.Gateway(), routes)
		})
		if err != nil {
			t.Errorf("inside %s: %v", p.Name, err)
		}
	}

	// Pod 2 listens on its address; pod 1 and the host connect to it.
	l, err := netns.Listen(pods[1].Pin, "tcp", netip.AddrPortFrom(pods[1].Addr.Addr(), 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = fmt.Fprintf(c, "hello from %s\n", c.LocalAddr())
			c.Close()
		}
	}()
	ctx := testutil.Context(t, 10*time.Second)
	for _, from := range []string{pods[0].Pin, ""} {
		var c net.Conn
		if from == "" {
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", l.Addr().String())
		} else {
			c, err = netns.Dial(ctx, from, "tcp", l.Addr().String())
		}
		if err != nil {
			t.Fatalf("dial %s from %q: %v", l.Addr(), from, err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil && err != io.EOF || !strings.Contains(line, pods[1].Addr.Addr().String()) {
			t.Fatalf("read from %s: %q, %v", l.Addr(), line, err)
		}
	}
	// Any port not in Open is unreachable from outside the pod, even on 0.0.0.0; inside the
	// pod it answers.
	closed, err := netns.Listen(pods[1].Pin, "tcp", "0.0.0.0:9090")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := closed.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	target := netip.AddrPortFrom(pods[1].Addr.Addr(), 9090).String()
	if c, err := (&net.Dialer{Timeout: 300 * time.Millisecond}).DialContext(ctx, "tcp", target); err == nil {
		c.Close()
		t.Errorf("host reached %s, a port the pod did not open", target)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if c, err := netns.Dial(short, pods[0].Pin, "tcp", target); err == nil {
		c.Close()
		t.Errorf("pod 1 reached %s, a port pod 2 did not open", target)
	}
	cancel()
	if c, err := netns.Dial(ctx, pods[1].Pin, "tcp", "127.0.0.1:9090"); err != nil {
		t.Errorf("inside pod 2, its own port 9090: %v", err)
	} else {
		c.Close()
	}
	closed.Close()

	// A pod's loopback is its own: a listener on 127.0.0.1 in pod 1 is not the host's.
	lo, err := netns.Listen(pods[0].Pin, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", lo.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Errorf("host reached pod loopback listener %s", lo.Addr())
	}
	lo.Close()

	// A thread that entered a pod namespace exits right after its goroutine ends; give the
	// kernel a moment to reap it, then no thread may be left outside the host's namespace.
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if got := threadNamespaces(t); len(got) != 1 || !got[hostNS] {
			return fmt.Errorf("threads of the test process are in namespaces %v; want only the host's %s", got, hostNS)
		}
		return nil
	})

	for _, p := range pods {
		if err := netns.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := netns.Remove(p); err != nil {
			t.Fatalf("second Remove: %v", err)
		}
	}
	if err := netns.RemoveBridge(n, st); err != nil {
		t.Fatal(err)
	}
	after := podtest.Leftovers(t, marker, append(vethNames, bridge)...)
	if strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("left behind:\nbefore %q\nafter  %q", before, after)
	}
}

// TestBridgeMACStable: the bridge keeps the MAC EnsureBridge gave it when a port with a lower
// MAC joins. Without a fixed address the kernel moves the bridge to the lowest port MAC, and
// pods that cached the old one can no longer open connections to the gateway.
func TestBridgeMACStable(t *testing.T) {
	testutil.RequirePrivileged(t)
	bridge, subnet := podtest.Network(t)
	n := netns.Network{Bridge: bridge, Subnet: subnet}
	if _, err := netns.EnsureBridge(n); err != nil {
		t.Fatal(err)
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	want := netns.BridgeMAC(n)
	if got := br.Attrs().HardwareAddr; got.String() != want.String() {
		t.Fatalf("new bridge MAC %v; want %v", got, want)
	}
	for i, mac := range []string{"02:00:00:00:00:09", "00:00:00:00:00:01"} {
		name := fmt.Sprintf("pmd%sd%d", bridge[len(bridge)-5:], i)
		hw, _ := net.ParseMAC(mac)
		d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: hw, MasterIndex: br.Attrs().Index},
			PeerName: name + "p"}
		if err := netlink.LinkAdd(d); err != nil {
			t.Fatalf("add port %s: %v", name, err)
		}
		t.Cleanup(func() { _ = netlink.LinkDel(d) })
		if err := netlink.LinkSetUp(d); err != nil {
			t.Fatal(err)
		}
		if br, err = netlink.LinkByName(bridge); err != nil {
			t.Fatal(err)
		}
		if got := br.Attrs().HardwareAddr; got.String() != want.String() {
			t.Fatalf("after port %s (%s) joined, bridge MAC %v; want it to stay %v", name, mac, got, want)
		}
	}
}

func TestEnsureBridgeRefusesOverlap(t *testing.T) {
	testutil.RequirePrivileged(t)
	bridge, _ := podtest.Network(t)
	// The host's loopback holds 127.0.0.1/8: a pod subnet inside it must be refused.
	_, err := netns.EnsureBridge(netns.Network{Bridge: bridge, Subnet: netip.MustParsePrefix("127.0.0.0/24")})
	if err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("EnsureBridge over 127.0.0.0/24 = %v; want an overlap error", err)
	}
	if _, err := netlink.LinkByName(bridge); err == nil {
		t.Fatalf("bridge %s created despite the error", bridge)
	}
}

func BenchmarkCreatePod(b *testing.B) {
	testutil.RequirePrivileged(b)
	bridge, subnet := podtest.Network(b)
	n := netns.Network{Bridge: bridge, Subnet: subnet}
	st, err := netns.EnsureBridge(n)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = netns.RemoveBridge(n, st) }()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p := netns.Plan(netns.PinName(fmt.Sprintf("bench%d", os.Getpid()), "svc", i), subnet.Addr().Next().Next(), n)
		if err := netns.Create(n, p); err != nil {
			b.Fatal(err)
		}
		if err := netns.Remove(p); err != nil {
			b.Fatal(err)
		}
	}
}

// TestGuard: a guarded destination (the registry relay on the gateway, the sidecar's admin
// listener on the pod's loopback) refuses connections from inside the pod unless the
// socket belongs to the guard's user; other destinations are not affected.
func TestGuard(t *testing.T) {
	testutil.RequirePrivileged(t)
	bridge, subnet := podtest.Network(t)
	n := netns.Network{Bridge: bridge, Subnet: subnet}
	st, err := netns.EnsureBridge(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.RemoveBridge(n, st) })
	// The relay: a listener on the gateway address, in the host's namespace.
	relay, err := net.Listen("tcp", netip.AddrPortFrom(n.Gateway(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	const owner = 65533
	p := netns.Plan(netns.PinName(fmt.Sprintf("guard%d", os.Getpid()), "svc", 1), subnet.Addr().Next().Next(), n)
	p.Guard = []netns.Guard{
		{Addr: netip.MustParseAddrPort(relay.Addr().String()), UID: owner},
		{Addr: netip.MustParseAddrPort("127.0.0.1:15000"), UID: owner},
	}
	t.Cleanup(func() { _ = netns.Remove(p) })
	if err := netns.Create(n, p); err != nil {
		t.Fatal(err)
	}
	admin, err := netns.Listen(p.Pin, "tcp", "127.0.0.1:15000")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	other, err := netns.Listen(p.Pin, "tcp", "127.0.0.1:15001")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, l := range []net.Listener{relay, admin, other} {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	ctx := testutil.Context(t, 10*time.Second)
	for _, tc := range []struct {
		addr string
		uid  int // -1: the test's own (root)
		ok   bool
	}{
		{relay.Addr().String(), -1, false},
		{relay.Addr().String(), 65534, false},
		{relay.Addr().String(), owner, true},
		{"127.0.0.1:15000", -1, false},
		{"127.0.0.1:15000", 65534, false},
		{"127.0.0.1:15000", owner, true},
		{"127.0.0.1:15001", -1, true},
		{"127.0.0.1:15001", 65534, true},
	} {
		var c net.Conn
		var err error
		if tc.uid < 0 {
			c, err = netns.Dial(ctx, p.Pin, "tcp", tc.addr)
		} else {
			c, err = netns.DialAs(ctx, p.Pin, uint32(tc.uid), "tcp", tc.addr)
		}
		if err == nil {
			c.Close()
		}
		switch {
		case tc.ok && err != nil:
			t.Errorf("uid %d to %s: %v; want a connection", tc.uid, tc.addr, err)
		case !tc.ok && err == nil:
			t.Errorf("uid %d reached %s, guarded for uid %d", tc.uid, tc.addr, owner)
		case !tc.ok && !errors.Is(err, syscall.ECONNREFUSED):
			t.Errorf("uid %d to %s: %v; want connection refused at once", tc.uid, tc.addr, err)
		}
	}
}

// TestCreateLeavesOthers: creating a pod whose pin (and so veth) name is already taken by a
// running pod fails and leaves that pod's namespace, veth and address as they were.
func TestCreateLeavesOthers(t *testing.T) {
	testutil.RequirePrivileged(t)
	bridge, subnet := podtest.Network(t)
	n := netns.Network{Bridge: bridge, Subnet: subnet}
	st, err := netns.EnsureBridge(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.RemoveBridge(n, st) })
	name := netns.PinName(fmt.Sprintf("clash%d", os.Getpid()), "svc", 1)
	first := netns.Plan(name, subnet.Addr().Next().Next(), n)
	t.Cleanup(func() { _ = netns.Remove(first) })
	if err := netns.Create(n, first); err != nil {
		t.Fatal(err)
	}
	second := netns.Plan(name, subnet.Addr().Next().Next().Next(), n)
	if err := netns.Create(n, second); err == nil {
		t.Fatal("a second pod with the same pin name was created")
	}
	if _, err := os.Stat(first.Pin); err != nil {
		t.Fatalf("the first pod's pin is gone: %v", err)
	}
	if _, err := netlink.LinkByName(first.HostIf); err != nil {
		t.Fatalf("the first pod's veth is gone: %v", err)
	}
	var addrs []string
	if err := netns.Do(first.Pin, func() error {
		l, err := netlink.LinkByName(netns.PodIfName)
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			addrs = append(addrs, a.IPNet.String())
		}
		return err
	}); err != nil {
		t.Fatalf("the first pod's namespace: %v", err)
	}
	if len(addrs) != 1 || addrs[0] != first.Addr.String() {
		t.Errorf("the first pod's addresses: %v; want %v", addrs, first.Addr)
	}
}

// TestBridgeIntentAndLock: BridgeIntent names what EnsureBridge is about to create (so it
// can be recorded first), and a bridge is locked by one owner at a time, the next one told
// who holds it, until the holder lets go.
func TestBridgeIntentAndLock(t *testing.T) {
	testutil.RequirePrivileged(t)
	bridge, subnet := podtest.Network(t)
	n := netns.Network{Bridge: bridge, Subnet: subnet}
	lock, err := netns.LockBridge(bridge, "first")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := netns.LockBridge(bridge, "second"); !errors.Is(err, netns.ErrBridgeBusy) || !strings.Contains(err.Error(), `"first"`) {
		t.Errorf("second lock of %s: %v; want ErrBridgeBusy naming the first owner", bridge, err)
	}
	intent, err := netns.BridgeIntent(n)
	if err != nil || intent != (netns.BridgeState{CreatedLink: true, AddedAddr: true}) {
		t.Errorf("intent before the bridge exists: %+v, %v; want both created", intent, err)
	}
	st, err := netns.EnsureBridge(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.RemoveBridge(n, st) })
	if st != intent {
		t.Errorf("EnsureBridge created %+v; BridgeIntent said %+v", st, intent)
	}
	if again, err := netns.BridgeIntent(n); err != nil || again != (netns.BridgeState{}) {
		t.Errorf("intent once the bridge is there: %+v, %v; want nothing to create", again, err)
	}
	lock.Close()
	second, err := netns.LockBridge(bridge, "second")
	if err != nil {
		t.Fatalf("lock after the first owner let go: %v", err)
	}
	second.Close()
}
