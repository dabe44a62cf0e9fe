package e2e

import (
	"context"
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
	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The optional lease RBAC of deploy/, and upstream's lease facts the
// scenario checks: namespace, label, name prefix, duration.
const (
	leasesRBACManifest = "deploy/leases-rbac.yaml"
	leaseNamespace     = "kube-system"
	leaseLabelKey      = "k8s-app"
	leaseLabelValue    = "konnectivity-server"
	leaseNamePrefix    = "konnectivity-proxy-server-"
	leaseSeconds       = 30
	// renewBound: a renewal every 15 s (+ up to 4 % jitter), with margin.
	renewBound = 25 * time.Second
)

// applyLeasesRBAC creates the Roles and RoleBindings of deploy/leases-rbac.yaml.
func applyLeasesRBAC(t testing.TB, ctx context.Context, a *apiserver) {
	t.Helper()
	create := metav1.CreateOptions{FieldValidation: "Strict"}
	for _, obj := range decodeManifest(t, leasesRBACManifest) {
		var err error
		switch o := obj.(type) {
		case *rbacv1.Role:
			_, err = a.client.RbacV1().Roles(o.Namespace).Create(ctx, o, create)
		case *rbacv1.RoleBinding:
			_, err = a.client.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, create)
		default:
			err = fmt.Errorf("the suite does not know how to apply %T", obj)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: %T: %v", leasesRBACManifest, obj, err)
		}
	}
}

// handLease is a Lease like a server's, written by the test, renewed at renewed.
func handLease(name string, labels map[string]string, renewed time.Time, seconds int32) *coordinationv1.Lease {
	holder := "by-hand"
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: leaseNamespace, Labels: labels},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       &holder,
			LeaseDurationSeconds: &seconds,
			RenewTime:            &metav1.MicroTime{Time: renewed},
		},
	}
}

