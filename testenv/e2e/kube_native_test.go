package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

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
func TestKubernetesNative(t *testing.T) {
	c := startKube(t, kube.Options{Nodes: 2, PodsPerNode: 2, Backend: "native"})
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
}
