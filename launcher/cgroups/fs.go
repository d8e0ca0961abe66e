package cgroups

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// cgfs is the one choke point for cgroupfs I/O (as opencontainers/cgroups file.go): every read,
// write, mkdir and rmdir of a cgroup file goes through it. Paths are resolved with openat2
// beneath the cgroupfs root, so a symlink or ".." in a name can never lead outside it, and every
// error names the path and, for writes, the value written.
//
// In fake mode a plain directory tree stands in for cgroupfs in unit tests: writes create the
// file (truncating it, as runc's TestMode does), and rmdir removes the directory's regular files
// first, as the kernel does with a cgroup's control files.
type cgfs struct {
	root   string   // absolute, clean
	rootFD *os.File // O_PATH handle of root, the openat2 anchor
	fake   bool

	// In fake mode, tests play the kernel: fakeMkdir fills a new cgroup dir with the control
	// files the kernel would create, and fakeRmdir may refuse a removal (EBUSY) first.
	fakeMkdir func(dir string) error
	fakeRmdir func(dir string) error
}

func openFS(root string, fake bool) (*cgfs, error) {
	root = filepath.Clean(root)
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroups: open %s: %w", root, err)
	}
	return &cgfs{root: root, rootFD: os.NewFile(uintptr(fd), root), fake: fake}, nil
}

func (f *cgfs) close() error { return f.rootFD.Close() }

// rel returns path relative to the root, or an error when path is not beneath it.
func (f *cgfs) rel(path string) (string, error) {
	path = filepath.Clean(path)
	if path == f.root {
		return ".", nil
	}
	r, ok := strings.CutPrefix(path, f.root+"/")
	if !ok {
		return "", fmt.Errorf("cgroups: %s is not under %s", path, f.root)
	}
	return r, nil
}

func (f *cgfs) open(path string, flags int, mode uint32) (*os.File, error) {
	rel, err := f.rel(path)
	if err != nil {
		return nil, err
	}
	how := &unix.OpenHow{
		Flags:   uint64(flags) | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	}
	if flags&unix.O_CREAT != 0 {
		how.Mode = uint64(mode) // openat2 refuses a mode without O_CREAT
	}
	fd, err := unix.Openat2(int(f.rootFD.Fd()), rel, how)
	if errors.Is(err, unix.ENOSYS) { // kernel < 5.6: open, then make sure it is cgroupfs
		return f.openChecked(path, flags, mode)
	}
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

func (f *cgfs) openChecked(path string, flags int, mode uint32) (*os.File, error) {
	file, err := os.OpenFile(path, flags, os.FileMode(mode))
	if err != nil || f.fake {
		return file, err
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(file.Fd()), &st); err != nil {
		file.Close()
		return nil, &os.PathError{Op: "fstatfs", Path: path, Err: err}
	}
	if st.Type != unix.CGROUP_SUPER_MAGIC && st.Type != unix.CGROUP2_SUPER_MAGIC {
		file.Close()
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.New("not on cgroupfs")}
	}
	return file, nil
}

// read returns the content of dir/file.
func (f *cgfs) read(dir, file string) (string, error) {
	path := filepath.Join(dir, filepath.Clean("/"+file))
	fd, err := f.open(path, unix.O_RDONLY, 0)
	if err != nil {
		return "", fmt.Errorf("cgroups: read %s: %w", path, err)
	}
	defer fd.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, fd); err != nil {
		return "", fmt.Errorf("cgroups: read %s: %w", path, err)
	}
	return buf.String(), nil
}

// write writes data to dir/file in a single write(2), as cgroupfs expects.
func (f *cgfs) write(dir, file, data string) error {
	path := filepath.Join(dir, filepath.Clean("/"+file))
	flags := unix.O_WRONLY
	if f.fake {
		flags |= unix.O_CREAT | unix.O_TRUNC
	}
	fd, err := f.open(path, flags, 0o644)
	if err != nil {
		return fmt.Errorf("cgroups: write %q to %s: %w", data, path, err)
	}
	defer fd.Close()
	if _, err := fd.WriteString(data); err != nil {
		return fmt.Errorf("cgroups: write %q to %s: %w", data, path, err)
	}
	return nil
}

// exists reports whether dir/file exists (a controller's interface file, say).
func (f *cgfs) exists(dir, file string) bool {
	fd, err := f.open(filepath.Join(dir, filepath.Clean("/"+file)), unix.O_PATH, 0)
	if err != nil {
		return false
	}
	fd.Close()
	return true
}

// openDir returns an O_PATH handle of a cgroup directory, for clone3's CLONE_INTO_CGROUP.
func (f *cgfs) openDir(dir string) (*os.File, error) {
	fd, err := f.open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroups: open %s: %w", dir, err)
	}
	return fd, nil
}

// mkdir creates the cgroup dir; it is not an error when it exists.
func (f *cgfs) mkdir(dir string) error {
	parent, err := f.openDir(filepath.Dir(dir))
	if err != nil {
		return fmt.Errorf("cgroups: mkdir %s: %w", dir, errors.Unwrap(err))
	}
	defer parent.Close()
	err = unix.Mkdirat(int(parent.Fd()), filepath.Base(dir), 0o755)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cgroups: mkdir %s: %w", dir, err)
	}
	if f.fake && f.fakeMkdir != nil {
		return f.fakeMkdir(dir)
	}
	return nil
}

// rmdir removes the cgroup dir. The error wraps unix.ENOENT when it is already gone and
// unix.EBUSY while it still holds processes or child cgroups.
func (f *cgfs) rmdir(dir string) error {
	parent, err := f.openDir(filepath.Dir(dir))
	if err != nil {
		return fmt.Errorf("cgroups: rmdir %s: %w", dir, errors.Unwrap(err))
	}
	defer parent.Close()
	if f.fake {
		if f.fakeRmdir != nil {
			if err := f.fakeRmdir(dir); err != nil {
				return fmt.Errorf("cgroups: rmdir %s: %w", dir, err)
			}
		}
		if err := f.fakeClear(dir); err != nil {
			return err
		}
	}
	if err := unix.Unlinkat(int(parent.Fd()), filepath.Base(dir), unix.AT_REMOVEDIR); err != nil {
		if f.fake && errors.Is(err, unix.ENOTEMPTY) {
			err = unix.EBUSY // what cgroupfs says about a cgroup with children
		}
		return fmt.Errorf("cgroups: rmdir %s: %w", dir, err)
	}
	return nil
}

// fakeClear removes the regular files of a fake cgroup dir, which the kernel would drop with it.
func (f *cgfs) fakeClear(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("cgroups: rmdir %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("cgroups: rmdir %s: %w", dir, err)
			}
		}
	}
	return nil
}

// subdirs lists the child cgroups of dir; a missing dir has none.
func (f *cgfs) subdirs(dir string) ([]string, error) {
	fd, err := f.open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("cgroups: list %s: %w", dir, err)
	}
	defer fd.Close()
	entries, err := fd.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("cgroups: list %s: %w", dir, err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
