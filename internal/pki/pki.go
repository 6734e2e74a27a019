// Package pki issues the X.509 certificates a small or test weft cluster
// needs: one CA, etcd's serving certificate, and one client certificate
// per etcd user (the controller, the operators, every node), whose common
// name is the etcd user name. weftctl's `certs` verbs and testenv use it;
// a production cluster may use openssl, cfssl or its own CA instead (see
// docs/controlplane.md): nothing in weft depends on how a certificate was
// made, only on its CN and its CA.
//
// Keys are ECDSA P-256 in PKCS #8 PEM; certificates are PEM. Serial
// numbers are random (128 bits).
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Default validities.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
)

// ErrExists is returned (wrapped) when a file to write is already there:
// the package never replaces a key or certificate unless told to.
var ErrExists = errors.New("pki: file exists")

// CA is a certificate authority: its certificate and signing key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// PEM is Cert encoded, as written to the CA file.
	PEM []byte
}

// NewCA makes a self-signed CA named cn, valid for validity
// (DefaultCAValidity when zero) from an hour ago, so a clock slightly
// behind still accepts it.
func NewCA(cn string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		validity = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("sign CA %s: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA %s: %w", cn, err)
	}
	return &CA{Cert: cert, Key: key, PEM: pemBlock("CERTIFICATE", der)}, nil
}

// LoadCA reads a CA certificate and its key (PEM; the key PKCS #8, SEC 1
// EC or PKCS #1 RSA).
func LoadCA(certFile, keyFile string) (*CA, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	cert, err := ParseCertificate(cb)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("CA certificate %s: %q is not a CA", certFile, cert.Subject.CommonName)
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	key, err := parseKey(kb)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyFile, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("CA key %s does not belong to certificate %s", keyFile, certFile)
	}
	return &CA{Cert: cert, Key: key, PEM: cb}, nil
}

// Request describes a certificate to issue.
type Request struct {
	// CommonName is the subject's CN: for a client certificate, the etcd
	// user it authenticates as.
	CommonName string
	// Organization is the subject's O (Kubernetes reads groups from it).
	Organization []string
	// Hosts (IP addresses or DNS names) make it a serving certificate too,
	// valid for those names. A certificate is always good for client
	// authentication.
	Hosts []string
	// Validity from an hour ago (DefaultCertValidity when zero).
	Validity time.Duration
}

// Pair is an issued certificate and its private key, PEM encoded.
type Pair struct {
	Cert, Key []byte
}

// CheckHost checks a name a serving certificate is issued for: an IP
// address (without a zone) or a DNS name (labels of letters, digits, '-'
// and '_' of 1..63 characters, not beginning or ending with '-', at most
// 253 characters; the first label may be the wildcard '*'). Anything else
// (a mistyped address such as 10.0.0.300, a CIDR, a name with a space)
// would be written into the certificate as a DNS name no client dials,
// and the mistake would show only later, as a TLS "wrong name".
func CheckHost(h string) error {
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Zone() != "" {
			return fmt.Errorf("%q has a zone, which no certificate names", h)
		}
		return nil
	}
	if h == "" || len(h) > 253 {
		return fmt.Errorf("%q: a DNS name has 1..253 characters", h)
	}
	labels := strings.Split(strings.TrimSuffix(h, "."), ".")
	numeric := true
	for i, l := range labels {
		if l == "*" && i == 0 && len(labels) > 1 {
			numeric = false
			continue
		}
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q is neither an IP address nor a DNS name (label %q)", h, l)
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("%q is neither an IP address nor a DNS name (it contains %q)", h, r)
			}
			if r < '0' || r > '9' {
				numeric = false
			}
		}
	}
	if numeric {
		// All digits and dots: an address typed wrong, not a name.
		return fmt.Errorf("%q is not an IP address", h)
	}
	return nil
}

// Issue signs a new key pair for r.
func (ca *CA) Issue(r Request) (Pair, error) {
	if r.CommonName == "" {
		return Pair{}, errors.New("issue certificate: empty common name")
	}
	if r.Validity <= 0 {
		r.Validity = DefaultCertValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("generate key for %s: %w", r.CommonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return Pair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: r.CommonName, Organization: r.Organization},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(r.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	if len(r.Hosts) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, h := range r.Hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return Pair{}, fmt.Errorf("sign certificate for %s: %w", r.CommonName, err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, fmt.Errorf("encode key of %s: %w", r.CommonName, err)
	}
	return Pair{Cert: pemBlock("CERTIFICATE", der), Key: pemBlock("PRIVATE KEY", kb)}, nil
}

// Files are where a certificate and its key live on disk.
type Files struct {
	Cert, Key string
}

// FilesIn names dir/name.crt and dir/name.key.
func FilesIn(dir, name string) Files {
	return Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
}

// Write writes p to f: the certificate 0644, the key 0600. Without
// replace it refuses (ErrExists) when either file exists, and writes
// nothing.
func (p Pair) Write(f Files, replace bool) error {
	if !replace {
		for _, path := range []string{f.Cert, f.Key} {
			if _, err := os.Lstat(path); err == nil {
				return fmt.Errorf("write %s: %w", path, ErrExists)
			}
		}
	}
	if err := writeFile(f.Key, p.Key, 0o600); err != nil {
		return err
	}
	return writeFile(f.Cert, p.Cert, 0o644)
}

// WriteCA writes the CA's certificate (0644) and key (0600) like
// Pair.Write.
func (ca *CA) Write(f Files, replace bool) error {
	kb, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return fmt.Errorf("encode CA key: %w", err)
	}
	return Pair{Cert: ca.PEM, Key: pemBlock("PRIVATE KEY", kb)}.Write(f, replace)
}

// ParseCertificate decodes the first certificate of a PEM bundle.
func ParseCertificate(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM certificate")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// ReadCommonName returns the CN of the first certificate in file.
func ReadCommonName(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read certificate: %w", err)
	}
	c, err := ParseCertificate(b)
	if err != nil {
		return "", fmt.Errorf("certificate %s: %w", file, err)
	}
	return c.Subject.CommonName, nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%T cannot sign", k)
		}
		return s, nil
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	x, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && x.Equal(b)
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("make serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writeFile(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// Into a temporary file beside it, then renamed: a reader never sees
	// half a key, and the mode is right before the content is there.
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
