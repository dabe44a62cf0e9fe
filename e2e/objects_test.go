package e2e

import (
	"context"
	"testing"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// createService makes Service e2e/fake (ClusterIP serviceIP, no selector)
// with ports http (8080) and webhook (8443), and the EndpointSlice the
// controller would write for the pod at nodeIP.
func createService(t testing.TB, ctx context.Context, a *apiserver) {
	t.Helper()
	ports := []corev1.ServicePort{
		{Name: "http", Port: nodeHTTPPort, TargetPort: intstr.FromInt32(nodeHTTPPort), Protocol: corev1.ProtocolTCP},
		{Name: "webhook", Port: nodeWebhookPort, TargetPort: intstr.FromInt32(nodeWebhookPort), Protocol: corev1.ProtocolTCP},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "fake", Namespace: "e2e"},
		Spec:       corev1.ServiceSpec{ClusterIP: serviceIP, Ports: ports},
	}
	if _, err := a.client.CoreV1().Services("e2e").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("service: %v", err)
	}
	var slicePorts []discoveryv1.EndpointPort
	for _, p := range ports {
		slicePorts = append(slicePorts, discoveryv1.EndpointPort{Name: &p.Name, Port: &p.TargetPort.IntVal, Protocol: &p.Protocol})
	}
	ready := true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: "fake-1", Namespace: "e2e",
			Labels: map[string]string{discoveryv1.LabelServiceName: "fake"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{nodeIP},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			// The apiserver's service proxy only picks endpoints that are pods.
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "e2e", Name: "fake"},
		}},
		Ports: slicePorts,
	}
	if _, err := a.client.DiscoveryV1().EndpointSlices("e2e").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatalf("endpointslice: %v", err)
	}
}

// createWebhook registers the fake node's validating webhook for ConfigMaps
// created in namespace e2e, referenced by Service (so kube-apiserver dials
// the Service's ClusterIP through the egress selector, as for any
// in-cluster webhook).
func createWebhook(t testing.TB, ctx context.Context, a *apiserver, caBundle []byte) {
	t.Helper()
	path := "/validate"
	port := int32(nodeWebhookPort)
	byService := admissionregv1.WebhookClientConfig{
		Service:  &admissionregv1.ServiceReference{Namespace: "e2e", Name: "fake", Path: &path, Port: &port},
		CABundle: caBundle,
	}
	createConfigMapWebhook(t, ctx, a, "konnq-e2e", "webhook", byService)
}

// createConfigMapWebhook registers one validating webhook for ConfigMap
// creates in namespaces labelled konnq-e2e=label, failing closed.
func createConfigMapWebhook(t testing.TB, ctx context.Context, a *apiserver, name, label string, client admissionregv1.WebhookClientConfig) {
	t.Helper()
	fail := admissionregv1.Fail
	none := admissionregv1.SideEffectClassNone
	timeout := int32(10)
	cfg := &admissionregv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregv1.ValidatingWebhook{{
			Name:         "fakenode.konnq-e2e.example",
			ClientConfig: client,
			Rules: []admissionregv1.RuleWithOperations{{
				Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule: admissionregv1.Rule{
					APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"},
				},
			}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"konnq-e2e": label}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          &timeout,
		}},
	}
	_, err := a.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, cfg, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("webhook configuration %s: %v", name, err)
	}
}
