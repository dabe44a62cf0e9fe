package interop

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client/metrics"
)

// Expect names the library versions the importing module pins; the
// SelectedVersions subtest checks the module really selects them.
type Expect struct {
	ClientVersion string // e.g. "v0.36.0"
	GRPCVersion   string // grpc-go of the kube-apiserver release that pins ClientVersion
}

// idleBound is how long leftovers may take to disappear after a connection
// ends: it is far below every timeout (agent dial 5 s, server dial 10 s, QUIC
// idle 5 s) that could clean up for the wrong reason.
const idleBound = 3 * time.Second

// Run runs every single-use-tunnel scenario as a subtest, each against its
// own konnq-server and konnq-agent.
func Run(t *testing.T, want Expect) {
	t.Run("SelectedVersions", func(t *testing.T) { selectedVersions(t, want) })
	t.Run("Echo1MiBOneWrite", func(t *testing.T) { echoScenario(t, 1<<20, 1<<20) })
	t.Run("Echo64MiB32KiBWrites", func(t *testing.T) { echoScenario(t, 64<<20, 32<<10) })
	t.Run("Echo16MiB4MiBWrites", func(t *testing.T) { echoScenario(t, 16<<20, 4<<20) })
	t.Run("Concurrent200Tunnels", concurrentTunnels)
	t.Run("HTTPOverTunnel", httpOverTunnel)
	t.Run("DialClosedPort", dialClosedPort)
	t.Run("DialHangCancelled/KubeAPIServerContexts", func(t *testing.T) { dialHangCancelled(t, false) })
	t.Run("DialHangCancelled/TunnelTiedToDialContext", func(t *testing.T) { dialHangCancelled(t, true) })
	t.Run("ClientCloses", clientCloses)
	t.Run("TargetClosesFirst", targetClosesFirst)
	t.Run("ServerFirstPacketOrder", serverFirstPacketOrder)
	t.Run("CloseHandshakeOnTheWire", clientCloseHandshake)
	t.Run("GRPCMutualTLS", grpcMutualTLS)
}

func selectedVersions(t *testing.T, want Expect) {
	gotClient, gotGRPC, err := SelectedVersions()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("module selects %s %s, google.golang.org/grpc %s", ClientModule, gotClient, gotGRPC)
	if gotClient != want.ClientVersion || gotGRPC != want.GRPCVersion {
		t.Fatalf("module selects client %s / grpc %s, want %s / %s",
			gotClient, gotGRPC, want.ClientVersion, want.GRPCVersion)
	}
}

