package initproc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// defaultPath is the PATH a program gets when its environment has none (Docker's default).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// runExec is the shim between init and a pod's program. fd 3 carries its Spec and reaches
// EOF only once the launcher has placed this process in its cgroup, so the program never
// runs outside its limits. fd 4 is close-on-exec: an error written there means the program
// never started.
func runExec() int {
	// Capabilities, the bounding set and no_new_privs are per thread, and execve takes the
	// calling thread's: everything below happens on this one.
	runtime.LockOSThread()
	errf := os.NewFile(4, "exec-status")
	syscall.CloseOnExec(4)
	fail := func(err error) int {
		_, _ = fmt.Fprintf(errf, "%v", err)
		_, _ = fmt.Fprintf(os.Stderr, "podmesh: %v\n", err)
		return 127
	}
	b, err := io.ReadAll(os.NewFile(3, "spec"))
	if err != nil {
		return fail(fmt.Errorf("read spec: %w", err))
	}
	if len(b) == 0 {
		return 1 // cancelled before release
	}
	var spec Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return fail(fmt.Errorf("decode spec: %w", err))
	}
	if err := execSpec(spec); err != nil {
		return fail(err)
	}
	return 0 // not reached: execSpec only returns errors
}

// notifyShimFD is where init puts a spawn's notify descriptor in the shim (after stdin,
// stdout, stderr, the spec pipe and the status pipe); the shim moves it to 3.
const notifyShimFD = 5

func execSpec(spec Spec) error {
	_ = syscall.Close(3)
	if len(spec.Argv) == 0 {
		return errors.New("exec: empty command")
	}
	if spec.Dir != "" {
		if err := os.Chdir(spec.Dir); err != nil {
			return fmt.Errorf("exec %s: working dir: %w", spec.Argv[0], err)
		}
	}
	path, err := lookPath(spec.Argv[0], spec.Env)
	if err != nil {
		return err
	}
	// Undo init's protection from the OOM killer. Best effort, like init's.
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("0"), 0)
	if err := dropPrivileges(spec.User); err != nil {
		return fmt.Errorf("exec %s: %w", spec.Argv[0], err)
	}
	// The program gets its stdin, stdout and stderr, and its notify pipe as fd 3 when it
	// asked for one (the shim's 5), nothing else (fd 4, the status pipe, already closes at
	// exec).
	keep := 3
	if spec.Notify {
		if err := unix.Dup3(notifyShimFD, 3, 0); err != nil {
			return fmt.Errorf("exec %s: notify descriptor: %w", spec.Argv[0], err)
		}
		_ = syscall.Close(notifyShimFD)
		keep = 4
	}
	if err := CloseOnExecFrom(keep); err != nil {
		return fmt.Errorf("exec %s: mark descriptors close-on-exec: %w", spec.Argv[0], err)
	}
	if err := syscall.Exec(path, spec.Argv, spec.Env); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return nil
}

// lookPath resolves a command name against the PATH of the program's own environment.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if err := executable(name); err != nil {
			return "", fmt.Errorf("exec %s: %w", name, err)
		}
		return name, nil
	}
	path := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec %s: not found in PATH %s", name, path)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// dropPrivileges empties the bounding set (needs CAP_SETPCAP, so first), clears the ambient
// set, switches user, empties the remaining capability sets and sets no_new_privs. With an
// empty bounding set even uid 0 gains nothing at execve.
func dropPrivileges(u *User) error {
	last, err := lastCap()
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if u != nil {
		groups := make([]int, len(u.Groups))
		for i, g := range u.Groups {
			groups[i] = int(g)
		}
		if err := syscall.Setgroups(groups); err != nil {
			return fmt.Errorf("setgroups %v: %w", u.Groups, err)
		}
		if err := syscall.Setresgid(int(u.GID), int(u.GID), int(u.GID)); err != nil {
			return fmt.Errorf("setgid %d: %w", u.GID, err)
		}
		if err := syscall.Setresuid(int(u.UID), int(u.UID), int(u.UID)); err != nil {
			return fmt.Errorf("setuid %d: %w", u.UID, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse cap_last_cap %q: %w", b, err)
	}
	return n, nil
}
