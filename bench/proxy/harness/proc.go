package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is 100 on
// every Linux architecture Go supports (the kernel's HZ may differ; USER_HZ does not).
const clockTicks = 100

// Proc is a child process the harness started in its own process group, so that stopping
// it also stops whatever it forked (nginx workers). It dies with the harness (Pdeathsig).
type Proc struct {
	Name string
	cmd  *exec.Cmd
	out  *tail
	done chan struct{}
	err  error // set before done closes

	stopOnce sync.Once
}

// startProc starts argv (with pin, a taskset CPU list, when not empty) with env added to
// the harness's environment minus the variables named in drop.
func startProc(name, pin string, env, drop []string, argv ...string) (*Proc, error) {
	if pin != "" {
		argv = append([]string{"taskset", "-c", pin}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = childEnv(os.Environ(), env, drop)
	p := &Proc{Name: name, cmd: cmd, out: &tail{max: 16 << 10}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s (%s): %w", name, strings.Join(argv, " "), err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// childEnv returns base without the variables named in drop (a trailing '*' matches a
// prefix), plus add.
func childEnv(base, add, drop []string) []string {
	out := make([]string, 0, len(base)+len(add))
outer:
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		for _, d := range drop {
			if k == d || (strings.HasSuffix(d, "*") && strings.HasPrefix(k, strings.TrimSuffix(d, "*"))) {
				continue outer
			}
		}
		out = append(out, kv)
	}
	return append(out, add...)
}

// Pid returns the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, with its error and last output if so.
func (p *Proc) Exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v): %s", p.Name, p.err, lastLines(p.out.Last(2000), 2))
	default:
		return nil
	}
}

// OutputBytes returns how many bytes the process has written to stdout and stderr.
func (p *Proc) OutputBytes() int64 {
	p.out.mu.Lock()
	defer p.out.mu.Unlock()
	return p.out.total
}

// Output returns the last n bytes of the process's combined output.
func (p *Proc) Output(n int) string { return p.out.Last(n) }

// Stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs the group.
// It is safe to call more than once.
func (p *Proc) Stop(grace time.Duration) {
	p.stopOnce.Do(func() { p.signalAndWait(syscall.SIGTERM, grace) })
}

// StopWith is Stop with another first signal (nginx flushes its logs on SIGQUIT).
func (p *Proc) StopWith(sig syscall.Signal, grace time.Duration) {
	p.stopOnce.Do(func() { p.signalAndWait(sig, grace) })
}

func (p *Proc) signalAndWait(sig syscall.Signal, grace time.Duration) {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, sig)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
	}
	// Whatever is left of the group (workers, or the process itself) is killed.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
}

// Tree returns the process's PID followed by its descendants'.
func (p *Proc) Tree() []int { return processTree(p.Pid()) }

// CPU returns the user+system CPU time of the process and its live descendants.
func (p *Proc) CPU() (time.Duration, error) {
	var total time.Duration
	for _, pid := range p.Tree() {
		st, err := readStat(pid)
		if err != nil {
			if pid == p.Pid() {
				return 0, err
			}
			continue // a worker that just went away
		}
		total += st.cpu
	}
	return total, nil
}

// RSS returns the resident memory of the process in bytes: VmRSS for a single process;
// for a process with children (nginx master and workers) the sum of their PSS, so pages
// they share count once.
func (p *Proc) RSS() (int64, error) { return treeRSS(p.Tree()) }

// treeRSS is RSS for a process tree listed root first.
func treeRSS(tree []int) (int64, error) {
	if len(tree) == 1 {
		return readRSS(tree[0])
	}
	var total int64
	for _, pid := range tree {
		n, err := readPSS(pid)
		if err != nil {
			if pid == tree[0] {
				return 0, err
			}
			continue
		}
		total += n
	}
	return total, nil
}

// procStat is what the harness needs from /proc/PID/stat.
type procStat struct {
	ppid int
	cpu  time.Duration // utime + stime
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, fmt.Errorf("bench: read stat of pid %d: %w", pid, err)
	}
	return parseStat(string(b))
}

// parseStat parses a /proc/PID/stat line. The command name (field 2) may hold spaces and
// parentheses, so the fields are counted from the last ')'.
func parseStat(s string) (procStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("bench: stat line %.60q: no ')'", s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("bench: stat line %.60q: %d fields after the name", s, len(f))
	}
	ppid, err1 := strconv.Atoi(f[1])
	ut, err2 := strconv.ParseInt(f[11], 10, 64)
	st, err3 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return procStat{}, fmt.Errorf("bench: stat line %.60q: %w", s, err)
	}
	return procStat{ppid: ppid, cpu: time.Duration(ut+st) * time.Second / clockTicks}, nil
}

