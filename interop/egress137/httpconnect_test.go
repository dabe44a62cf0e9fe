package egress137

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	interop "konnq.dev/interop/common"
)

const (
	// dialBound bounds one dial through the proxy: far above a loopback
	// dial, far below the server's 10 s backend dial timeout.
	dialBound = 5 * time.Second
	// idleBound is how long leftovers may take to disappear after a
	// connection ends (as in the common suite).
	idleBound = 3 * time.Second
)

// transport is one way kube-apiserver reaches an HTTP-CONNECT proxy.
type transport struct {
	name string
	tcp  bool // TCP with mutual TLS, else the Unix socket
}

var transports = []transport{{name: "UDS"}, {name: "TCP", tcp: true}}

// start runs a konnq-server in http-connect mode (plus an agent unless
// noAgent), with the TCP frontend for tr.tcp, and returns kube-apiserver's
// cluster dialer for it.
func (tr transport) start(t *testing.T, noAgent bool) (*interop.Harness, utilnet.DialFunc) {
	t.Helper()
	h := interop.Start(t, interop.Options{Mode: "http-connect", TCPFrontend: tr.tcp, NoAgent: noAgent})
	return h, clusterDialer(t, tr.connection(h))
}

func (tr transport) connection(h *interop.Harness) connection {
	if tr.tcp {
		return tcpConnection("HTTPConnect", h.TCPAddr, h.PKI, h.PKI)
	}
	return udsConnection("HTTPConnect", h.Socket)
}

// TestHTTPConnect runs every scenario over the Unix socket and over TCP with
// mutual TLS, each against its own server (and agent).
func TestHTTPConnect(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Run("Echo1MiBOneWrite", func(t *testing.T) {
				h, dial := tr.start(t, false)
				echo(t, h, dial, 1<<20, 1<<20)
			})
			t.Run("Echo16MiB4MiBWrites", func(t *testing.T) {
				h, dial := tr.start(t, false)
				echo(t, h, dial, 16<<20, 4<<20)
			})
			t.Run("HTTPOverDialer", func(t *testing.T) {
				h, dial := tr.start(t, false)
				interop.HTTPOverDialer(t, h, dial)
			})
			t.Run("DialClosedPort", func(t *testing.T) { dialError(t, tr, false, "code 502") })
			t.Run("NoAgent", func(t *testing.T) { dialError(t, tr, true, "code 500") })
			t.Run("ServerGreeting", func(t *testing.T) { serverGreeting(t, tr) })
			t.Run("ServerGreetingLateRead", func(t *testing.T) { serverGreetingLateRead(t, tr) })
			t.Run("ClientCloses", func(t *testing.T) { clientCloses(t, tr) })
			t.Run("TargetClosesFirst", func(t *testing.T) { targetClosesFirst(t, tr) })
		})
	}
	t.Run("TCP/ClientCertOfOtherCA", clientCertOfOtherCA)
}

// dial dials addr through kube-apiserver's dialer, bounded: its CONNECT
// exchange ignores the context.
func dial(t *testing.T, d utilnet.DialFunc, addr string) (net.Conn, error, time.Duration) {
	t.Helper()
	ctx, cancel := dialCtx()
	defer cancel()
	type result struct {
		c   net.Conn
		err error
	}
	start := time.Now()
	r := interop.Within(t, dialBound+time.Second, "dial through kube-apiserver's egress dialer", func() result {
		c, err := d(ctx, "tcp", addr)
		return result{c, err}
	})
	return r.c, r.err, time.Since(start)
}

// echo dials an echo target, echoes size bytes in chunk-sized writes, closes
// and checks nothing is left on the server and the agent.
func echo(t *testing.T, h *interop.Harness, d utilnet.DialFunc, size, chunk int) {
	t.Helper()
	target := interop.EchoTarget(t)
	conn, err, took := dial(t, d, target.Addr)
	if err != nil {
		t.Fatalf("dial %s: %v", target.Addr, err)
	}
	t.Logf("dialed in %v", took.Round(time.Microsecond))
	rtt := interop.Echo(t, conn, interop.RandomBytes(size, uint64(size)), chunk, 60*time.Second)
	t.Logf("echoed %d MiB in %d-byte writes in %v (%.0f MiB/s each way)",
		size>>20, chunk, rtt.Round(time.Millisecond), float64(size)/(1<<20)/rtt.Seconds())
	if err := conn.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	h.WaitIdle(t, idleBound)
}

