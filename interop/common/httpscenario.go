package interop

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// httpOverTunnel runs net/http over tunnel connections the way kube-apiserver
// reaches kubelets (logs, exec) and webhooks: an http.Transport whose
// DialContext opens a single-use tunnel per connection.
func httpOverTunnel(t *testing.T) {
	h := Start(t, Options{})
	HTTPOverDialer(t, h, func(ctx context.Context, _, addr string) (net.Conn, error) {
		return Dial(ctx, h.Socket, addr)
	})
}

// HTTPOverDialer runs net/http over connections from dial, one proxied
// connection per HTTP connection (http.Transport.DialContext = dial):
// keep-alive, a 4 MiB POST echoed back, a streamed chunked response. Then it
// waits for h's gauges to return to zero.
func HTTPOverDialer(t *testing.T, h *Harness, dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(targetHandler))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)

	var dials atomic.Int32
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return dial(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 1,
	}
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	base := srv.URL

	// Two requests on one keep-alive connection.
	for i := 0; i < 2; i++ {
		body := get(t, c, base+"/hello")
		if body != "hello from 127.0.0.1 target\n" {
			t.Fatalf("GET /hello = %q", body)
		}
	}
	if d := dials.Load(); d != 1 {
		t.Errorf("two sequential GETs used %d proxied dials, want 1 (keep-alive over the proxied conn)", d)
	}

	// A 4 MiB upload echoed back, like an admission webhook's review.
	payload := RandomBytes(4<<20, 11)
	resp, err := c.Post(base+"/echo", "application/octet-stream", bytes.NewReader(payload))
	if err != nil {
		t.Fatalf("POST /echo: %v", err)
	}
	echoed, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /echo: %s, body read error %v", resp.Status, err)
	}
	SameBytes(t, "POST /echo body", echoed, payload)
	if sum := sha256.Sum256(payload); resp.Header.Get("X-Sha256") != hex.EncodeToString(sum[:]) {
		t.Errorf("target saw a different upload: sha256 %s", resp.Header.Get("X-Sha256"))
	}

	// A streamed, chunked response like `kubectl logs -f`.
	body := get(t, c, base+"/stream")
	var want strings.Builder
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&want, "log line %d\n", i)
	}
	if body != want.String() {
		t.Errorf("GET /stream = %q, want %q", body, want.String())
	}
	t.Logf("%d proxied dials for 4 requests", dials.Load())
	tr.CloseIdleConnections()
	h.WaitIdle(t, idleBound)
}

func get(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, body read error %v", url, resp.Status, err)
	}
	return string(b)
}

func targetHandler(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/hello":
		fmt.Fprintln(w, "hello from 127.0.0.1 target")
	case "/echo":
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sum := sha256.Sum256(b)
		w.Header().Set("X-Sha256", hex.EncodeToString(sum[:]))
		_, _ = w.Write(b)
	case "/stream":
		f := w.(http.Flusher)
		for i := 0; i < 20; i++ {
			fmt.Fprintf(w, "log line %d\n", i)
			f.Flush()
		}
	default:
		http.NotFound(w, r)
	}
}
