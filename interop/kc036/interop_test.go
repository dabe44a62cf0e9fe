// Package kc036 runs the konnq interop suite with konnectivity-client v0.36.0 and
// the grpc-go that Kubernetes 1.37's kube-apiserver links (see go.mod).
package kc036

import (
	"testing"

	interop "konnq.dev/interop/common"
)

func TestKonnectivityClient0360(t *testing.T) {
	interop.Run(t, interop.Expect{ClientVersion: "v0.36.0", GRPCVersion: "v1.82.1"})
}
