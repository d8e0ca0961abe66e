package initproc

import (
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// CloseOnExecFrom marks every file descriptor from fd up close-on-exec, so that whatever a
// process inherited without O_CLOEXEC (a shell's or a supervisor's descriptor, leaked into
// the launcher) goes no further than that process: not into init, the sidecar or the app.
// Go's os/exec and syscall.ForkExec close only close-on-exec descriptors at exec.
//
// close_range(2) does it in one call (Linux ≥ 5.11); older kernels get each descriptor
// listed in /proc/self/fd marked with fcntl.
func CloseOnExecFrom(fd int) error {
	err := unix.CloseRange(uint(fd), ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil || !(errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)) {
		return err
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil || n < fd {
			continue
		}
		// The descriptor ReadDir used is closed by now; EBADF is no error.
		if _, err := unix.FcntlInt(uintptr(n), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return err
		}
	}
	return nil
}
