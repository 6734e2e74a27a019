package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/netnstest"
)

// TestHostRouting is the NetworkPolicy-compatibility switch on running
// clusters (issue 17): a DROP rule in node 0's FORWARD hook (nftables at
// filter priority, where iptables-nft puts FORWARD) for pod 0 → pod 1 is
// bypassed while host routing is "bpf" (the default) and takes effect once
// the cluster config says "stack", and back; an agent started with
// --host-routing=stack keeps the rule in force whatever the config says.
// Native mode, so the eBPF path is the host routing of issue 14.
func TestHostRouting(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		// configs are the host_routing values set in turn, and whether
		// the rule must take effect under each.
		configs []string
		effect  []bool
	}{
		{"config", nil, []string{"", "stack", "bpf"}, []bool{false, true, false}},
		{"agent flag", []string{"--host-routing=stack"}, []string{"", "bpf"}, []bool{true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := start(t, testenv.Options{Nodes: 2, PodsPerNode: 1, Backend: "native", AgentArgs: tc.args, ProbeGrace: 5 * time.Second})
			ctx := context.Background()
			nodes := c.Nodes()
			from, to := nodes[0].Pods[0], nodes[1].Pods[0]
			pod, err := netnstest.Open(from.NS)
			if err != nil {
				t.Fatal(err)
			}
			defer pod.Close()
			dropped := forwardDropRule(t, nodes[0].NS, from.Addr.String(), to.Addr.String())
			for i, hr := range tc.configs {
				if hr != "" {
					setHostRouting(t, ctx, c, hr)
				}
				d0 := dropped()
				lost := netnstest.Lost(t, pod, to.Addr, 20, 5*time.Millisecond)
				d := dropped() - d0
				t.Logf("host_routing %q, agent args %v: %d of 20 pings lost, the FORWARD rule dropped %d", hr, tc.args, lost, d)
				if tc.effect[i] && (lost != 20 || d < 20) {
					t.Errorf("host_routing %q, agent args %v: %d of 20 pings got through, the rule dropped %d: want the rule in force", hr, tc.args, 20-lost, d)
				}
				if !tc.effect[i] && (lost != 0 || d != 0) {
					t.Errorf("host_routing %q, agent args %v: %d of 20 pings lost, the rule dropped %d: want it bypassed", hr, tc.args, lost, d)
				}
			}
		})
	}
}

// setHostRouting sets the cluster config's host_routing and waits until
// every agent has applied it.
func setHostRouting(t *testing.T, ctx context.Context, c *testenv.Cluster, hr string) {
	t.Helper()
	if err := c.SetConfig(ctx, func(cfg *weftv1.ClusterConfig) { cfg.HostRouting = hr }); err != nil {
		t.Fatal(err)
	}
	head, err := c.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every node applied host_routing "+hr, func() (bool, string) {
		for _, n := range c.Nodes() {
			st, err := c.Status(ctx, n.Name)
			if err != nil || st == nil || st.GetAppliedSeq() < head || st.GetLastError() != "" {
				return false, fmt.Sprintf("%s: %v, err %v", n.Name, st, err)
			}
		}
		return true, ""
	})
}

// forwardDropRule adds an nftables table to node namespace ns dropping
// IPv4 from src to dst in the forward hook at filter priority, removed
// when the test ends, and returns a reader of its packet counter.
func forwardDropRule(t *testing.T, ns, src, dst string) func() int {
	t.Helper()
	nft := func(args ...string) string {
		cmd := exec.Command("nsenter", append([]string{"--net=" + netnstest.PathOf(ns), "nft"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v in %s: %v\n%s", args, ns, err, out)
		}
		return string(out)
	}
	cmd := exec.Command("nsenter", "--net="+netnstest.PathOf(ns), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(fmt.Sprintf(`table inet policytest {
	chain drops {
		type filter hook forward priority filter; policy accept;
		ip saddr %s ip daddr %s counter drop
	}
}
`, src, dst))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", ns, err, out)
	}
	t.Cleanup(func() { nft("delete", "table", "inet", "policytest") })
	re := regexp.MustCompile(`counter packets (\d+)`)
	return func() int {
		m := re.FindStringSubmatch(nft("list", "chain", "inet", "policytest", "drops"))
		if m == nil {
			t.Fatal("no counter in the drop rule")
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
}
