package daemon

// No API server can run in this test environment, so the kubernetes node
// source runs on client-go's fake clientset (an in-memory object tracker
// that serves List and Watch through the same informer machinery a real
// cluster uses), injected through Options.KubeClient. Everything else is
// real: the daemon's embedded etcd, the election and the controller, and
// the assertions read what the daemon wrote into etcd.

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/weftnet/weft/controlplane/kubesource"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func noEnv(string) string { return "" }

func kubeNode(name, ip string, cidrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	n.Spec.PodCIDRs = cidrs
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	n.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeHostName, Address: name},
		{Type: corev1.NodeInternalIP, Address: ip},
	}
	return n
}

func TestParseNodeSource(t *testing.T) {
	o, err := Parse(nil, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if o.NodeSource != SourceRegistrations {
		t.Fatalf("default node source %q", o.NodeSource)
	}
	if src, err := o.Source(hclog.NewNullLogger()); err != nil || src != nil {
		t.Fatalf("registrations: source %v, %v; want nil (the controller's default)", src, err)
	}

	env := map[string]string{"WEFT_NODE_SOURCE": "kubernetes", "WEFT_NODE_SELECTOR": "weft.io/enabled=true"}
	o, err = Parse(nil, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if o.NodeSource != SourceKubernetes || o.NodeSelector != "weft.io/enabled=true" {
		t.Fatalf("from env: %q %q", o.NodeSource, o.NodeSelector)
	}

	// Usage errors name the flag.
	for _, c := range []struct {
		args []string
		env  map[string]string
		flag string
	}{
		{args: []string{"--node-source=kube"}, flag: "--node-source"},
		{env: map[string]string{"WEFT_NODE_SOURCE": "etcd"}, flag: "--node-source"},
		{args: []string{"--node-source=kubernetes", "--node-selector=a=b,,="}, flag: "--node-selector"},
		{args: []string{"--kubeconfig=/etc/k.conf"}, flag: "--kubeconfig"},
		{args: []string{"--node-selector=a=b"}, flag: "--node-selector"},
	} {
		_, err := Parse(c.args, func(k string) string { return c.env[k] })
		if err == nil || !strings.Contains(err.Error(), c.flag) {
			t.Errorf("Parse(%q, %v) = %v, want an error naming %s", c.args, c.env, err, c.flag)
		}
	}

	// Without --kubeconfig outside a cluster: the in-cluster config fails.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	o, _ = Parse([]string{"--node-source=kubernetes"}, noEnv)
	if err := o.ValidateSource(); err != nil {
		t.Errorf("validate without kubeconfig: %v (must not need a cluster)", err)
	}
	if _, err := o.Source(hclog.NewNullLogger()); !errors.Is(err, rest.ErrNotInCluster) {
		t.Errorf("in-cluster source outside a cluster: %v, want rest.ErrNotInCluster", err)
	}

	// --kubeconfig: a missing file fails validation; a readable one builds
	// a kubesource without contacting the server it names.
	dir := t.TempDir()
	o, _ = Parse([]string{"--node-source=kubernetes", "--kubeconfig", filepath.Join(dir, "missing")}, noEnv)
	if err := o.ValidateSource(); err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("missing kubeconfig: %v", err)
	}
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	o, _ = Parse([]string{"--node-source=kubernetes", "--kubeconfig", kc, "--node-selector", "weft.io/enabled"}, noEnv)
	if err := o.ValidateSource(); err != nil {
		t.Errorf("valid kubeconfig: %v", err)
	}
	if src, err := o.Source(hclog.NewNullLogger()); err != nil {
		t.Errorf("source from kubeconfig: %v", err)
	} else if _, ok := src.(*kubesource.Source); !ok {
		t.Errorf("source from kubeconfig is %T, want *kubesource.Source", src)
	}
}

// TestRunKubernetesSource runs the whole daemon with --node-source=
// kubernetes on a fake clientset and checks the log and the projection in
// etcd as Nodes are created, changed and deleted.
func TestRunKubernetesSource(t *testing.T) {
	dir := t.TempDir()
	// A grace period far longer than the test: a NodeRemoved seen within
	// the test's timeouts did not wait for it.
	file := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(file, []byte("node_grace_seconds: 3600\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(kubeNode("node-a", "192.168.0.1"))
	c1, peer := freePort(t), freePort(t)
	o, err := Parse([]string{
		"--data-dir", dir, "--etcd-listen-client", "http://" + c1, "--etcd-listen-peer", "http://" + peer,
		"--metrics-addr=", "--election-ttl", "2", "--config", file,
		"--cluster-cidr", "10.60.0.0/16", "--cluster-cidr-v6", "fd00:60::/56",
		"--node-source", "kubernetes",
	}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	o.KubeClient = client
	ctx := runDaemon(t, o)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + c1}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	l := keys.New("")

	// A Node present before the controller starts; no spec.podCIDRs, so
	// weft allocates one CIDR per family.
	a := waitNode(t, cli, l, "node-a", func(n *weftv1.Node) bool { return n != nil })
	if a.UnderlayIp != "192.168.0.1" || len(a.PodCidrs) != 2 ||
		!netip.MustParsePrefix("10.60.0.0/16").Overlaps(netip.MustParsePrefix(a.PodCidrs[0])) ||
		!netip.MustParsePrefix("fd00:60::/56").Overlaps(netip.MustParsePrefix(a.PodCidrs[1])) {
		t.Fatalf("node-a projection %v", a)
	}

	// A Node with spec.podCIDRs gets exactly those.
	nodes := client.CoreV1().Nodes()
	bCIDRs := []string{"10.60.7.0/24", "fd00:60:0:7::/64"}
	if _, err := nodes.Create(ctx, kubeNode("node-b", "192.168.0.2", bCIDRs...), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	b := waitNode(t, cli, l, "node-b", func(n *weftv1.Node) bool { return n != nil })
	if b.UnderlayIp != "192.168.0.2" || !slices.Equal(b.PodCidrs, bCIDRs) {
		t.Fatalf("node-b projection %v, want underlay 192.168.0.2 and pod CIDRs %v", b, bCIDRs)
	}

	// A changed InternalIP moves the endpoint and keeps the CIDRs.
	if _, err := nodes.Update(ctx, kubeNode("node-a", "192.168.0.11"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	a2 := waitNode(t, cli, l, "node-a", func(n *weftv1.Node) bool { return n != nil && n.UnderlayIp == "192.168.0.11" })
	if !slices.Equal(a2.PodCidrs, a.PodCidrs) {
		t.Fatalf("node-a CIDRs changed with its address: %v -> %v", a.PodCidrs, a2.PodCidrs)
	}

	// A deleted Node is removed at once (the grace is an hour).
	if err := nodes.Delete(ctx, "node-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitNode(t, cli, l, "node-b", func(n *weftv1.Node) bool { return n == nil })
	for _, c := range bCIDRs {
		r, err := cli.Get(ctx, l.Subnet(netip.MustParsePrefix(c)))
		if err != nil || len(r.Kvs) != 0 {
			t.Errorf("subnet guard of %s after removal: %v %v", c, r, err)
		}
	}

	// The log says exactly that, in order.
	r, err := cli.Get(ctx, l.Events(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, kv := range r.Kvs {
		e, err := keys.DecodeEvent(kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		if e.Seq != uint64(i+1) {
			t.Errorf("event %d has seq %d", i+1, e.Seq)
		}
		switch k := e.Kind.(type) {
		case *weftv1.Event_ConfigChanged:
			got = append(got, "config")
		case *weftv1.Event_NodeAdded:
			got = append(got, "added "+k.NodeAdded.Node.Name+" "+k.NodeAdded.Node.UnderlayIp+" "+strings.Join(k.NodeAdded.Node.PodCidrs, ","))
		case *weftv1.Event_NodeUpdated:
			got = append(got, "updated "+k.NodeUpdated.Node.Name+" "+k.NodeUpdated.Node.UnderlayIp+" "+strings.Join(k.NodeUpdated.Node.PodCidrs, ","))
		case *weftv1.Event_NodeRemoved:
			got = append(got, "removed "+k.NodeRemoved.Name)
			if !strings.Contains(k.NodeRemoved.Reason, "deleted") {
				t.Errorf("removal reason %q", k.NodeRemoved.Reason)
			}
		}
	}
	aCIDRs := strings.Join(a.PodCidrs, ",")
	want := []string{
		"config",
		"added node-a 192.168.0.1 " + aCIDRs,
		"added node-b 192.168.0.2 " + strings.Join(bCIDRs, ","),
		"updated node-a 192.168.0.11 " + aCIDRs,
		"removed node-b",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if h, err := cli.Get(ctx, l.Head()); err != nil || len(h.Kvs) != 1 || string(h.Kvs[0].Value) != "5" {
		t.Errorf("head: %v %v", h, err)
	}
}

// waitNode polls /weft/nodes/<name> until ok accepts its value (nil when
// the key is absent) and returns it.
func waitNode(t *testing.T, cli *clientv3.Client, l keys.Layout, name string, ok func(*weftv1.Node) bool) *weftv1.Node {
	t.Helper()
	var n *weftv1.Node
	var err error
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		var r *clientv3.GetResponse
		if r, err = cli.Get(context.Background(), l.Node(name)); err != nil {
			continue
		}
		n = nil
		if len(r.Kvs) == 1 {
			if n, err = keys.DecodeNode(r.Kvs[0].Value); err != nil {
				t.Fatal(err)
			}
		}
		if ok(n) {
			return n
		}
	}
	t.Fatalf("node %s: last value %v (error %v)", name, n, err)
	return nil
}

// Nodes the controller cannot use are skipped with a reason recorded in
// /weft/problems/ (what `weftctl status` prints) while the others work: a
// Node without an InternalIP, one with a malformed underlay annotation,
// one outside --node-selector; a Node leaving the selector is removed
// with that reason.
func TestRunKubernetesSourceSkipsWithReasons(t *testing.T) {
	dir := t.TempDir()
	on := map[string]string{"weft.io/enabled": "true"}
	labeled := func(n *corev1.Node) *corev1.Node { n.Labels = on; return n }
	noIP := labeled(kubeNode("no-ip", ""))
	noIP.Status.Addresses = noIP.Status.Addresses[:1]
	badAnn := labeled(kubeNode("bad-annotation", "192.168.0.3"))
	badAnn.Annotations = map[string]string{"weft.io/underlay-ip": "not-an-ip"}
	client := fake.NewClientset(labeled(kubeNode("good", "192.168.0.1")), labeled(kubeNode("leaving", "192.168.0.2")),
		kubeNode("unlabeled", "192.168.0.4"), noIP, badAnn)
	c1, peer := freePort(t), freePort(t)
	o, err := Parse([]string{
		"--data-dir", dir, "--etcd-listen-client", "http://" + c1, "--etcd-listen-peer", "http://" + peer,
		"--metrics-addr=", "--election-ttl", "2", "--cluster-cidr", "10.61.0.0/16",
		"--node-source", "kubernetes", "--node-selector", "weft.io/enabled=true",
	}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	o.KubeClient = client
	ctx := runDaemon(t, o)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + c1}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	l := keys.New("")
	waitNode(t, cli, l, "good", func(n *weftv1.Node) bool { return n != nil })
	waitNode(t, cli, l, "leaving", func(n *weftv1.Node) bool { return n != nil })
	for name, want := range map[string]string{
		"no-ip":          "no InternalIP",
		"bad-annotation": `annotation weft.io/underlay-ip: "not-an-ip"`,
		"unlabeled":      `outside the node selector "weft.io/enabled=true"`,
	} {
		waitProblem(t, cli, l, name, want)
		if n := waitNode(t, cli, l, name, func(*weftv1.Node) bool { return true }); n != nil {
			t.Errorf("%s joined: %v", name, n)
		}
	}
	// Leaving the selector removes the node at once, with that reason.
	if _, err := client.CoreV1().Nodes().Update(ctx, kubeNode("leaving", "192.168.0.2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitNode(t, cli, l, "leaving", func(n *weftv1.Node) bool { return n == nil })
	waitProblem(t, cli, l, "leaving", "outside the node selector")
	// Fixing a node clears its problem and it joins; the good node stayed.
	fixed := labeled(kubeNode("bad-annotation", "192.168.0.3"))
	if _, err := client.CoreV1().Nodes().Update(ctx, fixed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitNode(t, cli, l, "bad-annotation", func(n *weftv1.Node) bool { return n != nil && n.UnderlayIp == "192.168.0.3" })
	waitProblem(t, cli, l, "bad-annotation", "")
	waitNode(t, cli, l, "good", func(n *weftv1.Node) bool { return n != nil })
}

// waitProblem polls /weft/problems/<name> until its reason contains want
// (want "" waits for the problem to be cleared).
func waitProblem(t *testing.T, cli *clientv3.Client, l keys.Layout, name, want string) {
	t.Helper()
	var reason string
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		r, err := cli.Get(context.Background(), l.Problem(name))
		if err != nil {
			continue
		}
		reason = ""
		if len(r.Kvs) == 1 {
			p, err := keys.DecodeProblem(r.Kvs[0].Value)
			if err != nil {
				t.Fatal(err)
			}
			reason = p.Reason
		}
		if want == "" && reason == "" || want != "" && strings.Contains(reason, want) {
			return
		}
	}
	t.Fatalf("problem of %s = %q, want %q", name, reason, want)
}

// With the Kubernetes API unreachable from the start, the controller
// leads, writes nothing about nodes, and its /healthz says why (200: a
// liveness probe must not restart it for that). A real client-go clientset
// against a closed port.
func TestRunKubernetesAPIDown(t *testing.T) {
	c1, peer, metrics, closed := freePort(t), freePort(t), freePort(t), freePort(t)
	o, err := Parse([]string{
		"--data-dir", t.TempDir(), "--etcd-listen-client", "http://" + c1, "--etcd-listen-peer", "http://" + peer,
		"--metrics-addr", metrics, "--election-ttl", "2", "--cluster-cidr", "10.62.0.0/16",
		"--node-source", "kubernetes",
	}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if o.KubeClient, err = kubernetes.NewForConfig(&rest.Config{Host: "http://" + closed, Timeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	runDaemon(t, o)
	code, body := waitHealthz(metrics, func(_ int, body string) bool { return strings.Contains(body, "kubernetes API unreachable") })
	if code != http.StatusOK || !strings.Contains(body, "degraded leader: node source: kubernetes API unreachable") {
		t.Fatalf("healthz with the API down: %d %q", code, body)
	}
}
