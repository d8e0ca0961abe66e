package cgroups

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Stats is what `launcher ps` and the metrics show about a pod (or one member).
type Stats struct {
	CPUUsage      time.Duration // CPU time used, all CPUs together
	MemoryCurrent uint64        // bytes charged now (page cache included)
	MemoryMax     uint64        // the limit; 0 = none
	MemoryPeak    uint64        // the highest MemoryCurrent seen; 0 when the kernel does not say
	PidsCurrent   uint64        // tasks (threads) now
	PidsMax       uint64        // the limit; 0 = none
	OOMKills      uint64        // processes the OOM killer killed here
}

// Stats reads the pod's statistics.
func (p *Pod) Stats() (Stats, error) { return p.stats("") }

// MemberStats reads one member's statistics; its limits are the pod's, so Max fields are 0.
func (p *Pod) MemberStats(mem Member) (Stats, error) {
	if err := validMember(mem); err != nil {
		return Stats{}, err
	}
	return p.stats(mem)
}

func (p *Pod) stats(mem Member) (Stats, error) {
	var st Stats
	fs := p.m.fs
	dir := func(controller string) string {
		d := p.Path(controller)
		if d == "" {
			return ""
		}
		return filepath.Join(d, string(mem))
	}
	if !fs.exists(dir("memory"), "") && !fs.exists(filepath.Join(p.dirs[0], string(mem)), "") {
		return st, fmt.Errorf("cgroups: stats of pod %q: %w", p.name, os.ErrNotExist)
	}
	var errs []error
	// read returns a file's number, or 0 when the file is absent (controller not in use, or a
	// kernel too old for it); "max" is 0 too.
	read := func(d, file string) uint64 {
		if d == "" {
			return 0
		}
		s, err := fs.read(d, file)
		if err != nil {
			if !errors.Is(err, unix.ENOENT) {
				errs = append(errs, err)
			}
			return 0
		}
		s = strings.TrimSpace(s)
		if s == "max" {
			return 0
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("cgroups: %s: %w", filepath.Join(d, file), err))
		}
		return v
	}
	if p.m.mode == Unified {
		d := dir("")
		usec, err := keyed(fs, d, "cpu.stat", "usage_usec")
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
		st.CPUUsage = time.Duration(usec) * time.Microsecond
		st.MemoryCurrent = read(d, "memory.current")
		st.MemoryMax = read(d, "memory.max")
		st.MemoryPeak = read(d, "memory.peak")
		st.PidsCurrent = read(d, "pids.current")
		st.PidsMax = read(d, "pids.max")
	} else {
		st.CPUUsage = time.Duration(read(dir("cpuacct"), "cpuacct.usage"))
		st.MemoryCurrent = read(dir("memory"), "memory.usage_in_bytes")
		if max := read(dir("memory"), "memory.limit_in_bytes"); max < 1<<62 {
			st.MemoryMax = max
		}
		st.MemoryPeak = read(dir("memory"), "memory.max_usage_in_bytes")
		st.PidsCurrent = read(dir("pids"), "pids.current")
		st.PidsMax = read(dir("pids"), "pids.max")
	}
	var err error
	if mem == "" {
		st.OOMKills, err = p.OOMKills()
	} else {
		st.OOMKills, err = p.MemberOOMKills(mem)
	}
	if err != nil && !errors.Is(err, ErrNoOOMCount) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return st, fmt.Errorf("cgroups: stats of pod %q: %w", p.name, errors.Join(errs...))
	}
	return st, nil
}

// keyed reads the value of key from a "key value" per line file (cpu.stat, memory.events,
// memory.oom_control). A missing key wraps errNoKey.
func keyed(fs *cgfs, dir, file, key string) (uint64, error) {
	s, err := fs.read(dir, file)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("cgroups: %s: %s: %w", filepath.Join(dir, file), key, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("cgroups: %s: no %s: %w", filepath.Join(dir, file), key, errNoKey)
}

var errNoKey = errors.New("key not found")

// oomFile is where the kernel counts OOM kills.
func (p *Pod) oomFile() (file, key string) {
	if p.m.mode == Unified {
		return "memory.events", "oom_kill"
	}
	return "memory.oom_control", "oom_kill"
}

// OOMKills is how many processes the OOM killer has killed in the pod. It reads the kernel's
// counter, so it is right at any time, also for a pod made by an earlier launcher.
//
// On v2, memory.events is hierarchical. On v1 the kernel counts a kill in the cgroup of the
// process it killed and does not propagate it, so the pod's count is its own plus its
// members'; where a kernel does propagate, the pod's own count already includes them, and the
// larger of the two is the answer either way.
func (p *Pod) OOMKills() (uint64, error) {
	d := p.Path("memory")
	if d == "" {
		return 0, fmt.Errorf("cgroups: OOM kills of pod %q: memory controller not in use", p.name)
	}
	file, key := p.oomFile()
	own, err := p.oomCount(d, file, key)
	if err != nil || p.m.mode == Unified {
		return own, err
	}
	var members uint64
	for _, mem := range Members {
		n, err := p.oomCount(filepath.Join(d, string(mem)), file, key)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return 0, err
		}
		members += n
	}
	return max(own, members), nil
}

