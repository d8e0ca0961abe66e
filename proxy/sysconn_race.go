//go:build race

package proxy

import "syscall"

// Under the race detector, sysConn reads and writes through syscall.Read and
// syscall.Write: their annotations order a write to a socket before the read of its
// bytes, which the detector cannot see through the kernel otherwise.

func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	if err != nil {
		return 0, errnoOf(err)
	}
	return n, 0
}

func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	if err != nil {
		return 0, errnoOf(err)
	}
	return n, 0
}

func errnoOf(err error) syscall.Errno {
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}
