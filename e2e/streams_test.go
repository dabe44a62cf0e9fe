package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"

	"konnq.dev/e2e/fakenode/stream"
)

// exec runs `cat` in the fake pod through kube-apiserver's exec
// subresource, which the apiserver forwards to the kubelet port over the
// tunnel as an upgraded (SPDY) connection: bytes go both ways, the stream
// stays open across an idle pause, and closing stdin ends it cleanly.
// With websocket, the client speaks WebSocket to the apiserver (which
// translates to SPDY toward the kubelet), as kubectl 1.31+ does.
func (s *scenarios) exec(t *testing.T, websocket bool) {
	req := s.a.client.CoreV1().RESTClient().Post().
		Namespace("e2e").Resource("pods").Name("fake").SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: "main", Command: []string{"cat"}, Stdin: true, Stdout: true}, scheme.ParameterCodec)
	var ex remotecommand.Executor
	var err error
	if websocket {
		ex, err = remotecommand.NewWebSocketExecutor(s.a.config, "GET", req.URL().String())
	} else {
		ex, err = remotecommand.NewSPDYExecutor(s.a.config, "POST", req.URL())
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Minute)
	defer cancel()
	stdinR, stdinW := io.Pipe()
	stdoutR, stdoutW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdinR, Stdout: stdoutW})
		stdoutW.CloseWithError(fmt.Errorf("stream ended: %v", err))
		done <- err
	}()
	echo := func(payload []byte) {
		t.Helper()
		go func() { _, _ = stdinW.Write(payload) }()
		got := make([]byte, len(payload))
		if _, err := io.ReadFull(stdoutR, got); err != nil {
			t.Fatalf("reading %d echoed bytes: %v", len(payload), err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echoed %d bytes differ", len(payload))
		}
	}
	echo([]byte("ping 1\n"))
	// An idle pause: the upgraded connection must stay open through it.
	time.Sleep(3 * time.Second)
	big := make([]byte, 4<<20)
	_, _ = rand.Read(big)
	start := time.Now()
	echo(big)
	elapsed := time.Since(start)
	stdinW.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exec ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("exec did not end after stdin closed")
	}
	t.Logf("RESULT %s: exec cat (websocket=%v): 4 MiB echoed in %v, open across a 3 s pause, clean exit",
		s.m.name, websocket, elapsed.Round(time.Millisecond))
}

const transferBytes = 50 << 20

// download GETs n bytes of the fake node's stream for seed through the
// apiserver's node proxy and checks their sha256 against the stream's.
func (s *scenarios) download(ctx context.Context, seed uint64) error {
	path := fmt.Sprintf("%s/bytes?n=%d&seed=%d", nodeHTTP, transferBytes, seed)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.a.url+path, nil)
	if err != nil {
		return err
	}
	resp, err := s.a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return fmt.Errorf("download after %d bytes: %w", n, err)
	}
	want := stream.Sum256(seed, transferBytes)
	if n != transferBytes || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("download: %d bytes, sha256 %x, want %d bytes %x", n, h.Sum(nil), transferBytes, want)
	}
	return nil
}

// upload POSTs n bytes of the stream for seed to the fake node, which
// answers with the sha256 and length it received.
func (s *scenarios) upload(ctx context.Context, seed uint64) error {
	path := nodeHTTP + "/upload"
	body := io.LimitReader(stream.New(seed), transferBytes)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.a.url+path, body)
	if err != nil {
		return err
	}
	req.ContentLength = transferBytes
	resp, err := s.a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	want := stream.Sum256(seed, transferBytes)
	expect := fmt.Sprintf("%s %d", hex.EncodeToString(want[:]), transferBytes)
	if resp.StatusCode != 200 || strings.TrimSpace(string(answer)) != expect {
		return fmt.Errorf("POST %s: %s %.200q, want %q", path, resp.Status, answer, expect)
	}
	return nil
}

// transfers: 50 MiB down and 50 MiB up, sha256 checked end to end; then
// four downloads and four uploads at once.
func (s *scenarios) transfers(t *testing.T) {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	if err := s.download(ctx, 1); err != nil {
		t.Fatal(err)
	}
	down := time.Since(start)
	start = time.Now()
	if err := s.upload(ctx, 2); err != nil {
		t.Fatal(err)
	}
	up := time.Since(start)
	t.Logf("RESULT %s: 50 MiB down in %v (%.0f Mbit/s), up in %v (%.0f Mbit/s), sha256 checked",
		s.m.name, down.Round(time.Millisecond), mbit(transferBytes, down), up.Round(time.Millisecond), mbit(transferBytes, up))

	start = time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 4 {
		wg.Add(2)
		go func() { defer wg.Done(); errs <- s.download(ctx, uint64(10+i)) }()
		go func() { defer wg.Done(); errs <- s.upload(ctx, uint64(20+i)) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	all := time.Since(start)
	t.Logf("RESULT %s: 4 × 50 MiB down + 4 × 50 MiB up at once in %v (%.0f Mbit/s in total), sha256 checked",
		s.m.name, all.Round(time.Millisecond), mbit(8*transferBytes, all))
}

func mbit(n int, d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e6 }
