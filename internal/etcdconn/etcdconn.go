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

// Window is the client's HTTP/2 flow-control window, per stream and per
// connection: how much of a reply etcd may send before the client grants
// more. gRPC's default starts at 64 KB and grows by its own bandwidth
// estimate, which a reply of a few hundred KB on a fresh connection never
// reaches: such a reply waits on window updates, each a round trip
// between two processes that share the node's CPUs. An agent's list
// reads 5,000 nodes, about 1 MB, in one reply (follow.DefaultPageSize),
// and that list is the longest step of its cold start
// (docs/BENCHMARKS.md, "The cold start's critical path"). A set window
// turns gRPC's estimate off (which could grow the window to 16 MB). It is
// an allowance, not a buffer: memory holds only what is in flight or
// received and not yet read, at most the window per stream (a watch
// whose reader stalls, e.g. the agent's during a long Sync, may hold up
// to 2 MB of events).
const Window = 2 << 20

// KeepAliveTime and KeepAliveTimeout are the client's gRPC keepalive: a
// connection that has read nothing for KeepAliveTime is pinged, and one
// whose ping gets no answer within KeepAliveTimeout is closed. Set, gRPC
// also gives each connection's socket TCP_USER_TIMEOUT = KeepAliveTimeout,
// so the kernel closes a connection whose sent data stays unacknowledged
// that long. That is what finds a path that drops packets (rather than
// refusing them): without it the connection stays "ready" and every
// request waits for TCP's retransmissions, whose backoff doubles up to two
// minutes, long after the path is back. Closed, the connection is dialled
// again (ReconnectParams), the client is ready the moment the path
// answers, and the agent registers at once (docs/DESIGN.md, "When a node
// is gone"). gRPC pings no more often than every 10 s, and etcd refuses
// pings more often than its --grpc-keepalive-min-time (5 s by default);
// pings are sent only while a request or watch is open.
const (
	KeepAliveTime    = 10 * time.Second
	KeepAliveTimeout = 2 * time.Second
)

// RecoveryBound is how soon after a path that dropped packets works
// again a client of New answers, with room for the requests that follow
// (an agent's renewal or registration). By then the connection the path
// stalled was closed (KeepAliveTimeout after its first unanswered data)
// and the client is dialling again; a SYN the path dropped is sent again
// by the kernel 1 s and 3 s into each 5 s connection attempt
// (ReconnectParams), so the path is tried at least every 2 s. Without
// the keepalive the client waited for TCP's own next retransmission:
// measured 5.2 s and 13.3 s after the path was back (nodeagent's
// TestAgentBackSoonAfterAPathThatDropped and ...ItsFirewallDropped hold
// the agent to this bound). docs/DESIGN.md states it.
const RecoveryBound = 3 * time.Second

// MaxLeaseTTL is etcd's longest lease in seconds (its server's
// MaxLeaseTTL, 9e9 s): it refuses a longer one at every grant ("too large
// lease TTL"), and beyond about 9.2e9 the seconds no longer fit a
// time.Duration. The agent's --lease-ttl and the controller's
// --election-ttl are bounded by it.
const MaxLeaseTTL = 9_000_000_000

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

// CheckEndpoints refuses an endpoint list the etcd client could not dial:
// empty, a scheme other than http, https, unix or unixs, a URL without a
// host, or a bare address without a port. The error names the endpoint.
func CheckEndpoints(eps []string) error {
	if len(eps) == 0 {
		return errors.New("no endpoints")
	}
	for _, ep := range eps {
		_, addr, _, _, err := interpret(ep, false)
		if err != nil {
			return err
		}
		if addr == "" {
			return fmt.Errorf("endpoint %q: no host", ep)
		}
	}
	return nil
}

// TLS returns the client's TLS config: nil without CA, Cert and Key (plain
// connections), else TLS 1.2 or newer with the CA as the only roots (the
// system's when CA is empty) and the client certificate when given. Its
// errors name the flags every weft binary reads the files from
// (--etcd-cafile, --etcd-certfile, --etcd-keyfile); the binaries call it
// when they check their flags, so --validate and the start fail alike.
func (c Config) TLS() (*tls.Config, error) {
	if c.CA == "" && c.Cert == "" && c.Key == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cafile: read etcd CA: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--etcd-cafile: read etcd CA %s: no certificate", c.CA)
		}
	}
	if c.Cert != "" || c.Key != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("--etcd-certfile/--etcd-keyfile: load etcd client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// New returns a client of the cluster; the caller closes it. It reads the
// TLS material but does not dial: an unreachable etcd is not an error
// here, every request retries it.
func New(c Config) (*clientv3.Client, error) {
	if err := CheckEndpoints(c.Endpoints); err != nil {
		return nil, fmt.Errorf("connect etcd: %w", err)
	}
	t, err := c.TLS()
	if err != nil {
		return nil, err
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints, DialTimeout: c.DialTimeout, TLS: t, Logger: zap.NewNop(),
		DialKeepAliveTime: KeepAliveTime, DialKeepAliveTimeout: KeepAliveTimeout,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(ReconnectParams),
			grpc.WithInitialWindowSize(Window), grpc.WithInitialConnWindowSize(Window)}})
	if err != nil {
		return nil, fmt.Errorf("connect etcd: %w", err)
	}
	return cli, nil
}
