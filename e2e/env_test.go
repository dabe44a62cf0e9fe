package e2e

import (
	"context"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Ports of the fake node (inside the namespace).
const (
	nodeHTTPPort    = 8080
	nodeKubeletPort = 10250
	nodeWebhookPort = 8443
)

// env is what every mode shares: the PKI, etcd, the node's namespace and
// the fake node in it.
type env struct {
	dir      string
	logDir   string
	pki      *pki
	net      *nodeNet
	etcdURL  string
	fakenode *proc
	// fakenodeCA signed the fake node's serving certificates (the webhook's
	// caBundle).
	fakenodeCA []byte
	// agentToken is the agent's token file (TokenRequest API, written once
	// the manifests' ServiceAccount exists).
	agentToken string
}

func yamlUnmarshal(data []byte, v any) error { return yaml.Unmarshal(data, v) }

// newEnv builds everything but kube-apiserver and konnq. Logs stay in a
// directory that is printed when a test fails.
func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the e2e suite needs root (network namespaces, nftables)")
	}
	// Short: a Unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "kqe-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{dir: dir, logDir: filepath.Join(dir, "logs")}
	if err := os.MkdirAll(e.logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs kept in %s", e.logDir)
			return
		}
		os.RemoveAll(dir)
	})
	e.net = newNodeNet(t)
	e.pki = newPKI(t, filepath.Join(dir, "pki"),
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(hostIP), net.ParseIP("10.200.0.1")})
	_, e.etcdURL = startEtcd(t, dir, e.logDir)
	e.startFakenode(t)
	return e
}

// startFakenode runs the fake kubelet/pod/webhook server in the namespace.
func (e *env) startFakenode(t testing.TB) {
	t.Helper()
	certDir := filepath.Join(e.dir, "fakenode")
	p, err := startProc(e.logDir, "fakenode", netnsExec(e.net.ns, []string{
		toolPath(t, "fakenode"),
		"--addr=0.0.0.0",
		"--http-port=" + strconv.Itoa(nodeHTTPPort),
		"--kubelet-port=" + strconv.Itoa(nodeKubeletPort),
		"--webhook-port=" + strconv.Itoa(nodeWebhookPort),
		"--cert-dir=" + certDir,
		"--san=" + nodeIP,
		"--san=" + serviceIP,
		"--san=fake.e2e.svc",
	}))
	if err != nil {
		t.Fatal(err)
	}
	e.fakenode = p
	t.Cleanup(func() { p.stop(syscall.SIGTERM, 5*time.Second) })
	err = waitFor("fakenode", 30*time.Second, p, func() error {
		data, _ := os.ReadFile(p.log)
		if strings.Contains(string(data), "fakenode ready") {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatal(err)
	}
	if e.fakenodeCA, err = os.ReadFile(filepath.Join(certDir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
}

// mintAgentToken asks the TokenRequest API for a token of the agent's
// ServiceAccount with the audience of the DaemonSet's projected volume, and
// writes it where the agent's --service-account-token-path is mapped.
func (e *env) mintAgentToken(t testing.TB, ctx context.Context, a *apiserver) {
	t.Helper()
	spec := podSpecOf(t, agentManifest)
	var audience string
	for _, v := range spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil {
				audience = s.ServiceAccountToken.Audience
			}
		}
	}
	if audience == "" {
		t.Fatalf("%s: no projected serviceAccountToken volume", agentManifest)
	}
	expiry := int64(3600)
	tr, err := a.client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, spec.ServiceAccountName,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &expiry}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s: %v", spec.ServiceAccountName, err)
	}
	dir := filepath.Join(e.dir, "tokens")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.agentToken = filepath.Join(dir, "konnectivity-agent-token")
	if err := os.WriteFile(e.agentToken, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeServerKubeconfig fills deploy/konnectivity-server.conf.template (what
// /etc/kubernetes/konnectivity-server.conf holds on a control-plane node)
// with the apiserver's URL, the cluster CA and the system:konnectivity-server
// client certificate, as its comment tells operators to.
func (e *env) writeServerKubeconfig(t testing.TB, apiserverURL string) string {
	t.Helper()
	read := func(name string) string {
		data, err := os.ReadFile(e.pki.path(name))
		if err != nil {
			t.Fatal(err)
		}
		return b64(data)
	}
	tmpl, err := os.ReadFile(repoPath(kubeconfigTemplate))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer(
		"${APISERVER_URL}", apiserverURL,
		"${CLUSTER_CA_DATA}", read("ca.crt"),
		"${CLIENT_CERT_DATA}", read("konnectivity-server.crt"),
		"${CLIENT_KEY_DATA}", read("konnectivity-server.key"),
	).Replace(stripComments(string(tmpl)))
	if strings.Contains(cfg, "${") {
		t.Fatalf("%s has a placeholder the suite does not fill:\n%s", kubeconfigTemplate, cfg)
	}
	path := filepath.Join(e.dir, "konnectivity-server.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// nodeObjects creates the cluster's view of the fake node: Nodes, a Pod on
// node-1 with its status set as a kubelet would, and a Service (no
// selector) with its endpoints, whose ClusterIP lives in the namespace.
func nodeObjects(t testing.TB, ctx context.Context, a *apiserver) {
	t.Helper()
	c := a.client.CoreV1()
	must := func(what string, err error) {
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	nodes := map[string][]corev1.NodeAddress{
		"node-1": {{Type: corev1.NodeInternalIP, Address: nodeIP}},
		// kube-apiserver resolves a node proxy's host name itself, but passes
		// a kubelet's name for pods/log and exec to the egress dialer as is.
		"node-unresolvable": {{Type: corev1.NodeHostName, Address: "no-such-host.invalid"}},
		"node-unreachable":  {{Type: corev1.NodeInternalIP, Address: unreachableIP}},
	}
	for name, addrs := range nodes {
		n, err := c.Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		must("create node "+name, err)
		n.Status.Addresses = addrs
		n.Status.DaemonEndpoints.KubeletEndpoint.Port = nodeKubeletPort
		_, err = c.Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		must("node status "+name, err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "e2e", Labels: map[string]string{"konnq-e2e": "webhook"}}}
	_, err := c.Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	must("namespace", err)
	// No controller-manager here: create what its ServiceAccount controller would.
	_, err = c.ServiceAccounts("e2e").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	must("default ServiceAccount", err)
	podOn := func(name, node string) *corev1.Pod {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "e2e"},
			Spec: corev1.PodSpec{
				NodeName:                     node,
				AutomountServiceAccountToken: new(bool),
				Containers:                   []corev1.Container{{Name: "main", Image: "konnq-e2e/none"}},
			},
		}
		pod, err := c.Pods("e2e").Create(ctx, pod, metav1.CreateOptions{})
		must("pod "+name, err)
		return pod
	}
	podOn("unresolvable", "node-unresolvable")
	pod := podOn("fake", "node-1")
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = nodeIP
	pod.Status.PodIPs = []corev1.PodIP{{IP: nodeIP}}
	pod.Status.HostIP = nodeIP
	_, err = c.Pods("e2e").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	must("pod status", err)
	createService(t, ctx, a)
}

func b64(data []byte) string { return base64.StdEncoding.EncodeToString(data) }
