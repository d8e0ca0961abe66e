// Package logs captures a pod process's stdout and stderr into size-rotated files and reads
// them back for `launcher logs [-f]`.
//
// Each process has one file, <dir>/<name>.log, holding both of its streams line by line:
//
//	2025-11-26T17:45:41.123456Z stdout hello
//
// When a write would take the file past MaxSize it is renamed to .1 (the older ones shift to
// .2 … and the oldest beyond MaxFiles is deleted) and a new file is started, so a process
// never holds more than MaxSize×MaxFiles bytes of logs. The defaults, 10 MiB × 5, are
// kubelet's (containerLogMaxSize 10Mi, containerLogMaxFiles 5).
package logs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// Defaults for a zero Policy.
const (
	DefaultMaxSize  = 10 << 20
	DefaultMaxFiles = 5
)

// maxLine bounds one logged line; a longer line is split.
const maxLine = 64 << 10

// Policy bounds one process's logs. The zero value means the defaults.
type Policy struct {
	MaxSize  int64 // bytes per file
	MaxFiles int   // files kept, the current one included
}

func (p Policy) withDefaults() Policy {
	if p.MaxSize <= 0 {
		p.MaxSize = DefaultMaxSize
	}
	if p.MaxFiles <= 0 {
		p.MaxFiles = DefaultMaxFiles
	}
	return p
}

// File is a log file that rotates itself. Its methods are safe for concurrent use; each
// Write lands whole in one file.
type File struct {
	path   string
	policy Policy
	now    func() time.Time

	mu     sync.Mutex
	f      *os.File
	size   int64
	closed bool
	onOpen func(*os.File)
}

// SetOnOpen calls fn with the file now being written, and again with each new one after a
// rotation, under the File's lock: a process whose own stdout and stderr are its log (the
// background launcher) moves them onto the new file there, so that what bypasses the File
// (a runtime crash report) still lands in the current file.
func (l *File) SetOnOpen(fn func(*os.File)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onOpen = fn
	if fn != nil && !l.closed {
		fn(l.f)
	}
}

// Open opens (appending) or creates the log file at path.
func Open(path string, p Policy) (*File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("logs: create %s: %w", filepath.Dir(path), err)
	}
	l := &File{path: path, policy: p.withDefaults(), now: time.Now}
	if err := l.openLocked(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *File) openLocked() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("logs: open %s: %w", l.path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("logs: stat %s: %w", l.path, err)
	}
	l.f, l.size = f, fi.Size()
	if l.onOpen != nil {
		l.onOpen(f)
	}
	return nil
}

// Write appends p, rotating first when p would not fit.
func (l *File) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, os.ErrClosed
	}
	if l.size > 0 && l.size+int64(len(p)) > l.policy.MaxSize {
		if err := l.rotateLocked(); err != nil {
			return 0, err
		}
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	return n, err
}

// rotateLocked shifts path.(i) to path.(i+1), dropping the oldest, and starts a new file.
func (l *File) rotateLocked() error {
	l.f.Close()
	for i := l.policy.MaxFiles - 1; i >= 1; i-- {
		from := l.path
		if i > 1 {
			from = l.path + "." + strconv.Itoa(i-1)
		}
		to := l.path + "." + strconv.Itoa(i)
		if err := os.Rename(from, to); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("logs: rotate %s: %w", from, err)
		}
	}
	if l.policy.MaxFiles == 1 {
		if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("logs: rotate %s: %w", l.path, err)
		}
	}
	return l.openLocked()
}

// Line writes one line for stream ("stdout", "stderr", "podmesh" for the launcher's own
// notes about the process) with a timestamp.
func (l *File) Line(stream string, line []byte) error {
	var b bytes.Buffer
	b.Grow(len(line) + 48)
	b.WriteString(l.now().UTC().Format("2006-01-02T15:04:05.000000Z"))
	b.WriteByte(' ')
	b.WriteString(stream)
	b.WriteByte(' ')
	b.Write(bytes.TrimRight(line, "\n"))
	b.WriteByte('\n')
	_, err := l.Write(b.Bytes())
	return err
}

// Notef writes a launcher note about the process.
func (l *File) Notef(format string, args ...any) {
	_ = l.Line("podmesh", fmt.Appendf(nil, format, args...))
}

// Close closes the file; a second Close returns os.ErrClosed.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return os.ErrClosed
	}
	l.closed = true
	return l.f.Close()
}

// Capture returns the write end of a pipe whose lines go to l tagged with stream, and a
// channel closed when every writer has closed the pipe and all lines are written. The
// caller hands the write end to the process and closes its own copy.
func (l *File) Capture(stream string) (*os.File, <-chan struct{}, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("logs: pipe for %s: %w", l.path, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer r.Close()
		copyLines(l, stream, r)
	}()
	return w, done, nil
}

func copyLines(l *File, stream string, r io.Reader) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			_ = l.Line(stream, line)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// Files returns a log's files that exist, oldest first.
func Files(path string, maxFiles int) []string {
	if maxFiles <= 0 {
		maxFiles = DefaultMaxFiles
	}
	var out []string
	for i := maxFiles - 1; i >= 1; i-- {
		p := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	}
	return out
}

// Copy writes every line of the log at path to w, oldest first.
func Copy(w io.Writer, path string, maxFiles int) error {
	for _, p := range Files(path, maxFiles) {
		f, err := os.Open(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // rotated away meanwhile
			}
			return fmt.Errorf("logs: open %s: %w", p, err)
		}
		_, err = io.Copy(w, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("logs: read %s: %w", p, err)
		}
	}
	return nil
}

// Follow writes the log at path to w and then whatever is appended to it, across
// rotations, until ctx ends. It polls every interval (250 ms when zero).
func Follow(ctx context.Context, w io.Writer, path string, maxFiles int, interval time.Duration) error {
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	for _, p := range Files(path, maxFiles) {
		if p == path {
			break
		}
		if f, err := os.Open(p); err == nil {
			_, _ = io.Copy(w, f)
			f.Close()
		}
	}
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if f == nil {
			if nf, err := os.Open(path); err == nil {
				f = nf
			}
		}
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return fmt.Errorf("logs: read %s: %w", path, err)
			}
			// Rotated: the name now points at a new file. Finish the old one, then switch.
			if cur, err := os.Stat(path); err == nil {
				if old, err := f.Stat(); err == nil && !os.SameFile(cur, old) {
					_, _ = io.Copy(w, f)
					f.Close()
					f = nil
					continue
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
