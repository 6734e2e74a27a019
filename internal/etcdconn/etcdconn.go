// Package etcdconn connects weft's binaries (weft-controller, weft-agent,
// weftctl) to etcd: the endpoints, the TLS material behind their
// --etcd-cafile, --etcd-certfile and --etcd-keyfile flags, and the client
// options they share.
package etcdconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
)

// DefaultDialTimeout bounds the first connection when Config.DialTimeout
// is zero.
const DefaultDialTimeout = 5 * time.Second

// ReconnectParams bound how long a client waits between attempts to
// reconnect to an etcd member it lost. gRPC's default backoff grows to
// two minutes, so after an outage of half a minute a client could wait
// another quarter of a minute before it even tried, long after etcd and
// the controller were back: an agent that cannot renew its registration
// for that long can lose its node. With these, every client tries each
// member at least every 2 s (jittered); docs/DESIGN.md's removal rule
// counts on it.
var ReconnectParams = grpc.ConnectParams{
	Backoff: grpcbackoff.Config{
		BaseDelay:  100 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   2 * time.Second,
	},
	MinConnectTimeout: 5 * time.Second,
}

// Config names the etcd cluster and the TLS material to reach it.
type Config struct {
	// Endpoints are the client URLs; at least one.
	Endpoints []string
	// CA is a PEM bundle that verifies etcd's certificate; set, it turns
	// TLS on.
	CA string
	// Cert and Key are the client certificate and key files, presented
	// to etcd; they go together and also turn TLS on.
	Cert, Key string
	// DialTimeout bounds the first connection (DefaultDialTimeout).
	DialTimeout time.Duration
}

// Split splits a comma-separated endpoint list, dropping empty items.
func Split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// TLS returns the client's TLS config: nil without CA, Cert and Key (plain
// connections), else TLS 1.2 or newer with the CA as the only roots (the
// system's when CA is empty) and the client certificate when given.
func (c Config) TLS() (*tls.Config, error) {
	if c.CA == "" && c.Cert == "" && c.Key == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read etcd CA %s: no certificate", c.CA)
		}
	}
	if c.Cert != "" || c.Key != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("load etcd client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// New returns a client of the cluster; the caller closes it. It reads the
// TLS material but does not dial: an unreachable etcd is not an error
// here, every request retries it.
func New(c Config) (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("connect etcd: no endpoints")
	}
	t, err := c.TLS()
	if err != nil {
		return nil, err
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints, DialTimeout: c.DialTimeout, TLS: t, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(ReconnectParams)}})
	if err != nil {
		return nil, fmt.Errorf("connect etcd: %w", err)
	}
	return cli, nil
}
