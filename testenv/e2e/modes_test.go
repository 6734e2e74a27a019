package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/testenv"
)

// TestDemoEveryBackend runs `weft-testenv demo --backend X` for every
// backend the command offers, exactly as a user first meets it (3 nodes ×
// 2 pods, one segment, the binaries already built): every pair of pods
// talks, the demo says what carries packets between nodes, and nothing is
// left behind. Geneve on a kernel without it is refused before anything
// starts.
func TestDemoEveryBackend(t *testing.T) {
	needCluster(t)
	noGeneve := errors.Is(testenv.CheckBackend("geneve"), testenv.ErrNoGeneve)
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			prefix := testenv.NewPrefix()
			prefixesMu.Lock()
			prefixes = append(prefixes, prefix)
			prefixesMu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			begin := time.Now()
			cmd := exec.CommandContext(ctx, binDir+"/weft-testenv", "demo", "--bin-dir", binDir, "--prefix", prefix, "--backend", backend)
			out, err := cmd.CombinedOutput()
			took := time.Since(begin)
			defer func() {
				if left := testenv.Leftovers(prefix); len(left) > 0 {
					t.Errorf("demo left behind: %v", left)
				}
			}()
			if backend == "geneve" && noGeneve {
				const want = "weft-testenv: this kernel has no Geneve support (CONFIG_GENEVE)\n"
				if err == nil || string(out) != want {
					t.Fatalf("demo --backend geneve on a kernel without Geneve: %v\n%s\nwant exit 1 and only %q", err, out, want)
				}
				if _, serr := os.Stat(testenv.RunDirOf(prefix)); serr == nil {
					t.Error("the refused demo made a run directory")
				}
				t.Logf("refused in %v: %s", took, strings.TrimSpace(string(out)))
				return
			}
			if err != nil {
				t.Fatalf("demo --backend %s: %v\n%s", backend, err, out)
			}
			wants := []string{"between nodes: ", "30 pairs, 0 failed", "tearing down"}
			if backend != testenv.BackendKernel {
				// Secure by default: a node's certificate cannot hijack another's registration.
				wants = append(wants, "$ weftctl nodes", "$ weftctl events", "$ weftctl status", "refused: etcdserver: permission denied")
			}
			for _, want := range wants {
				if !strings.Contains(string(out), want) {
					t.Errorf("demo output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(string(out), "unreachable") || strings.Contains(string(out), "degraded") {
				t.Errorf("demo reports unreachable peers:\n%s", out)
			}
			for _, line := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(line, "between nodes: ") {
					t.Logf("%v; %s", took.Round(100*time.Millisecond), line)
				}
			}
		})
	}
}

