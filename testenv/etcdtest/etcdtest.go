// Package etcdtest starts a real embedded etcd member for tests. weft's
// tests never mock etcd: every test that touches the store talks to one of
// these over a real client connection on loopback.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"syscall"
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
	// Alias is the endpoint on StartAlias's second address ("" without).
	Alias string
	dir   string
	close sync.Once
}

// Start starts a single-member etcd on free loopback ports with its data in
// dir, and returns once it serves. Stop it with Close.
func Start(dir string) (*Server, error) { return start(dir, nil, freeURLs, "") }

// StartAlias is Start with the member also serving clients on host (a
// loopback address other than 127.0.0.1, such as 127.0.0.2), on the same
// port, as Alias: a test can do to the path to one address what it does
// not do to the other (netnstest.DropTCP), and watch from the untouched
// one.
func StartAlias(dir, host string) (*Server, error) { return start(dir, nil, freeURLs, host) }

// TLS is the server side of a member's client TLS: its serving
// certificate and the CA whose certificates it requires of clients (the
// CN of a client's certificate is its etcd user once auth is on).
type TLS struct {
	CertFile, KeyFile, ClientCAFile string
}

// StartTLS is Start with TLS and client certificates required on the
// client URL (https://).
func StartTLS(dir string, t TLS) (*Server, error) { return start(dir, &t, freeURLs, "") }

// startAttempts bounds the retries of start when a port it picked was
// taken by another process between the pick and etcd's bind.
const startAttempts = 5

// start starts a member on the client and peer URLs pick returns, and
// picks again when etcd cannot bind one of them: a free port is only free
// until somebody else binds it.
func start(dir string, tlsInfo *TLS, pick func() (client, peer *url.URL, err error), alias string) (*Server, error) {
	var err error
	for range startAttempts {
		var s *Server
		s, err = startOn(dir, tlsInfo, pick, alias)
		if !errors.Is(err, syscall.EADDRINUSE) {
			return s, err
		}
	}
	return nil, err
}

func startOn(dir string, tlsInfo *TLS, pick func() (client, peer *url.URL, err error), alias string) (*Server, error) {
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client, peer, err := pick()
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
	var aliasURL *url.URL
	if alias != "" {
		a := *client
		a.Host = net.JoinHostPort(alias, client.Port())
		aliasURL = &a
		cfg.ListenClientUrls = append(cfg.ListenClientUrls, a)
	}
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
	s := &Server{Etcd: e, Endpoints: []string{client.String()}, dir: dir}
	if aliasURL != nil {
		s.Alias = aliasURL.String()
	}
	return s, nil
}

// Client returns a new client of s; the caller closes it.
func (s *Server) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// Close stops the member; later calls do nothing (a test may stop the
// member New's cleanup stops again).
func (s *Server) Close() {
	s.close.Do(s.Etcd.Close)
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

// freeURLs picks two distinct free loopback ports, holding the first
// while it asks for the second so the kernel cannot hand out the same
// port twice.
func freeURLs() (client, peer *url.URL, err error) {
	var urls [2]*url.URL
	for i := range urls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, fmt.Errorf("find free port: %w", err)
		}
		defer l.Close()
		urls[i] = &url.URL{Scheme: "http", Host: l.Addr().String()}
	}
	return urls[0], urls[1], nil
}
