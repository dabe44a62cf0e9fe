package interop

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// concurrentTunnels opens 200 single-use tunnels at once (200 UDS and HTTP/2
// connections, as 200 simultaneous kube-apiserver requests would), echoes
// 16 KiB on each, holds all 200 open while checking the server and agent
// count 200, then closes them.
func concurrentTunnels(t *testing.T) {
	const n = 200
	h := Start(t, Options{})
	target := EchoTarget(t)
	release := make(chan struct{})
	results := make(chan error, n)
	closed := make(chan error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := Dial(ctx, h.Socket, target.Addr)
			if err != nil {
				results <- fmt.Errorf("tunnel %d: dial: %w", i, err)
				return
			}
			results <- echoSmall(conn, RandomBytes(16<<10, uint64(1000+i)))
			<-release
			closed <- conn.Close()
		}(i)
	}
	var failures []error
	deadline := time.After(60 * time.Second)
	for i := 0; i < n; i++ {
		select {
		case err := <-results:
			if err != nil {
				failures = append(failures, err)
			}
		case <-deadline:
			close(release)
			t.Fatalf("only %d of %d tunnels finished their echo within 60s", i, n)
		}
	}
	t.Logf("%d tunnels dialed and echoed 16 KiB each in %v; %d failed", n, time.Since(start).Round(time.Millisecond), len(failures))
	for i, err := range failures {
		if i == 5 {
			t.Errorf("... and %d more", len(failures)-5)
			break
		}
		t.Error(err)
	}
	ok := float64(n - len(failures))
	h.WaitGauges(t, map[string]float64{
		"konnectivity_network_proxy_server_established_connections":  ok,
		"konnectivity_network_proxy_agent_open_endpoint_connections": ok,
	}, 5*time.Second)
	close(release)
	wg.Wait()
	close(closed)
	racy := 0
	for err := range closed {
		if err != nil && err.Error() == "tunnel closed" {
			racy++
			continue
		}
		CheckCloseErr(t, err)
	}
	t.Logf("conn.Close(): %d returned the client's racy \"tunnel closed\", the rest nil", racy)
	h.WaitIdle(t, 5*time.Second)
}

// echoSmall writes payload and reads it back; small enough to write first.
func echoSmall(conn net.Conn, payload []byte) error {
	errc := make(chan error, 1)
	go func() { errc <- WriteChunks(conn, payload, 4<<10) }()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("reading echo: %w", err)
	}
	if err := <-errc; err != nil {
		return err
	}
	if string(got) != string(payload) {
		return fmt.Errorf("echo differs from what was sent")
	}
	return nil
}
