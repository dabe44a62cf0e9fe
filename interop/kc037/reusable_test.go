package kc037

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	interop "konnq.dev/interop/common"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client/metrics"
)

// concurrentStreams is how many proxied connections are held open at once
// over the one reusable tunnel: more than 200, a common HTTP/2
// SETTINGS_MAX_CONCURRENT_STREAMS default, because kube-apiserver would put
// every open log/exec/port-forward/webhook connection on it.
const concurrentStreams = 300

// TestReusableTunnel dials many connections over one CreateGRPCTunnel (one
// UDS connection, one HTTP/2 connection, one Proxy stream per dial): held
// open concurrently, then sequentially, plus a refused and a cancelled dial
// that must not spoil the tunnel, then closes it and checks nothing is left.
func TestReusableTunnel(t *testing.T) {
	h := interop.Start(t, interop.Options{AgentDialTimeout: 20 * time.Second, BackendDialTimeout: 20 * time.Second})
	target := interop.EchoTarget(t)

	var udsDials atomic.Int32
	dialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		udsDials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "unix", h.Socket)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rt, err := client.CreateGRPCTunnel(ctx, h.Socket, dialer, grpc.WithBlock(), grpc.WithReturnConnectionError(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("CreateGRPCTunnel: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			rt.Close()
		}
	})

	t.Run("ConcurrentHeldOpen", func(t *testing.T) { concurrentHeldOpen(t, h, rt, target.Addr) })
	t.Run("Sequential", func(t *testing.T) {
		for i := 0; i < 100; i++ {
			dialEchoClose(t, rt, target.Addr, 8<<10, uint64(i))
		}
		h.WaitIdle(t, 3*time.Second)
	})
	t.Run("RefusedDialKeepsTunnel", func(t *testing.T) {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		_, err := rt.DialContext(dctx, "tcp", interop.ClosedPort(t))
		if ok, reason := client.GetDialFailureReason(err); !ok || reason != metrics.DialFailureEndpoint {
			t.Fatalf("dial to a closed port: err %v, reason (%v, %q), want %q", err, ok, reason, metrics.DialFailureEndpoint)
		}
		dialEchoClose(t, rt, target.Addr, 8<<10, 500)
	})
	t.Run("CancelledDialKeepsTunnel", func(t *testing.T) {
		addr := interop.HangingTarget(t)
		dctx, dcancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			c, err := rt.DialContext(dctx, "tcp", addr)
			if c != nil {
				c.Close()
			}
			done <- err
		}()
		h.WaitGauges(t, map[string]float64{"konnq_agent_pending_dials": 1}, 2*time.Second)
		dcancel()
		select {
		case err := <-done:
			if ok, reason := client.GetDialFailureReason(err); !ok || reason != metrics.DialFailureContext {
				t.Errorf("cancelled dial: err %v, reason (%v, %q), want %q", err, ok, reason, metrics.DialFailureContext)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("cancelled dial did not return within 2s")
		}
		h.WaitIdle(t, 3*time.Second)
		dialEchoClose(t, rt, target.Addr, 8<<10, 501)
	})

	if n := udsDials.Load(); n != 1 {
		t.Errorf("the reusable tunnel opened %d UDS connections, want 1", n)
	}
	start := time.Now()
	closed = true
	err = interop.Within(t, 15*time.Second, "ReusableTunnel.Close()", rt.Close)
	t.Logf("ReusableTunnel.Close() took %v, returned %v", time.Since(start).Round(time.Microsecond), err)
	select {
	case <-rt.Done():
	default:
		t.Error("Done() not closed after Close() returned")
	}
	h.WaitIdle(t, 3*time.Second)
}

// concurrentHeldOpen dials concurrentStreams connections at once, echoes on
// each, checks the server and agent count them all open, then closes them.
func concurrentHeldOpen(t *testing.T, h *interop.Harness, rt client.ReusableTunnel, addr string) {
	conns := make([]net.Conn, concurrentStreams)
	errs := make([]error, concurrentStreams)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := rt.DialContext(ctx, "tcp", addr)
			if err != nil {
				errs[i] = fmt.Errorf("dial %d: %w", i, err)
				return
			}
			conns[i] = c
			errs[i] = echo(c, interop.RandomBytes(16<<10, uint64(2000+i)))
		}(i)
	}
	wg.Wait()
	failed := 0
	for _, err := range errs {
		if err != nil {
			if failed++; failed <= 5 {
				t.Error(err)
			}
		}
	}
	t.Logf("%d concurrent dials + 16 KiB echoes over one tunnel in %v; %d failed",
		concurrentStreams, time.Since(start).Round(time.Millisecond), failed)
	open := float64(concurrentStreams - failed)
	h.WaitGauges(t, map[string]float64{
		"konnectivity_network_proxy_server_established_connections":  open,
		"konnectivity_network_proxy_agent_open_endpoint_connections": open,
	}, 5*time.Second)
	for _, c := range conns {
		if c != nil {
			interop.CheckCloseErr(t, c.Close())
		}
	}
	h.WaitIdle(t, 5*time.Second)
}

func dialEchoClose(t *testing.T, rt client.ReusableTunnel, addr string, size int, seed uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := rt.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if err := echo(c, interop.RandomBytes(size, seed)); err != nil {
		t.Fatal(err)
	}
	interop.CheckCloseErr(t, c.Close())
}

// echo writes payload and reads it back, bounded by 20 s.
func echo(c net.Conn, payload []byte) error {
	errc := make(chan error, 1)
	go func() {
		got := make([]byte, len(payload))
		if err := interop.WriteChunks(c, payload, 4<<10); err != nil {
			errc <- err
			return
		}
		n := 0
		for n < len(got) {
			m, err := c.Read(got[n:])
			if err != nil {
				errc <- fmt.Errorf("read after %d bytes: %w", n, err)
				return
			}
			n += m
		}
		if string(got) != string(payload) {
			errc <- fmt.Errorf("echo differs")
			return
		}
		errc <- nil
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(20 * time.Second):
		return fmt.Errorf("echo of %d bytes not done within 20s", len(payload))
	}
}
