package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftnet/weft/nodeagent/cni"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/kube"
)

// kubeBinDir and kubeImageDir are built once for the Kubernetes tests.
var kubeBin struct {
	dir, imageDir string
	err           error
}

// startKube builds (or finds cached) the Kubernetes binaries and the
// static weft binaries for the image, then brings up a cluster of real
// Kubernetes components with weft deployed from deploy/kubernetes/. A
// component that cannot start fails the test naming it; nothing falls back
// to a fake.
func startKube(t testing.TB, o kube.Options) *kube.Cluster {
	t.Helper()
	needCluster(t)
	repo, err := kube.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if kubeBin.dir == "" && kubeBin.err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
		kubeBin.dir, kubeBin.err = kube.EnsureBinaries(ctx, repo)
		if kubeBin.err == nil {
			kubeBin.imageDir, kubeBin.err = os.MkdirTemp("", "weft-e2e-image-")
		}
		if kubeBin.err == nil {
			kubeBin.err = kube.BuildStatic(ctx, kubeBin.imageDir)
		}
		cancel()
	}
	if kubeBin.err != nil {
		t.Fatal(kubeBin.err)
	}
	o.BinDir, o.KubeBinDir, o.ImageBinDir = binDir, kubeBin.dir, kubeBin.imageDir
	o.DeployDir = filepath.Join(repo, "deploy")
	if o.Prefix == "" {
		o.Prefix = testenv.NewPrefix()
	}
	prefixesMu.Lock()
	prefixes = append(prefixes, o.Prefix)
	prefixesMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c, err := kube.New(ctx, o)
	if err != nil {
		t.Fatalf("start Kubernetes cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of %s:\n%s", c.Prefix, kubeLogs(c))
		}
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		// testenv's leftovers plus the pod sandboxes' network namespaces,
		// mounts under the run directory and pod logs in the host's
		// /var/log/pods.
		if left := c.Leftovers(); len(left) > 0 {
			t.Errorf("left behind by %s: %v", c.Prefix, left)
		}
	})
	return c
}

