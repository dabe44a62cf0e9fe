package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// adminToken authenticates the test as a cluster admin (--token-auth-file).
const adminToken = "konnq-e2e-admin-token"

// startBound is how long etcd and kube-apiserver may take to become ready
// (a cold kube-apiserver bootstraps its RBAC roles and priority levels).
const startBound = 90 * time.Second

// etcd runs one etcd member on loopback ports; its data lives in dir.
func startEtcd(t testing.TB, dir, logDir string) (*proc, string) {
	t.Helper()
	client, peer := freePort(t), freePort(t)
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", client)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	p, err := startProc(logDir, "etcd", []string{
		toolPath(t, "etcd"),
		"--name=e2e",
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=e2e=" + peerURL,
		"--log-level=warn",
		"--quota-backend-bytes=1073741824",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(syscall.SIGTERM, 10*time.Second) })
	if err := waitFor("etcd", startBound, p, httpStatus(http.DefaultClient, clientURL+"/health", 200)); err != nil {
		t.Fatal(err)
	}
	return p, clientURL
}

// apiserver is one running kube-apiserver.
type apiserver struct {
	proc   *proc
	url    string
	config *rest.Config
	client *kubernetes.Clientset
	// http is an admin client for raw requests (node/pod/service proxy,
	// /metrics); it trusts the cluster CA and sends the admin token.
	http *http.Client
}

// startAPIServer starts kube-apiserver on a free loopback port with the
// given egress selector configuration and waits for /readyz.
func startAPIServer(t testing.TB, env *env, egressConfig string) *apiserver {
	t.Helper()
	port := freePort(t)
	tokens := filepath.Join(env.dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(adminToken+`,e2e-admin,e2e-admin,"system:masters"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := env.pki
	argv := []string{
		toolPath(t, "kube-apiserver"),
		"--etcd-servers=" + env.etcdURL,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--advertise-address=" + hostIP,
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(env.dir, "apiserver-certs"),
		"--tls-cert-file=" + p.path("apiserver.crt"),
		"--tls-private-key-file=" + p.path("apiserver.key"),
		"--client-ca-file=" + p.path("ca.crt"),
		"--token-auth-file=" + tokens,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.path("sa.pub"),
		"--service-account-signing-key-file=" + p.path("sa.key"),
		"--service-cluster-ip-range=" + serviceCIDR,
		"--kubelet-client-certificate=" + p.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + p.path("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--egress-selector-config-file=" + egressConfig,
		"--profiling=false",
		"--v=1",
	}
	proc, err := startProc(env.logDir, "kube-apiserver", argv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proc.stop(syscall.SIGTERM, 15*time.Second) })
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)
	hc := &http.Client{Transport: &bearer{token: adminToken, base: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool},
		MaxIdleConnsPerHost: 16,
	}}}
	if err := waitFor("kube-apiserver", startBound, proc, httpStatus(hc, url+"/readyz", 200)); err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{
		Host:            url,
		BearerToken:     adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAFile: p.path("ca.crt")},
		QPS:             100,
		Burst:           200,
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &apiserver{proc: proc, url: url, config: cfg, client: client, http: hc}
}

// bearer adds the admin token to every request.
type bearer struct {
	token string
	base  http.RoundTripper
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

// get performs GET path on the apiserver and returns status and body.
func (a *apiserver) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// toolPath is a binary of the control plane built by run.sh.
func toolPath(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("KONNQ_E2E_TOOLS")
	if dir == "" {
		t.Fatalf("KONNQ_E2E_TOOLS is not set: run e2e/run.sh, which builds %s", name)
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s: %v (e2e/run.sh builds it)", path, err)
	}
	return path
}

// konnqPath is konnq-server or konnq-agent from KONNQ_BIN_DIR.
func konnqPath(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("KONNQ_BIN_DIR")
	if dir == "" {
		t.Fatalf("KONNQ_BIN_DIR is not set: run e2e/run.sh")
	}
	return filepath.Join(dir, name)
}

// freeUDPPort returns a port free for both UDP and TCP on all addresses a
// moment ago (konnq-server binds its agent port on 0.0.0.0).
func freeUDPPort(t testing.TB) int {
	t.Helper()
	for range 20 {
		u, err := net.ListenPacket("udp", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", port))
		u.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free UDP port")
	return 0
}
