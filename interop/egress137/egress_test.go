// Package egress137 drives konnq-server through kube-apiserver's own egress
// dialer: k8s.io/apiserver/pkg/server/egressselector at v0.37.0 (Kubernetes
// 1.37), configured from an EgressSelectorConfiguration file and set up the
// way kube-apiserver does it (EgressSelectorOptions.ApplyTo: read, validate,
// NewEgressSelector), then Lookup(cluster) for the dial function. It covers
// what the konnectivity-client suite cannot: proxyProtocol HTTPConnect over
// the Unix socket and over TCP with mutual TLS, and the configurations
// kube-apiserver refuses.
package egress137

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apiserver/pkg/server/egressselector"
	interop "konnq.dev/interop/common"
)

// TestSelectedVersions checks the module builds kube-apiserver 1.37's
// egress selector on the stack Kubernetes 1.37 pins.
func TestSelectedVersions(t *testing.T) {
	want := map[string]string{
		"k8s.io/apiserver":       "v0.37.0",
		interop.ClientModule:     "v0.36.0",
		"google.golang.org/grpc": "v1.82.1",
	}
	args := []string{"list", "-m", "-f", "{{.Path}} {{.Version}}"}
	for m := range want {
		args = append(args, m)
	}
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, version, _ := strings.Cut(line, " ")
		t.Logf("module selects %s %s", path, version)
		if want[path] != version {
			t.Errorf("module selects %s %s, want %s", path, version, want[path])
		}
	}
}

// connection is the `connection:` block of the cluster egress selection.
type connection string

func udsConnection(protocol, socket string) connection {
	return connection(fmt.Sprintf(`
    proxyProtocol: %s
    transport:
      uds:
        udsName: %s`, protocol, socket))
}

// tcpConnection is an https:// TCP transport whose client certificate is
// certDir's agent pair (client-auth EKU); the server is verified with the
// CA of caDir. tlsServerName is left out, so crypto/tls checks the URL's
// host, 127.0.0.1, against the server certificate's IP SANs.
func tcpConnection(protocol, addr, caDir, certDir string) connection {
	return connection(fmt.Sprintf(`
    proxyProtocol: %s
    transport:
      tcp:
        url: https://%s
        tlsConfig:
          caBundle: %s
          clientCert: %s
          clientKey: %s`, protocol, addr,
		filepath.Join(caDir, "ca.crt"), filepath.Join(certDir, "agent.crt"), filepath.Join(certDir, "agent.key")))
}

// configFile writes an EgressSelectorConfiguration with one selection,
// cluster, using c.
func configFile(t *testing.T, c connection) string {
	t.Helper()
	yaml := `apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:` + string(c) + "\n"
	path := filepath.Join(t.TempDir(), "egress-selector.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// applyConfig does what kube-apiserver does with
// --egress-selector-config-file (EgressSelectorOptions.ApplyTo): read,
// validate, build the selector. It returns the cluster dialer, or the error
// kube-apiserver would refuse to start with.
func applyConfig(path string) (utilnet.DialFunc, error) {
	cfg, err := egressselector.ReadEgressSelectorConfiguration(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read egress selector config: %v", err)
	}
	if errs := egressselector.ValidateEgressSelectorConfiguration(cfg); len(errs) > 0 {
		return nil, fmt.Errorf("failed to validate egress selector configuration: %v", errs.ToAggregate())
	}
	sel, err := egressselector.NewEgressSelector(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to setup egress selector: %v", err)
	}
	// What kube-apiserver's proxy, kubelet and webhook clients call.
	dial, err := sel.Lookup(egressselector.Cluster.AsNetworkContext())
	if err != nil {
		return nil, err
	}
	if dial == nil {
		return nil, fmt.Errorf("no dialer for the cluster egress")
	}
	return dial, nil
}

// clusterDialer is kube-apiserver's cluster egress dialer for c.
func clusterDialer(t *testing.T, c connection) utilnet.DialFunc {
	t.Helper()
	dial, err := applyConfig(configFile(t, c))
	if err != nil {
		t.Fatal(err)
	}
	return dial
}

// TestGRPCOverTCPIsNotAKubeAPIServerConfiguration records why the gRPC TCP
// frontend is tested with the konnectivity-client directly (common/mtls.go,
// GRPCMutualTLS in every kcNNN module): kube-apiserver 1.37 refuses
// proxyProtocol GRPC with a TCP transport, in validation and again in
// NewEgressSelector.
func TestGRPCOverTCPIsNotAKubeAPIServerConfiguration(t *testing.T) {
	dir := t.TempDir()
	interop.WriteCerts(t, dir)
	_, err := applyConfig(configFile(t, tcpConnection("GRPC", "127.0.0.1:1", dir, dir)))
	t.Logf("kube-apiserver 1.37 with proxyProtocol GRPC over tcp: %v", err)
	if err == nil || !strings.Contains(err.Error(), "UDS must be set with GRPC") {
		t.Fatalf("want the validation error \"UDS must be set with GRPC\", got %v", err)
	}
}

// TestGRPCOverUDS is kube-apiserver's usual configuration (proxyProtocol
// GRPC, uds) through its own dialer: a 1 MiB echo and net/http.
func TestGRPCOverUDS(t *testing.T) {
	t.Run("Echo1MiBOneWrite", func(t *testing.T) {
		h := interop.Start(t, interop.Options{})
		echo(t, h, clusterDialer(t, udsConnection("GRPC", h.Socket)), 1<<20, 1<<20)
	})
	t.Run("HTTPOverDialer", func(t *testing.T) {
		h := interop.Start(t, interop.Options{})
		interop.HTTPOverDialer(t, h, clusterDialer(t, udsConnection("GRPC", h.Socket)))
	})
}

// dialCtx bounds a dial. (kube-apiserver's HTTPConnect dialer uses the
// context only for connecting to the proxy, not for the CONNECT exchange;
// the tests bound that with interop.Within.)
func dialCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), dialBound)
}
