package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/bpf/spec"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/kube"
)

// TestKubernetesNative is native routing (backend "native", host routing
// in eBPF by default) on real Kubernetes with the real kube-proxy in
// nftables mode: pods reach each other across nodes, and the NodePort
// Service of TestKubernetes answers from every backend with its ClusterIP
// from a pod on each node and on each node's NodePort. weft's routed
// counters prove the packets crossed in eBPF past the node's stack; then
// the ClusterIP again with host_routing "stack", where they do not move.
// Then the same cluster is switched live to bgp (an iBGP full mesh of the
// agents' weft-bgp children), hybrid and gateway (through a router built
// as the user's network), and in each the pods reach each other, the
// Service answers through kube-proxy and the mode's own truth holds
// (docs/kubernetes.md has the table); then native again. The agents'
// probes are asked every second (kube.Options.FastProbes) for the whole
// test, and etcd is then cut off from a node: its agent and controller
// are reported NotReady and are not restarted.
func TestKubernetesNative(t *testing.T) {
	c := startKube(t, kube.Options{Nodes: 2, PodsPerNode: 2, Backend: "native", FastProbes: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	nodes := c.KubeNodes()
	tnodes := testNodes(nodes)
	// routed sums weft_datapath_routed_packets_total (tx and rx) over the
	// nodes.
	routed := func(t *testing.T) (sum float64) {
		t.Helper()
		for _, n := range nodes {
			code, body, err := c.AgentGet(ctx, n, "/metrics")
			if err != nil || code != 200 {
				t.Fatalf("%s agent metrics: %d %v", n.Name, code, err)
			}
			sum += testenv.SumMetric(testenv.ParseMetrics(body), "weft_datapath_routed_packets_total")
		}
		return sum
	}
	nativeHealthy := func() (bool, string) {
		for _, n := range nodes {
			st, err := c.Status(ctx, n.Name)
			if err != nil || st == nil || st.GetMode() != "native" || st.GetDegraded() || st.GetLastError() != "" {
				return false, fmt.Sprintf("%s: %v %v", n.Name, st, err)
			}
		}
		return true, ""
	}
	eventually(t, 2*time.Minute, "every agent in mode native without error", nativeHealthy)
	// podsAcross checks that every pod reaches every other and, with
	// inEBPF, that packets between the nodes were routed in eBPF (host
	// routing: native, bgp, hybrid's adjacent peers).
	podsAcross := func(t *testing.T, inEBPF bool) {
		t.Helper()
		before := routed(t)
		podsReachEachOther(t, ctx, c)
		after := routed(t)
		t.Logf("weft_datapath_routed_packets_total %v -> %v", before, after)
		if inEBPF && after <= before {
			t.Errorf("no packet between the nodes' pods was routed in eBPF (weft_datapath_routed_packets_total %v -> %v)", before, after)
		}
	}

	t.Run("pods reach each other in eBPF", func(t *testing.T) { podsAcross(t, true) })

	t.Run("Service through kube-proxy", func(t *testing.T) {
		// A ClusterIP is DNATed in the client node's stack (the program
		// leaves a destination outside the pod networks to it); the
		// question then crosses to a backend on the other node, which the
		// backend node's programs route in eBPF, and so does the answer;
		// back on the client node the reply of the DNATed flow must go
		// through the stack for its reverse NAT.
		before := routed(t)
		clusterIP := checkService(t, ctx, c)
		after := routed(t)
		t.Logf("host_routing bpf: weft_datapath_routed_packets_total %v -> %v", before, after)
		if after <= before {
			t.Errorf("no Service packet was routed in eBPF (weft_datapath_routed_packets_total %v -> %v)", before, after)
		}
		// The same through the node's stack (host_routing stack, set as
		// an operator does): nothing is routed in the programs.
		switchMode(t, ctx, c.Cluster, tnodes, "native", func(cfg *weftv1.ClusterConfig) { cfg.HostRouting = "stack" })
		defer switchMode(t, ctx, c.Cluster, tnodes, "native", func(cfg *weftv1.ClusterConfig) { cfg.HostRouting = "" })
		before = routed(t)
		clusterIP(t)
		after = routed(t)
		t.Logf("host_routing stack: weft_datapath_routed_packets_total %v -> %v", before, after)
		if after != before {
			t.Errorf("with host_routing stack, %v packets were routed in eBPF", after-before)
		}
	})

	// The other routing modes on this cluster, each switched to live and
	// configured as its docs say, each proving in real packets what native
	// proves above (every pod reaches every other across the nodes; the
	// NodePort Service, whose ClusterIP is DNATed by kube-proxy to
	// backends on both nodes, answers from every backend) and the mode's
	// own truth. geneve is not among them: this kernel has no Geneve
	// (testenv.ErrNoGeneve), which TestNativeRouting shows reported.
	cidr := podCIDRs(t, c.Cluster)
	// The other of the two nodes.
	peerOf := func(n *kube.Node) *kube.Node { return nodes[1-n.Index] }
	// acrossNodes is the native subtests' proof in the mode the cluster
	// runs now: the pods reach each other, then a new Service answers
	// (checkService: ClusterIP from a pod on each node, every backend;
	// each node's NodePort from outside).
	acrossNodes := func(t *testing.T, inEBPF bool) {
		t.Helper()
		podsAcross(t, inEBPF)
		checkService(t, ctx, c)
	}
	// weftRoutes is node n's kernel routes of one protocol (protoWeft:
	// weft's direct and cluster routes; protoBGP: learned by its speaker).
	weftRoutes := func(t *testing.T, n *kube.Node, proto int) map[netip.Prefix]netip.Addr {
		t.Helper()
		rs, err := testenv.ProtoRoutes(n.NS, proto)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	overlayTx := func(t *testing.T) (sum float64) {
		for _, n := range tnodes {
			tx, _ := counters(t, ctx, c.Cluster, n)
			sum += tx
		}
		return sum
	}

	// docs/bgp.md: on one segment, an iBGP full mesh of the agents'
	// weft-bgp speakers (the binary the DaemonSet names with
	// --bgp-speaker), configured in the ClusterConfig.
	t.Run("bgp: full mesh of the agents' speakers", func(t *testing.T) {
		switchMode(t, ctx, c.Cluster, tnodes, "bgp", func(cfg *weftv1.ClusterConfig) {
			cfg.Bgp = &weftv1.BGPConfig{Asn: 64512, FullMesh: true}
		})
		eventually(t, 60*time.Second, "each agent's session to its peer established and the peer's pod CIDR in its kernel by BGP", func() (bool, string) {
			for _, n := range nodes {
				peer := peerOf(n)
				st, err := c.Status(ctx, n.Name)
				if err != nil || st == nil {
					return false, fmt.Sprintf("%s: status %v %v", n.Name, st, err)
				}
				ss := st.GetBgpSessions()
				if len(ss) != 1 || ss[0].GetPeer() != peer.UnderlayIP.String() || ss[0].GetState() != "established" ||
					ss[0].GetAdvertised() != 1 || ss[0].GetReceived() != 1 {
					return false, fmt.Sprintf("%s: sessions %v, want one established to %s, 1 advertised, 1 received", n.Name, ss, peer.UnderlayIP)
				}
				// The BGP route is the only one: native's direct routes are gone.
				if rs := weftRoutes(t, n, protoBGP); len(rs) != 1 || rs[cidr[peer.Name]] != peer.UnderlayIP {
					return false, fmt.Sprintf("%s: BGP routes %v, want %s via %s", n.Name, rs, cidr[peer.Name], peer.UnderlayIP)
				}
				if rs := weftRoutes(t, n, protoWeft); len(rs) != 0 {
					return false, fmt.Sprintf("%s: weft's own routes %v in bgp mode", n.Name, rs)
				}
			}
			return true, ""
		})
		acrossNodes(t, true)
	})

	// docs/agent.md: hybrid routes adjacent peers directly and tunnels
	// the others; both nodes share one segment, so nothing is tunnelled.
	t.Run("hybrid: direct routes on a shared segment", func(t *testing.T) {
		switchMode(t, ctx, c.Cluster, tnodes, "hybrid", nil)
		for _, n := range nodes {
			peer := peerOf(n)
			if rs := weftRoutes(t, n, protoWeft); rs[cidr[peer.Name]] != peer.UnderlayIP {
				t.Errorf("%s: weft's routes %v, want the direct %s via %s", n.Name, rs, cidr[peer.Name], peer.UnderlayIP)
			}
			if rs := weftRoutes(t, n, protoBGP); len(rs) != 0 {
				t.Errorf("%s: BGP routes %v left in hybrid mode", n.Name, rs)
			}
			if !hasLink(t, n.Node, spec.VXLANDevice) {
				t.Errorf("%s: no %s in hybrid mode (for peers on other segments)", n.Name, spec.VXLANDevice)
			}
		}
		before := overlayTx(t)
		acrossNodes(t, true)
		if after := overlayTx(t); after != before {
			t.Errorf("hybrid sent %v packets into the tunnel between adjacent nodes (weft_datapath_tx_packets_total %v -> %v)", after-before, before, after)
		}
	})

	// docs/agent.md: in gateway mode weft installs no per-node route; the
	// network's router knows every pod CIDR and the nodes send the
	// cluster CIDR to it. That router is built here as the user's network
	// would have it, after the switch (before it, hybrid's cluster route
	// to its tunnel has the same destination).
	t.Run("gateway: through the network's router", func(t *testing.T) {
		switchMode(t, ctx, c.Cluster, tnodes, "gateway", nil)
		for _, n := range nodes {
			if rs := weftRoutes(t, n, protoWeft); len(rs) != 0 {
				t.Errorf("%s: weft's routes %v in gateway mode", n.Name, rs)
			}
			if hasLink(t, n.Node, spec.VXLANDevice) {
				t.Errorf("%s: %s left in gateway mode", n.Name, spec.VXLANDevice)
			}
		}
		remove, err := c.RoutePodsByRouter()
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := remove(); err != nil {
				t.Error(err)
			}
		}()
		eventually(t, 60*time.Second, "every agent reaches its peer through the router", func() (bool, string) {
			for _, n := range nodes {
				st, err := c.Status(ctx, n.Name)
				if err != nil || st == nil || st.GetReachablePeers() != 1 || len(st.GetUnreachablePeers()) != 0 || st.GetDegraded() {
					return false, fmt.Sprintf("%s: %v %v", n.Name, st, err)
				}
			}
			return true, ""
		})
		// Every packet between the pods crosses the router: a ping stream
		// between the nodes moves its forwarded count by at least the
		// echoes and their replies.
		fwd, err := testenv.Forwarded(c.RouterNS)
		if err != nil {
			t.Fatal(err)
		}
		from, to := podOn(c, nodes[0]), podOn(c, nodes[1])
		s, err := testenv.StartStream(from.NS, []netip.Addr{to.IP}, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		st := s.Stop()
		fwd2, err := testenv.Forwarded(c.RouterNS)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s -> %s: %d pings answered; the router forwarded %d packets", from.Name, to.Name, st.Received, fwd2-fwd)
		if st.Received < 20 || fwd2-fwd < 2*uint64(st.Received) {
			t.Errorf("%s -> %s: %+v; the router forwarded %d packets, want at least 20 answered and 2 per answer", from.Name, to.Name, st, fwd2-fwd)
		}
		acrossNodes(t, false)
	})

	t.Run("native again", func(t *testing.T) {
		switchMode(t, ctx, c.Cluster, tnodes, "native", func(cfg *weftv1.ClusterConfig) { cfg.Bgp = nil })
		// As at the start, and Ready to the kubelet: the next subtest
		// watches the agents' readiness.
		eventually(t, 2*time.Minute, "every agent in mode native without error, and Ready", func() (bool, string) {
			if ok, why := nativeHealthy(); !ok {
				return false, why
			}
			return agentsReady(ctx, c)
		})
		podsAcross(t, true)
	})

	// Last: it takes etcd away from a node for a while.
	t.Run("etcd away from a node: NotReady, not restarted", func(t *testing.T) { degradedNotRestarted(t, ctx, c, nodes[0]) })
}

// degradedNotRestarted cuts node n off from etcd (nftables in the node,
// testenv.Cluster.BlockEtcd) for longer than five times the agent's
// liveness window as deployed: n's agent and controller answer /healthz
// 503 naming etcd and are reported NotReady by the kubelet (readiness),
// and they answer /livez 200 and are not restarted (liveness), since a
// restart brings etcd back no sooner. Once etcd is back both are Ready
// again, and no weft container restarted during the whole test.
func degradedNotRestarted(t *testing.T, ctx context.Context, c *kube.Cluster, n *kube.Node) {
	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	ds, err := cs.AppsV1().DaemonSets(kube.Namespace).Get(ctx, "weft-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	live := ds.Spec.Template.Spec.Containers[0].LivenessProbe
	if live == nil || live.HTTPGet == nil || live.HTTPGet.Path != "/livez" {
		t.Fatalf("agent liveness probe %v, want the shipped /livez", live)
	}
	window := time.Duration(live.PeriodSeconds*live.FailureThreshold) * time.Second
	pods := func() (map[string]*corev1.Pod, error) {
		l, err := cs.CoreV1().Pods(kube.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.Name})
		if err != nil {
			return nil, err
		}
		out := map[string]*corev1.Pod{}
		for i := range l.Items {
			out[l.Items[i].Labels["app.kubernetes.io/name"]] = &l.Items[i]
		}
		if out["weft-agent"] == nil || out["weft-controller"] == nil {
			return nil, fmt.Errorf("weft pods on %s: %v", n.Name, slices.Collect(maps.Keys(out)))
		}
		return out, nil
	}
	// ready says whether the pods of apps on n are all Ready (want true)
	// or all not Ready (want false), naming each.
	ready := func(want bool, apps ...string) (bool, string) {
		ps, err := pods()
		if err != nil {
			return false, err.Error()
		}
		ok, why := true, ""
		for _, app := range apps {
			r := podReady(ps[app])
			ok = ok && r == want
			why += fmt.Sprintf("%s ready %v restarts %d; ", app, r, podRestarts(ps[app]))
		}
		return ok, why
	}
	livez := func() {
		t.Helper()
		for name, get := range map[string]func(context.Context, *kube.Node, string) (int, string, error){"agent": c.AgentGet, "controller": c.ControllerGet} {
			if code, body, err := get(ctx, n, "/livez"); err != nil || code != 200 {
				_, pods := ready(false, "weft-agent", "weft-controller")
				t.Fatalf("%s on %s: livez %d %q %v with etcd away (%s)", name, n.Name, code, body, err, pods)
			}
		}
	}

	if err := c.BlockEtcd(n.Index); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.UnblockEtcd(n.Index) })
	eventually(t, 2*time.Minute, "agent on "+n.Name+" NotReady", func() (bool, string) { return ready(false, "weft-agent") })
	notReady := time.Now()
	for name, get := range map[string]func(context.Context, *kube.Node, string) (int, string, error){"agent": c.AgentGet, "controller": c.ControllerGet} {
		if code, body, err := get(ctx, n, "/healthz"); err != nil || code != 503 || !strings.Contains(body, "etcd unreachable") {
			t.Errorf("%s on %s: healthz %d %q %v, want 503 naming etcd unreachable", name, n.Name, code, body, err)
		}
	}
	// Five liveness windows of the agent (a liveness probe on /healthz
	// would have restarted it within one), and until the controller,
	// whose probes are the shipped ones, is NotReady too.
	for {
		livez()
		if ok, why := ready(false, "weft-agent", "weft-controller"); ok && time.Since(notReady) > 5*window {
			t.Logf("etcd away from %s: %s NotReady for %v (agent liveness window %v)", n.Name, why, time.Since(notReady).Round(time.Second), window)
			break
		} else if time.Since(notReady) > 2*time.Minute {
			t.Fatalf("etcd away from %s for %v: %s", n.Name, time.Since(notReady).Round(time.Second), why)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := c.UnblockEtcd(n.Index); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "agent and controller on "+n.Name+" Ready again", func() (bool, string) {
		return ready(true, "weft-agent", "weft-controller")
	})
	l, err := cs.CoreV1().Pods(kube.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range l.Items {
		if r := podRestarts(&l.Items[i]); r != 0 {
			t.Errorf("pod %s on %s: %d restarts", l.Items[i].Name, l.Items[i].Spec.NodeName, r)
		}
	}
}

// agentsReady reports whether the kubelet reports the weft agent on every
// node Ready, naming the ones it does not.
func agentsReady(ctx context.Context, c *kube.Cluster) (bool, string) {
	cs, err := c.Clientset()
	if err != nil {
		return false, err.Error()
	}
	l, err := cs.CoreV1().Pods(kube.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=weft-agent"})
	if err != nil {
		return false, err.Error()
	}
	if len(l.Items) != len(c.KubeNodes()) {
		return false, fmt.Sprintf("%d agent pods for %d nodes", len(l.Items), len(c.KubeNodes()))
	}
	for i := range l.Items {
		if !podReady(&l.Items[i]) {
			return false, fmt.Sprintf("agent %s on %s not Ready", l.Items[i].Name, l.Items[i].Spec.NodeName)
		}
	}
	return true, ""
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podRestarts(p *corev1.Pod) (n int32) {
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}
