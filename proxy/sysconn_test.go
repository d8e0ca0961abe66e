package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// sysConnPair returns a sysConn and the plain TCP connection at its other end.
func sysConnPair(t *testing.T) (*sysConn, net.Conn) {
	t.Helper()
	ln := listen(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	sc, ok := newSysConn(c).(*sysConn)
	if !ok {
		t.Fatalf("newSysConn(%T) did not wrap it", c)
	}
	t.Cleanup(func() { sc.Close(); peer.Close() })
	return sc, peer
}

func TestSysConnReadWrite(t *testing.T) {
	sc, peer := sysConnPair(t)
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, err := io.ReadAtLeast(sc, buf, 5)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if n, err := sc.Write([]byte("world")); n != 5 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	n, err = io.ReadAtLeast(peer, buf, 5)
	if err != nil || string(buf[:n]) != "world" {
		t.Fatalf("peer read %q, %v", buf[:n], err)
	}
	if n, err := sc.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v", n, err)
	}
	if n, err := sc.Write(nil); n != 0 || err != nil {
		t.Fatalf("empty write: %d, %v", n, err)
	}
	// The peer closes: EOF after what it sent.
	peer.Write([]byte("bye"))
	peer.Close()
	got, err := io.ReadAll(sc)
	if err != nil || string(got) != "bye" {
		t.Fatalf("read to EOF: %q, %v", got, err)
	}
	if n, err := sc.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read after EOF: %d, %v", n, err)
	}
}

// A write larger than the socket buffers completes once the peer reads (the raw call
// meets EAGAIN and waits for the poller), and concurrent reads and writes do not mix.
func TestSysConnLargeWriteAndConcurrentRead(t *testing.T) {
	sc, peer := sysConnPair(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	var wg sync.WaitGroup
	wg.Add(3)
	var werr, rerr error
	var echoed []byte
	go func() { // the peer reads slowly, and echoes a small message back
		defer wg.Done()
		buf := make([]byte, 64<<10)
		got := 0
		for got < len(big) {
			time.Sleep(time.Millisecond)
			n, err := peer.Read(buf)
			if err != nil {
				rerr = err
				return
			}
			if !bytes.Equal(buf[:n], big[got:got+n]) {
				rerr = errors.New("peer read bytes out of order")
				return
			}
			got += n
			if got == n {
				peer.Write([]byte("echo"))
			}
		}
	}()
	go func() {
		defer wg.Done()
		n, err := sc.Write(big)
		if err == nil && n != len(big) {
			err = errors.New("short write")
		}
		werr = err
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 4)
		_, err := io.ReadFull(sc, buf)
		if err != nil {
			rerr = err
		}
		echoed = buf
	}()
	wg.Wait()
	if werr != nil || rerr != nil || string(echoed) != "echo" {
		t.Fatalf("write: %v, read: %v, echoed %q", werr, rerr, echoed)
	}
}

func TestSysConnDeadlineAndClose(t *testing.T) {
	sc, peer := sysConnPair(t)
	sc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := sc.Read(make([]byte, 8))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("error %#v, want a *net.OpError for read", err)
	}
	sc.SetReadDeadline(time.Time{})

	// A read blocked in the poller ends when the connection is closed.
	done := make(chan error, 1)
	go func() {
		_, err := sc.Read(make([]byte, 8))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	sc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed connection: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read did not end at Close")
	}
	if _, err := sc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed connection: %v, want net.ErrClosed", err)
	}
	_ = peer
}

// Writing to a connection the peer reset fails with an error (EPIPE or ECONNRESET); the
// SIGPIPE the kernel sends does not end the process.
func TestSysConnWriteAfterPeerReset(t *testing.T) {
	sc, peer := sysConnPair(t)
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := sc.Write([]byte("are you there?"))
		if err != nil {
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Op != "write" {
				t.Fatalf("error %#v, want a *net.OpError for write", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a reset connection kept succeeding")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestTCPConnUnwraps(t *testing.T) {
	sc, _ := sysConnPair(t)
	if tc, ok := tcpConn(sc); !ok || tc != sc.TCPConn {
		t.Fatalf("tcpConn(sysConn) = %v, %v", tc, ok)
	}
	if _, ok := tcpConn(sc.TCPConn); !ok {
		t.Fatal("tcpConn(*net.TCPConn) not ok")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := tcpConn(a); ok {
		t.Fatal("tcpConn(pipe) ok")
	}
	if c := newSysConn(a); c != a {
		t.Fatal("newSysConn wrapped a pipe")
	}
}
