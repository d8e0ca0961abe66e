package cgroups

import (
	"os"
	"reflect"
	"strings"
	"testing"

	containerd "github.com/containerd/cgroups/v3"
)

// Mount tables of the three layouts, as /proc/self/mountinfo shows them.
const (
	mountinfoHybrid = `25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 33 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 33 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
36 33 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
37 33 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 33 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 33 0:34 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 33 0:35 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
41 33 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	mountinfoLegacy = `33 25 0:28 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
37 33 0:32 /docker/abc /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
39 33 0:34 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
50 25 0:32 / /mnt/other\040memory rw - cgroup cgroup rw,memory
`
	mountinfoUnified = `33 25 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
)

func TestParseMountinfo(t *testing.T) {
	got, err := parseMountinfo(strings.NewReader(mountinfoLegacy), "/sys/fs/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	want := []mount{
		{point: "/sys/fs/cgroup/cpu,cpuacct", root: "/", controllers: []string{"cpu", "cpuacct"}},
		{point: "/sys/fs/cgroup/memory", root: "/docker/abc", controllers: []string{"memory"}},
		{point: "/sys/fs/cgroup/pids", root: "/", controllers: []string{"pids"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mounts\n got %+v\nwant %+v", got, want)
	}
	got, err = parseMountinfo(strings.NewReader(mountinfoLegacy), "/mnt/other memory")
	if err != nil || len(got) != 1 || got[0].point != "/mnt/other memory" {
		t.Errorf("escaped mount point: %+v, %v", got, err)
	}
	if _, err := parseMountinfo(strings.NewReader("garbage\n"), "/sys/fs/cgroup"); err == nil {
		t.Error("a line without ' - ' parsed")
	}
}

func TestDetectMode(t *testing.T) {
	for _, tt := range []struct {
		mountinfo string
		want      Mode
	}{
		{mountinfoHybrid, Hybrid},
		{mountinfoLegacy, Legacy},
		{mountinfoUnified, Unified},
		{"25 30 0:23 / /sys rw - sysfs sysfs rw\n", Unavailable},
	} {
		mounts, err := parseMountinfo(strings.NewReader(tt.mountinfo), "/sys/fs/cgroup")
		if err != nil {
			t.Fatal(err)
		}
		if got := detectMode(mounts, "/sys/fs/cgroup"); got != tt.want {
			t.Errorf("detectMode = %v, want %v for\n%s", got, tt.want, tt.mountinfo)
		}
	}
}

// TestModeMatchesContainerd checks the detection from the mount table against containerd's
// statfs-based cgroups.Mode on this host.
func TestModeMatchesContainerd(t *testing.T) {
	if _, err := os.Stat("/sys/fs/cgroup"); err != nil {
		t.Skip("no /sys/fs/cgroup")
	}
	want := map[containerd.CGMode]Mode{
		containerd.Unavailable: Unavailable,
		containerd.Legacy:      Legacy,
		containerd.Hybrid:      Hybrid,
		containerd.Unified:     Unified,
	}[containerd.Mode()]
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mounts, err := parseMountinfo(f, "/sys/fs/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if got := detectMode(mounts, "/sys/fs/cgroup"); got != want {
		t.Errorf("detectMode = %v, containerd says %v", got, want)
	}
	t.Logf("this host: %v", want)
}

func TestModeString(t *testing.T) {
	for m, s := range map[Mode]string{Unavailable: "unavailable", Legacy: "v1", Hybrid: "hybrid", Unified: "v2"} {
		if m.String() != s {
			t.Errorf("%d.String() = %q, want %q", m, m.String(), s)
		}
	}
}
