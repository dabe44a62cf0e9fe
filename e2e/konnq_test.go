package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// konnq is one konnq-server (beside kube-apiserver, on the host) and one
// konnq-agent (in the node's namespace), each started with the args of its
// manifest in deploy/.
type konnq struct {
	env        *env
	name       string // log name suffix: the mode
	socket     string
	healthURL  string
	adminURL   string
	serverArgs []string
	agentArgs  []string
	server     *proc
	agent      *proc
}

// newKonnq maps the manifests' args to this test: file paths to the test's
// files; the server's host ports (8132-8134 in the manifest) to free ones,
// since the host is shared; the agent's --proxy-server-host placeholder to
// the host side of the veth. The agent's own ports are kept verbatim: it
// has the namespace to itself. mode "http-connect" replaces --mode=grpc,
// as deploy/README.md tells operators to.
func newKonnq(t testing.TB, e *env, mode, kubeconfig string) *konnq {
	t.Helper()
	k := &konnq{env: e, name: mode, socket: filepath.Join(e.dir, "uds-"+mode, "konnectivity-server.socket")}
	agentPort, adminPort, healthPort := freeUDPPort(t), freePort(t), freePort(t)
	k.healthURL = fmt.Sprintf("http://127.0.0.1:%d", healthPort)
	k.adminURL = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	serverMap := argMap{
		exact: map[string]string{
			"--uds-name=" + manifestSocket:                          "--uds-name=" + k.socket,
			"--kubeconfig=/etc/kubernetes/konnectivity-server.conf": "--kubeconfig=" + kubeconfig,
			"--agent-port=8132":                                     "--agent-port=" + strconv.Itoa(agentPort),
			"--admin-port=8133":                                     "--admin-port=" + strconv.Itoa(adminPort),
			"--health-port=8134":                                    "--health-port=" + strconv.Itoa(healthPort),
		},
		prefix: map[string]string{"/etc/kubernetes/pki/": e.pki.dir + "/"},
	}
	if mode == "http-connect" {
		serverMap.exact["--mode=grpc"] = "--mode=http-connect"
	}
	args := containerArgs(t, serverManifest, "konnq-server")
	k.serverArgs, _ = serverMap.apply(args)
	agentMap := argMap{
		exact: map[string]string{
			"--ca-cert=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt":                "--ca-cert=" + e.pki.path("ca.crt"),
			"--proxy-server-host=" + serverHostPlaceholder:                                  "--proxy-server-host=" + hostIP,
			"--proxy-server-port=8132":                                                      "--proxy-server-port=" + strconv.Itoa(agentPort),
			"--service-account-token-path=/var/run/secrets/tokens/konnectivity-agent-token": "--service-account-token-path=" + e.agentToken,
		},
	}
	k.agentArgs, _ = agentMap.apply(containerArgs(t, agentManifest, "konnq-agent"))
	t.Cleanup(func() {
		k.agent.stop(syscall.SIGKILL, time.Second)
		k.server.stop(syscall.SIGKILL, time.Second)
	})
	return k
}

// startServer starts konnq-server and waits for /healthz.
func (k *konnq) startServer(t testing.TB) {
	t.Helper()
	p, err := startProc(k.env.logDir, "konnq-server-"+k.name, append([]string{konnqPath(t, "konnq-server")}, k.serverArgs...))
	if err != nil {
		t.Fatal(err)
	}
	k.server = p
	if err := waitFor("konnq-server /healthz", 30*time.Second, p, httpStatus(http.DefaultClient, k.healthURL+"/healthz", 200)); err != nil {
		t.Fatal(err)
	}
}

// startAgent starts konnq-agent in the node's namespace (no wait).
func (k *konnq) startAgent(t testing.TB) {
	t.Helper()
	argv := netnsExec(k.env.net.ns, append([]string{konnqPath(t, "konnq-agent")}, k.agentArgs...))
	p, err := startProc(k.env.logDir, "konnq-agent-"+k.name, argv)
	if err != nil {
		t.Fatal(err)
	}
	k.agent = p
}

// waitReady waits until the server has a ready agent (/readyz 200).
func (k *konnq) waitReady(t testing.TB, bound time.Duration) {
	t.Helper()
	if err := waitFor("konnq-server /readyz (agent connected)", bound, k.agent,
		httpStatus(http.DefaultClient, k.healthURL+"/readyz", 200)); err != nil {
		t.Fatalf("%v\nserver log:\n%s", err, k.server.tail(20))
	}
}

// logTails prints the last lines of both logs (for failures).
func (k *konnq) logTails(t testing.TB) {
	t.Helper()
	if k.server != nil {
		t.Logf("konnq-server log (last lines):\n%s", k.server.tail(25))
	}
	if k.agent != nil {
		t.Logf("konnq-agent log (last lines):\n%s", k.agent.tail(25))
	}
}

// dials is konnq-server's count of dials answered: successes (the dial
// duration histogram's count) plus failures (every dial_failure_count).
func (k *konnq) dials(t testing.TB) float64 {
	t.Helper()
	text := scrape(t, http.DefaultClient, k.adminURL+"/metrics")
	return sumMetric(text, "konnectivity_network_proxy_server_dial_duration_seconds_count", nil) +
		sumMetric(text, "konnectivity_network_proxy_server_dial_failure_count", nil)
}

// scrape GETs a Prometheus text exposition.
func scrape(t testing.TB, c *http.Client, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape %s: %s %v", url, resp.Status, err)
	}
	return string(body)
}

// sumMetric adds the samples of one metric name whose labels include every
// pair of want (name{...} value lines of the text format).
func sumMetric(text, name string, want map[string]string) float64 {
	total := 0.0
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		labels := ""
		if strings.HasPrefix(rest, "{") {
			end := strings.LastIndex(rest, "}")
			if end < 0 {
				continue
			}
			labels, rest = rest[1:end], rest[end+1:]
		}
		match := true
		for k, v := range want {
			if !strings.Contains(","+labels+",", ","+k+"=\""+v+"\",") {
				match = false
			}
		}
		fields := strings.Fields(rest)
		if !match || len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fields[0], 64); err == nil {
			total += v
		}
	}
	return total
}
