package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// mode is one way kube-apiserver talks to konnq-server over the Unix socket.
type mode struct {
	name       string
	serverMode string // konnq-server --mode
	egress     string // deploy/ egress selector configuration
	protocol   string // apiserver_egress_dialer_* protocol label
}

var modes = []mode{
	{name: "GRPC", serverMode: "grpc", egress: egressGRPC, protocol: "grpc"},
	{name: "HTTPConnect", serverMode: "http-connect", egress: egressHTTPConnect, protocol: "http_connect"},
}

// TestRealControlPlane runs every scenario once per mode against a real
// kube-apiserver. etcd, the node's namespace, the fake node and the cluster
// objects are shared; each mode has its own kube-apiserver (the egress
// selector configuration is read at start-up), konnq-server and konnq-agent.
func TestRealControlPlane(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	objectsMade := false
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			socket := filepath.Join(e.dir, "uds-"+m.serverMode, "konnectivity-server.socket")
			if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
				t.Fatal(err)
			}
			a := startAPIServer(t, e, egressConfig(t, m.egress, socket, filepath.Dir(socket)))
			if !objectsMade {
				objectsMade = true
				applyManifests(t, ctx, a)
				nodeObjects(t, ctx, a)
				createWebhook(t, ctx, a, e.fakenodeCA)
				e.mintAgentToken(t, ctx, a)
			}
			k := newKonnq(t, e, m.serverMode, e.writeServerKubeconfig(t, a.url))
			if k.socket != socket {
				t.Fatalf("socket %s, egress configuration names %s", k.socket, socket)
			}
			t.Cleanup(func() {
				if t.Failed() {
					k.logTails(t)
					t.Logf("kube-apiserver log (last lines):\n%s", a.proc.tail(15))
				}
			})
			start := time.Now()
			k.startServer(t)
			k.startAgent(t)
			k.waitReady(t, 30*time.Second)
			t.Logf("RESULT %s: konnq-server and konnq-agent ready %v after start", m.name, time.Since(start).Round(time.Millisecond))
			s := &scenarios{t: t, ctx: ctx, a: a, k: k, m: m}
			s.run(t)
		})
	}
}
