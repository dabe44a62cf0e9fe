package e2e

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pki is a kubeadm-shaped set of credentials in one directory: RSA keys in
// PKCS#1 PEM ("RSA PRIVATE KEY"), as kubeadm writes them, since the official
// manifests hand kubeadm's apiserver.crt/key to the Konnectivity server.
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  *rsa.PrivateKey
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// newPKI writes ca.crt/key, apiserver.crt/key (serving cert with the given
// IP SANs plus the usual kubernetes names), apiserver-kubelet-client.crt/key,
// konnectivity-server.crt/key (CN system:konnectivity-server, the server's
// kubeconfig identity) and the ServiceAccount signing pair sa.key/sa.pub.
func newPKI(t testing.TB, dir string, apiserverIPs []net.IP) *pki {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	caKey := rsaKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kubernetes"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: dir, caCert: caCert, caKey: caKey}
	writePEM(t, p.path("ca.crt"), "CERTIFICATE", der)
	writePEM(t, p.path("ca.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(caKey))

	p.issue(t, "apiserver", pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}, apiserverIPs)
	p.issue(t, "apiserver-kubelet-client",
		pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		x509.ExtKeyUsageClientAuth, nil, nil)
	p.issue(t, "konnectivity-server", pkix.Name{CommonName: "system:konnectivity-server"},
		x509.ExtKeyUsageClientAuth, nil, nil)

	saKey := rsaKey(t)
	writePEM(t, p.path("sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey))
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.path("sa.pub"), "PUBLIC KEY", pub)
	return p
}

// issue writes name.crt and name.key signed by the CA.
func (p *pki) issue(t testing.TB, name string, subject pkix.Name, usage x509.ExtKeyUsage, dns []string, ips []net.IP) {
	t.Helper()
	key := rsaKey(t)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.path(name+".crt"), "CERTIFICATE", der)
	writePEM(t, p.path(name+".key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))
}

func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