// dialError dials a closed port (502 expected: the agent's connect was
// refused) or, with noAgent, any address on a server without agents (500,
// upstream's "currently no tunnels available").
// kube-apiserver's dialer reports "proxy error from PROXY while dialing
// ADDR, code N: STATUS".
func dialError(t *testing.T, tr transport, noAgent bool, want string) {
	h, d := tr.start(t, noAgent)
	addr := interop.ClosedPort(t)
	conn, err, took := dial(t, d, addr)
	if err == nil {
		conn.Close()
		t.Fatalf("dial to %s succeeded", addr)
	}
	t.Logf("dial error after %v: %v", took.Round(time.Millisecond), err)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("dial error %q does not contain %q", err, want)
	}
	if took > 2*time.Second {
		t.Errorf("dial error took %v, want < 2s", took)
	}
	h.WaitIdle(t, idleBound)
	if tr.tcp {
		_, port, _ := net.SplitHostPort(h.TCPAddr)
		interop.WaitNoServerSockets(t, port, idleBound)
	}
}

// greetingDials is how many server-first connections are opened in a row.
const greetingDials = 100

// serverGreeting dials, greetingDials times, a target that writes a banner as
// soon as it accepts (SSH, SMTP and the like), then echoes. kube-apiserver's
// HTTPConnect dialer reads the proxy's response with a bufio.Reader and fails
// the dial ("unexpected N bytes of buffered data from CONNECT proxy") if any
// byte follows the response headers in what it read: so the banner must
// reach the client apart from the 200, and then arrive intact.
func serverGreeting(t *testing.T, tr transport) {
	h, d := tr.start(t, false)
	greeting := []byte("220 konnq-interop target ready\r\n")
	target := interop.ServeTarget(t, func(c net.Conn) {
		defer c.Close()
		if _, err := c.Write(greeting); err != nil {
			return
		}
		_, _ = io.Copy(c, c)
	})
	failures := map[string]int{}
	var firstErr error
	for i := 0; i < greetingDials; i++ {
		err := func() error {
			conn, err, _ := dial(t, d, target.Addr)
			if err != nil {
				return fmt.Errorf("dial: %w", err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			got := make([]byte, len(greeting))
			if _, err := io.ReadFull(conn, got); err != nil {
				return fmt.Errorf("reading the greeting: %w", err)
			}
			if !bytes.Equal(got, greeting) {
				return fmt.Errorf("greeting %q, want %q", got, greeting)
			}
			ping := []byte(fmt.Sprintf("ping %d\n", i))
			if _, err := conn.Write(ping); err != nil {
				return err
			}
			back := make([]byte, len(ping))
			if _, err := io.ReadFull(conn, back); err != nil || !bytes.Equal(back, ping) {
				return fmt.Errorf("echo after the greeting: %q, %v", back, err)
			}
			return nil
		}()
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			// Group by message without the variable addresses and counts.
			key := err.Error()
			if strings.Contains(key, "buffered data from CONNECT proxy") {
				key = "unexpected bytes of buffered data from CONNECT proxy"
			}
			failures[key]++
		}
	}
	n := 0
	for k, v := range failures {
		n += v
		t.Logf("%d× %s", v, k)
	}
	t.Logf("%d of %d server-first connections got their greeting intact", greetingDials-n, greetingDials)
	if n > 0 {
		t.Errorf("%d of %d server-first dials failed; first: %v", n, greetingDials, firstErr)
	}
	h.WaitIdle(t, idleBound)
}

// lateRead is how long the client waits before its first read of the
// CONNECT response in serverGreetingLateRead: a scheduling delay a busy
// kube-apiserver can have.
const lateRead = 50 * time.Millisecond

// serverGreetingLateRead makes serverGreeting's race deterministic: it does
// what tunnelHTTPConnect does on the wire (the same CONNECT request, then
// http.ReadResponse from a bufio.Reader over the connection) but starts
// reading lateRead after the request, as a busy kube-apiserver may, so the
// greeting has certainly arrived. kube-apiserver's dialer then finds it
// buffered after the response headers unless it came in a separate read:
// over TLS every write is its own record and crypto/tls returns one record
// per Read; over the Unix socket nothing separates them.
func serverGreetingLateRead(t *testing.T, tr transport) {
	h, _ := tr.start(t, false)
	greeting := []byte("220 konnq-interop target ready\r\n")
	target := interop.ServeTarget(t, func(c net.Conn) {
		defer c.Close()
		if _, err := c.Write(greeting); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, c)
	})
	var conn net.Conn
	var err error
	if tr.tcp {
		pki := func(name string) string { return filepath.Join(h.PKI, name) }
		cfg := interop.ClientTLS(t, pki("ca.crt"), pki("agent.crt"), pki("agent.key"))
		cfg.ServerName = "" // as kube-apiserver: from the URL's host, 127.0.0.1
		conn, err = (&tls.Dialer{Config: cfg}).Dial("tcp", h.TCPAddr)
	} else {
		conn, err = net.Dial("unix", h.Socket)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// tunnelHTTPConnect's request, byte for byte.
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target.Addr, "127.0.0.1")
	h.WaitGauges(t, map[string]float64{"konnectivity_network_proxy_agent_open_endpoint_connections": 1}, 2*time.Second)
	time.Sleep(lateRead) // the simulated scheduling delay, not a readiness wait
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(io.LimitReader(conn, http.DefaultMaxHeaderBytes))
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the CONNECT response: %v", err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("CONNECT response %s, want 200", res.Status)
	}
	if n := br.Buffered(); n > 0 {
		extra, _ := br.Peek(n)
		t.Errorf("%d bytes (%q) arrived in the same read as the 200 response headers: "+
			"kube-apiserver's dialer fails with \"unexpected %d bytes of buffered data from CONNECT proxy\"", n, extra, n)
		return
	}
	got := make([]byte, len(greeting))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, greeting) {
		t.Fatalf("greeting after the response: %q, %v", got, err)
	}
	t.Logf("200 response headers alone in the first read, then the %d-byte greeting", len(greeting))
}

