package cgroups

import (
	"bufio"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
)

// Mode is how the host mounts cgroups.
type Mode int

const (
	// Unavailable: no cgroup hierarchy is mounted under the root.
	Unavailable Mode = iota
	// Legacy: only v1 hierarchies, one per controller (or co-mounted set).
	Legacy
	// Hybrid: v1 hierarchies on a tmpfs plus a v2 hierarchy at <root>/unified that holds no
	// resource controllers (systemd's "hybrid" layout). Resource control is v1, as runc and
	// Nomad do; the unified hierarchy is left alone (see Manager).
	Hybrid
	// Unified: the root is a cgroup2 mount.
	Unified
)

func (m Mode) String() string {
	switch m {
	case Legacy:
		return "v1"
	case Hybrid:
		return "hybrid"
	case Unified:
		return "v2"
	}
	return "unavailable"
}

// mount is one cgroup mount from /proc/self/mountinfo.
type mount struct {
	point       string   // mount point
	root        string   // the cgroup path the mount shows at its point ("/" unless bind-mounted or in a cgroupns)
	v2          bool     // cgroup2
	controllers []string // v1 only: the controllers of the hierarchy ("name=systemd" for named ones)
}

// parseMountinfo returns the cgroup and cgroup2 mounts at or below root.
// Format (proc(5)): id parent major:minor root point options [optional...] - fstype source superoptions
func parseMountinfo(r io.Reader, root string) ([]mount, error) {
	var out []mount
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			return nil, fmt.Errorf("cgroups: bad mountinfo line %q", line)
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			return nil, fmt.Errorf("cgroups: bad mountinfo line %q", line)
		}
		fstype := g[0]
		if fstype != "cgroup" && fstype != "cgroup2" {
			continue
		}
		point := unescapeMountinfo(f[4])
		if point != root && !strings.HasPrefix(point, root+"/") {
			continue
		}
		m := mount{point: point, root: unescapeMountinfo(f[3]), v2: fstype == "cgroup2"}
		if !m.v2 {
			for _, opt := range strings.Split(g[2], ",") {
				switch opt {
				case "rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "xattr", "clone_children", "noprefix", "cpuset_v2_mode", "favordynmods":
					continue
				}
				if strings.HasPrefix(opt, "release_agent=") {
					continue
				}
				m.controllers = append(m.controllers, opt)
			}
		}
		out = append(out, m)
	}
	return out, s.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// detectMode derives the layout from the mounts below root, as runc's IsCgroup2UnifiedMode and
// IsCgroup2HybridMode and containerd's cgroups.Mode do from statfs.
func detectMode(mounts []mount, root string) Mode {
	v1, hybrid := false, false
	for _, m := range mounts {
		switch {
		case m.v2 && m.point == root:
			return Unified
		case m.v2 && m.point == filepath.Join(root, "unified"):
			hybrid = true
		case !m.v2:
			v1 = true
		}
	}
	switch {
	case v1 && hybrid:
		return Hybrid
	case v1:
		return Legacy
	}
	return Unavailable
}
