package interop

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
)

// ClientTLS is the TLS configuration of a client of the TCP frontend: it
// trusts caFile for the server, names the server "localhost" (a SAN of the
// server certificate), and presents certFile/keyFile unless both are empty.
func ClientTLS(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", caFile)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// NewTLSTunnel creates a single-use tunnel to the gRPC frontend over TCP
// with mutual TLS: the options kube-apiserver uses for its UDS tunnel, with
// TLS transport credentials instead of insecure ones and grpc-go's own TCP
// dialer. (kube-apiserver itself cannot do this: its egress selector
// accepts proxyProtocol GRPC only with a UDS transport.)
func NewTLSTunnel(ctx context.Context, addr string, cfg *tls.Config) (client.Tunnel, error) {
	return client.CreateSingleUseGrpcTunnelWithContext(ctx, context.TODO(), addr,
		grpc.WithBlock(),
		grpc.WithReturnConnectionError(),
		grpc.WithTimeout(30*time.Second),
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
	)
}

// grpcMutualTLS runs the gRPC frontend on TCP with mutual TLS against one
// server: an echo with a client certificate of the server's CA, then a
// client without a certificate and one with a certificate of another CA,
// which must both fail without leaving anything open on the server.
func grpcMutualTLS(t *testing.T) {
	h := Start(t, Options{TCPFrontend: true})
	pki := func(name string) string { return filepath.Join(h.PKI, name) }
	target := EchoTarget(t)
	_, port, _ := net.SplitHostPort(h.TCPAddr)

	t.Run("ClientCertOfServerCA", func(t *testing.T) {
		cfg := ClientTLS(t, pki("ca.crt"), pki("agent.crt"), pki("agent.key"))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tunnel, err := NewTLSTunnel(ctx, h.TCPAddr, cfg)
		if err != nil {
			t.Fatalf("tunnel to %s with a client certificate of the server's CA: %v", h.TCPAddr, err)
		}
		conn, err := tunnel.DialContext(ctx, "tcp", target.Addr)
		if err != nil {
			t.Fatalf("dial %s: %v", target.Addr, err)
		}
		for _, c := range []struct{ size, chunk int }{{1 << 20, 1 << 20}, {16 << 20, 4 << 20}} {
			rtt := Echo(t, conn, RandomBytes(c.size, uint64(c.size+1)), c.chunk, 60*time.Second)
			t.Logf("echoed %d MiB in %d-byte writes over TCP+mTLS in %v (%s each way)",
				c.size>>20, c.chunk, rtt.Round(time.Millisecond), mibps(c.size, rtt))
		}
		closeErr, took := timedClose(t, conn)
		CheckCloseErr(t, closeErr)
		t.Logf("conn.Close() took %v, returned %v", took.Round(time.Microsecond), closeErr)
		h.WaitIdle(t, idleBound)
		WaitNoServerSockets(t, port, idleBound)
	})

	refused := func(t *testing.T, cfg *tls.Config) {
		t.Helper()
		// kube-apiserver's options block up to 30 s, retrying the
		// handshake; 2 s show the refusal (several attempts) without the wait.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		start := time.Now()
		tunnel, err := NewTLSTunnel(ctx, h.TCPAddr, cfg)
		if err == nil {
			conn, dialErr := tunnel.DialContext(ctx, "tcp", target.Addr)
			if dialErr == nil {
				conn.Close()
				t.Fatalf("tunnel and dial to %s succeeded", target.Addr)
			}
			t.Logf("tunnel created, dial failed after %v: %v", time.Since(start).Round(time.Millisecond), dialErr)
		} else {
			// The server ends the connection when the handshake fails;
			// grpc-go reports whatever it hit first (with TLS 1.3 the client
			// has already finished its side and written its preface, so
			// often "broken pipe" rather than the alert).
			t.Logf("tunnel creation failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
			if strings.Contains(err.Error(), "connection refused") {
				t.Errorf("the frontend refused the TCP connection itself: %v", err)
			}
		}
		h.WaitIdle(t, idleBound)
		WaitNoServerSockets(t, port, idleBound)
	}
	t.Run("NoClientCert", func(t *testing.T) {
		refused(t, ClientTLS(t, pki("ca.crt"), "", ""))
	})
	t.Run("ClientCertOfOtherCA", func(t *testing.T) {
		other := filepath.Join(h.PKI, "..", "other-pki")
		WriteCerts(t, other)
		// The client trusts the server (real CA) but presents a
		// certificate the server's --server-ca-cert did not sign.
		refused(t, ClientTLS(t, pki("ca.crt"), filepath.Join(other, "agent.crt"), filepath.Join(other, "agent.key")))
	})
}

// ServerSocketsOn counts this host's IPv4 TCP sockets whose local port is
// port and that the server still holds open: ESTABLISHED (01) or CLOSE_WAIT
// (08, the peer has closed, the server not yet). ok is false where
// /proc/net/tcp is not available.
func ServerSocketsOn(port string) (n int, ok bool) {
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0, false
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil {
		return 0, false
	}
	suffix := fmt.Sprintf(":%04X", p)
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && strings.HasSuffix(f[1], suffix) && (f[3] == "01" || f[3] == "08") {
			n++
		}
	}
	return n, true
}

// WaitNoServerSockets waits until the server holds no connection on port
// (see ServerSocketsOn), failing after bound.
func WaitNoServerSockets(t *testing.T, port string, bound time.Duration) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		n, ok := ServerSocketsOn(port)
		if !ok || n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections on the server's port %s still ESTABLISHED or CLOSE_WAIT after %v", n, port, bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
