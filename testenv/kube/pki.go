package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	weftpki "github.com/weftnet/weft/internal/pki"
)

// pki is the run's certificate authority (internal/pki, the helper
// behind weftctl certs): one CA signs the API server's and etcd's serving
// certificates and every client certificate (etcd clients, kubelets, the
// admin, controller-manager and scheduler, each node's weft agent). Files
// live in dir.
type pki struct {
	dir string
	ca  *weftpki.CA
}

func newPKI(dir string) (*pki, error) {
	ca, err := weftpki.NewCA("weft-testenv-ca", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	p := &pki{dir: dir, ca: ca}
	if err := ca.Write(weftpki.FilesIn(dir, "ca"), true); err != nil {
		return nil, err
	}
	return p, nil
}

// CAFile is the CA certificate (PEM).
func (p *pki) CAFile() string { return filepath.Join(p.dir, "ca.crt") }

// pair is a certificate and its key on disk.
type pair struct{ Cert, Key string }

// issue signs a certificate for name (files name.crt, name.key): a client
// certificate with common name cn and organizations orgs, and a serving
// certificate too when hosts (IPs or DNS names) are given.
func (p *pki) issue(name, cn string, orgs []string, hosts ...string) (pair, error) {
	return p.issueTo(weftpki.FilesIn(p.dir, name), cn, orgs, hosts...)
}

// issueTo is issue into the files f.
func (p *pki) issueTo(f weftpki.Files, cn string, orgs []string, hosts ...string) (pair, error) {
	c, err := p.ca.Issue(weftpki.Request{CommonName: cn, Organization: orgs, Hosts: hosts, Validity: 24 * time.Hour})
	if err != nil {
		return pair{}, err
	}
	if err := c.Write(f, true); err != nil {
		return pair{}, err
	}
	return pair{Cert: f.Cert, Key: f.Key}, nil
}

// serviceAccountKey writes the key pair the API server signs and checks
// ServiceAccount tokens with (sa.key, sa.pub).
func (p *pki) serviceAccountKey() (pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return pair{}, fmt.Errorf("generate service account key: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return pair{}, fmt.Errorf("encode service account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return pair{}, fmt.Errorf("encode service account public key: %w", err)
	}
	out := pair{Cert: filepath.Join(p.dir, "sa.pub"), Key: filepath.Join(p.dir, "sa.key")}
	if err := writePEM(out.Key, "EC PRIVATE KEY", kb); err != nil {
		return pair{}, err
	}
	return out, writePEM(out.Cert, "PUBLIC KEY", pub)
}

func writePEM(path, typ string, der []byte) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeKubeconfig writes a kubeconfig for server with a client
// certificate.
func writeKubeconfig(path, server, caFile string, client pair) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: weft-testenv
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: user
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: weft-testenv
  context:
    cluster: weft-testenv
    user: user
current-context: weft-testenv
`, server, caFile, client.Cert, client.Key)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
