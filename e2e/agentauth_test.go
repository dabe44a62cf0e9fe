package e2e

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
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
)

// The agent's identity in deploy/ (the manifest's ServiceAccount) and the
// audience the server checks.
const (
	agentNamespace = "kube-system"
	agentAccount   = "konnectivity-agent"
	agentAudience  = "system:konnectivity-server"
)

// authFailures reads konnq-server's count of refused agents for reason.
func (k *konnq) authFailures(t testing.TB, reason string) float64 {
	t.Helper()
	text := scrape(t, http.DefaultClient, k.adminURL+"/metrics")
	return sumMetric(text, "konnq_server_agent_auth_failures_total", map[string]string{"reason": reason})
}

// readyAgents is konnq-server's gauge of agents ready for dials.
func (k *konnq) readyAgents(t testing.TB) float64 {
	t.Helper()
	text := scrape(t, http.DefaultClient, k.adminURL+"/metrics")
	return sumMetric(text, "konnectivity_network_proxy_server_ready_backend_connections", nil)
}

// tokenFor asks the TokenRequest API for a token of namespace/account.
func tokenFor(t testing.TB, ctx context.Context, a *apiserver, namespace, account, audience string) string {
	t.Helper()
	expiry := int64(3600)
	tr, err := a.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, account,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &expiry}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest %s/%s: %v", namespace, account, err)
	}
	return tr.Status.Token
}

