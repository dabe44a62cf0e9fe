// Package h2spec runs h2spec, the HTTP/2 conformance test tool
// (github.com/summerwind/h2spec), against konnq-server's gRPC frontend on
// its Unix socket: every test case of its generic, RFC 7540 (HTTP/2) and
// RFC 7541 (HPACK) suites must pass. h2spec speaks TCP, so a relay in the
// test forwards each of its connections to the socket. Its requests are
// GETs without a gRPC content-type, which the server answers with a plain
// HTTP refusal that has a body: the stream stays open while h2spec grants
// no window, as its stream-state cases need.
package h2spec

import (
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/summerwind/h2spec"
	"github.com/summerwind/h2spec/config"
	interop "konnq.dev/interop/common"
)

// relay accepts TCP connections on loopback and copies each to and from a
// new connection to socket; at the end of the test it closes the listener
// and every connection, and waits for its goroutines.
func relay(t *testing.T, socket string) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("unix", socket)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				_, _ = io.Copy(dst, src)
				// Each side sees the other's end.
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				} else {
					dst.Close()
				}
			}
			go pipe(u, c)
			go pipe(c, u)
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}

func TestH2specAllPass(t *testing.T) {
	h := interop.Start(t, interop.Options{NoAgent: true})
	addr := relay(t, h.Socket)
	c := &config.Config{
		Host:         addr.IP.String(),
		Port:         addr.Port,
		Path:         "/ProxyService/Proxy",
		Timeout:      2 * time.Second,
		MaxHeaderLen: 4000,
	}
	t.Logf("h2spec against konnq-server's Unix socket through %s", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)))
	// h2spec writes its report to stdout; go test -v shows it.
	passed, err := h2spec.Run(c)
	if err != nil {
		t.Fatalf("h2spec: %v", err)
	}
	if !passed {
		t.Fatal("h2spec reported failed test cases (listed above)")
	}
}