// clientCloses writes 256 KiB and closes: the target must get every byte,
// then EOF, promptly.
func clientCloses(t *testing.T, tr transport) {
	h, d := tr.start(t, false)
	type seen struct {
		n   int64
		err error
		at  time.Time
	}
	got := make(chan seen, 1)
	target := interop.ServeTarget(t, func(c net.Conn) {
		defer c.Close()
		n, err := io.Copy(io.Discard, c)
		got <- seen{n, err, time.Now()}
	})
	conn, err, _ := dial(t, d, target.Addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	payload := interop.RandomBytes(256<<10, 7)
	if err := interop.WriteChunks(conn, payload, 32<<10); err != nil {
		t.Fatal(err)
	}
	h.WaitGauges(t, map[string]float64{"konnectivity_network_proxy_agent_open_endpoint_connections": 1}, 2*time.Second)
	closeStart := time.Now()
	if err := conn.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case s := <-got:
		if s.err != nil {
			t.Errorf("target read ended with %v, want EOF", s.err)
		}
		if s.n != int64(len(payload)) {
			t.Errorf("target received %d bytes before EOF, want %d", s.n, len(payload))
		}
		t.Logf("target saw EOF %v after Close()", s.at.Sub(closeStart).Round(time.Microsecond))
	case <-time.After(5 * time.Second):
		t.Fatal("target saw no EOF within 5s of Close()")
	}
	h.WaitIdle(t, idleBound)
}

// targetClosesFirst: the target answers a request with 8 MiB and closes; the
// client reads every byte, then EOF.
func targetClosesFirst(t *testing.T, tr transport) {
	h, d := tr.start(t, false)
	payload := interop.RandomBytes(8<<20, 9)
	target := interop.ServeTarget(t, func(c net.Conn) {
		defer c.Close()
		req := make([]byte, 4)
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		_ = interop.WriteChunks(c, payload, 64<<10)
	})
	conn, err, _ := dial(t, d, target.Addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET\n")); err != nil {
		t.Fatal(err)
	}
	type readResult struct {
		data []byte
		err  error
	}
	res := interop.Within(t, 30*time.Second, "reading until EOF", func() readResult {
		b, err := io.ReadAll(conn)
		return readResult{b, err}
	})
	if res.err != nil {
		t.Fatalf("read %d bytes then %v, want EOF", len(res.data), res.err)
	}
	interop.SameBytes(t, "bytes before EOF", res.data, payload)
	conn.Close()
	h.WaitIdle(t, idleBound)
}

// clientCertOfOtherCA: kube-apiserver configured with a client certificate
// the server's --server-ca-cert did not sign (it trusts the server, though):
// the dial must fail and the server must keep nothing open.
func clientCertOfOtherCA(t *testing.T) {
	tr := transport{name: "TCP", tcp: true}
	h := interop.Start(t, interop.Options{Mode: "http-connect", TCPFrontend: true})
	other := filepath.Join(t.TempDir(), "other-pki")
	interop.WriteCerts(t, other)
	d := clusterDialer(t, tcpConnection("HTTPConnect", h.TCPAddr, h.PKI, other))
	target := interop.EchoTarget(t)
	conn, err, took := dial(t, d, target.Addr)
	if err == nil {
		conn.Close()
		t.Fatalf("dial through %s with a client certificate of another CA succeeded", tr.name)
	}
	t.Logf("dial failed after %v: %v", took.Round(time.Millisecond), err)
	var opErr *net.OpError
	if errors.As(err, &opErr) && strings.Contains(err.Error(), "connection refused") {
		t.Errorf("the frontend refused the TCP connection itself: %v", err)
	}
	h.WaitIdle(t, idleBound)
	_, port, _ := net.SplitHostPort(h.TCPAddr)
	interop.WaitNoServerSockets(t, port, idleBound)
}
