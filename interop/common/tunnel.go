package interop

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
)

// ClientModule is the module path of the library under test.
const ClientModule = "sigs.k8s.io/apiserver-network-proxy/konnectivity-client"

// UDSDialOption is the dialer kube-apiserver installs for a UDS egress
// (k8s.io/apiserver/pkg/server/egressselector, udsGRPCConnector.connect):
// grpc-go is given the socket path as its target and this dialer ignores it.
func UDSDialOption(socket string) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	})
}

// KubeAPIServerDialOptions are the exact options kube-apiserver 1.35 to 1.37
// pass to CreateSingleUseGrpcTunnel for a UDS egress.
func KubeAPIServerDialOptions(socket string) []grpc.DialOption {
	return []grpc.DialOption{
		UDSDialOption(socket),
		grpc.WithBlock(),
		grpc.WithReturnConnectionError(),
		grpc.WithTimeout(30 * time.Second),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
}

// NewTunnel creates a single-use tunnel as kube-apiserver does for every
// proxied connection: a new UDS connection, HTTP/2 connection and Proxy
// stream. kube-apiserver passes context.TODO() as the tunnel context (so
// only the connection's Close ends it); tieToCtx=true passes ctx instead,
// so cancelling ctx also cancels the gRPC stream.
func NewTunnel(ctx context.Context, socket string, tieToCtx bool) (client.Tunnel, error) {
	tunnelCtx := context.TODO()
	if tieToCtx {
		tunnelCtx = ctx
	}
	return client.CreateSingleUseGrpcTunnelWithContext(ctx, tunnelCtx, socket, KubeAPIServerDialOptions(socket)...)
}

// Dial opens a single-use tunnel and dials addr through it, like
// kube-apiserver's egress dialer.
func Dial(ctx context.Context, socket, addr string) (net.Conn, error) {
	tunnel, err := NewTunnel(ctx, socket, false)
	if err != nil {
		return nil, err
	}
	return tunnel.DialContext(ctx, "tcp", addr)
}

// SelectedVersions asks the go command which versions of the client library
// and of grpc-go the module under test selects, i.e. the versions `go test`
// compiled into this test binary. (Test binaries carry no module build info,
// so debug.ReadBuildInfo cannot answer.)
func SelectedVersions() (clientVersion, grpcVersion string, err error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Path}} {{.Version}}", ClientModule, "google.golang.org/grpc").Output()
	if err != nil {
		return "", "", fmt.Errorf("go list -m: %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, version, _ := strings.Cut(line, " ")
		switch path {
		case ClientModule:
			clientVersion = version
		case "google.golang.org/grpc":
			grpcVersion = version
		}
	}
	return clientVersion, grpcVersion, nil
}
