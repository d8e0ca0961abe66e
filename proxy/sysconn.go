package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// sysConn is a TCP connection whose Read and Write make their read(2) and write(2) as raw
// system calls, through the connection's syscall.RawConn: the runtime's network poller
// still parks the goroutine when the socket is not ready (and enforces deadlines), but the
// calls themselves skip the scheduler's system-call bookkeeping. The socket is
// non-blocking, so neither call can block the thread.
//
// Why: a proxy with one P (GOMAXPROCS=1) goes idle and busy again thousands of times a
// second. Every ordinary system call made after an idle spell wakes the runtime's monitor
// thread (sysmon) from its deep sleep, which then polls every 20 µs until the process
// idles again; on virtual machines, where a thread's sleep and wake-up are costly, that
// monitor took a sixth of the sidecar's CPU under load. A raw call also does not hand
// the P to another thread when it takes long (a loopback write runs the receiver's TCP
// stack inline), a hand-off that costs a thread wake-up and brings nothing with one P.
//
// Under the race detector the calls are syscall.Read and syscall.Write (sysconn_race.go),
// whose annotations tell the detector that what one goroutine wrote to a socket happened
// before another read it.
//
// Everything else (deadlines, Close, CloseWrite, addresses, splice via ReadFrom) is the
// embedded *net.TCPConn's.
type sysConn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu   sync.Mutex // Read's state: Read may be called from several goroutines
	rbuf  []byte
	rn    int
	rerr  syscall.Errno
	readF func(fd uintptr) bool

	wmu    sync.Mutex
	wbuf   []byte
	wn     int
	werr   syscall.Errno
	writeF func(fd uintptr) bool
}

// newSysConn wraps c when it is a TCP connection; other connections are returned as
// they are.
func newSysConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &sysConn{TCPConn: tc, rc: rc}
	r.readF = r.doRead
	r.writeF = r.doWrite
	return r
}

// tcpConn returns the TCP connection under c, for splice(2).
func tcpConn(c net.Conn) (*net.TCPConn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, true
	case *sysConn:
		return c.TCPConn, true
	}
	return nil, false
}

func (c *sysConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readF)
	n, errno := c.rn, c.rerr
	c.rbuf = nil
	c.rmu.Unlock()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *sysConn) doRead(fd uintptr) bool {
	for {
		n, e := rawRead(fd, c.rbuf)
		switch e {
		case 0:
			c.rn = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait for the poller
		}
		c.rerr = e
		return true
	}
}

func (c *sysConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	c.wbuf, c.wn, c.werr = p, 0, 0
	err := c.rc.Write(c.writeF)
	n, errno := c.wn, c.werr
	c.wbuf = nil
	c.wmu.Unlock()
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

func (c *sysConn) doWrite(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		n, e := rawWrite(fd, c.wbuf[c.wn:])
		switch e {
		case 0:
			c.wn += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // the socket buffer is full: wait for the poller
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// opError makes err look like the embedded connection's own errors.
func (c *sysConn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err // the RawConn's "raw-read" wrapping
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
