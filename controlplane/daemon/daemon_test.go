package daemon

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftnet/weft/internal/etcdauth"
	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/internal/pki"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/testenv/etcdtest"
	"github.com/weftnet/weft/testenv/syncbuf"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

// waitHealthz polls the daemon's /healthz on the metrics address every
// 50 ms until done accepts the answer or 30 s pass, and returns the last
// answer (0 and "" if none came).
func waitHealthz(metrics string, done func(code int, body string) bool) (int, string) {
	var code int
	var body string
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		r, err := http.Get("http://" + metrics + "/healthz")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if code, body = r.StatusCode, string(b); done(code, body) {
			break
		}
	}
	return code, body
}

func TestParseEnvAndFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	os.WriteFile(file, []byte("cluster_cidr: 10.50.0.0/16\nnode_mask_size: 26\nbackend: native\nmtu: 1400\n"), 0o644)
	env := map[string]string{"WEFT_BACKEND": "hybrid", "WEFT_NODE_MASK_SIZE": "25", "WEFT_CONFIG": file}
	o, err := Parse([]string{"--node-mask-size=27"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := o.ClusterConfig()
	if err != nil {
		t.Fatal(err)
	}
	// file < environment < flag
	if cfg.ClusterCidr != "10.50.0.0/16" || cfg.Backend != "hybrid" || cfg.NodeMaskSize != 27 || cfg.Mtu != 1400 || cfg.Vni != 1 {
		t.Fatalf("config %v", cfg)
	}
	o, _ = Parse([]string{"--cluster-cidr=10.0.0.0/33"}, func(string) string { return "" })
	if _, err := o.ClusterConfig(); err == nil || !strings.Contains(err.Error(), "cluster_cidr") {
		t.Fatalf("bad cidr: %v", err)
	}
	// The IPv4 default only when no cluster CIDR of either family is
	// given: --cluster-cidr-v6 alone is an IPv6-only cluster.
	for _, tc := range []struct {
		args   []string
		v4, v6 string
	}{
		{nil, "10.244.0.0/16", ""},
		{[]string{"--cluster-cidr-v6=fd00:10:244::/56"}, "", "fd00:10:244::/56"},
		{[]string{"--cluster-cidr=10.1.0.0/16", "--cluster-cidr-v6=fd00:10:244::/56"}, "10.1.0.0/16", "fd00:10:244::/56"},
	} {
		o, err := Parse(tc.args, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := o.ClusterConfig()
		if err != nil || cfg.ClusterCidr != tc.v4 || cfg.ClusterCidrV6 != tc.v6 {
			t.Errorf("%v: config %v, %v; want cluster_cidr %q and cluster_cidr_v6 %q", tc.args, cfg, err, tc.v4, tc.v6)
		}
	}
	if _, err := Parse([]string{"extra"}, func(string) string { return "" }); err == nil {
		t.Fatal("extra argument accepted")
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// get fetches path from the daemon's metrics address.
func get(t *testing.T, metrics, path string) (int, string) {
	t.Helper()
	r, err := http.Get("http://" + metrics + path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

// TestRunEtcdStopped: the controller's external etcd stops. /healthz (the
// readiness probe's) answers 503 naming it, /livez (the liveness probe's)
// 200: a restart cannot bring etcd back.
func TestRunEtcdStopped(t *testing.T) {
	srv, _ := etcdtest.New(t)
	metrics := freePort(t)
	o, err := Parse([]string{"--etcd-endpoints", srv.Endpoints[0], "--metrics-addr", metrics, "--election-ttl", "2",
		"--cluster-cidr", "10.64.0.0/16"}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	runDaemon(t, o)
	if code, body := waitHealthz(metrics, func(code int, body string) bool { return code == 200 && strings.Contains(body, "ok leader") }); code != 200 {
		t.Fatalf("healthz with etcd up: %d %q", code, body)
	}
	if code, body := get(t, metrics, "/livez"); code != 200 || body != "ok\n" {
		t.Fatalf("livez with etcd up: %d %q", code, body)
	}
	srv.Close()
	if code, body := waitHealthz(metrics, func(code int, _ string) bool { return code == http.StatusServiceUnavailable }); code != http.StatusServiceUnavailable || !strings.Contains(body, "etcd unreachable") {
		t.Fatalf("healthz with etcd stopped: %d %q", code, body)
	}
	if code, body := get(t, metrics, "/livez"); code != 200 || body != "ok\n" {
		t.Fatalf("livez with etcd stopped: %d %q", code, body)
	}
}

// TestRunEmbedded starts the whole daemon with its embedded etcd on two
// client URLs, sees it lead and write the initial config, serve health
// and metrics, and stop cleanly when its context ends.
func TestRunEmbedded(t *testing.T) {
	c1, c2, peer, metrics := freePort(t), freePort(t), freePort(t), freePort(t)
	o, err := Parse([]string{
		"--data-dir", t.TempDir(), "--etcd-listen-client", "http://" + c1 + ",http://" + c2,
		"--etcd-listen-peer", "http://" + peer, "--metrics-addr", metrics, "--election-ttl", "2",
		"--cluster-cidr", "10.60.0.0/16",
	}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ctx := runDaemon(t, o)
	_, body := waitHealthz(metrics, func(_ int, body string) bool { return strings.Contains(body, "leader") })
	if !strings.Contains(body, "ok leader") {
		t.Fatalf("healthz: %q", body)
	}
	// Both client URLs serve the same store.
	for _, ep := range []string{c1, c2} {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		var r *clientv3.GetResponse
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if r, err = cli.Get(ctx, keys.New("").Config()); err == nil && len(r.Kvs) == 1 {
				break
			}
		}
		cli.Close()
		if r == nil || len(r.Kvs) != 1 || !strings.Contains(string(r.Kvs[0].Value), "10.60.0.0/16") {
			t.Fatalf("config via %s: %v %v", ep, r, err)
		}
	}
	// The gauges follow the append a moment after its write is visible
	// in etcd (the controller sets them when the transaction returns).
	want := []string{"weft_controller_leader 1", "weft_controller_head_seq 1", "weft_controller_events_appended_total 1"}
	var missing []string
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		missing = missing[:0]
		r, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		for _, m := range want {
			if !strings.Contains(string(b), m) {
				missing = append(missing, m)
			}
		}
		if len(missing) == 0 || time.Now().After(end) {
			break
		}
	}
	if len(missing) > 0 {
		t.Errorf("metrics lack %q", missing)
	}
}

func TestEtcdTLSFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--etcd-listen-client", "https://127.0.0.1:2379"}, "TLS needs --etcd-server-cert"},
		{[]string{"--etcd-server-cert", "s.crt"}, "go together"},
		{[]string{"--etcd-server-cert", "s.crt", "--etcd-server-key", "s.key"}, "every client URL is https:// or unixs://"},
		{[]string{"--etcd-server-cert", "s.crt", "--etcd-server-key", "s.key", "--etcd-listen-client", "https://127.0.0.1:2379"}, "--etcd-cafile"},
		{[]string{"--etcd-server-cert", "s.crt", "--etcd-server-key", "s.key", "--etcd-listen-client", "https://127.0.0.1:2379",
			"--etcd-cafile", "ca.crt", "--etcd-client-ca", "ca.crt"}, "--etcd-certfile and --etcd-keyfile"},
		{[]string{"--etcd-endpoints", "https://e:2379", "--etcd-client-ca", "ca.crt"}, "are for the embedded etcd"},
		{[]string{"--etcd-endpoints", "https://e:2379", "--etcd-listen-client", "http://127.0.0.1:5555"}, "--etcd-listen-client is for the embedded etcd"},
		{[]string{"--etcd-endpoints", "https://e:2379", "--etcd-listen-peer", "http://127.0.0.1:5556"}, "--etcd-listen-peer is for the embedded etcd"},
		{[]string{"--etcd-endpoints", "grpc://e:2379"}, `--etcd-endpoints: endpoint "grpc://e:2379": scheme "grpc"`},
		{[]string{"--log-level", "loud"}, `--log-level: unknown level "loud"`},
		{[]string{"--election-ttl", "0"}, "--election-ttl must be at least 1"},
		{[]string{"--election-ttl", "9000000001"}, "--election-ttl: 9000000001 is above 9000000000 seconds"},
		{[]string{"--election-ttl", "99999999999"}, "--election-ttl: 99999999999 is above 9000000000 seconds"},
		{[]string{"--metrics-addr", "x"}, "--metrics-addr: address x: missing port"},
		{[]string{"--metrics-addr", ":99999"}, "--metrics-addr: address 99999: invalid port"},
		{[]string{"--prefix", "/"}, `--prefix: prefix "/" names no key prefix`},
		{[]string{"--prefix", "/a//b"}, `--prefix: prefix "/a//b" has an empty`},
		{[]string{"--data-dir", ""}, "--data-dir: empty"},
		{[]string{"--etcd-listen-client", "ftp://127.0.0.1:2379"}, `--etcd-listen-client: "ftp://127.0.0.1:2379": scheme "ftp" is none of http, https, unix, unixs`},
		{[]string{"--etcd-listen-client", "http://127.0.0.1"}, `--etcd-listen-client: "http://127.0.0.1": address 127.0.0.1: missing port`},
		{[]string{"--etcd-listen-client", " , "}, "--etcd-listen-client: empty"},
		{[]string{"--etcd-listen-peer", "unix:///run/p"}, `--etcd-listen-peer: "unix:///run/p": scheme "unix" is none of http, https`},
	} {
		_, err := Parse(tc.args, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	// The TLS files the flags name are read at Parse, so --validate and
	// the start fail alike, naming the flag.
	dir := t.TempDir()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caf := pki.FilesIn(dir, "ca")
	if err := ca.Write(caf, false); err != nil {
		t.Fatal(err)
	}
	caFile := caf.Cert
	p, err := ca.Issue(pki.Request{CommonName: "etcd", Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := pki.FilesIn(dir, "etcd")
	if err := p.Write(srv, false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--etcd-endpoints", "https://e:2379", "--etcd-cafile", "/nonexistent/ca.crt"}, "--etcd-cafile: read etcd CA: open /nonexistent/ca.crt"},
		{[]string{"--etcd-endpoints", "https://e:2379", "--etcd-cafile", "/dev/null"}, "--etcd-cafile: read etcd CA /dev/null: no certificate"},
		{[]string{"--etcd-endpoints", "https://e:2379", "--etcd-certfile", "/nonexistent/c.crt", "--etcd-keyfile", "/nonexistent/c.key"}, "--etcd-certfile/--etcd-keyfile: load etcd client certificate"},
		{[]string{"--etcd-server-cert", "/nonexistent/s.crt", "--etcd-server-key", "/nonexistent/s.key", "--etcd-listen-client", "https://127.0.0.1:2379",
			"--etcd-cafile", "/dev/null"}, "--etcd-cafile: read etcd CA /dev/null"},
		{[]string{"--etcd-server-cert", "/nonexistent/s.crt", "--etcd-server-key", "/nonexistent/s.key", "--etcd-listen-client", "https://127.0.0.1:2379",
			"--etcd-cafile", caFile}, "--etcd-server-cert/--etcd-server-key: open /nonexistent/s.crt"},
		{[]string{"--etcd-server-cert", srv.Cert, "--etcd-server-key", srv.Key, "--etcd-listen-client", "https://127.0.0.1:2379",
			"--etcd-cafile", caFile, "--etcd-client-ca", "/nonexistent/ca.crt", "--etcd-certfile", srv.Cert, "--etcd-keyfile", srv.Key}, "--etcd-client-ca: open /nonexistent/ca.crt"},
	} {
		_, err := Parse(tc.args, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	// The same from the environment; the defaults with an external etcd
	// are no conflict.
	env := map[string]string{"WEFT_ETCD_ENDPOINTS": "https://e:2379", "WEFT_ETCD_LISTEN_CLIENT": "http://127.0.0.1:5555"}
	if _, err := Parse(nil, func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "--etcd-listen-client is for the embedded etcd") {
		t.Errorf("WEFT_ETCD_LISTEN_CLIENT beside WEFT_ETCD_ENDPOINTS: %v", err)
	}
	if _, err := Parse([]string{"--etcd-endpoints", "https://e:2379"}, func(string) string { return "" }); err != nil {
		t.Errorf("--etcd-endpoints alone: %v", err)
	}
}

// TestRunEmbeddedSecure runs the embedded etcd with TLS and client
// certificates, turns etcd auth on under the running controller, and
// sees it lead and answer health with only its role's rights.
func TestRunEmbeddedSecure(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caf := pki.FilesIn(dir, "ca")
	if err := ca.Write(caf, false); err != nil {
		t.Fatal(err)
	}
	issue := func(cn string, hosts ...string) pki.Files {
		p, err := ca.Issue(pki.Request{CommonName: cn, Hosts: hosts})
		if err != nil {
			t.Fatal(err)
		}
		f := pki.FilesIn(dir, cn)
		if err := p.Write(f, false); err != nil {
			t.Fatal(err)
		}
		return f
	}
	l := keys.New("/weft")
	srv, ctlCert, root := issue("etcd", "127.0.0.1"), issue(etcdauth.NamesFor(l).Controller()), issue(etcdauth.Root)
	c1, peer, metrics := freePort(t), freePort(t), freePort(t)
	o, err := Parse([]string{
		"--data-dir", dir, "--etcd-listen-client", "https://" + c1, "--etcd-listen-peer", "http://" + peer,
		"--etcd-server-cert", srv.Cert, "--etcd-server-key", srv.Key, "--etcd-client-ca", caf.Cert,
		"--etcd-cafile", caf.Cert, "--etcd-certfile", ctlCert.Cert, "--etcd-keyfile", ctlCert.Key,
		"--metrics-addr", metrics, "--election-ttl", "2",
	}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ctx := runDaemon(t, o)
	healthy := func() string {
		_, body := waitHealthz(metrics, func(code int, body string) bool { return code == 200 && strings.Contains(body, "leader") })
		return body
	}
	if body := healthy(); !strings.Contains(body, "ok leader") {
		t.Fatalf("healthz before auth: %q", body)
	}
	rootConn := etcdconn.Config{Endpoints: []string{"https://" + c1}, CA: caf.Cert, Cert: root.Cert, Key: root.Key}
	rc, err := etcdconn.New(rootConn)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	defer scancel()
	if _, err := etcdauth.Setup(sctx, rc, l, nil); err != nil {
		t.Fatal(err)
	}
	if body := healthy(); !strings.Contains(body, "ok leader") {
		t.Fatalf("healthz with auth on: %q", body)
	}
	// The controller still writes: a desired config (written by root here)
	// is answered under auth.
	put, err := rc.Put(sctx, l.DesiredConfig(), `{"cluster_cidr":"10.244.0.0/16","mtu":1400}`)
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r, err := rc.Get(sctx, l.DesiredStatus())
		if err == nil && len(r.Kvs) == 1 && r.Kvs[0].ModRevision > put.Header.Revision {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no answer to the desired config under auth: %v %v", r, err)
		}
	}
	// Without a client certificate, nothing.
	nc, err := etcdconn.New(etcdconn.Config{Endpoints: []string{"https://" + c1}, CA: caf.Cert, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
	defer gcancel()
	if _, err := nc.Get(gctx, l.Config()); err == nil {
		t.Error("a client without a certificate read the config")
	}
}

// runDaemon runs the controller daemon with o until the test ends, then
// stops it and fails the test if it does not stop cleanly within 20 s.
// The context it returns ends when the daemon is told to stop.
func runDaemon(t *testing.T, o *Options) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o, hclog.NewNullLogger()) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	return ctx
}

// countingForward listens on loopback, forwards each connection to target
// and counts the connections it accepted.
func countingForward(t *testing.T, target string) (addr string, accepted func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	n := 0
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// TestDiagnose: the controller says why etcd does not answer, naming the
// endpoint, when its client cannot connect; when the client connects, etcd
// is asked nothing more (one connection, the client's own).
func TestDiagnose(t *testing.T) {
	srv, _ := etcdtest.New(t)
	target := strings.TrimPrefix(srv.Endpoints[0], "http://")
	addr, accepted := countingForward(t, target)
	dead := freePort(t)
	for _, tc := range []struct {
		endpoint string
		want     []string // in the log; none for nothing logged
		conns    int      // connections through the forward; -1: not counted
	}{
		{"http://" + addr, nil, 1},
		{"http://" + dead, []string{"etcd does not answer", "etcd http://" + dead + ": cannot connect"}, -1},
	} {
		var buf syncbuf.Buffer
		log := hclog.New(&hclog.LoggerOptions{Output: &buf})
		conn := etcdconn.Config{Endpoints: []string{tc.endpoint}}
		cli, err := etcdconn.New(conn)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		diagnose(ctx, conn, cli.ActiveConnection(), log)
		if tc.conns >= 0 {
			// The client's own connection, whether or not
			// diagnose waited for it.
			if _, err := cli.Get(ctx, "k"); err != nil {
				t.Fatal(err)
			}
		}
		cancel()
		cli.Close()
		got := buf.String()
		if len(tc.want) == 0 && got != "" {
			t.Errorf("%s: logged %q, want nothing", tc.endpoint, got)
		}
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: logged %q, want %q in it", tc.endpoint, got, w)
			}
		}
		if tc.conns >= 0 && accepted() != tc.conns {
			t.Errorf("%s: %d connections to etcd, want %d (the client's only)", tc.endpoint, accepted(), tc.conns)
		}
	}
}
