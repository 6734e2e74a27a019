package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/pki"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv"
)

// etcdctlIn runs Debian's etcdctl (the operators' tool) with args, in
// network namespace ns ("" for the root namespace).
func etcdctlIn(ctx context.Context, t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Fatalf("etcdctl missing (apt-get install etcd-client; .ci/run installs it): %v", err)
	}
	argv := args
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// etcdctlAs is etcdctl from the root namespace (unixs://) with user's
// certificate.
func etcdctlAs(ctx context.Context, t *testing.T, c *testenv.Cluster, user string, args ...string) (string, error) {
	return etcdctlIn(ctx, t, "", append(c.EtcdctlArgs(user), args...)...)
}

// etcdctlOnNode is etcdctl on node n's host (its network namespace, over
// the underlay, https://) with n's own certificate: what anyone with
// root on that node can do.
func etcdctlOnNode(ctx context.Context, t *testing.T, c *testenv.Cluster, n *testenv.Node, args ...string) (string, error) {
	f := c.Identity(c.Names().Node(n.Name))
	argv := []string{"etcdctl", "--endpoints", strings.Join(c.NodeEndpoints(), ","), "--cacert", c.CAFile(), "--cert", f.Cert, "--key", f.Key,
		"--dial-timeout", "3s", "--command-timeout", "5s"}
	return etcdctlIn(ctx, t, n.NS, append(argv, args...)...)
}

// hijack is the value of the issue's attack: node victim's registration
// pointing at the attacker's underlay address.
func hijack(victim *testenv.Node, attacker string) string {
	return keys.EncodeString(&weftv1.Registration{Name: victim.Name, UnderlayIp: attacker})
}

// storeSnapshot is what the attacks must leave alone.
type storeSnapshot struct {
	head     uint64
	nodes    map[string]string
	reg      string
	regLease int64
}

func snapshot(t *testing.T, ctx context.Context, c *testenv.Cluster, victim *testenv.Node) storeSnapshot {
	t.Helper()
	head, err := c.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := c.StoreNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := storeSnapshot{head: head, nodes: map[string]string{}}
	for n, v := range nodes {
		s.nodes[n] = keys.EncodeString(v)
	}
	cl, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	r, err := cl.Get(ctx, keys.New("/weft").Registration(victim.Name))
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("read %s's registration: %v", victim.Name, err)
	}
	s.reg, s.regLease = string(r.Kvs[0].Value), r.Kvs[0].Lease
	return s
}