// MemberOOMKills is how many processes the OOM killer has killed in one member.
func (p *Pod) MemberOOMKills(mem Member) (uint64, error) {
	if err := validMember(mem); err != nil {
		return 0, err
	}
	d := p.Path("memory")
	if d == "" {
		return 0, fmt.Errorf("cgroups: OOM kills of pod %q: memory controller not in use", p.name)
	}
	file, key := p.oomFile()
	return p.oomCount(filepath.Join(d, string(mem)), file, key)
}

func (p *Pod) oomCount(dir, file, key string) (uint64, error) {
	n, err := keyed(p.m.fs, dir, file, key)
	if errors.Is(err, errNoKey) {
		return 0, ErrNoOOMCount
	}
	return n, err
}

// WatchOOM reports OOM kills in the pod as they happen: each value sent is the new OOMKills
// count. The channel holds only the latest count (a slow reader misses none of the total, only
// intermediate values) and is closed when ctx ends or the pod's cgroup is removed. v1 uses an
// eventfd registered on memory.oom_control, v2 inotify on memory.events, as runc does.
func (p *Pod) WatchOOM(ctx context.Context) (<-chan uint64, error) {
	d := p.Path("memory")
	if d == "" {
		return nil, fmt.Errorf("cgroups: watch OOM of pod %q: memory controller not in use", p.name)
	}
	var (
		src  *os.File
		wait func(*os.File) (bool, error) // blocks for the next event; false when the cgroup is gone
		keep *os.File                     // held open while watching
		err  error
	)
	if p.m.mode == Unified {
		src, keep, err = p.inotify(d)
		wait = waitInotify
	} else {
		src, keep, err = p.eventfd(d)
		wait = waitEventfd
	}
	if err != nil {
		return nil, fmt.Errorf("cgroups: watch OOM of pod %q: %w", p.name, err)
	}
	last, _ := p.OOMKills()
	ch := make(chan uint64, 1)
	stop := context.AfterFunc(ctx, func() { src.Close() })
	go func() {
		defer close(ch)
		defer stop()
		defer src.Close()
		if keep != nil {
			defer keep.Close()
		}
		for {
			alive, err := wait(src)
			if err != nil {
				return // closed by ctx, or the kernel tore the watch down
			}
			if !alive || !p.m.fs.exists(d, "") {
				return
			}
			// v1 signals when the cgroup goes under OOM, a moment before the kill is counted.
			for i := 0; i < 20; i++ {
				n, err := p.OOMKills()
				if err == nil && n > last {
					last = n
					select {
					case <-ch:
					default:
					}
					ch <- last
					break
				}
				if p.m.mode == Unified || ctx.Err() != nil {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	return ch, nil
}

// eventfd registers an eventfd for OOM notifications on the v1 memory cgroup dir.
func (p *Pod) eventfd(dir string) (src, keep *os.File, err error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := os.NewFile(uintptr(efd), "eventfd") // non-blocking, so pollable: Close wakes a Read
	oc, err := p.m.fs.open(filepath.Join(dir, "memory.oom_control"), unix.O_RDONLY, 0)
	if err != nil {
		ev.Close()
		return nil, nil, err
	}
	if err := p.m.fs.write(dir, "cgroup.event_control", fmt.Sprintf("%d %d", efd, oc.Fd())); err != nil {
		ev.Close()
		oc.Close()
		return nil, nil, err
	}
	return ev, oc, nil
}

func waitEventfd(f *os.File) (bool, error) {
	var buf [8]byte
	if _, err := f.Read(buf[:]); err != nil {
		return false, err
	}
	return binary.NativeEndian.Uint64(buf[:]) > 0, nil
}

// inotify watches the v2 memory.events file of dir.
func (p *Pod) inotify(dir string) (src, keep *os.File, err error) {
	// Resolve the file through the choke point, then watch what it resolved to.
	ev, err := p.m.fs.open(filepath.Join(dir, "memory.events"), unix.O_PATH, 0)
	if err != nil {
		return nil, nil, err
	}
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		ev.Close()
		return nil, nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(ifd, fmt.Sprintf("/proc/self/fd/%d", ev.Fd()), unix.IN_MODIFY); err != nil {
		ev.Close()
		unix.Close(ifd)
		return nil, nil, fmt.Errorf("inotify watch %s: %w", ev.Name(), err)
	}
	return os.NewFile(uintptr(ifd), "inotify"), ev, nil
}

func waitInotify(f *os.File) (bool, error) {
	var buf [4096]byte
	n, err := f.Read(buf[:])
	if err != nil {
		return false, err
	}
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		mask := binary.NativeEndian.Uint32(buf[off+4:])
		if mask&unix.IN_IGNORED != 0 {
			return false, nil
		}
		nameLen := binary.NativeEndian.Uint32(buf[off+12:])
		off += unix.SizeofInotifyEvent + int(nameLen)
	}
	return true, nil
}