func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("bench: read status of pid %d: %w", pid, err)
	}
	return parseRSS(string(b))
}

// parseRSS returns VmRSS from a /proc/PID/status text, in bytes.
func parseRSS(s string) (int64, error) { return parseKBField(s, "VmRSS:") }

// parseKBField returns the "NAME: N kB" field of a /proc file, in bytes.
func parseKBField(s, name string) (int64, error) {
	for line := range strings.SplitSeq(s, "\n") {
		v, ok := strings.CutPrefix(line, name)
		if !ok {
			continue
		}
		num, unit, _ := strings.Cut(strings.TrimSpace(v), " ")
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || strings.TrimSpace(unit) != "kB" {
			return 0, fmt.Errorf("bench: %s line %q: want N kB", name, line)
		}
		return n << 10, nil
	}
	return 0, fmt.Errorf("bench: no %s line (a zombie or a kernel thread?)", name)
}

func readPSS(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return 0, fmt.Errorf("bench: read smaps_rollup of pid %d: %w", pid, err)
	}
	return parseKBField(string(b), "Pss:")
}

// processTree returns root and its descendants by scanning /proc.
func processTree(root int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{root}
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		children[st.ppid] = append(children[st.ppid], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu    sync.Mutex
	max   int
	buf   []byte
	total int64 // bytes ever written
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.total += int64(len(p))
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max { // trim at twice the size: amortized O(1) per byte written
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

// Last returns the last n (at most max) bytes written, trimmed.
func (t *tail) Last(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

// freePort returns a loopback host:port that was free a moment ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("bench: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitFor polls cond every 50ms until it returns nil, ctx ends or timeout passes, and
// returns cond's last error on failure. exited, when not nil, is checked each round so a
// crashed process fails fast.
func waitFor(ctx context.Context, timeout time.Duration, exited func() error, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if exited != nil {
			if xerr := exited(); xerr != nil {
				return xerr
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %v: %w", timeout, err)
		case <-tick.C:
		}
	}
}

// cpuShare takes snapshots of the machine's busy CPU time and of the CPU time of this
// process and all its descendants, live or reaped, so that the CPU other processes used
// in between can be reported next to the numbers they disturbed.
type cpuShare struct {
	at         time.Time
	busy, ours time.Duration
}

func takeCPUShare() (cpuShare, error) {
	s := cpuShare{at: time.Now()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, fmt.Errorf("bench: read /proc/stat: %w", err)
	}
	if s.busy, err = parseProcStatBusy(string(b)); err != nil {
		return s, err
	}
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return s, fmt.Errorf("bench: read /proc/self/stat: %w", err)
	}
	if s.ours, err = parseSelfAndReaped(string(self)); err != nil {
		return s, err
	}
	for _, pid := range processTree(os.Getpid())[1:] {
		if st, err := readStat(pid); err == nil {
			s.ours += st.cpu
		}
	}
	return s, nil
}

// othersFraction is the share of the machine's CPU capacity (all cores) that processes
// other than the harness's used between two snapshots.
func othersFraction(a, b cpuShare, cores int) float64 {
	wall := b.at.Sub(a.at)
	if wall <= 0 || cores <= 0 {
		return 0
	}
	others := (b.busy - a.busy) - (b.ours - a.ours)
	return max(float64(others)/float64(wall)/float64(cores), 0)
}

// parseProcStatBusy returns the busy time (user, nice, system, irq, softirq, steal) of the
// aggregate "cpu" line of /proc/stat.
func parseProcStatBusy(s string) (time.Duration, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("bench: /proc/stat first line %.80q: want the cpu totals", line)
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: /proc/stat %.80q: %w", line, err)
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks, nil
}

// parseSelfAndReaped returns utime+stime+cutime+cstime from a /proc/PID/stat line: the
// process's CPU time and that of the children it has waited for.
func parseSelfAndReaped(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if i < 0 || len(f) < 15 {
		return 0, fmt.Errorf("bench: stat line %.60q: too short", s)
	}
	var sum int64
	for _, j := range []int{11, 12, 13, 14} {
		n, err := strconv.ParseInt(f[j], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: stat line %.60q: %w", s, err)
		}
		sum += n
	}
	return time.Duration(sum) * time.Second / clockTicks, nil
}
