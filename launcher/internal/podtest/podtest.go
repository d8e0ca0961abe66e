// Package podtest holds what the launcher's privileged tests share: a pod network of their
// own (a bridge and a /24 no other test uses at the same time) and listings of the objects a
// launcher leaves on the host, to compare before and after.
package podtest

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestRange holds every subnet the launcher's tests use: outside the default pod subnet
// (compose.DefaultSubnet, 10.89.0.0/16, which `make demo` uses), the demo test's
// (examples/shop, 10.232.0.0/16) and the launcher benchmark's (10.86.0.0/24), so tests never
// clash with a demo or a benchmark running on the same machine.
var TestRange = netip.MustParsePrefix("10.231.0.0/16")

// Network returns a bridge name and a subnet unique to this test process and call:
// "podmesh-t" plus 5 hex digits, and a /24 inside TestRange chosen from the same number.
// The bridge is removed when the test ends.
func Network(t testing.TB) (bridge string, subnet netip.Prefix) {
	t.Helper()
	n := (os.Getpid()*7 + int(counter.Add(1))) % 0xfffff
	bridge = fmt.Sprintf("podmesh-t%05x", n)
	third := 1 + n%250
	b := TestRange.Addr().As4()
	subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{b[0], b[1], byte(third), 0}), 24)
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	return bridge, subnet
}

var counter atomic.Int64

// Leftovers lists, as sorted strings, every host object whose name contains marker:
// network namespace pins in /run/netns, links (veths, bridges), addresses on links whose
// name contains marker, cgroup directories under any /sys/fs/cgroup hierarchy, and
// processes whose command line contains marker.
func Leftovers(t testing.TB, marker string, vethNames ...string) []string {
	t.Helper()
	var out []string
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.Contains(e.Name(), marker) {
				out = append(out, "netns "+e.Name())
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	for _, l := range links {
		name := l.Attrs().Name
		match := strings.Contains(name, marker)
		for _, v := range vethNames {
			match = match || name == v
		}
		if !match {
			continue
		}
		out = append(out, "link "+name)
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
		for _, a := range addrs {
			out = append(out, "addr "+name+" "+a.IPNet.String())
		}
	}
	_ = filepath.WalkDir("/sys/fs/cgroup", func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if strings.Contains(d.Name(), marker) {
			out = append(out, "cgroup "+path)
			return filepath.SkipDir
		}
		return nil
	})
	procs, _ := os.ReadDir("/proc")
	self := fmt.Sprint(os.Getpid())
	for _, p := range procs {
		if p.Name() == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), marker) {
			out = append(out, "process "+p.Name()+" "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	sort.Strings(out)
	return out
}
