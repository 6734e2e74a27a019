// Package etcdtest starts a real embedded etcd member for tests. weft's
// tests never mock etcd: every test that touches the store talks to one of
// these over a real client connection on loopback.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a running embedded etcd member.
type Server struct {
	Etcd      *embed.Etcd
	Endpoints []string
	dir       string
}

// Start starts a single-member etcd on free loopback ports with its data in
// dir, and returns once it serves. Stop it with Close.
func Start(dir string) (*Server, error) { return start(dir, nil) }

// TLS is the server side of a member's client TLS: its serving
// certificate and the CA whose certificates it requires of clients (the
// CN of a client's certificate is its etcd user once auth is on).
type TLS struct {
	CertFile, KeyFile, ClientCAFile string
}

// StartTLS is Start with TLS and client certificates required on the
// client URL (https://).
func StartTLS(dir string, t TLS) (*Server, error) { return start(dir, &t) }

func start(dir string, tlsInfo *TLS) (*Server, error) {
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client, err := freeURL()
	if err != nil {
		return nil, err
	}
	peer, err := freeURL()
	if err != nil {
		return nil, err
	}
	if tlsInfo != nil {
		client.Scheme = "https"
		cfg.ClientTLSInfo.CertFile = tlsInfo.CertFile
		cfg.ClientTLSInfo.KeyFile = tlsInfo.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile = tlsInfo.ClientCAFile
		cfg.ClientTLSInfo.ClientCertAuth = true
	}
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	// Tests want fast elections and small WAL files.
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.SnapshotCount = 5000
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		e.Close()
		return nil, fmt.Errorf("start embedded etcd: not ready after 20s")
	}
	return &Server{Etcd: e, Endpoints: []string{client.String()}, dir: dir}, nil
}

// Client returns a new client of s; the caller closes it.
func (s *Server) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// Close stops the member.
func (s *Server) Close() {
	s.Etcd.Close()
}

// New starts a member for t and a client of it; both are closed when t
// ends.
func New(t testing.TB) (*Server, *clientv3.Client) {
	t.Helper()
	s, err := Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return s, c
}

// Compact compacts the store to its current revision, so watches from older
// revisions fail with ErrCompacted.
func Compact(ctx context.Context, c *clientv3.Client) (int64, error) {
	r, err := c.Get(ctx, "weft-compact-probe")
	if err != nil {
		return 0, err
	}
	_, err = c.Compact(ctx, r.Header.Revision, clientv3.WithCompactPhysical())
	return r.Header.Revision, err
}

func freeURL() (*url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("find free port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	return url.Parse("http://" + addr)
}