func kubeLogs(c *kube.Cluster) string {
	var b strings.Builder
	b.WriteString(logTails(c.Prefix))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{{"get", "pods", "-A", "-o", "wide"}, {"get", "nodes", "-o", "wide"}, {"-n", kube.Namespace, "logs", "-l", "app.kubernetes.io/name=weft-controller", "--tail=40"}, {"-n", kube.Namespace, "logs", "-l", "app.kubernetes.io/name=weft-agent", "--tail=40"}} {
		out, err := c.Kubectl(ctx, args...)
		fmt.Fprintf(&b, "--- kubectl %s\n%s%v\n", strings.Join(args, " "), out, err)
	}
	// The controllers' whole container logs (a restarted pod's and one on
	// a deleted Node too): the removal and leadership decisions are in
	// them, not in the last lines.
	files, err := c.ContainerLogs(ctx, kube.Namespace, "weft-controller-")
	if err != nil {
		fmt.Fprintf(&b, "--- controller logs: %v\n", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		fmt.Fprintf(&b, "--- %s\n%s%v\n", f, data, err)
	}
	return b.String()
}

// TestKubernetes runs weft as deploy/kubernetes/ says on real Kubernetes
// components (kube-apiserver, controller-manager, scheduler, a kubelet and
// containerd per node): 2 nodes × 2 pods, checked in order.
func TestKubernetes(t *testing.T) {
	c := startKube(t, kube.Options{Nodes: 2, PodsPerNode: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	nodes := c.KubeNodes()

	t.Run("manifests accepted and deployed", func(t *testing.T) {
		// Every object of every manifest went through a server-side dry run.
		for _, obj := range []string{`namespace/weft-system`, `serviceaccount/weft-controller`, `serviceaccount/weft-agent`,
			`clusterrole.rbac.authorization.k8s.io/weft-controller`, `clusterrolebinding.rbac.authorization.k8s.io/weft-controller`,
			`configmap/weft-config`, `secret/weft-etcd`, `daemonset.apps/weft-agent`, `deployment.apps/weft-controller`} {
			if !strings.Contains(c.ManifestDryRun(), obj) {
				t.Errorf("server dry run did not report %s:\n%s", obj, c.ManifestDryRun())
			}
		}
		// The agent runs from the DaemonSet on every kubelet.
		pods, err := cs.CoreV1().Pods(kube.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=weft-agent"})
		if err != nil {
			t.Fatal(err)
		}
		var on []string
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				on = append(on, p.Spec.NodeName)
			}
		}
		sort.Strings(on)
		if want := nodeNames(nodes); !slices.Equal(on, want) {
			t.Errorf("agent pods run on %v, want one on each of %v", on, want)
		}
		// Two controller replicas on different nodes, one leader.
		eventually(t, 2*time.Minute, "two controller replicas, one leader", func() (bool, string) {
			running, leaders, _ := c.ControllerLeaders(ctx)
			return len(running) == 2 && leaders == 1, fmt.Sprintf("running on %v, %d leaders", running, leaders)
		})
		// The controller's identity is its ServiceAccount, with the shipped
		// RBAC: it may read Nodes and nothing else.
		sa := "system:serviceaccount:" + kube.Namespace + ":weft-controller"
		for _, q := range []struct {
			verb, res string
			want      string
		}{{"list", "nodes", "yes"}, {"watch", "nodes", "yes"}, {"list", "pods", "no"}, {"get", "secrets", "no"}, {"update", "nodes", "no"}} {
			// The answer is the last line (kubectl warns first that nodes
			// are not namespaced).
			out, _ := c.Kubectl(ctx, "auth", "can-i", q.verb, q.res, "--as="+sa)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if got := strings.TrimSpace(lines[len(lines)-1]); got != q.want {
				t.Errorf("can %s %s %s: %q, want %s", sa, q.verb, q.res, out, q.want)
			}
		}
		dep, err := cs.AppsV1().Deployments(kube.Namespace).Get(ctx, "weft-controller", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sa := dep.Spec.Template.Spec.ServiceAccountName; sa != "weft-controller" {
			t.Errorf("controller runs as %q", sa)
		}
		// Every agent converged with the DaemonSet's capabilities: no error
		// in its status (a missing capability shows there).
		eventually(t, time.Minute, "every agent's status without error", func() (bool, string) {
			for _, n := range nodes {
				st, err := c.Status(ctx, n.Name)
				if err != nil || st == nil || st.GetDegraded() || st.GetLastError() != "" {
					return false, fmt.Sprintf("%s: %v %v", n.Name, st, err)
				}
			}
			return true, ""
		})
		// weft's nodes are the Node objects the kubelets registered.
		store, err := c.StoreNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if s, ok := store[n.Name]; !ok || s.GetUnderlayIp() != n.UnderlayIP.String() {
				t.Errorf("weft node %s = %v, want underlay %s", n.Name, s, n.UnderlayIP)
			}
		}
	})

	t.Run("pods reach each other", func(t *testing.T) { podsReachEachOther(t, ctx, c) })

	t.Run("node state stays in the run directory", func(t *testing.T) {
		// Each pod's network namespace is one containerd keeps under its
		// own state directory, not in the host's /run/netns (where it
		// outlived every run), and its logs are in the node's pod logs
		// directory, not the host's /var/log/pods (nor the links to them
		// in /var/log/containers).
		held := map[string]kube.NetNSMount{}
		for _, n := range nodes {
			ms, err := n.SandboxNetNS()
			if err != nil {
				t.Fatal(err)
			}
			// The shims' sockets too (their path is fixed under
			// /run/containerd, which the node has for itself).
			if socks, _ := os.ReadDir(n.HostPath("/run/containerd/s")); len(socks) == 0 {
				t.Errorf("%s: no shim socket in the node's /run/containerd/s", n.Name)
			}
			for _, m := range ms {
				held[m.NS] = m
				if !strings.HasPrefix(m.Path, n.NetNSDir()+"/") {
					t.Errorf("sandbox netns %s of %s at %s, want under %s", m.NS, n.Name, m.Path, n.NetNSDir())
				}
			}
		}
		for _, p := range c.Pods() {
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join("/run/netns", p.NS), &st); err != nil {
				t.Fatal(err)
			}
			ns := fmt.Sprintf("net:[%d]", st.Ino)
			if m, ok := held[ns]; !ok || m.Node != p.Node.Name {
				t.Errorf("pod %s: its netns %s is not one %s's containerd holds (%v)", p.Name, ns, p.Node.Name, held)
			}
			logs := "default_" + p.Name + "_" + p.UID
			if _, err := os.Stat(filepath.Join(p.Node.PodLogsDir(), logs)); err != nil {
				t.Errorf("pod %s: no logs in its node's pod logs directory: %v", p.Name, err)
			}
			if _, err := os.Stat(filepath.Join(kube.HostPodLogsDir, logs)); err == nil {
				t.Errorf("pod %s: logs in the host's %s", p.Name, kube.HostPodLogsDir)
			}
			link := p.Name + "_default_main-*.log"
			if l, _ := filepath.Glob(filepath.Join(p.Node.HostPath(kube.HostContainerLogsDir), link)); len(l) == 0 {
				t.Errorf("pod %s: no link to its log in its node's %s", p.Name, kube.HostContainerLogsDir)
			}
			if l, _ := filepath.Glob(filepath.Join(kube.HostContainerLogsDir, link)); len(l) > 0 {
				t.Errorf("pod %s: links in the host's %s: %v", p.Name, kube.HostContainerLogsDir, l)
			}
		}
	})

	t.Run("agent metrics", func(t *testing.T) {
		code, body, err := c.AgentGet(ctx, nodes[0], "/metrics")
		if err != nil || code != 200 {
			t.Fatalf("agent metrics: %d %v", code, err)
		}
		m := testenv.ParseMetrics(body)
		if m["process_resident_memory_bytes"] <= 0 || m["go_goroutines"] <= 0 {
			t.Errorf("agent metrics lack the process/go collectors: rss %v goroutines %v", m["process_resident_memory_bytes"], m["go_goroutines"])
		}
	})

	t.Run("hostPort and hairpin", func(t *testing.T) {
		n0 := nodes[0]
		p, err := c.CreatePod(ctx, n0, n0.Name+"-p90", func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 7777, HostPort: 18080, Protocol: corev1.ProtocolTCP}}
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitPod(ctx, p, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		// From a pod on the other node to node 0's address and hostPort.
		other := podOn(c, nodes[1])
		if err := testenv.CheckTCPPort(ctx, other.NS, n0.UnderlayIP, 18080); err != nil {
			t.Fatalf("hostPort from %s: %v", other.Name, err)
		}
		// The pod to its own hostPort: DNATed back to itself through its
		// bridge port, which must hairpin.
		if err := testenv.CheckTCPPort(ctx, p.NS, n0.UnderlayIP, 18080); err != nil {
			t.Fatalf("hairpin to its own hostPort: %v", err)
		}
		veth := hostVeth(t, ctx, n0, p)
		setHairpin(t, n0.NS, veth, false)
		if err := testenv.CheckTCPPort(ctx, p.NS, n0.UnderlayIP, 18080); err == nil {
			t.Error("own hostPort reachable with hairpin off: the check proves nothing")
		}
		setHairpin(t, n0.NS, veth, true)
		if err := testenv.CheckTCPPort(ctx, p.NS, n0.UnderlayIP, 18080); err != nil {
			t.Fatalf("hairpin back on: %v", err)
		}
		if err := c.DeletePod(ctx, p, time.Minute); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("delete frees the address, recreate works", func(t *testing.T) {
		n1 := nodes[1]
		p := podOn(c, n1)
		ip := p.IP
		before, err := n1.Leases()
		if err != nil {
			t.Fatal(err)
		}
		if !leased(before, ip) {
			t.Fatalf("%s's address %s not in the node's leases %v", p.Name, ip, before)
		}
		if err := c.DeletePod(ctx, p, time.Minute); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "address freed", func() (bool, string) {
			l, err := n1.Leases()
			return err == nil && !leased(l, ip), fmt.Sprint(l, err)
		})
		p2, err := c.CreatePod(ctx, n1, p.Name, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitPod(ctx, p2, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		m := testenv.CheckAll(ctx, c.Targets(), nil)
		if len(m.Failed()) > 0 {
			t.Fatalf("after recreating %s:\n%s", p.Name, m)
		}
	})

	t.Run("kubelet restart leaves pods alone", func(t *testing.T) {
		n0 := nodes[0]
		var dsts []netip.Addr
		for _, p := range c.Pods() {
			if p.Node == n0 {
				dsts = append(dsts, p.IP)
			}
		}
		from := podOn(c, nodes[1])
		s, err := testenv.StartStream(from.NS, dsts, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		uids := podUIDs(t, ctx, c)
		if err := n0.RestartKubelet(); err != nil {
			s.Stop()
			t.Fatal(err)
		}
		eventually(t, 2*time.Minute, "node Ready again after the kubelet restart", func() (bool, string) {
			return nodeReady(ctx, c, n0.Name)
		})
		time.Sleep(3 * time.Second)
		st := s.Stop()
		if st.Lost > 0 || st.Received == 0 {
			t.Errorf("pings to %s's pods across the kubelet restart: %+v", n0.Name, st)
		}
		if after := podUIDs(t, ctx, c); !maps.Equal(uids, after) {
			t.Errorf("pods changed across the kubelet restart: %v → %v", uids, after)
		}
	})

	t.Run("failed chain leaks no lease", func(t *testing.T) {
		// The old conflist (cniVersion 1.1.0) on node 1: containerd 1.6's
		// libcni cannot read weft-cni's 1.1.0 result, so ADD fails after
		// weft-cni leased an address, and the distribution's portmap
		// refuses DEL, so weft-cni's DEL is never reached while that
		// conflist is there. However often the kubelet retries, no more
		// than the current attempt's address stays leased, and once the
		// conflist is fixed the pod runs with exactly one lease.
		n1 := nodes[1]
		conf := n1.HostPath("/etc/cni/net.d/10-weft.conflist")
		good, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		bad := strings.Replace(string(good), `"cniVersion": "1.0.0"`, `"cniVersion": "1.1.0"`, 1)
		if bad == string(good) {
			t.Fatalf("conflist %s has no cniVersion 1.0.0 to replace:\n%s", conf, good)
		}
		if err := os.WriteFile(conf, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		before, _ := n1.Leases()
		p, err := c.CreatePod(ctx, n1, n1.Name+"-p91", nil)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Minute, "the sandbox fails with the 1.1.0 conflist", func() (bool, string) {
			ev := c.PodEvents(ctx, p.Name)
			return strings.Contains(ev, "FailedCreatePodSandBox") && strings.Contains(ev, "1.1.0"), ev
		})
		time.Sleep(20 * time.Second) // the kubelet retries meanwhile
		after, err := n1.Leases()
		if err != nil {
			t.Fatal(err)
		}
		if len(after) > len(before)+1 {
			t.Errorf("leases grew from %d to %d while the chain failed: %v", len(before), len(after), after)
		}
		if err := os.WriteFile(conf, good, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitPod(ctx, p, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		final, _ := n1.Leases()
		if len(final) != len(before)+1 {
			t.Errorf("after the conflist is fixed: %d leases, want %d (the old ones and the new pod's): %v", len(final), len(before)+1, final)
		}
		if err := c.DeletePod(ctx, p, time.Minute); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("API server away", func(t *testing.T) {
		health := func() (string, string) {
			for _, n := range nodes {
				_, body, err := c.ControllerGet(ctx, n, "/healthz")
				if err == nil && strings.Contains(body, "leader") && !strings.Contains(body, "follower") {
					return n.Name, strings.TrimSpace(body)
				}
			}
			return "", "no leader answered"
		}
		before, err := c.StoreNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.APIServer().Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "leader's /healthz names the unreachable API", func() (bool, string) {
			_, body := health()
			return strings.Contains(body, "kubernetes API unreachable"), body
		})
		time.Sleep(5 * time.Second)
		after, err := c.StoreNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Errorf("weft nodes changed while the API was away: %d → %d", len(before), len(after))
		}
		if err := c.APIServer().Start(); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitAPI(ctx, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		// The API server removed its own endpoint of the kubernetes
		// Service as it stopped, so each node's kube-proxy rejects the
		// controller's connections until its watch is back and it has
		// seen the endpoint again (10-15 s longer than the static DNAT
		// that stood for kube-proxy before, at load 3-6).
		eventually(t, 2*time.Minute, "leader healthy again", func() (bool, string) {
			_, body := health()
			return strings.HasPrefix(body, "ok leader"), body
		})
	})

	// Before the Node deletion below, which takes node 1 out of weft.
	t.Run("Service across nodes through kube-proxy", func(t *testing.T) {
		clusterIP := checkService(t, ctx, c)
		// The same with VXLAN written and stripped by weft's programs
		// (tunnel_datapath bpf, set as an operator does): the receive in
		// the program must leave the replies of a DNATed flow to the
		// stack (bpf/decap_test.go, "service replies go through the
		// stack").
		tnodes := testNodes(nodes)
		encap := func() (sum float64) {
			for _, n := range nodes {
				_, body, err := c.AgentGet(ctx, n, "/metrics")
				if err != nil {
					t.Fatal(err)
				}
				sum += testenv.SumMetric(testenv.ParseMetrics(body), "weft_datapath_encap_packets_total")
			}
			return sum
		}
		switchMode(t, ctx, c.Cluster, tnodes, "vxlan", func(cfg *weftv1.ClusterConfig) { cfg.TunnelDatapath = "bpf" })
		defer switchMode(t, ctx, c.Cluster, tnodes, "vxlan", func(cfg *weftv1.ClusterConfig) { cfg.TunnelDatapath = "" })
		before := encap()
		clusterIP(t)
		if after := encap(); after <= before {
			t.Errorf("with tunnel_datapath bpf, no packet was encapsulated in the programs (%v -> %v)", before, after)
		}
	})

	// Before the Node deletion below: its NodeRemoved is the new
	// leader's, so it proves the controller works after the rollout.
	t.Run("controller rollout on as many nodes as replicas", func(t *testing.T) { controllerRollout(t, ctx, c) })

	t.Run("Node deleted from the API", func(t *testing.T) {
		n1 := nodes[1]
		sub, err := testenv.ReadSubnetEnv(n1.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		cidr := sub.Subnet.Masked().String()
		if err := cs.CoreV1().Nodes().Delete(ctx, n1.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "NodeRemoved in the log", func() (bool, string) {
			out, err := c.Weftctl(ctx, "events")
			return err == nil && strings.Contains(out, "NodeRemoved") && strings.Contains(out, n1.Name), out
		})
		eventually(t, time.Minute, "peer routes and tunnel entries gone", func() (bool, string) {
			st, err := c.Status(ctx, nodes[0].Name)
			if err != nil || st == nil {
				return false, fmt.Sprint(err)
			}
			s := fmt.Sprint(st)
			return !strings.Contains(s, cidr) && !strings.Contains(s, n1.Name), s
		})
	})
}

// controllerRollout restarts the weft-controller Deployment as an operator
// does (`kubectl rollout restart`) on a cluster with as many nodes as
// replicas, whose required anti-affinity leaves no node for a surge pod:
// the rollout must complete (`kubectl rollout status`, bounded at 3
// minutes, far above the tens of seconds it takes), both replicas must be
// new pods on different nodes, and one of them must lead again with
// /healthz "ok leader". With the default strategy (maxSurge 25%: one surge
// pod) the surge pod stays Pending and the rollout never completes.
func controllerRollout(t *testing.T, ctx context.Context, c *kube.Cluster) {
	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	const sel = "app.kubernetes.io/name=weft-controller"
	controllers := func() ([]corev1.Pod, error) {
		l, err := cs.CoreV1().Pods(kube.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return nil, err
		}
		return l.Items, nil
	}
	before, err := controllers()
	if err != nil {
		t.Fatal(err)
	}
	old := map[string]bool{}
	for _, p := range before {
		old[string(p.UID)] = true
	}
	if len(old) != 2 {
		t.Fatalf("%d controller pods before the rollout, want 2", len(old))
	}
	if out, err := c.Kubectl(ctx, "-n", kube.Namespace, "rollout", "restart", "deployment/weft-controller"); err != nil {
		t.Fatalf("rollout restart: %v\n%s", err, out)
	}
	start := time.Now()
	out, err := c.Kubectl(ctx, "-n", kube.Namespace, "rollout", "status", "deployment/weft-controller", "--timeout=3m")
	if err != nil {
		pods, _ := c.Kubectl(ctx, "-n", kube.Namespace, "get", "pods", "-l", sel, "-o", "wide")
		t.Fatalf("rollout of weft-controller did not complete in %v: %v\n%s\n%s", time.Since(start).Round(time.Second), err, out, pods)
	}
	t.Logf("rollout completed in %v:\n%s", time.Since(start).Round(time.Second), strings.TrimSpace(out))
	after, err := controllers()
	if err != nil {
		t.Fatal(err)
	}
	on := map[string]bool{}
	for _, p := range after {
		if p.DeletionTimestamp != nil {
			continue // an old pod on its way out
		}
		if old[string(p.UID)] {
			t.Errorf("controller pod %s on %s was not replaced", p.Name, p.Spec.NodeName)
		}
		// Started once: not beside its predecessor on the same node
		// (both would want the node's loopback metrics port).
		if r := podRestarts(&p); r != 0 {
			t.Errorf("new controller pod %s on %s restarted %d times", p.Name, p.Spec.NodeName, r)
		}
		on[p.Spec.NodeName] = true
	}
	if len(on) != 2 {
		t.Errorf("new controller pods on %v, want one on each of 2 nodes", slices.Sorted(maps.Keys(on)))
	}
	// The new replicas elect a leader, which answers "ok leader".
	eventually(t, 2*time.Minute, "one leader among the new replicas, healthy", func() (bool, string) {
		running, leaders, _ := c.ControllerLeaders(ctx)
		why := fmt.Sprintf("running on %v, %d leaders", running, leaders)
		if len(running) != 2 || leaders != 1 {
			return false, why
		}
		for _, n := range c.KubeNodes() {
			if _, body, err := c.ControllerGet(ctx, n, "/healthz"); err == nil && strings.HasPrefix(body, "ok leader") {
				return true, ""
			}
		}
		return false, why + "; no /healthz says ok leader"
	})
}

// podsReachEachOther checks that every demo pod runs on its node with an
// address from the node's subnet and that every pod reaches every other.
func podsReachEachOther(t *testing.T, ctx context.Context, c *kube.Cluster) {
	t.Helper()
	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range c.Pods() {
		got, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := testenv.ReadSubnetEnv(p.Node.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		if got.Spec.NodeName != p.Node.Name || !sub.Subnet.Masked().Contains(p.IP) {
			t.Errorf("pod %s on %s with %s, want on %s inside %s", p.Name, got.Spec.NodeName, p.IP, p.Node.Name, sub.Subnet.Masked())
		}
	}
	m := testenv.CheckAll(ctx, c.Targets(), nil)
	if len(m.Failed()) > 0 || len(m.Results) != 12 {
		t.Fatalf("connectivity (%d pairs):\n%s", len(m.Results), m)
	}
}

// checkService starts the who server in every demo pod and creates a
// NodePort Service (TCP and UDP) selecting them all, then checks it through
// the real kube-proxy: the ClusterIP from a pod on each node and each
// node's NodePort from outside the cluster, every backend answering and
// every answer coming from the address asked (reverse NAT). It returns the
// ClusterIP check, for repeating it after a datapath switch. The servers
// and the Service go when t ends.
func checkService(t *testing.T, ctx context.Context, c *kube.Cluster) (clusterIP func(t *testing.T)) {
	t.Helper()
	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	nodes := c.KubeNodes()
	// Every demo pod, on both nodes, answers on WhoPort with its name.
	backends := map[string]bool{}
	backendNodes := map[string]bool{}
	for _, p := range c.Pods() {
		w, err := testenv.StartWho(p.NS, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
		backends[p.Name] = true
		backendNodes[p.Node.Name] = true
	}
	if len(backendNodes) != len(nodes) {
		t.Fatalf("backends on %v, want on each of %v", backendNodes, nodeNames(nodes))
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "weft-who", Namespace: corev1.NamespaceDefault},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: map[string]string{"app": "weft-testenv"},
			Ports: []corev1.ServicePort{
				{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(testenv.WhoPort)},
				{Name: "udp", Protocol: corev1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(testenv.WhoPort)},
			},
		},
	}
	svc, err = cs.CoreV1().Services(corev1.NamespaceDefault).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cs.CoreV1().Services(corev1.NamespaceDefault).Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete Service %s: %v", svc.Name, err)
		}
	})
	cip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		t.Fatalf("ClusterIP %q: %v", svc.Spec.ClusterIP, err)
	}
	nodePort := map[string]uint16{}
	for _, sp := range svc.Spec.Ports {
		nodePort[strings.ToLower(string(sp.Protocol))] = uint16(sp.NodePort)
	}
	// Asks from ns until every backend has answered at dst; every
	// answer must come from dst (the reverse NAT of the node that
	// DNATed the question).
	allAnswer := func(t *testing.T, from, ns, network string, dst netip.AddrPort) {
		t.Helper()
		seen := map[string]int{}
		var last error
		eventually(t, 3*time.Minute, fmt.Sprintf("every backend answers %s %s from %s", network, dst, from), func() (bool, string) {
			name, src, err := testenv.AskWho(ctx, ns, network, dst)
			if err != nil {
				last = err
			} else {
				if src != dst {
					t.Fatalf("%s %s from %s: %s answered from %s: the reply is not reverse-NATed", network, dst, from, name, src)
				}
				if !backends[name] {
					t.Fatalf("%s %s from %s: answer %q from no backend", network, dst, from, name)
				}
				seen[name]++
			}
			return len(seen) == len(backends), fmt.Sprintf("answered %v of %d backends; last error %v", seen, len(backends), last)
		})
		t.Logf("%s %s from %s: %v", network, dst, from, seen)
	}
	clusterIP = func(t *testing.T) {
		for _, n := range nodes {
			client := podOn(c, n)
			for _, network := range []string{"tcp", "udp"} {
				allAnswer(t, client.Name, client.NS, network, netip.AddrPortFrom(cip, 80))
			}
		}
	}
	clusterIP(t)
	// The NodePort of each node, from outside the cluster (the control
	// namespace): kube-proxy DNATs and masquerades, and half the
	// backends are on the other node.
	for _, n := range nodes {
		for _, network := range []string{"tcp", "udp"} {
			allAnswer(t, "the control namespace", c.CtlNS, network, netip.AddrPortFrom(n.UnderlayIP, nodePort[network]))
		}
	}
	return clusterIP
}

// testNodes returns the testenv nodes under the Kubernetes nodes.
func testNodes(nodes []*kube.Node) []*testenv.Node {
	var tn []*testenv.Node
	for _, n := range nodes {
		tn = append(tn, n.Node)
	}
	return tn
}

func nodeNames(nodes []*kube.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	sort.Strings(out)
	return out
}

func podOn(c *kube.Cluster, n *kube.Node) *kube.Pod {
	for _, p := range c.Pods() {
		if p.Node == n && p.NS != "" {
			return p
		}
	}
	return nil
}

func leased(l map[string][]netip.Addr, ip netip.Addr) bool {
	for _, ips := range l {
		if slices.Contains(ips, ip) {
			return true
		}
	}
	return false
}

// hostVeth finds the node side of the pod's veth: the bridge port whose
// name weft-cni derives from the sandbox's container ID.
func hostVeth(t *testing.T, ctx context.Context, n *kube.Node, p *kube.Pod) string {
	t.Helper()
	ids, err := n.Ctr(ctx, "containers", "list", "-q", fmt.Sprintf(`labels."io.kubernetes.pod.uid"==%s,labels."io.cri-containerd.kind"==sandbox`, p.UID))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(ids)
	if len(f) != 1 {
		t.Fatalf("sandboxes of %s: %v", p.Name, f)
	}
	return cni.HostVethName(f[0], "eth0")
}

func setHairpin(t *testing.T, ns, link string, on bool) {
	t.Helper()
	err := testenv.InNS(ns, func() error {
		l, err := netlink.LinkByName(link)
		if err != nil {
			return err
		}
		return netlink.LinkSetHairpin(l, on)
	})
	if err != nil {
		t.Fatalf("set hairpin %v on %s: %v", on, link, err)
	}
}

func podUIDs(t *testing.T, ctx context.Context, c *kube.Cluster) map[string]string {
	t.Helper()
	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	l, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range l.Items {
		restarts := int32(0)
		for _, s := range p.Status.ContainerStatuses {
			restarts += s.RestartCount
		}
		out[p.Namespace+"/"+p.Name] = fmt.Sprintf("%s restarts=%d", p.UID, restarts)
	}
	return out
}

func nodeReady(ctx context.Context, c *kube.Cluster, name string) (bool, string) {
	cs, err := c.Clientset()
	if err != nil {
		return false, err.Error()
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue, cond.Message
		}
	}
	return false, "no Ready condition"
}
