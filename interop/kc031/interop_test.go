// Package kc031 runs the konnq interop suite with konnectivity-client v0.31.2 and
// the grpc-go that Kubernetes 1.35's kube-apiserver links (see go.mod).
package kc031

import (
	"testing"

	interop "konnq.dev/interop/common"
)

func TestKonnectivityClient0312(t *testing.T) {
	interop.Run(t, interop.Expect{ClientVersion: "v0.31.2", GRPCVersion: "v1.72.2"})
}