func echoScenario(t *testing.T, size, chunk int) {
	h := Start(t, Options{})
	target := EchoTarget(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := Dial(ctx, h.Socket, target.Addr)
	if err != nil {
		t.Fatalf("dial %s through konnq: %v", target.Addr, err)
	}
	payload := RandomBytes(size, uint64(size))
	rtt := Echo(t, conn, payload, chunk, 60*time.Second)
	t.Logf("echoed %d MiB in %d-byte writes in %v (%s each way)", size>>20, chunk, rtt.Round(time.Millisecond), mibps(size, rtt))
	closeErr, took := timedClose(t, conn)
	CheckCloseErr(t, closeErr)
	t.Logf("conn.Close() took %v, returned %v", took.Round(time.Microsecond), closeErr)
	h.WaitIdle(t, idleBound)
}

// CheckCloseErr fails t unless conn.Close() returned nil (CLOSE_RSP
// received) or "tunnel closed". The latter is a client race, not a missing
// CLOSE_RSP: the tunnel ends right after delivering CLOSE_RSP, and if both
// are ready before Close() reaches its select, Go picks either. What the
// server sends is checked on the wire by CloseHandshakeOnTheWire. "close
// timeout" (no CLOSE_RSP within 10 s) or anything else fails.
func CheckCloseErr(t *testing.T, err error) {
	t.Helper()
	if err != nil && err.Error() != "tunnel closed" {
		t.Errorf("conn.Close() = %v, want nil (or the client's racy \"tunnel closed\")", err)
	}
}

// timedClose calls conn.Close(), bounded by the client's own 10 s close
// timeout plus a margin.
func timedClose(t *testing.T, conn net.Conn) (error, time.Duration) {
	t.Helper()
	start := time.Now()
	err := Within(t, 15*time.Second, "conn.Close()", conn.Close)
	return err, time.Since(start)
}

func dialClosedPort(t *testing.T) {
	h := Start(t, Options{})
	addr := ClosedPort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	conn, err := Dial(ctx, h.Socket, addr)
	took := time.Since(start)
	if err == nil {
		conn.Close()
		t.Fatalf("dial to closed port %s succeeded", addr)
	}
	isDialFailure, reason := client.GetDialFailureReason(err)
	t.Logf("dial error after %v: %q; GetDialFailureReason = (%v, %q)", took.Round(time.Millisecond), err, isDialFailure, reason)
	if !isDialFailure || reason != metrics.DialFailureEndpoint {
		t.Errorf("GetDialFailureReason = (%v, %q), want (true, %q)", isDialFailure, reason, metrics.DialFailureEndpoint)
	}
	if took > 2*time.Second {
		t.Errorf("dial error took %v, want < 2s (connection refused is immediate on loopback)", took)
	}
	h.WaitIdle(t, idleBound)
}

// dialHangCancelled dials a target whose connect() hangs, cancels the dial's
// context after 300 ms and checks nothing is left anywhere: not in the
// server, not in the agent, not in the kernel (SYN_SENT sockets). Dial
// timeouts are raised to 20 s so that only the cancellation can clean up
// within the check's bound.
func dialHangCancelled(t *testing.T, tieTunnelToCtx bool) {
	addr := HangingTarget(t)
	h := Start(t, Options{AgentDialTimeout: 20 * time.Second, BackendDialTimeout: 20 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tunnel, err := NewTunnel(ctx, h.Socket, tieTunnelToCtx)
	if err != nil {
		t.Fatalf("creating the tunnel: %v", err)
	}
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		c, err := tunnel.DialContext(ctx, "tcp", addr)
		done <- result{c, err}
	}()

	// The dial must really be pending at the agent, or the test proves nothing.
	pending := map[string]float64{
		"konnectivity_network_proxy_server_pending_backend_dials": 1,
		"konnq_agent_pending_dials":                               1,
	}
	seen := h.WaitGauges(t, pending, 2*time.Second)
	t.Logf("dial pending at server and agent %v after DialContext was called", seen.Round(time.Millisecond))
	if n, ok := SynSentTo(addr); ok && n != 1 {
		t.Errorf("%d sockets in SYN_SENT to %s while the dial is pending, want 1 (the agent's)", n, addr)
	}
	// A request whose context ends 300 ms into the dial (a deliberate wait:
	// this is the caller's timeout being simulated, not a readiness wait).
	time.Sleep(300*time.Millisecond - time.Since(start)) // no-op if already past
	cancelledAt := time.Now()
	cancel()
	t.Logf("cancelled the dial's context %v after DialContext was called", cancelledAt.Sub(start).Round(time.Millisecond))

	var res result
	select {
	case res = <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("DialContext did not return within 2s of its context being cancelled")
	}
	t.Logf("DialContext returned %v after cancel: %v", time.Since(cancelledAt).Round(time.Microsecond), res.err)
	if res.err == nil {
		res.conn.Close()
		t.Fatal("DialContext to a hanging target succeeded")
	}
	if ok, reason := client.GetDialFailureReason(res.err); !ok || reason != metrics.DialFailureContext {
		t.Errorf("GetDialFailureReason = (%v, %q), want (true, %q)", ok, reason, metrics.DialFailureContext)
	}
	select {
	case <-tunnel.Done():
	case <-time.After(2 * time.Second):
		t.Error("client tunnel not done within 2s of the cancelled dial")
	}
	h.WaitIdle(t, idleBound)
	t.Logf("server and agent gauges all 0 within %v of cancel", time.Since(cancelledAt).Round(time.Millisecond))
	if _, ok := SynSentTo(addr); ok {
		deadline := time.Now().Add(idleBound)
		for {
			n, _ := SynSentTo(addr)
			if n == 0 {
				t.Logf("no SYN_SENT socket to %s left %v after cancel", addr, time.Since(cancelledAt).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d sockets still in SYN_SENT to %s %v after cancel: the agent's connect() was not aborted", n, addr, idleBound)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// clientCloses checks conn.Close() returns promptly, without the client's
// "close timeout", and that the target gets every byte written, then EOF.
func clientCloses(t *testing.T) {
	h := Start(t, Options{})
	type seen struct {
		n   int64
		err error
		at  time.Time
	}
	got := make(chan seen, 1)
	target := ServeTarget(t, func(c net.Conn) {
		defer c.Close()
		n, err := io.Copy(io.Discard, c) // until EOF (err nil) or error
		got <- seen{n, err, time.Now()}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := Dial(ctx, h.Socket, target.Addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	payload := RandomBytes(256<<10, 7)
	if err := WriteChunks(conn, payload, 32<<10); err != nil {
		t.Fatal(err)
	}
	h.WaitGauges(t, map[string]float64{"konnectivity_network_proxy_agent_open_endpoint_connections": 1}, 2*time.Second)
	closeStart := time.Now()
	closeErr, took := timedClose(t, conn)
	t.Logf("conn.Close() took %v, returned %v", took.Round(time.Microsecond), closeErr)
	CheckCloseErr(t, closeErr)
	if took >= 5*time.Second {
		t.Errorf("conn.Close() took %v, want < 5s (the client gives up at 10s)", took)
	}
	select {
	case s := <-got:
		if s.err != nil {
			t.Errorf("target read ended with %v, want EOF", s.err)
		}
		if s.n != int64(len(payload)) {
			t.Errorf("target received %d bytes before EOF, want %d", s.n, len(payload))
		}
		t.Logf("target saw EOF %v after Close() was called", s.at.Sub(closeStart).Round(time.Microsecond))
	case <-time.After(5 * time.Second):
		t.Fatal("target saw no EOF within 5s of conn.Close()")
	}
	h.WaitIdle(t, idleBound)
}

// targetClosesFirst: the target answers a request with a payload and closes;
// the client must read every byte and then io.EOF. The client speaks first,
// as kube-apiserver always does (HTTP): see serverFirstPacketOrder for why.
func targetClosesFirst(t *testing.T) {
	h := Start(t, Options{})
	payload := RandomBytes(8<<20, 9)
	target := ServeTarget(t, func(c net.Conn) {
		defer c.Close()
		req := make([]byte, 4)
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		_ = WriteChunks(c, payload, 64<<10)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := Dial(ctx, h.Socket, target.Addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if _, err := conn.Write([]byte("GET\n")); err != nil {
		t.Fatal(err)
	}
	type readResult struct {
		data []byte
		err  error
	}
	res := Within(t, 30*time.Second, "reading until EOF", func() readResult {
		b, err := io.ReadAll(conn) // returns nil error exactly at io.EOF
		return readResult{b, err}
	})
	if res.err != nil {
		t.Fatalf("read %d bytes then %v, want io.EOF", len(res.data), res.err)
	}
	SameBytes(t, "bytes before EOF", res.data, payload)
	again := Within(t, 2*time.Second, "a Read after EOF", func() readResult {
		b := make([]byte, 1)
		n, err := conn.Read(b)
		return readResult{b[:n], err}
	})
	if !errors.Is(again.err, io.EOF) || len(again.data) != 0 {
		t.Errorf("Read after EOF = (%d bytes, %v), want (0, io.EOF)", len(again.data), again.err)
	}
	closeErr, took := timedClose(t, conn)
	t.Logf("conn.Close() after EOF took %v, returned %v", took.Round(time.Microsecond), closeErr)
	h.WaitIdle(t, idleBound)
}
