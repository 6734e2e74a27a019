package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestIssueVerifiesAgainstCA(t *testing.T) {
	ca, err := NewCA("test-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue(Request{CommonName: "etcd", Hosts: []string{"10.0.0.1", "etcd0.sock"}})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue(Request{CommonName: "weft-node-n1", Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	sc, err := ParseCertificate(srv.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Verify(x509.VerifyOptions{Roots: roots, DNSName: "etcd0.sock", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("server certificate for etcd0.sock: %v", err)
	}
	if err := sc.VerifyHostname("10.0.0.1"); err != nil {
		t.Errorf("server certificate for 10.0.0.1: %v", err)
	}
	if err := sc.VerifyHostname("10.0.0.2"); err == nil {
		t.Error("server certificate valid for a host it was not issued for")
	}

	cc, err := ParseCertificate(cli.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if cc.Subject.CommonName != "weft-node-n1" {
		t.Errorf("CN %q", cc.Subject.CommonName)
	}
	if _, err := cc.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := cc.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate without hosts serves TLS")
	}
	if d := cc.NotAfter.Sub(cc.NotBefore); d != 2*time.Hour {
		t.Errorf("validity %v, want an hour back and an hour on", d)
	}
	if _, err := tls.X509KeyPair(cli.Cert, cli.Key); err != nil {
		t.Errorf("key pair does not load: %v", err)
	}

	// Another CA's certificate with the same CN does not verify: a CN is
	// worth only the CA behind it.
	other, _ := NewCA("test-ca", 0)
	forged, _ := other.Issue(Request{CommonName: "weft-node-n1"})
	fc, _ := ParseCertificate(forged.Cert)
	if _, err := fc.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a certificate of another CA verifies")
	}
}

func TestWriteRefusesToReplace(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("c", 0)
	if err != nil {
		t.Fatal(err)
	}
	f := FilesIn(dir, "ca")
	if err := ca.Write(f, false); err != nil {
		t.Fatal(err)
	}
	if err := ca.Write(f, false); !errors.Is(err, ErrExists) {
		t.Fatalf("second write: %v, want ErrExists", err)
	}
	st, err := os.Stat(f.Key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", st.Mode().Perm())
	}
	loaded, err := LoadCA(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Error("loaded CA differs")
	}
	p, err := loaded.Issue(Request{CommonName: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(FilesIn(dir, "x"), false); err != nil {
		t.Fatal(err)
	}
	if cn, err := ReadCommonName(filepath.Join(dir, "x.crt")); err != nil || cn != "x" {
		t.Errorf("CN %q, %v", cn, err)
	}
	// A key that is not the certificate's.
	if _, err := LoadCA(f.Cert, filepath.Join(dir, "x.key")); err == nil {
		t.Error("LoadCA took a key that does not belong to the certificate")
	}
	// A leaf is not a CA.
	if _, err := LoadCA(filepath.Join(dir, "x.crt"), filepath.Join(dir, "x.key")); err == nil {
		t.Error("LoadCA took a leaf certificate")
	}
}