// expiredToken signs, with the cluster's ServiceAccount signing key, a
// token for the agent's account that expired a minute ago: what a projected
// token becomes when the kubelet stops refreshing it.
func expiredToken(t testing.TB, ctx context.Context, e *env, a *apiserver) string {
	t.Helper()
	sa, err := a.client.CoreV1().ServiceAccounts(agentNamespace).Get(ctx, agentAccount, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(e.pki.path("sa.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims := map[string]any{
		"iss": "https://kubernetes.default.svc.cluster.local",
		"sub": "system:serviceaccount:" + agentNamespace + ":" + agentAccount,
		"aud": []string{agentAudience},
		"iat": now.Add(-20 * time.Minute).Unix(),
		"nbf": now.Add(-20 * time.Minute).Unix(),
		"exp": now.Add(-time.Minute).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      agentNamespace,
			"serviceaccount": map[string]string{"name": agentAccount, "uid": string(sa.UID)},
		},
	}
	return signJWT(t, key, claims)
}

// signJWT encodes claims as an RS256 JWT.
func signJWT(t testing.TB, key *rsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(data)
	}
	signing := enc(map[string]string{"alg": "RS256", "typ": "JWT"}) + "." + enc(claims)
	digest := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// refusedAgent runs one extra agent with token in the node's namespace
// (own ports and id) and expects the server to refuse it for reason: the
// server's counter moves, the agent never becomes a ready backend, and the
// agent's log gives the reason.
func (s *scenarios) refusedAgent(t *testing.T, name, token, reason string) {
	t.Helper()
	e := s.k.env
	path := filepath.Join(e.dir, "tokens", name)
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	before := s.k.authFailures(t, reason)
	ready := s.k.readyAgents(t)
	args := []string{konnqPath(t, "konnq-agent")}
	for _, a := range s.k.agentArgs {
		switch {
		case strings.HasPrefix(a, "--service-account-token-path="):
			a = "--service-account-token-path=" + path
		case strings.HasPrefix(a, "--admin-server-port="):
			a = "--admin-server-port=" + strconv.Itoa(9133)
		case strings.HasPrefix(a, "--health-server-port="):
			a = "--health-server-port=" + strconv.Itoa(9134)
		}
		args = append(args, a)
	}
	args = append(args, "--agent-id=refused-"+name)
	p, err := startProc(e.logDir, "konnq-agent-refused-"+s.k.name+"-"+name, netnsExec(e.net.ns, args))
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop(syscall.SIGKILL, time.Second)
	err = waitFor("konnq_server_agent_auth_failures_total{reason=\""+reason+"\"} to move", failBound, p, func() error {
		if s.k.authFailures(t, reason) > before {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatalf("%v\nserver log:\n%s\nagent log:\n%s", err, s.k.server.tail(10), p.tail(10))
	}
	if now := s.k.readyAgents(t); now != ready {
		t.Fatalf("ready agents went from %v to %v with a refused agent", ready, now)
	}
	var line string
	err = waitFor("the refused agent to log why", 10*time.Second, p, func() error {
		for _, l := range strings.Split(p.tail(50), "\n") {
			if strings.Contains(l, "server refused this agent") {
				line = l
				return nil
			}
		}
		return errNotYet
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, p.tail(20))
	}
	if strings.Contains(line, "\x1b[") {
		t.Errorf("colour codes in a log written to a file: %q", line)
	}
	t.Logf("RESULT %s: agent with %s refused (reason=%s); agent logs: %s", s.m.name, name, reason, strings.TrimSpace(line))
}

// agentAuth: the manifest's agent is admitted with its TokenRequest token
// (it carries every scenario above); tokens with the wrong audience, of
// another account, expired, or of a deleted account are refused; and once
// the account is deleted, its connected agent is disconnected.
func (s *scenarios) agentAuth(t *testing.T, deleteAccount bool) {
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Minute)
	defer cancel()
	if s.k.readyAgents(t) != 1 {
		t.Fatalf("the manifest's agent is not the one ready backend")
	}
	s.refusedAgent(t, "wrong-audience", tokenFor(t, ctx, s.a, agentNamespace, agentAccount, "another-audience"), "invalid_token")
	other := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "not-the-agent", Namespace: agentNamespace}}
	if _, err := s.a.client.CoreV1().ServiceAccounts(agentNamespace).Create(ctx, other, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	s.refusedAgent(t, "another-account", tokenFor(t, ctx, s.a, agentNamespace, other.Name, agentAudience), "wrong_account")
	s.refusedAgent(t, "expired", expiredToken(t, ctx, s.k.env, s.a), "invalid_token")
	if !deleteAccount {
		return
	}
	// A token minted for the agent's account, then the account deleted:
	// the server has never seen this token, so it asks the apiserver.
	token := tokenFor(t, ctx, s.a, agentNamespace, agentAccount, agentAudience)
	if err := s.a.client.CoreV1().ServiceAccounts(agentNamespace).Delete(ctx, agentAccount, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s.refusedAgent(t, "deleted-account", token, "invalid_token")
	s.connectedAgentRevoked(t)
	fmt.Fprintln(os.Stderr) // keep go test's output lines apart
}

// revocationBound: the server checks a connected agent's token again when
// its cached acceptance runs out (token-review-cache-ttl, 2 min by default,
// which the manifest keeps), plus time for the review and the close.
const revocationBound = 2*time.Minute + 30*time.Second

// connectedAgentRevoked: the manifest's agent, connected with a token of
// the account just deleted, is disconnected by the server, which logs and
// counts why; its reconnects are refused.
func (s *scenarios) connectedAgentRevoked(t *testing.T) {
	started := time.Now()
	before := s.k.authFailures(t, "invalid_token")
	err := waitFor("the connected agent to be disconnected", revocationBound, s.k.agent, func() error {
		if s.k.readyAgents(t) == 0 && s.k.authFailures(t, "invalid_token") > before {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatalf("%v\nserver log:\n%s\nagent log:\n%s", err, s.k.server.tail(10), s.k.agent.tail(10))
	}
	var serverLine, agentLine string
	err = waitFor("both sides to log why", 10*time.Second, s.k.agent, func() error {
		serverLine = findLine(s.k.server.tail(100), "disconnecting the agent")
		agentLine = findLine(s.k.agent.tail(100), "disconnected from server")
		if serverLine != "" && agentLine != "" {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatalf("%v\nserver log:\n%s\nagent log:\n%s", err, s.k.server.tail(20), s.k.agent.tail(20))
	}
	t.Logf("RESULT %s: connected agent of the deleted account disconnected after %.1f s; server logs: %s; agent logs: %s",
		s.m.name, time.Since(started).Seconds(), strings.TrimSpace(serverLine), strings.TrimSpace(agentLine))
}

// findLine is the last line of text that contains sub, or "".
func findLine(text, sub string) string {
	lines := strings.Split(text, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], sub) {
			return lines[i]
		}
	}
	return ""
}
