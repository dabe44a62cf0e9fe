package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
)

// The files of deploy/ that the suite reads.
const (
	serverManifest     = "deploy/konnq-server.yaml"
	agentManifest      = "deploy/konnq-agent.yaml"
	rbacManifest       = "deploy/rbac.yaml"
	egressGRPC         = "deploy/egress-selector-configuration.yaml"
	egressHTTPConnect  = "deploy/egress-selector-configuration-httpconnect.yaml"
	kustomization      = "deploy/kustomization.yaml"
	kubeconfigTemplate = "deploy/konnectivity-server.conf.template"
	// The placeholder for the control-plane address in the agent's args.
	serverHostPlaceholder = "konnq-server.example.internal"
	// The socket path every manifest and egress configuration uses.
	manifestSocket = "/etc/kubernetes/konnectivity-server/konnectivity-server.socket"
)

// repoPath is a file of the repository (tests run in e2e/).
func repoPath(rel string) string { return filepath.Join("..", rel) }

// decodeManifest decodes every YAML document of a deploy/ file into typed
// objects; an unknown kind or a field the API does not have fails the test.
func decodeManifest(t testing.TB, rel string) []runtime.Object {
	t.Helper()
	data, err := os.ReadFile(repoPath(rel))
	if err != nil {
		t.Fatal(err)
	}
	var objs []runtime.Object
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%s, document %d: %v", rel, i+1, err)
		}
		objs = append(objs, obj)
	}
	return objs
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// podSpecOf returns the pod template of the first Pod or DaemonSet.
func podSpecOf(t testing.TB, rel string) corev1.PodSpec {
	t.Helper()
	for _, obj := range decodeManifest(t, rel) {
		switch o := obj.(type) {
		case *corev1.Pod:
			return o.Spec
		case *appsv1.DaemonSet:
			return o.Spec.Template.Spec
		}
	}
	t.Fatalf("%s: no Pod or DaemonSet", rel)
	return corev1.PodSpec{}
}

// containerArgs returns the args of the named container of a manifest.
func containerArgs(t testing.TB, rel, container string) []string {
	t.Helper()
	spec := podSpecOf(t, rel)
	for _, c := range spec.Containers {
		if c.Name == container {
			return c.Args
		}
	}
	t.Fatalf("%s: no container %q", rel, container)
	return nil
}

// argMap rewrites a manifest's args for the test: a value equal to a key of
// exact, or starting with a key of prefix, is replaced; everything else is
// passed through verbatim. It returns the new args and how many were changed.
type argMap struct {
	exact  map[string]string // "--flag=value" → "--flag=value'"
	prefix map[string]string // path prefix inside a value → test path
}

func (m argMap) apply(args []string) ([]string, int) {
	out := make([]string, len(args))
	changed := 0
	for i, a := range args {
		out[i] = a
		if v, ok := m.exact[a]; ok {
			out[i] = v
		} else if flag, value, ok := strings.Cut(a, "="); ok {
			for from, to := range m.prefix {
				if rest, ok := strings.CutPrefix(value, from); ok {
					out[i] = flag + "=" + to + rest
					break
				}
			}
		}
		if out[i] != a {
			changed++
		}
	}
	return out, changed
}

// egressConfig writes deploy/'s egress selector configuration with the
// socket path mapped to the test's socket and returns the file's path.
func egressConfig(t testing.TB, rel, socket, dir string) string {
	t.Helper()
	data, err := os.ReadFile(repoPath(rel))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(manifestSocket)) {
		t.Fatalf("%s does not name %s", rel, manifestSocket)
	}
	out := filepath.Join(dir, filepath.Base(rel))
	if err := os.WriteFile(out, bytes.ReplaceAll(data, []byte(manifestSocket), []byte(socket)), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// applyManifests creates the cluster objects of deploy/ on the real
// apiserver: what needs no kubelet is created (RBAC, ServiceAccount, the
// DaemonSet, which stays without pods here), and the static pod is sent as
// a server-side dry run, which runs validation and admission in full.
func applyManifests(t testing.TB, ctx context.Context, a *apiserver) {
	t.Helper()
	create := metav1.CreateOptions{FieldValidation: "Strict"}
	dryRun := metav1.CreateOptions{FieldValidation: "Strict", DryRun: []string{metav1.DryRunAll}}
	// No controller-manager here: create the ServiceAccount its controller
	// would, which admission of a (non-mirror) pod looks up.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "kube-system"}}
	if _, err := a.client.CoreV1().ServiceAccounts("kube-system").Create(ctx, sa, create); err != nil {
		t.Fatalf("kube-system/default ServiceAccount: %v", err)
	}
	for _, rel := range []string{rbacManifest, agentManifest, serverManifest} {
		for _, obj := range decodeManifest(t, rel) {
			var err error
			switch o := obj.(type) {
			case *rbacv1.ClusterRoleBinding:
				_, err = a.client.RbacV1().ClusterRoleBindings().Create(ctx, o, create)
			case *corev1.ServiceAccount:
				_, err = a.client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, create)
			case *appsv1.DaemonSet:
				_, err = a.client.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, create)
			case *corev1.Pod:
				_, err = a.client.CoreV1().Pods(o.Namespace).Create(ctx, o, dryRun)
			default:
				err = fmt.Errorf("the suite does not know how to apply %T", obj)
			}
			if err != nil {
				t.Fatalf("%s: %T: %v", rel, obj, err)
			}
		}
	}
}

// kustomizationResources lists deploy/kustomization.yaml's resources.
func kustomizationResources(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(repoPath(kustomization))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yamlUnmarshal(data, &k); err != nil {
		t.Fatalf("%s: %v", kustomization, err)
	}
	return k.Resources
}
