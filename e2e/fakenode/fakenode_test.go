package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"

	"konnq.dev/e2e/fakenode/stream"
)

type testNode struct {
	*Node
	client *http.Client // trusts the written ca.crt
}

func startNode(t *testing.T) *testNode {
	t.Helper()
	dir := t.TempDir()
	n, err := Run(t.Context(), Config{
		Addr:    "127.0.0.1",
		CertDir: dir,
		SANs:    []string{"localhost", "fakenode.test"},
		Log:     t.Output(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)

	for _, f := range []string{"ca.crt", "server.crt", "server.key"} {
		if _, err := os.Stat(dir + "/" + f); err != nil {
			t.Fatal(err)
		}
	}
	caPEM, err := os.ReadFile(n.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &testNode{Node: n, client: &http.Client{Transport: tr, Timeout: time.Minute}}
}

func (n *testNode) get(t *testing.T, u string) (*http.Response, []byte) {
	t.Helper()
	resp, err := n.client.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestHello(t *testing.T) {
	n := startNode(t)
	for _, u := range []string{
		"http://" + n.HTTPAddr + "/hello",
		"http://" + n.HTTPAddr + "/",
		"http://" + n.HTTPAddr + "/pods/some/thing",
		"https://" + n.KubeletAddr + "/hello",
	} {
		resp, body := n.get(t, u)
		if resp.StatusCode != 200 || string(body) != "hello from fakenode 127.0.0.1\n" {
			t.Errorf("%s: %d %q", u, resp.StatusCode, body)
		}
	}
	resp, body := n.get(t, "https://"+n.KubeletAddr+"/healthz")
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Errorf("healthz: %d %q", resp.StatusCode, body)
	}
	resp, _ = n.get(t, "http://"+n.HTTPAddr+"/nothing-here")
	if resp.StatusCode != 404 {
		t.Errorf("unknown path: %d", resp.StatusCode)
	}
}

func TestServingCert(t *testing.T) {
	n := startNode(t)
	// The webhook certificate must verify for every SAN, as kube-apiserver
	// checks it against the caBundle.
	for _, name := range []string{"127.0.0.1", "localhost", "fakenode.test"} {
		_, port, _ := net.SplitHostPort(n.WebhookAddr)
		tr := n.client.Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.ServerName = name
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, n.WebhookAddr)
		}
		c := &http.Client{Transport: tr}
		resp, err := c.Get("https://" + net.JoinHostPort(name, port) + "/count")
		if err != nil {
			t.Fatalf("SAN %s: %v", name, err)
		}
		resp.Body.Close()
		tr.CloseIdleConnections()
	}
}

func TestBytes(t *testing.T) {
	n := startNode(t)
	cases := []struct {
		n    int64
		seed uint64
	}{{0, 0}, {1, 1}, {1000, 7}, {5<<20 + 17, 12345}}
	for _, base := range []string{"http://" + n.HTTPAddr, "https://" + n.KubeletAddr} {
		for _, c := range cases {
			u := fmt.Sprintf("%s/bytes?n=%d&seed=%d", base, c.n, c.seed)
			resp, body := n.get(t, u)
			if resp.StatusCode != 200 {
				t.Fatalf("%s: status %d", u, resp.StatusCode)
			}
			if int64(len(body)) != c.n || resp.ContentLength != c.n {
				t.Fatalf("%s: got %d bytes, Content-Length %d", u, len(body), resp.ContentLength)
			}
			sum := sha256.Sum256(body)
			hdr := resp.Header.Get("X-Content-Sha256")
			if hdr != hex.EncodeToString(sum[:]) {
				t.Fatalf("%s: header %s does not match body", u, hdr)
			}
			if hdr != stream.Sum256Hex(c.seed, c.n) {
				t.Fatalf("%s: header %s does not match stream.Sum256Hex", u, hdr)
			}
			want := make([]byte, c.n)
			io.ReadFull(stream.New(c.seed), want)
			if !bytes.Equal(body, want) {
				t.Fatalf("%s: body differs from stream.New", u)
			}
		}
	}
	resp, _ := n.get(t, "http://"+n.HTTPAddr+"/bytes?n=-1")
	if resp.StatusCode != 400 {
		t.Errorf("n=-1: status %d", resp.StatusCode)
	}
}

func TestUpload(t *testing.T) {
	n := startNode(t)
	const size = 3<<20 + 5
	data := make([]byte, size)
	io.ReadFull(stream.New(99), data)
	sum := sha256.Sum256(data)
	want := fmt.Sprintf("%s %d\n", hex.EncodeToString(sum[:]), size)
	for _, base := range []string{"http://" + n.HTTPAddr, "https://" + n.KubeletAddr} {
		for _, method := range []string{http.MethodPost, http.MethodPut} {
			req, _ := http.NewRequest(method, base+"/upload", bytes.NewReader(data))
			resp, err := n.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != want {
				t.Errorf("%s %s: %d %q, want %q", method, base, resp.StatusCode, body, want)
			}
		}
	}
	// A chunked body of unknown length.
	resp, err := n.client.Post("http://"+n.HTTPAddr+"/upload", "application/octet-stream",
		io.MultiReader(strings.NewReader("abc"), strings.NewReader("def")))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sum = sha256.Sum256([]byte("abcdef"))
	if string(body) != hex.EncodeToString(sum[:])+" 6\n" {
		t.Errorf("chunked upload: %q", body)
	}
}

func TestSlow(t *testing.T) {
	n := startNode(t)
	const size = 3*slowChunk + 10
	start := time.Now()
	resp, body := n.get(t, fmt.Sprintf("http://%s/slow?n=%d&ms=50&seed=3", n.HTTPAddr, size))
	elapsed := time.Since(start)
	if resp.StatusCode != 200 || len(body) != size {
		t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
	}
	if elapsed < 150*time.Millisecond {
		t.Errorf("took only %s for 4 chunks 50ms apart", elapsed)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != stream.Sum256Hex(3, size) || got != resp.Header.Get("X-Content-Sha256") {
		t.Errorf("slow body does not match the stream")
	}
}

func TestSlowIsStreamed(t *testing.T) {
	n := startNode(t)
	resp, err := n.client.Get(fmt.Sprintf("http://%s/slow?n=%d&ms=10000", n.HTTPAddr, 100*slowChunk))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, slowChunk)
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(resp.Body, first); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first chunk was not flushed")
	}
}