// TestUnreachablePeerReported: native mode without direct routes and
// without a router leaves every node with no route to its peers' pod
// CIDRs. The cluster applies the log, and then every agent says which
// peers it cannot reach and why (direct routes off) in its status,
// weftctl status, /healthz and metrics, with the datapath untouched. When
// the network gains the routes, the reports clear and every pair talks.
func TestUnreachablePeerReported(t *testing.T) {
	c := launch(t, testenv.Options{Nodes: 3, PodsPerNode: 1, Backend: "native",
		Config: `"auto_direct_node_routes": false`, ProbeGrace: 5 * time.Second})
	ctx := context.Background()
	nodes := c.Nodes()

	err := c.WaitReachable(ctx, 60*time.Second)
	if err == nil || !strings.HasPrefix(err.Error(), "peers unreachable: ") {
		t.Fatalf("native without direct routes: %v, want every peer unreachable", err)
	}
	t.Logf("%v", err)
	head, err := c.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	podCIDR := map[string]netip.Prefix{}
	for _, n := range nodes {
		s, err := testenv.ReadSubnetEnv(n.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		podCIDR[n.Name] = s.Subnet.Masked()
	}
	for _, n := range nodes {
		st, err := c.Status(ctx, n.Name)
		if err != nil || st == nil {
			t.Fatalf("status of %s: %v", n.Name, err)
		}
		// The log is applied; the peers are not reached.
		if st.GetAppliedSeq() != head || st.GetMode() != "native" || st.GetLastError() != "" || !st.GetDegraded() || len(st.GetUnreachablePeers()) != 2 {
			t.Errorf("%s: status %v, want head %d applied, no error, degraded with 2 unreachable peers", n.Name, st, head)
		}
		for _, u := range st.GetUnreachablePeers() {
			gw := podCIDR[u.GetNode()].Addr().Next().String()
			want := fmt.Sprintf("no route to %s on this node: direct routes are off (auto_direct_node_routes=false), so the network must route %s", gw, podCIDR[u.GetNode()])
			if u.GetAddress() != gw || u.GetReason() != want {
				t.Errorf("%s: unreachable %v, want address %s and reason %q", n.Name, u, gw, want)
			}
		}
		if code, body := healthz(ctx, c, n); code != 503 || !strings.Contains(body, "2 of 2 peers unreachable") {
			t.Errorf("%s: healthz %d %q, want 503 naming the unreachable peers", n.Name, code, body)
		}
		m, err := c.Metrics(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if m["weft_agent_peers_unreachable"] != 2 || m["weft_agent_degraded"] != 1 {
			t.Errorf("%s: metrics peers_unreachable %v degraded %v, want 2 and 1", n.Name, m["weft_agent_peers_unreachable"], m["weft_agent_degraded"])
		}
		// Reporting only: weft added no route of its own.
		if rs, err := testenv.ProtoRoutes(n.NS, 0x57); err != nil || len(rs) != 0 {
			t.Errorf("%s: weft routes %v (%v), want none in native mode without direct routes", n.Name, rs, err)
		}
	}
	out, err := c.Weftctl(ctx, "status")
	if !strings.Contains(out, "degraded: 2 of 2 peers unreachable") || !strings.Contains(out, "unreachable peers:") ||
		!strings.Contains(out, "direct routes are off (auto_direct_node_routes=false)") {
		t.Errorf("weftctl status (%v) does not name the unreachable peers and why:\n%s", err, out)
	} else {
		t.Logf("weftctl status:\n%s", out)
	}

	// The network learns the routes (here: each node routes each peer's
	// pod CIDR via the peer, as a router on the segment would).
	for _, n := range nodes {
		for _, p := range nodes {
			if p != n {
				if err := testenv.AddRoute(n.NS, podCIDR[p.Name], p.UnderlayIP); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	took := eventually(t, 60*time.Second, "every peer reachable after the routes appeared", func() (bool, string) {
		ok, why, err := c.Reachable(ctx)
		return ok, fmt.Sprint(why, err)
	})
	t.Logf("every peer reachable %v after the routes appeared", took.Round(100*time.Millisecond))
	if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if code, body := healthz(ctx, c, n); code != 200 {
			t.Errorf("%s: healthz %d %q after the routes appeared", n.Name, code, body)
		}
	}
	requireAllPairs(t, ctx, c)
}

// TestDemoDualStack runs `weft-testenv demo --ip-family dual` as a user
// would: it prints an all-pairs matrix per family, both complete, and
// leaves nothing behind.
func TestDemoDualStack(t *testing.T) {
	needCluster(t)
	prefix := testenv.NewPrefix()
	prefixesMu.Lock()
	prefixes = append(prefixes, prefix)
	prefixesMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	begin := time.Now()
	out, err := exec.CommandContext(ctx, binDir+"/weft-testenv", "demo", "--bin-dir", binDir, "--prefix", prefix, "--ip-family", "dual").CombinedOutput()
	defer func() {
		if left := testenv.Leftovers(prefix); len(left) > 0 {
			t.Errorf("demo left behind: %v", left)
		}
	}()
	if err != nil {
		t.Fatalf("demo --ip-family dual: %v\n%s", err, out)
	}
	for _, want := range []string{"ip family dual", "\nIPv4:\nfrom\\to", "\nIPv6:\nfrom\\to", "IPv4: 30 pairs, 0 failed", "IPv6: 30 pairs, 0 failed", "fd00:10:244:"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "unreachable") || strings.Contains(string(out), "degraded") {
		t.Errorf("demo reports unreachable peers:\n%s", out)
	}
	t.Logf("dual-stack demo in %v", time.Since(begin).Round(100*time.Millisecond))
}
