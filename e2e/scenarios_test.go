package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Paths through kube-apiserver's proxy subresources to the fake node.
const (
	nodeHTTP    = "/api/v1/nodes/http:node-1:8080/proxy"
	nodeKubelet = "/api/v1/nodes/node-1/proxy" // https, the kubelet port
	podProxy    = "/api/v1/namespaces/e2e/pods/fake:8080/proxy"
	svcProxy    = "/api/v1/namespaces/e2e/services/fake:http/proxy"
)

// requestBound is how long one small request through the tunnel may take
// before the test calls it hung (the apiserver's own timeouts are longer).
const requestBound = 30 * time.Second

type scenarios struct {
	t   *testing.T
	ctx context.Context
	a   *apiserver
	k   *konnq
	m   mode
}

func (s *scenarios) run(t *testing.T) {
	t.Run("NoDirectRoute", s.noDirectRoute)
	t.Run("NodeProxyHTTP", func(t *testing.T) { s.expectHello(t, nodeHTTP+"/hello") })
	t.Run("KubeletHTTPS", func(t *testing.T) { s.expectHello(t, nodeKubelet+"/hello") })
	t.Run("PodProxy", func(t *testing.T) { s.expectHello(t, podProxy+"/hello") })
	t.Run("ServiceProxy", func(t *testing.T) { s.expectHello(t, svcProxy+"/hello") })
	t.Run("DialMetrics", s.dialMetrics)
	t.Run("Webhook", s.webhook)
	t.Run("ExecSPDY", func(t *testing.T) { s.exec(t, false) })
	t.Run("ExecWebSocket", func(t *testing.T) { s.exec(t, true) })
	t.Run("Transfers50MiB", s.transfers)
	t.Run("BadTargets", s.badTargets)
	t.Run("AgentStopped", s.agentStopped)
	t.Run("Faults", s.faults)
	if s.m == modes[0] {
		t.Run("AgentStorm", s.agentStorm)
		t.Run("Leases", s.leases)
	}
	// Last: in the last mode it deletes the agent's ServiceAccount.
	t.Run("AgentAuth", func(t *testing.T) { s.agentAuth(t, s.m == modes[len(modes)-1]) })
}

// noDirectRoute: the control-plane side cannot open a connection to the
// node itself; the scenarios below can only pass through konnq-agent.
func (s *scenarios) noDirectRoute(t *testing.T) {
	for _, port := range []int{nodeHTTPPort, nodeKubeletPort, nodeWebhookPort} {
		addr := net.JoinHostPort(nodeIP, strconv.Itoa(port))
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err == nil {
			c.Close()
			t.Fatalf("dial %s from the host succeeded: the node is reachable without the tunnel", addr)
		}
		t.Logf("direct dial %s from the host: %v", addr, err)
	}
}

// expectHello GETs path through the apiserver and expects the fake node's
// greeting.
func (s *scenarios) expectHello(t *testing.T, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(s.ctx, requestBound)
	defer cancel()
	code, body, err := s.a.get(ctx, path)
	if err != nil || code != 200 || !strings.Contains(string(body), "hello from fakenode") {
		t.Fatalf("GET %s: %d %v: %.300s", path, code, err, body)
	}
}

// dialMetrics: each request the apiserver sends through its egress dialer
// moves apiserver_egress_dialer_dial_start_total{protocol,transport="uds"},
// and konnq-server's dial counters move by the same amount.
func (s *scenarios) dialMetrics(t *testing.T) {
	labels := map[string]string{"protocol": s.m.protocol, "transport": "uds"}
	apiDials := func() float64 {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		defer cancel()
		code, body, err := s.a.get(ctx, "/metrics")
		if err != nil || code != 200 {
			t.Fatalf("apiserver /metrics: %d %v", code, err)
		}
		return sumMetric(string(body), "apiserver_egress_dialer_dial_start_total", labels)
	}
	// The node answers with Connection: close, so that every request makes
	// the apiserver dial anew instead of reusing a kept-alive connection;
	// the first such request ends the connection kept from earlier ones.
	s.expectHello(t, nodeHTTP+"/hello?close=1")
	api0, konnq0 := apiDials(), s.k.dials(t)
	const n = 5
	for i := range n {
		s.expectHello(t, fmt.Sprintf("%s/hello?close=1&i=%d", nodeHTTP, i))
	}
	api1, konnq1 := apiDials(), s.k.dials(t)
	t.Logf("RESULT %s: %d requests: apiserver_egress_dialer_dial_start_total{protocol=%q,transport=\"uds\"} +%v, konnq-server dials +%v",
		s.m.name, n, s.m.protocol, api1-api0, konnq1-konnq0)
	if api1-api0 != n {
		t.Fatalf("apiserver_egress_dialer_dial_start_total%v moved %v → %v for %d requests", labels, api0, api1, n)
	}
	if api1-api0 != konnq1-konnq0 {
		t.Fatalf("apiserver started %v dials, konnq-server answered %v", api1-api0, konnq1-konnq0)
	}
}

// webhook: a ConfigMap create is validated by the fake node's webhook,
// reached by Service through the tunnel: allowed without the deny label,
// refused with the webhook's message with it.
func (s *scenarios) webhook(t *testing.T) {
	cms := s.a.client.CoreV1().ConfigMaps("e2e")
	suffix := strings.ToLower(s.m.name)
	ctx, cancel := context.WithTimeout(s.ctx, requestBound)
	defer cancel()
	denied := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		Name: "denied-" + suffix, Labels: map[string]string{"konnq-e2e/deny": "true"},
	}}
	// The apiserver loads webhook configurations from its informer: the
	// first creates after start-up may not be checked yet.
	deadline := time.Now().Add(requestBound)
	for {
		_, err := cms.Create(ctx, denied, metav1.CreateOptions{})
		if err != nil && strings.Contains(err.Error(), "denied by fakenode webhook") {
			t.Logf("RESULT %s: webhook deny: %v", s.m.name, err)
			break
		}
		if err == nil {
			_ = cms.Delete(ctx, denied.Name, metav1.DeleteOptions{})
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook never denied: last result %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	before := s.webhookCount(t)
	allowed := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "allowed-" + suffix}}
	if _, err := cms.Create(ctx, allowed, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create without the deny label: %v", err)
	}
	if after := s.webhookCount(t); after <= before {
		t.Fatalf("the allowed create did not reach the webhook (count %d → %d)", before, after)
	}
}

// webhookCount reads the fake webhook's request count through the service
// proxy (https to the webhook port).
func (s *scenarios) webhookCount(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(s.ctx, requestBound)
	defer cancel()
	path := "/api/v1/namespaces/e2e/services/https:fake:webhook/proxy/count"
	code, body, err := s.a.get(ctx, path)
	if err != nil || code != 200 {
		t.Fatalf("GET %s: %d %v %.200s", path, code, err, body)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(body)))
	if err != nil {
		t.Fatalf("GET %s: %q", path, body)
	}
	return n
}