func admissionReview(uid string, labels map[string]string) []byte {
	obj := map[string]any{
		"apiVersion": "v1",
		"kind":       "ConfigMap",
		"metadata":   map[string]any{"name": "cm", "namespace": "default", "labels": labels},
		"data":       map[string]string{"k": "v"},
	}
	rev := map[string]any{
		"apiVersion": "admission.k8s.io/v1",
		"kind":       "AdmissionReview",
		"request": map[string]any{
			"uid":       uid,
			"kind":      map[string]string{"group": "", "version": "v1", "kind": "ConfigMap"},
			"resource":  map[string]string{"group": "", "version": "v1", "resource": "configmaps"},
			"name":      "cm",
			"namespace": "default",
			"operation": "CREATE",
			"userInfo":  map[string]any{"username": "admin"},
			"object":    obj,
			"dryRun":    false,
		},
	}
	b, _ := json.Marshal(rev)
	return b
}

func TestWebhook(t *testing.T) {
	n := startNode(t)
	post := func(uid string, labels map[string]string) admissionv1.AdmissionReview {
		t.Helper()
		resp, err := n.client.Post("https://"+n.WebhookAddr+"/validate", "application/json",
			bytes.NewReader(admissionReview(uid, labels)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		var out admissionv1.AdmissionReview
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil {
			t.Fatalf("bad review: %+v", out)
		}
		if string(out.Response.UID) != uid {
			t.Fatalf("uid %q, want %q", out.Response.UID, uid)
		}
		return out
	}
	count := func() int {
		t.Helper()
		_, body := n.get(t, "https://"+n.WebhookAddr+"/count")
		c, err := strconv.Atoi(strings.TrimSpace(string(body)))
		if err != nil {
			t.Fatalf("count %q: %v", body, err)
		}
		return c
	}

	if c := count(); c != 0 {
		t.Fatalf("initial count %d", c)
	}
	if r := post("0b1c2d3e-1111-4222-8333-444455556666", nil); !r.Response.Allowed {
		t.Errorf("no labels: denied")
	}
	if r := post("uid-2", map[string]string{"konnq-e2e/deny": "false", "x": "y"}); !r.Response.Allowed {
		t.Errorf("deny=false: denied")
	}
	r := post("uid-3", map[string]string{"konnq-e2e/deny": "true"})
	if r.Response.Allowed {
		t.Errorf("deny=true: allowed")
	}
	if r.Response.Result == nil || r.Response.Result.Message != "denied by fakenode webhook" {
		t.Errorf("deny result: %+v", r.Response.Result)
	}
	if c := count(); c != 3 {
		t.Errorf("count %d, want 3", c)
	}
	if n.WebhookCount() != 3 {
		t.Errorf("WebhookCount %d", n.WebhookCount())
	}

	resp, err := n.client.Post("https://"+n.WebhookAddr+"/validate", "application/json", strings.NewReader("{"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("malformed review: status %d", resp.StatusCode)
	}
}

func (n *testNode) restConfig() *rest.Config {
	return &rest.Config{
		Host:            "https://" + n.KubeletAddr,
		TLSClientConfig: rest.TLSClientConfig{CAFile: n.CAFile},
	}
}

func (n *testNode) execURL(cmd []string, params string) *url.URL {
	q := url.Values{"command": cmd}
	return &url.URL{Scheme: "https", Host: n.KubeletAddr, Path: "/exec/ns/pod/c", RawQuery: q.Encode() + "&" + params}
}

func TestExecSPDY(t *testing.T) {
	n := startNode(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	run := func(cmd []string, params string, stdin io.Reader) (string, string, error) {
		t.Helper()
		exec, err := remotecommand.NewSPDYExecutor(n.restConfig(), "POST", n.execURL(cmd, params))
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		opts := remotecommand.StreamOptions{Stdin: stdin, Stdout: &stdout}
		if strings.Contains(params, "error=1") {
			opts.Stderr = &stderr
		}
		err = exec.StreamWithContext(ctx, opts)
		return stdout.String(), stderr.String(), err
	}

	data := make([]byte, 1<<20)
	io.ReadFull(stream.New(5), data)
	out, _, err := run([]string{"cat"}, "input=1&output=1", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("cat: %v", err)
	}
	if out != string(data) {
		t.Fatalf("cat returned %d bytes, differing from the %d sent", len(out), len(data))
	}

	out, _, err = run([]string{"echo", "hello", "there"}, "output=1&error=1", nil)
	if err != nil || out != "hello there\n" {
		t.Fatalf("echo: %q %v", out, err)
	}

	out, errOut, err := run([]string{"nosuchcmd", "x"}, "output=1&error=1", nil)
	var exitErr utilexec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 127 {
		t.Fatalf("unknown command: err %v (%T)", err, err)
	}
	if out != "" || !strings.Contains(errOut, "nosuchcmd") {
		t.Fatalf("unknown command: stdout %q stderr %q", out, errOut)
	}
}

func TestExecWebSocketV4(t *testing.T) {
	n := startNode(t)
	u := n.execURL([]string{"echo", "over", "websocket"}, "output=1&error=1")
	exec, err := remotecommand.NewWebSocketExecutorForProtocols(n.restConfig(), "GET", u.String(), "v4.channel.k8s.io")
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		t.Fatal(err)
	}
	if stdout.String() != "over websocket\n" {
		t.Fatalf("stdout %q", stdout.String())
	}
}

func TestPortForward(t *testing.T) {
	n := startNode(t)
	_, httpPort, _ := net.SplitHostPort(n.HTTPAddr)
	rt, upgrader, err := spdy.RoundTripperFor(n.restConfig())
	if err != nil {
		t.Fatal(err)
	}
	u := &url.URL{Scheme: "https", Host: n.KubeletAddr, Path: "/portForward/ns/pod"}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
	stop := make(chan struct{})
	ready := make(chan struct{})
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + httpPort}, stop, ready, io.Discard, t.Output())
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- pf.ForwardPorts() }()
	defer func() {
		close(stop)
		<-errc
	}()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("port-forward not ready")
	}
	ports, err := pf.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local)))
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	for i := range 2 {
		resp, err := c.Get(fmt.Sprintf("http://%s/bytes?n=%d&seed=%d", local, 1<<20, i))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body)
		if hex.EncodeToString(sum[:]) != stream.Sum256Hex(uint64(i), 1<<20) {
			t.Fatalf("port-forwarded body %d corrupt (%d bytes)", i, len(body))
		}
	}
}
