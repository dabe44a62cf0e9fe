package interop

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// RandomBytes returns n pseudo-random bytes (seeded, so a failure reproduces).
func RandomBytes(n int, seed uint64) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// WriteChunks writes payload to w in writes of at most chunk bytes. The
// client turns every Write into one DATA packet, so chunk is the packet size.
func WriteChunks(w io.Writer, payload []byte, chunk int) error {
	for off := 0; off < len(payload); off += chunk {
		end := min(off+chunk, len(payload))
		if _, err := w.Write(payload[off:end]); err != nil {
			return fmt.Errorf("write at offset %d: %w", off, err)
		}
	}
	return nil
}

// SameBytes fails t unless got equals want, naming the first difference.
func SameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Fatalf("%s: got %d bytes, want %d; first difference at offset %d", what, len(got), len(want), i)
}

// Echo writes payload through conn (to an echo target) in chunk-sized writes
// while reading it back concurrently, and checks every byte. It fails after
// bound. It returns the round-trip time.
func Echo(t *testing.T, conn net.Conn, payload []byte, chunk int, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	writeErr := make(chan error, 1)
	go func() { writeErr <- WriteChunks(conn, payload, chunk) }()
	got := make([]byte, len(payload))
	readDone := make(chan error, 1)
	var n int
	go func() {
		var err error
		n, err = io.ReadFull(conn, got)
		readDone <- err
	}()
	select {
	case err := <-readDone:
		if err != nil {
			t.Fatalf("reading the echo: %v after %d of %d bytes", err, n, len(payload))
		}
	case <-time.After(bound):
		conn.Close()
		t.Fatalf("echo of %d bytes not complete within %v", len(payload), bound)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	SameBytes(t, "echo", got, payload)
	return elapsed
}

// Within runs f and fails t if it does not return within bound.
func Within[T any](t *testing.T, bound time.Duration, what string, f func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	select {
	case v := <-ch:
		return v
	case <-time.After(bound):
		t.Fatalf("%s did not return within %v", what, bound)
	}
	var zero T
	return zero
}

// mibps formats a throughput.
func mibps(n int, d time.Duration) string {
	return fmt.Sprintf("%.0f MiB/s", float64(n)/(1<<20)/d.Seconds())
}
