// Package e2e runs konnq against a real control plane: etcd and
// kube-apiserver built from their published Go modules (see tools/), with
// kube-apiserver's egress selector pointed at konnq-server's Unix socket, and
// a fake node (fakenode/) in a network namespace that the control-plane side
// cannot reach except through konnq-agent, which runs inside it.
//
// konnq-server and konnq-agent are started with the args of the manifests in
// deploy/ (only file paths, and the server's host ports, mapped to the test's
// own), so the manifests and the flags cannot drift apart.
//
// Everything lives in the tests (run.sh builds the binaries and runs
// `go test`); it needs root for network namespaces and nftables.
package e2e
