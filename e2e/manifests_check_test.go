package e2e

import (
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// The args of the official "Set up Konnectivity service" guide, which
// deploy/ must keep verbatim so that only the image changes for operators.
var (
	officialServerArgs = []string{
		"--logtostderr=true",
		"--uds-name=/etc/kubernetes/konnectivity-server/konnectivity-server.socket",
		"--delete-existing-uds-file",
		"--cluster-cert=/etc/kubernetes/pki/apiserver.crt",
		"--cluster-key=/etc/kubernetes/pki/apiserver.key",
		"--mode=grpc",
		"--server-port=0",
		"--agent-port=8132",
		"--admin-port=8133",
		"--health-port=8134",
		"--agent-namespace=kube-system",
		"--agent-service-account=konnectivity-agent",
		"--kubeconfig=/etc/kubernetes/konnectivity-server.conf",
		"--authentication-audience=system:konnectivity-server",
	}
	officialAgentArgs = []string{
		"--logtostderr=true",
		"--ca-cert=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
		"--proxy-server-host=" + serverHostPlaceholder,
		"--proxy-server-port=8132",
		"--admin-server-port=8133",
		"--health-server-port=8134",
		"--service-account-token-path=/var/run/secrets/tokens/konnectivity-agent-token",
	}
)

func TestManifestArgsAreTheOfficialOnes(t *testing.T) {
	if got := containerArgs(t, serverManifest, "konnq-server"); !slices.Equal(got, officialServerArgs) {
		t.Errorf("%s args:\n%s\nwant:\n%s", serverManifest, strings.Join(got, "\n"), strings.Join(officialServerArgs, "\n"))
	}
	if got := containerArgs(t, agentManifest, "konnq-agent"); !slices.Equal(got, officialAgentArgs) {
		t.Errorf("%s args:\n%s\nwant:\n%s", agentManifest, strings.Join(got, "\n"), strings.Join(officialAgentArgs, "\n"))
	}
}

// The agent port is QUIC: the static pod must publish it as UDP, and as TCP
// for agents whose network drops UDP; the agent's token must carry the
// audience the server checks.
func TestManifestPortsAndAudience(t *testing.T) {
	spec := podSpecOf(t, serverManifest)
	if !spec.HostNetwork {
		t.Errorf("%s: hostNetwork must be true", serverManifest)
	}
	protocols := map[corev1.Protocol]bool{}
	for _, p := range spec.Containers[0].Ports {
		if p.ContainerPort == 8132 && p.HostPort == 8132 {
			protocols[p.Protocol] = true
		}
	}
	for _, want := range []corev1.Protocol{corev1.ProtocolUDP, corev1.ProtocolTCP} {
		if !protocols[want] {
			t.Errorf("%s: agent port 8132 must be published as %s, got %v", serverManifest, want, protocols)
		}
	}
	found := false
	for _, v := range podSpecOf(t, agentManifest).Volumes {
		for _, s := range projectedSources(v) {
			if s.ServiceAccountToken != nil && s.ServiceAccountToken.Audience == "system:konnectivity-server" {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("%s: no projected token with audience system:konnectivity-server", agentManifest)
	}
}

func projectedSources(v corev1.Volume) []corev1.VolumeProjection {
	if v.Projected == nil {
		return nil
	}
	return v.Projected.Sources
}

// kustomization.yaml lists files that exist and decode, the agent's
// DaemonSet among them.
func TestKustomizationResources(t *testing.T) {
	res := kustomizationResources(t)
	if len(res) == 0 {
		t.Fatalf("%s lists no resources", kustomization)
	}
	daemonSet := false
	for _, r := range res {
		if _, err := os.Stat(repoPath("deploy/" + r)); err != nil {
			t.Errorf("%s: %v", kustomization, err)
			continue
		}
		for _, obj := range decodeManifest(t, "deploy/"+r) {
			if _, ok := obj.(*appsv1.DaemonSet); ok {
				daemonSet = true
			}
		}
	}
	if !daemonSet {
		t.Errorf("%s: no DaemonSet among %v", kustomization, res)
	}
}