// agentKubeconfig writes a kubeconfig for the agent's ServiceAccount (a
// TokenRequest token for the API's own audience), as the in-cluster config
// would give a pod of the DaemonSet.
func agentKubeconfig(t testing.TB, ctx context.Context, e *env, a *apiserver) string {
	t.Helper()
	expiry := int64(3600)
	tr, err := a.client.CoreV1().ServiceAccounts(agentNamespace).CreateToken(ctx, agentAccount,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for the agent's API access: %v", err)
	}
	ca, err := os.ReadFile(e.pki.path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: %q, certificate-authority-data: %s}
users:
- name: konnectivity-agent
  user: {token: %q}
contexts:
- name: agent
  context: {cluster: e2e, user: konnectivity-agent}
current-context: agent
`, a.url, b64(ca), tr.Status.Token)
	path := filepath.Join(e.dir, "agent-leases.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// leases: konnq-server restarted with --enable-lease-controller keeps its
// Lease (upstream's name, labels, holder, duration) and renews it, deletes
// an expired labelled Lease and leaves an unlabelled one; an agent with
// --count-server-leases counts the valid Leases, follows a Lease made by
// hand as it appears and expires; on graceful stop the server deletes its
// Lease. The RBAC is deploy/leases-rbac.yaml's.
func (s *scenarios) leases(t *testing.T) {
	ctx, cancel := context.WithTimeout(s.ctx, 4*time.Minute)
	defer cancel()
	leases := s.a.client.CoordinationV1().Leases(leaseNamespace)
	labels := map[string]string{leaseLabelKey: leaseLabelValue}
	applyLeasesRBAC(t, ctx, s.a)
	expired := handLease(leaseNamePrefix+"e2e-expired", labels, time.Now().Add(-5*time.Minute), leaseSeconds)
	unlabelled := handLease("e2e-unlabelled-expired", map[string]string{"app": "other"}, time.Now().Add(-5*time.Minute), leaseSeconds)
	for _, l := range []*coordinationv1.Lease{expired, unlabelled} {
		if _, err := leases.Create(ctx, l, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create lease %s: %v", l.Name, err)
		}
	}
	defer func() { _ = leases.Delete(context.Background(), unlabelled.Name, metav1.DeleteOptions{}) }()

	serverID := "e2e-" + strings.ToLower(s.m.name)
	ours := leaseNamePrefix + serverID
	manifestArgs := s.k.serverArgs
	defer func() { s.restoreServer(t, manifestArgs) }()
	s.k.server.stop(syscall.SIGTERM, 30*time.Second)
	s.k.serverArgs = append(append([]string{}, manifestArgs...), "--enable-lease-controller", "--server-id="+serverID)
	s.k.startServer(t)
	first := s.serverLease(t, ctx, ours, serverID)
	s.leaseRenewed(t, ctx, ours, first.Spec.RenewTime.Time)
	s.expiredLeaseCollected(t, ctx, expired.Name, unlabelled.Name)

	agent, before := s.leaseCountingAgent(t, ctx)
	defer agent.stop(syscall.SIGKILL, time.Second)
	s.agentCounts(t, agent, 1, before)
	// A second server's Lease, made by hand, valid for 10 s: counted at
	// once (watch), then not, once it expired (the agent's clock alone).
	manual := handLease(leaseNamePrefix+"e2e-by-hand", labels, time.Now(), 10)
	if _, err := leases.Create(ctx, manual, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = leases.Delete(context.Background(), manual.Name, metav1.DeleteOptions{}) }()
	s.agentCounts(t, agent, 2, before)
	s.agentCounts(t, agent, 1, before)
	text := scrape(t, http.DefaultClient, agentAdminURL(agent))
	lists := sumMetric(text, "konnectivity_network_proxy_agent_lease_lists_total", map[string]string{"http_response_code": "200"})
	watches := sumMetric(text, "konnectivity_network_proxy_agent_lease_watches_total", map[string]string{"http_response_code": "200"})
	if lists < 1 || watches < 1 {
		t.Fatalf("agent lease metrics: %v lists, %v watches answered 200", lists, watches)
	}

	stopped := time.Now()
	s.k.server.stop(syscall.SIGTERM, 30*time.Second)
	_, err := leases.Get(ctx, ours, metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("after a graceful stop, Get %s: %v (want NotFound)\nserver log:\n%s", ours, err, s.k.server.tail(20))
	}
	t.Logf("RESULT %s: graceful stop took %v; the server's Lease %s was deleted by then (%s)", s.m.name,
		time.Since(stopped).Round(time.Millisecond), ours, strings.TrimSpace(findLine(s.k.server.tail(50), "deleted this server's lease")))
	s.agentCounts(t, agent, 0, before)
}

// serverLease waits for the server's Lease and checks it is upstream's.
func (s *scenarios) serverLease(t *testing.T, ctx context.Context, name, serverID string) *coordinationv1.Lease {
	t.Helper()
	var lease *coordinationv1.Lease
	err := waitFor("the server's Lease "+name, 20*time.Second, s.k.server, func() error {
		var err error
		lease, err = s.a.client.CoordinationV1().Leases(leaseNamespace).Get(ctx, name, metav1.GetOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("%v\nserver log:\n%s", err, s.k.server.tail(20))
	}
	spec := lease.Spec
	switch {
	case lease.Labels[leaseLabelKey] != leaseLabelValue || len(lease.Labels) != 1:
		t.Fatalf("labels %v, want %s=%s", lease.Labels, leaseLabelKey, leaseLabelValue)
	case spec.HolderIdentity == nil || *spec.HolderIdentity != serverID:
		t.Fatalf("holderIdentity %v, want %s", spec.HolderIdentity, serverID)
	case spec.LeaseDurationSeconds == nil || *spec.LeaseDurationSeconds != leaseSeconds:
		t.Fatalf("leaseDurationSeconds %v, want %d", spec.LeaseDurationSeconds, leaseSeconds)
	case spec.RenewTime == nil || time.Since(spec.RenewTime.Time) > 10*time.Second:
		t.Fatalf("renewTime %v, want about now", spec.RenewTime)
	}
	t.Logf("RESULT %s: Lease %s/%s labels %v holder %s duration %d s renewTime %s", s.m.name, leaseNamespace, name,
		lease.Labels, *spec.HolderIdentity, *spec.LeaseDurationSeconds, spec.RenewTime.Format(time.RFC3339Nano))
	return lease
}

// leaseRenewed waits for the Lease's renewTime to move past first.
func (s *scenarios) leaseRenewed(t *testing.T, ctx context.Context, name string, first time.Time) {
	t.Helper()
	var renewed time.Time
	err := waitFor("the server's Lease to be renewed", renewBound, s.k.server, func() error {
		lease, err := s.a.client.CoordinationV1().Leases(leaseNamespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if renewed = lease.Spec.RenewTime.Time; renewed.After(first) {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatalf("%v\nserver log:\n%s", err, s.k.server.tail(20))
	}
	t.Logf("RESULT %s: renewTime advanced by %v", s.m.name, renewed.Sub(first).Round(time.Millisecond))
}

// expiredLeaseCollected: the expired Lease with the servers' label is
// deleted (and counted), the unlabelled one is not.
func (s *scenarios) expiredLeaseCollected(t *testing.T, ctx context.Context, expired, unlabelled string) {
	t.Helper()
	leases := s.a.client.CoordinationV1().Leases(leaseNamespace)
	err := waitFor("the expired Lease to be deleted", renewBound, s.k.server, func() error {
		if _, err := leases.Get(ctx, expired, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\nserver log:\n%s", err, s.k.server.tail(20))
	}
	if _, err := leases.Get(ctx, unlabelled, metav1.GetOptions{}); err != nil {
		t.Fatalf("the unlabelled expired Lease: %v (the GC must only delete its label's)", err)
	}
	text := scrape(t, http.DefaultClient, s.k.adminURL+"/metrics")
	culled := sumMetric(text, "konnectivity_network_proxy_server_culled_leases_count", nil)
	deletes := sumMetric(text, "konnectivity_network_proxy_server_lease_delete_total", map[string]string{"http_status_code": "200"})
	if culled < 1 || deletes < 1 {
		t.Fatalf("culled_leases_count %v, lease_delete_total{http_status_code=\"200\"} %v", culled, deletes)
	}
	t.Logf("RESULT %s: expired labelled Lease deleted (%s); unlabelled one kept", s.m.name,
		strings.TrimSpace(findLine(s.k.server.tail(50), "deleted an expired server lease")))
}

// leaseCountingAgent starts one more konnq-agent with --count-server-leases,
// on the host (kube-apiserver listens on loopback) with its own ports and
// id and the agent ServiceAccount's API credentials. It returns the agent
// and how many count lines its log already had.
func (s *scenarios) leaseCountingAgent(t *testing.T, ctx context.Context) (*proc, int) {
	t.Helper()
	e := s.k.env
	kubeconfig := agentKubeconfig(t, ctx, e, s.a)
	args := []string{konnqPath(t, "konnq-agent")}
	for _, a := range s.k.agentArgs {
		switch {
		case strings.HasPrefix(a, "--admin-server-port="):
			a = "--admin-server-port=" + strconv.Itoa(freePort(t))
		case strings.HasPrefix(a, "--health-server-port="):
			a = "--health-server-port=" + strconv.Itoa(freePort(t))
		}
		args = append(args, a)
	}
	args = append(args, "--agent-id=lease-counter", "--count-server-leases", "--kubeconfig="+kubeconfig)
	name := "konnq-agent-leases-" + s.k.name
	before := 0
	if data, err := os.ReadFile(filepath.Join(e.logDir, name+".log")); err == nil {
		before = strings.Count(string(data), "server leases counted:")
	}
	p, err := startProc(e.logDir, name, args)
	if err != nil {
		t.Fatal(err)
	}
	return p, before
}

// agentAdminURL is the /metrics URL of an agent started by leaseCountingAgent.
func agentAdminURL(p *proc) string {
	for _, a := range p.cmd.Args {
		if port, ok := strings.CutPrefix(a, "--admin-server-port="); ok {
			return "http://127.0.0.1:" + port + "/metrics"
		}
	}
	return ""
}

// countLines is the "server leases counted: N" lines of the agent's log.
func countLines(p *proc) []string {
	var lines []string
	for _, l := range strings.Split(p.tail(100000), "\n") {
		if strings.Contains(l, "server leases counted:") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return lines
}

// agentCounts waits until the agent's last count line (one after the
// before lines of earlier runs of its log) says n.
func (s *scenarios) agentCounts(t *testing.T, agent *proc, n, before int) {
	t.Helper()
	want := fmt.Sprintf("server leases counted: %d", n)
	start := time.Now()
	err := waitFor(agent.name+" to log "+want, 30*time.Second, agent, func() error {
		lines := countLines(agent)
		if len(lines) > before && strings.HasSuffix(lines[len(lines)-1], want) {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatalf("%v\nagent log:\n%s", err, agent.tail(20))
	}
	t.Logf("RESULT %s: the lease-counting agent logs %q (%v)", s.m.name, want, time.Since(start).Round(time.Millisecond))
	// It aims for that many servers (at least one, as upstream's agent).
	target := float64(max(n, 1))
	var known float64
	err = waitFor(agent.name+" to aim for the counted servers", 30*time.Second, agent, func() error {
		known = sumMetric(scrape(t, http.DefaultClient, agentAdminURL(agent)), "konnectivity_network_proxy_agent_known_server_count", nil)
		if known == target {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatalf("known_server_count %v, want %v\nagent log:\n%s", known, target, agent.tail(20))
	}
}

// restoreServer restarts konnq-server with its manifest's args and waits
// for the tunnel to work again, for the scenarios that follow.
func (s *scenarios) restoreServer(t *testing.T, args []string) {
	s.k.server.stop(syscall.SIGTERM, 30*time.Second)
	s.k.serverArgs = args
	s.k.startServer(t)
	s.recover(t)
}
