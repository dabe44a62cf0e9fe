// konnq-dialclient: the dial scenario of konnq-loadtest driven by
// kube-apiserver's own client library (konnectivity-client, over grpc-go),
// with the exact dial options kube-apiserver passes for a UDS egress.
// `workers` goroutines each loop "single-use tunnel, DIAL_REQ, one small
// echo exchange, close" until the time is up; it prints one JSON object
// with the count and every recorded dial's timings (microseconds), and this
// process's own CPU time, so the runner can say what the client costs.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
)

type result struct {
	Dials  int64   `json:"dials"`
	Errors int64   `json:"errors"`
	Secs   float64 `json:"secs"`
	// Tunnel creation (UDS + HTTP/2 connection + Proxy stream) per dial.
	ConnectUs []int64 `json:"connect_us"`
	// DIAL_REQ → DIAL_RSP (tunnel.DialContext) per dial.
	DialUs []int64 `json:"dial_us"`
	// The whole connection: tunnel, dial, exchange, close.
	TotalUs  []int64 `json:"total_us"`
	CPUSecs  float64 `json:"client_cpu_secs"`
	FirstErr string  `json:"first_error,omitempty"`
}

func options(socket string) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}),
		grpc.WithBlock(),
		grpc.WithReturnConnectionError(),
		grpc.WithTimeout(30 * time.Second),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
}

type timing struct{ connect, dial, total time.Duration }

func once(socket, target string, payload []byte) (timing, error) {
	var t timing
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tunnel, err := client.CreateSingleUseGrpcTunnelWithContext(ctx, context.TODO(), socket, options(socket)...)
	if err != nil {
		return t, fmt.Errorf("tunnel: %w", err)
	}
	t.connect = time.Since(start)
	dialStart := time.Now()
	conn, err := tunnel.DialContext(ctx, "tcp", target)
	if err != nil {
		return t, fmt.Errorf("dial: %w", err)
	}
	t.dial = time.Since(dialStart)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write(payload); err != nil {
		return t, fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(conn, make([]byte, len(payload))); err != nil {
		return t, fmt.Errorf("read: %w", err)
	}
	t.total = time.Since(start)
	return t, nil
}

func cpuSecs() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func main() {
	socket := flag.String("socket", "", "the server's Unix socket")
	target := flag.String("target", "", "echo target address (host:port)")
	workers := flag.Int("workers", 32, "connections in flight at once")
	secs := flag.Float64("secs", 10, "recorded seconds")
	warmup := flag.Float64("warmup-secs", 1, "unrecorded seconds first")
	size := flag.Int("bytes", 100, "size of the one exchange")
	flag.Parse()
	if *socket == "" || *target == "" || *workers < 1 || *secs <= 0 {
		fmt.Fprintln(os.Stderr, "usage: konnq-dialclient -socket PATH -target HOST:PORT [-workers N -secs S -warmup-secs W -bytes B]")
		os.Exit(2)
	}
	payload := make([]byte, *size)
	begin := time.Now()
	recordFrom := begin.Add(time.Duration(*warmup * float64(time.Second)))
	end := recordFrom.Add(time.Duration(*secs * float64(time.Second)))
	var mu sync.Mutex
	var res result
	// The client's CPU over the recorded seconds (stored by the timer
	// before any recorded result is read).
	cpuStart := make(chan float64, 1)
	time.AfterFunc(time.Until(recordFrom), func() { cpuStart <- cpuSecs() })
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				started := time.Now()
				t, err := once(*socket, *target, payload)
				if started.Before(recordFrom) {
					continue
				}
				mu.Lock()
				if err != nil {
					res.Errors++
					if res.FirstErr == "" {
						res.FirstErr = err.Error()
					}
				} else if time.Now().Before(end) {
					res.Dials++
					res.ConnectUs = append(res.ConnectUs, t.connect.Microseconds())
					res.DialUs = append(res.DialUs, t.dial.Microseconds())
					res.TotalUs = append(res.TotalUs, t.total.Microseconds())
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond) // a broken peer is not hammered
				}
			}
		}()
	}
	wg.Wait()
	res.Secs = *secs
	res.CPUSecs = cpuSecs() - <-cpuStart
	if err := json.NewEncoder(os.Stdout).Encode(&res); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
