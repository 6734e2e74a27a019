package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
// The agents' probes are asked every second (kube.Options.FastProbes) for
// the whole test, and etcd is then cut off from a node: its agent and
// controller are reported NotReady and are not restarted.
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
	eventually(t, 2*time.Minute, "every agent in mode native without error", func() (bool, string) {
		for _, n := range nodes {
			st, err := c.Status(ctx, n.Name)
			if err != nil || st == nil || st.GetMode() != "native" || st.GetDegraded() || st.GetLastError() != "" {
				return false, fmt.Sprintf("%s: %v %v", n.Name, st, err)
			}
		}
		return true, ""
	})

	t.Run("pods reach each other in eBPF", func(t *testing.T) {
		before := routed(t)
		podsReachEachOther(t, ctx, c)
		after := routed(t)
		t.Logf("weft_datapath_routed_packets_total %v -> %v", before, after)
		if after <= before {
			t.Errorf("no packet between the nodes' pods was routed in eBPF (weft_datapath_routed_packets_total %v -> %v)", before, after)
		}
	})

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
