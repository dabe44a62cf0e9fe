package interop

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Target is a TCP listener on 127.0.0.1 run by the test, standing in for a
// kubelet, pod or webhook; each accepted connection is handled by handle.
type Target struct {
	Addr string
	ln   net.Listener
}

// ServeTarget listens on 127.0.0.1:0 and runs handle for every connection
// until the test ends.
func ServeTarget(t *testing.T, handle func(net.Conn)) *Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return &Target{Addr: ln.Addr().String(), ln: ln}
}

// EchoTarget writes back everything it reads, then closes when the peer does.
func EchoTarget(t *testing.T) *Target {
	return ServeTarget(t, func(c net.Conn) {
		defer c.Close()
		_, _ = io.Copy(c, c)
	})
}

// ClosedPort returns a loopback address nobody listens on: a port the kernel
// just handed out and that was closed again.
func ClosedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// HangingTarget returns a loopback address where connect() hangs: a socket
// listening with backlog 0 whose accept queue is filled by one connection
// that is never accepted, so the kernel drops further SYNs. It checks that a
// probe connect really hangs before returning.
func HangingTarget(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()

	// Fill the accept queue: backlog 0 admits one established connection,
	// which must succeed. Then probe: a connect that times out proves the
	// queue is full and SYNs are dropped. Up to 3 fillers in case the kernel
	// admits more than one.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("first connection to the backlog-0 listener %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	for i := 0; i < 3; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return addr // the queue is full: connect hangs
			}
			t.Fatalf("probing %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatalf("connect to %s still completes after 4 unaccepted connections; cannot build a hanging target", addr)
	return ""
}

// SynSentTo counts sockets of this host in state SYN_SENT towards the
// loopback address addr, from /proc/net/tcp: a connect() the kernel is still
// retrying. ok is false where /proc/net/tcp is not available.
func SynSentTo(addr string) (n int, ok bool) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return 0, false
	}
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0, false
	}
	// rem_address is little-endian hex IPv4 ":" hex port; st 02 is SYN_SENT.
	ip := ta.IP.To4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ta.Port)
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[2] == want && f[3] == "02" {
			n++
		}
	}
	return n, true
}
