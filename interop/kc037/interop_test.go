// Package kc037 runs the konnq interop suite with konnectivity-client v0.37.0,
// the first release with the reusable tunnel (CreateGRPCTunnel), and tests
// that tunnel. No Kubernetes release pins v0.37.0 yet; the other libraries
// are those of Kubernetes 1.37 (see go.mod).
package kc037

import (
	"testing"

	interop "konnq.dev/interop/common"
)

func TestKonnectivityClient0370(t *testing.T) {
	interop.Run(t, interop.Expect{ClientVersion: "v0.37.0", GRPCVersion: "v1.82.1"})
}
