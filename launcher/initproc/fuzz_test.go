package initproc

import (
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	in := `22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw
35 22 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
40 28 0:4 net:[4026532248] /run/netns/podmesh-shop-web-1 rw shared:1 - nsfs nsfs rw
41 28 0:50 / /mnt/with\040space rw - ext4 /dev/sda rw
garbage line
`
	got := parseMountinfo(in)
	want := []mountEntry{
		{"/proc", "proc"},
		{"/sys/fs/cgroup/memory", "cgroup"},
		{"/run/netns/podmesh-shop-web-1", "nsfs"},
		{"/mnt/with space", "ext4"},
	}
	if len(got) != len(want) {
		t.Fatalf("parseMountinfo = %v; want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %v; want %v", i, got[i], want[i])
		}
	}
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add("22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n")
	f.Add(`41 28 0:50 / /a\040b\134c rw - ext4 /dev/sda rw`)
	f.Add(`1 2 3 4 \0 - x`)
	f.Fuzz(func(t *testing.T, s string) {
		for _, e := range parseMountinfo(s) {
			if e.fstype == "" || strings.Contains(e.fstype, " ") {
				t.Fatalf("bad filesystem type %q from %q", e.fstype, s)
			}
		}
		if u := unescapeOctal(s); len(u) > len(s) {
			t.Fatalf("unescaping grew %q to %q", s, u)
		}
	})
}
