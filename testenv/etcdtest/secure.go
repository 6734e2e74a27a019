package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/internal/pki"
)

// Secure is a member that serves TLS and requires client certificates
// signed by CA, as weft's secure clusters run etcd; Identity issues them.
type Secure struct {
	*Server
	CA     *pki.CA
	CAFile string
	// Dir holds ca.crt and ca.key (the layout of `weftctl certs`).
	Dir string
}

// NewSecure starts a secure member for t (closed when t ends). Auth is
// off until someone turns it on (etcdauth.Setup).
func NewSecure(t testing.TB) *Secure {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("etcdtest-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFiles := pki.FilesIn(dir, "ca")
	if err := ca.Write(caFiles, false); err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue(pki.Request{CommonName: "etcd", Hosts: []string{"127.0.0.1", "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	srvFiles := pki.FilesIn(dir, "server")
	if err := srv.Write(srvFiles, false); err != nil {
		t.Fatal(err)
	}
	s, err := StartTLS(dir, TLS{CertFile: srvFiles.Cert, KeyFile: srvFiles.Key, ClientCAFile: caFiles.Cert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return &Secure{Server: s, CA: ca, CAFile: caFiles.Cert, Dir: dir}
}

// Identity issues a client certificate whose CN is user and returns the
// connection settings that present it.
func (s *Secure) Identity(t testing.TB, user string) etcdconn.Config {
	t.Helper()
	p, err := s.CA.Issue(pki.Request{CommonName: user, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	f := pki.FilesIn(t.TempDir(), "client")
	if err := p.Write(f, false); err != nil {
		t.Fatal(err)
	}
	return etcdconn.Config{Endpoints: s.Endpoints, CA: s.CAFile, Cert: f.Cert, Key: f.Key, DialTimeout: 5 * time.Second}
}

// ClientAs returns a client that authenticates as user (closed when t
// ends).
func (s *Secure) ClientAs(t testing.TB, user string) *clientv3.Client {
	t.Helper()
	c, err := etcdconn.New(s.Identity(t, user))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Ctx is a context for one test step.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