// attacks runs, on a secure cluster, each way the issue found to hijack a
// node's traffic through etcd, and requires etcd to refuse every one and
// the store and the traffic to stay as they were.
func attacks(t *testing.T, ctx context.Context, c *testenv.Cluster) {
	l := keys.New("/weft")
	n := c.Names()
	attacker, victim := c.Node(0), c.Node(1)
	attackerUser := n.Node(attacker.Name)
	before := snapshot(t, ctx, c, victim)
	refused := func(what, out string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("%s: not refused (%v), output %q, want %q", what, err, out, want)
		} else {
			t.Logf("%s: refused: %s", what, lastLine(out))
		}
	}

	// The issue's attack with the operators' own tool, from node 0's host
	// with node 0's credentials: rewrite node 1's registration to node
	// 0's address.
	out, err := etcdctlOnNode(ctx, t, c, attacker, "put", l.Registration(victim.Name), hijack(victim, attacker.UnderlayIP.String()))
	refused("etcdctl on "+attacker.Name+" as "+attackerUser+": put "+victim.Name+"'s registration", out, err, "permission denied")
	// Its certificate is good: it reads what an agent reads.
	if out, err := etcdctlOnNode(ctx, t, c, attacker, "get", l.Head(), "--print-value-only"); err != nil || out != fmt.Sprint(before.head) {
		t.Errorf("etcdctl as %s: get head: %q, %v; want %d (the node's role reads the log)", attackerUser, out, err, before.head)
	}
	out, err = etcdctlOnNode(ctx, t, c, attacker, "put", l.Status(victim.Name), `{"applied_seq":1}`)
	refused("etcdctl as "+attackerUser+": put "+victim.Name+"'s status", out, err, "permission denied")
	out, err = etcdctlOnNode(ctx, t, c, attacker, "del", l.Registration(victim.Name))
	refused("etcdctl as "+attackerUser+": delete "+victim.Name+"'s registration", out, err, "permission denied")
	out, err = etcdctlOnNode(ctx, t, c, attacker, "lease", "revoke", fmt.Sprintf("%x", before.regLease))
	refused("etcdctl as "+attackerUser+": revoke "+victim.Name+"'s lease", out, err, "permission denied")

	// Every other key a node could use to move traffic: the log, the
	// head, the projection, the config, the subnet guards.
	cl, err := c.ClientAs(attackerUser)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, k := range []string{l.Event(before.head + 1), l.Head(), l.Node(victim.Name), l.Config(), l.DesiredConfig(),
		l.Subnets() + "10.244.200.0-24", l.Problem(victim.Name), l.Election() + "/x"} {
		_, err := cl.Put(ctx, k, "{}")
		refused(attackerUser+": put "+k, errText(err), err, "permission denied")
	}
	_, err = cl.Txn(ctx).Then(clientv3.OpPut(l.Event(before.head+1), "{}"), clientv3.OpPut(l.Head(), fmt.Sprint(before.head+1))).Commit()
	refused(attackerUser+": append an event in a transaction", errText(err), err, "permission denied")

	// A pod: it reaches etcd's address, but has no certificate.
	pod := victim.Pods[0]
	ep := c.NodeEndpoints()[0]
	out, err = etcdctlIn(ctx, t, pod.NS, "etcdctl", "--endpoints", ep, "--cacert", c.CAFile(), "--dial-timeout", "3s", "--command-timeout", "5s",
		"put", l.Registration(victim.Name), hijack(victim, pod.Addr.String()))
	refused("etcdctl in pod "+pod.Name+" without a certificate", out, err, "")
	out, err = etcdctlIn(ctx, t, pod.NS, "etcdctl", "--endpoints", strings.Replace(ep, "https://", "http://", 1), "--dial-timeout", "3s", "--command-timeout", "5s",
		"put", l.Registration(victim.Name), hijack(victim, pod.Addr.String()))
	refused("etcdctl in pod "+pod.Name+" over plain HTTP", out, err, "")
	// ... nor with a certificate it made itself, whatever its CN says.
	forged := forgeCert(t, "root")
	out, err = etcdctlIn(ctx, t, pod.NS, "etcdctl", "--endpoints", ep, "--cacert", c.CAFile(), "--cert", forged.Cert, "--key", forged.Key,
		"--dial-timeout", "3s", "--command-timeout", "5s", "put", l.Registration(victim.Name), hijack(victim, pod.Addr.String()))
	refused("etcdctl in pod "+pod.Name+" with a self-made certificate for CN root", out, err, "")
	// weftctl names why: a TLS failure in words, with the endpoint.
	wout, werr := c.WeftctlAs(ctx, "nobody", "--etcd-cafile", c.CAFile(), "--etcd-certfile", forged.Cert, "--etcd-keyfile", forged.Key, "--timeout", "3s", "nodes")
	refused("weftctl with a self-made certificate", wout, werr, "TLS: etcd refused the client certificate")

	// A certificate of the cluster's CA for a CN that is no etcd user.
	if _, err := c.IssueIdentity("stranger"); err != nil {
		t.Fatal(err)
	}
	out, err = etcdctlAs(ctx, t, c, "stranger", "put", l.Registration(victim.Name), hijack(victim, attacker.UnderlayIP.String()))
	refused("etcdctl as a CN that is no user", out, err, "permission denied")

	// Operators: the reader cannot ask for a config.
	out, err = c.WeftctlAs(ctx, n.Reader(), "config", "set", "--mtu", "1300")
	refused("weftctl config set as "+n.Reader(), out, err, `etcd user "`+n.Reader()+`"`)

	// Nothing moved: no event, the same projection, the same
	// registration on the same lease, and every pair still talks.
	time.Sleep(2 * time.Second) // what a controller would have done by now
	after := snapshot(t, ctx, c, victim)
	if after.head != before.head || after.reg != before.reg || after.regLease != before.regLease || fmt.Sprint(after.nodes) != fmt.Sprint(before.nodes) {
		t.Errorf("the store changed under the attacks:\nbefore %+v\nafter  %+v", before, after)
	}
	if out, err := c.Weftctl(ctx, "check"); err != nil {
		t.Errorf("weftctl check: %v\n%s", err, out)
	}
	requireAllPairs(t, ctx, c)
}

// removedNodeLockedOut: after `weftctl auth remove-node`, the node's
// certificate writes nothing, not even its own keys.
func removedNodeLockedOut(t *testing.T, ctx context.Context, c *testenv.Cluster, name string) {
	l := keys.New("/weft")
	out, err := etcdctlAs(ctx, t, c, c.Names().Node(name), "put", l.Status(name), `{}`)
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Errorf("removed node %s writes its status: %v %q", name, err, out)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// forgeCert is a certificate for cn from a CA of the attacker's own.
func forgeCert(t *testing.T, cn string) pki.Files {
	ca, err := pki.NewCA("attacker", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Issue(pki.Request{CommonName: cn})
	if err != nil {
		t.Fatal(err)
	}
	f := pki.FilesIn(t.TempDir(), cn)
	if err := p.Write(f, false); err != nil {
		t.Fatal(err)
	}
	return f
}
