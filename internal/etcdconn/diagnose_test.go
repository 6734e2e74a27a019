package etcdconn_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/internal/pki"
	"github.com/weftnet/weft/testenv/etcdtest"
)

func diagnose(t *testing.T, c etcdconn.Config) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.Diagnose(ctx)
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestDiagnoseNamesTLSFailures(t *testing.T) {
	s := etcdtest.NewSecure(t)
	good := s.Identity(t, "weft-node-n1")
	if d := diagnose(t, good); d != "" {
		t.Fatalf("a good client: %s", d)
	}

	// Files of another CA: its CA to verify etcd, its certificate to show.
	other := etcdtest.NewSecure(t)
	otherID := other.Identity(t, "weft-node-n1")

	plain, _ := etcdtest.New(t)
	closed := freeAddr(t)
	wrongName := tlsListener(t, "etcd.example")

	for _, tc := range []struct {
		name string
		c    etcdconn.Config
		want string
	}{
		{"unknown authority", etcdconn.Config{Endpoints: s.Endpoints, CA: other.CAFile, Cert: good.Cert, Key: good.Key},
			`signed by an unknown authority, not by ` + other.CAFile},
		{"no client certificate", etcdconn.Config{Endpoints: s.Endpoints, CA: s.CAFile},
			"etcd requires a client certificate and this client gave none"},
		{"client certificate of another CA", etcdconn.Config{Endpoints: s.Endpoints, CA: s.CAFile, Cert: otherID.Cert, Key: otherID.Key},
			"refused the client certificate " + otherID.Cert + " (CN weft-node-n1, issued by \"etcdtest-ca\")"},
		{"wrong name", etcdconn.Config{Endpoints: []string{"https://" + wrongName}, CA: s.CAFile},
			`is for etcd.example, not "127.0.0.1" (wrong name)`},
		{"plain HTTP to TLS", etcdconn.Config{Endpoints: []string{strings.Replace(s.Endpoints[0], "https", "http", 1)}, CA: s.CAFile, Cert: good.Cert, Key: good.Key},
			"etcd probably serves TLS here: use https://"},
		{"TLS to plain HTTP", etcdconn.Config{Endpoints: []string{strings.Replace(plain.Endpoints[0], "http", "https", 1)}, CA: s.CAFile},
			"does not speak TLS"},
		{"nothing listens", etcdconn.Config{Endpoints: []string{"http://" + closed}},
			"cannot connect"},
	} {
		d := diagnose(t, tc.c)
		if !strings.Contains(d, tc.want) || !strings.Contains(d, tc.c.Endpoints[0]) {
			t.Errorf("%s: %q, want it to name the endpoint and say %q", tc.name, d, tc.want)
		}
	}
}

// TestExplain: a request that cannot get through says why, and a refusal
// says who was refused.
func TestExplain(t *testing.T) {
	s := etcdtest.NewSecure(t)
	bad := etcdconn.Config{Endpoints: s.Endpoints, CA: s.CAFile, DialTimeout: time.Second}
	c, err := etcdconn.New(bad)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err = c.Get(ctx, "/weft/config")
	cancel()
	if err == nil {
		t.Fatal("a client without a certificate read from etcd")
	}
	got := bad.Explain(context.Background(), err).Error()
	if !strings.Contains(got, "etcd requires a client certificate") || !strings.Contains(got, s.Endpoints[0]) {
		t.Errorf("explained %q", got)
	}

	// Auth on: a stranger's certificate is refused, and the error says
	// which user that was.
	root := s.ClientAs(t, "root")
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := root.UserAddWithOptions(ctx, "root", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := root.RoleAdd(ctx, "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	id := s.Identity(t, "stranger")
	sc, err := etcdconn.New(id)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	_, err = sc.Put(ctx, "/weft/registrations/n2", "x")
	got = id.Explain(ctx, err).Error()
	if !strings.Contains(got, "permission denied") || !strings.Contains(got, `etcd user "stranger"`) {
		t.Errorf("explained %q", got)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

// tlsListener serves TLS with a certificate for host only, and closes
// every connection after the handshake.
func tlsListener(t *testing.T, host string) string {
	ca, err := pki.NewCA("x", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Issue(pki.Request{CommonName: host, Hosts: []string{host}})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(p.Cert, p.Key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return l.Addr().String()
}

// TestUnreachable: a client whose connection comes up is not probed
// again (one endpoint: no second connection to etcd); one whose
// connection fails gets Diagnose's words; with several endpoints, one
// that does not answer is named although the client is connected.
func TestUnreachable(t *testing.T) {
	plain, _ := etcdtest.New(t)
	target := strings.TrimPrefix(plain.Endpoints[0], "http://")
	counted, accepts := countingProxy(t, target)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	unreachable := func(c etcdconn.Config) string {
		t.Helper()
		cl, err := etcdconn.New(c)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		// The agent's first request, beside the check as in the agent.
		go cl.Get(ctx, "/weft/head")
		if err := c.Unreachable(ctx, cl.ActiveConnection()); err != nil {
			return err.Error()
		}
		return ""
	}

	if d := unreachable(etcdconn.Config{Endpoints: []string{"http://" + counted}}); d != "" {
		t.Fatalf("a client that connects: %s", d)
	}
	if n := accepts(); n != 1 {
		t.Errorf("a client that connects made %d connections to etcd, want 1 (its own, no probe)", n)
	}

	s := etcdtest.NewSecure(t)
	other := etcdtest.NewSecure(t)
	good := s.Identity(t, "weft-node-n1")
	bad := etcdconn.Config{Endpoints: s.Endpoints, CA: other.CAFile, Cert: good.Cert, Key: good.Key}
	if d := unreachable(bad); !strings.Contains(d, "signed by an unknown authority") || !strings.Contains(d, s.Endpoints[0]) {
		t.Errorf("a client that cannot connect: %q, want the TLS failure named with its endpoint", d)
	}

	closed := "http://" + freeAddr(t)
	if d := unreachable(etcdconn.Config{Endpoints: []string{plain.Endpoints[0], closed}}); !strings.Contains(d, closed) || !strings.Contains(d, "cannot connect") || strings.Contains(d, plain.Endpoints[0]) {
		t.Errorf("one of two endpoints closed: %q, want only %s named", d, closed)
	}
}

// countingProxy forwards TCP connections to target and counts them.
func countingProxy(t *testing.T, target string) (addr string, accepts func() int) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			n++
			conns = append(conns, c, u)
			mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return l.Addr().String(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}
