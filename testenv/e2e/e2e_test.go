// Package e2e runs whole weft clusters built by testenv: real namespaces,
// real weft-controller and weft-agent processes, real etcd, real packets
// through the eBPF datapath. It needs root; without root every test skips
// and says so.
package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/poll"
)

var (
	binDir   string
	buildErr error

	prefixesMu sync.Mutex
	prefixes   []string // every run prefix this package used, for noLeftovers
)

// TestMain builds the weft binaries once for every test.
func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "weft-e2e-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			// A hang guard, not a speed limit: with a cold build cache
			// (a fresh machine) this compiles every dependency once more
			// (testenv.BuildCommands says why), which takes minutes.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			buildErr = testenv.Build(ctx, dir)
			cancel()
			binDir = dir
		}
		code := m.Run()
		// After every test, whatever order they ran in: nothing any of
		// them created is left on the machine.
		if err := noLeftovers(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// Everything the tests started in this process (echo servers,
		// pingers, streams, etcd clients, namespace threads) has ended.
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
				return 1
			}
		}
		return code
	}()
	os.Exit(code)
}

// noLeftovers checks that no run of this package left anything behind:
// namespaces, links, bpffs pins, processes, run directories.
func noLeftovers() error {
	prefixesMu.Lock()
	defer prefixesMu.Unlock()
	var left []string
	for _, p := range prefixes {
		if l := testenv.Leftovers(p); len(l) > 0 {
			left = append(left, fmt.Sprintf("run %s left behind: %v", p, l))
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("leftovers:\n%s", strings.Join(left, "\n"))
	}
	return nil
}

func needCluster(t testing.TB) {
	t.Helper()
	needRoot(t)
	if buildErr != nil {
		t.Fatalf("build weft binaries: %v", buildErr)
	}
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e tests need root: they create network namespaces, load eBPF programs and run weft-agent (run with sudo)")
	}
}

// start brings a cluster up for t and closes it (checking for leftovers)
// when t ends; on failure it prints the tails of the weft logs.
func start(t testing.TB, o testenv.Options) *testenv.Cluster {
	t.Helper()
	c := launch(t, o)
	if o.Backend != testenv.BackendKernel {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.WaitConverged(ctx, 60*time.Second); err != nil {
			t.Fatalf("cluster did not converge: %v", err)
		}
	}
	return c
}

// launch is start without waiting for convergence.
func launch(t testing.TB, o testenv.Options) *testenv.Cluster {
	t.Helper()
	if o.Backend == testenv.BackendKernel {
		needRoot(t)
	} else {
		needCluster(t)
	}
	o.BinDir = binDir
	if o.Prefix == "" {
		o.Prefix = testenv.NewPrefix()
	}
	prefixesMu.Lock()
	prefixes = append(prefixes, o.Prefix)
	prefixesMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := testenv.New(ctx, o)
	if err != nil {
		t.Fatalf("start cluster: %v\n%s", err, logTails(o.Prefix))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of %s:\n%s", c.Prefix, clusterLogs(c))
		}
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		if left := testenv.Leftovers(c.Prefix); len(left) > 0 {
			t.Errorf("left behind by %s: %v", c.Prefix, left)
		}
	})
	return c
}

func logTails(prefix string) string {
	dir := testenv.RunDirOf(prefix) + "/logs"
	ents, _ := os.ReadDir(dir)
	var b strings.Builder
	for _, e := range ents {
		p := &testenv.Proc{Name: e.Name(), Log: dir + "/" + e.Name()}
		fmt.Fprintf(&b, "--- %s\n%s\n", e.Name(), testenv.LogTail(p, 30))
	}
	return b.String()
}

func clusterLogs(c *testenv.Cluster) string { return logTails(c.Prefix) }

// eventually polls f every 200 ms until it holds or d passes, and returns
// how long it took.
func eventually(t *testing.T, d time.Duration, what string, f func() (bool, string)) time.Duration {
	t.Helper()
	return poll.Eventually(t, d, 200*time.Millisecond, what, f)
}

// switchMode sets the cluster config's backend to mode (and whatever
// mutate changes) as an operator does, and waits until every node of nodes
// runs mode, has applied the new head and reports no error. Peers the mode
// cannot reach on this underlay may be reported (and make a node
// degraded) meanwhile.
func switchMode(t *testing.T, ctx context.Context, c *testenv.Cluster, nodes []*testenv.Node, mode string, mutate func(*weftv1.ClusterConfig)) {
	t.Helper()
	begin := time.Now()
	err := c.SetConfig(ctx, func(cfg *weftv1.ClusterConfig) {
		cfg.Backend = mode
		if mutate != nil {
			mutate(cfg)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	head, err := c.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every node in mode "+mode, func() (bool, string) {
		for _, n := range nodes {
			st, err := c.Status(ctx, n.Name)
			if err != nil || st == nil || st.GetMode() != mode || st.GetAppliedSeq() < head || st.GetLastError() != "" {
				return false, fmt.Sprintf("%s: %v, err %v", n.Name, st, err)
			}
		}
		return true, ""
	})
	t.Logf("switched to %s: every node converged %v after config set", mode, time.Since(begin).Round(100*time.Millisecond))
}

func requireAllPairs(t *testing.T, ctx context.Context, c *testenv.Cluster) testenv.Matrix {
	t.Helper()
	m := testenv.CheckAll(ctx, c.Targets(), nil)
	if len(m.Failed()) > 0 || len(m.Results) == 0 {
		t.Fatalf("connectivity:\n%s", m)
	}
	return m
}

func counters(t *testing.T, ctx context.Context, c *testenv.Cluster, n *testenv.Node) (tx, rx float64) {
	t.Helper()
	m, err := c.Metrics(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	return testenv.SumMetric(m, "weft_datapath_tx_packets_total"), testenv.SumMetric(m, "weft_datapath_rx_packets_total")
}

func healthz(ctx context.Context, c *testenv.Cluster, n *testenv.Node) (int, string) {
	code, body, err := c.AgentGet(ctx, n, "/healthz")
	if err != nil {
		return 0, err.Error()
	}
	return code, strings.TrimSpace(body)
}

// TestOverlay is the main scenario on one cluster: 3 nodes × 2 pods over
// VXLAN, a 3-member external etcd and two controllers, secure (etcd with
// TLS, client certificates and auth on; one certificate per node). The
// subtests run in order and each leaves the cluster converged for the
// next.
func TestOverlay(t *testing.T) {
	const (
		leaseTTL    = 3
		grace       = 4
		electionTTL = 3
	)
	c := start(t, testenv.Options{
		Nodes: 3, PodsPerNode: 2, Backend: "vxlan",
		Etcd: testenv.EtcdExternal, EtcdMembers: 3, Controllers: 2,
		LeaseTTL: leaseTTL, NodeGrace: grace, ElectionTTL: electionTTL, Reconcile: "2s",
		Secure: true,
	})
	ctx := context.Background()

	t.Run("AllPairsThroughBPF", func(t *testing.T) {
		type cnt struct{ tx, rx float64 }
		before := map[string]cnt{}
		for _, n := range c.Nodes() {
			tx, rx := counters(t, ctx, c, n)
			before[n.Name] = cnt{tx, rx}
		}
		m := testenv.CheckAll(ctx, c.Targets(), c.CrossNode())
		if len(m.Results) != 24 || len(m.Failed()) > 0 {
			t.Fatalf("cross-node pairs (want 24, all ok):\n%s", m)
		}
		t.Logf("cross-node matrix:\n%s", m)
		// Every node sent and received at least one packet per protocol and
		// cross-node pair (2 local pods × 4 remote pods × 3) through the
		// eBPF programs.
		for _, n := range c.Nodes() {
			tx, rx := counters(t, ctx, c, n)
			b := before[n.Name]
			if tx-b.tx < 24 || rx-b.rx < 24 {
				t.Errorf("%s: BPF counters rose tx %v→%v rx %v→%v, want ≥ 24 each", n.Name, b.tx, tx, b.rx, rx)
			}
		}
		// Same-node pairs work too (through the bridge, not the overlay).
		requireAllPairs(t, ctx, c)
	})

	// Each way the trust issue found to hijack a node's traffic through
	// etcd, refused.
	t.Run("Attacks", func(t *testing.T) { attacks(t, ctx, c) })

	t.Run("AgentSIGKILLNoLoss", func(t *testing.T) {
		victim := c.Node(0)
		n1, n2 := c.Node(1), c.Node(2)
		s1, err := testenv.StartStream(n1.Pods[0].NS, []netip.Addr{n2.Pods[0].Addr, victim.Pods[0].Addr, victim.Pods[1].Addr}, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		s2, err := testenv.StartStream(n2.Pods[1].NS, []netip.Addr{n1.Pods[1].Addr, victim.Pods[0].Addr}, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		s3, err := testenv.StartStream(victim.Pods[1].NS, []netip.Addr{n1.Pods[0].Addr, n2.Pods[1].Addr}, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		oldPID := victim.Agent.PID()
		if err := c.Kill(0, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // the agent is away; forwarding goes on from the pins
		if err := c.RestartAgent(0); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, 30*time.Second, "restarted agent healthy", func() (bool, string) {
			code, body := healthz(ctx, c, victim)
			return code == 200, body
		})
		t.Logf("agent pid %d killed, restarted as %d, healthy again after %v", oldPID, victim.Agent.PID(), took)
		if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		for i, s := range []*testenv.Stream{s1, s2, s3} {
			st := s.Stop()
			t.Logf("stream %d: sent %d received %d lost %d", i+1, st.Sent, st.Received, st.Lost)
			if st.Lost != 0 || st.Sent < 100 || st.Received != st.Sent {
				t.Errorf("stream %d lost packets across the agent restart: %+v", i+1, st)
			}
		}
	})

	// An agent stopped for longer than its lease TTL and the grace: the
	// controller removes the node, every peer forgets it, and the node's
	// pods (still running, never re-attached) are cut off. The restarted
	// agent asks for the pod CIDR its subnet file names, gets it back,
	// and the same pods, with the same addresses, are reached again.
	t.Run("AgentAwayPastGraceKeepsItsCIDR", func(t *testing.T) {
		victim := c.Node(0)
		before, err := c.StoreNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cidrs := before[victim.Name].GetPodCidrs()
		if err := c.Kill(0, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, time.Duration(leaseTTL+grace+20)*time.Second, "node removed by the controller", func() (bool, string) {
			nodes, err := c.StoreNodes(ctx)
			if err != nil {
				return false, err.Error()
			}
			return nodes[victim.Name] == nil, fmt.Sprint(nodes[victim.Name])
		})
		t.Logf("%s removed %v after its agent stopped", victim.Name, took)
		if err := c.RestartAgent(0); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "node back", func() (bool, string) {
			nodes, err := c.StoreNodes(ctx)
			if err != nil {
				return false, err.Error()
			}
			return nodes[victim.Name] != nil, "absent"
		})
		after, err := c.StoreNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := after[victim.Name].GetPodCidrs(); !slices.Equal(got, cidrs) {
			t.Fatalf("%s came back with %v, had %v", victim.Name, got, cidrs)
		}
		if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		requireAllPairs(t, ctx, c)
	})

	t.Run("EtcdDown30s", func(t *testing.T) {
		s1, err := testenv.StartStream(c.Node(0).Pods[0].NS, []netip.Addr{c.Node(1).Pods[0].Addr, c.Node(2).Pods[0].Addr}, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		s2, err := testenv.StartStream(c.Node(2).Pods[1].NS, []netip.Addr{c.Node(1).Pods[1].Addr}, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		if err := c.StopEtcd(); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, 25*time.Second, "every agent reports degraded", func() (bool, string) {
			for _, n := range c.Nodes() {
				if code, body := healthz(ctx, c, n); code != 503 {
					return false, fmt.Sprintf("%s healthz %d %q", n.Name, code, body)
				}
			}
			return true, ""
		})
		t.Logf("agents degraded %v after etcd stopped", took)
		_, body := healthz(ctx, c, c.Node(0))
		t.Logf("node 0 healthz while etcd is down: %q", body)
		// Traffic between existing pods goes on with etcd down.
		mctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		m := testenv.CheckAll(mctx, c.Targets(), c.CrossNode())
		cancel()
		if len(m.Failed()) > 0 {
			t.Errorf("with etcd down:\n%s", m)
		}
		time.Sleep(time.Until(stopped.Add(30 * time.Second)))
		if err := c.StartEtcd(ctx); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		if err := c.WaitConverged(ctx, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "every agent healthy again", func() (bool, string) {
			for _, n := range c.Nodes() {
				if code, body := healthz(ctx, c, n); code != 200 {
					return false, fmt.Sprintf("%s healthz %d %q", n.Name, code, body)
				}
			}
			return true, ""
		})
		t.Logf("converged and healthy %v after etcd returned", time.Since(back))
		for i, s := range []*testenv.Stream{s1, s2} {
			st := s.Stop()
			t.Logf("stream %d: sent %d received %d lost %d", i+1, st.Sent, st.Received, st.Lost)
			if st.Lost != 0 || st.Received != st.Sent || st.Sent < 500 {
				t.Errorf("stream %d lost packets while etcd was down: %+v", i+1, st)
			}
		}
	})

	t.Run("ControllerFailover", func(t *testing.T) {
		leader := leaderIndex(t, ctx, c)
		standby := 1 - leader
		killed := time.Now()
		if err := c.KillController(leader); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, time.Duration(2*electionTTL+10)*time.Second, "standby takes over", func() (bool, string) {
			l, why := leaderOf(ctx, c)
			return l == standby, why
		})
		t.Logf("controller %d killed; controller %d leads %v later (election TTL %ds)", leader, standby, took, electionTTL)
		_ = killed
		// The new leader writes: a config change becomes an event.
		head, err := c.Head(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := c.Weftctl(ctx, "config", "set", "--node-grace-seconds", fmt.Sprint(grace+1)); err != nil {
			t.Fatalf("config set: %v\n%s", err, out)
		}
		eventually(t, 20*time.Second, "new leader appends the config change", func() (bool, string) {
			h, err := c.Head(ctx)
			return err == nil && h > head, fmt.Sprintf("head %d (was %d), err %v", h, head, err)
		})
		if out, err := c.Weftctl(ctx, "check"); err != nil {
			t.Fatalf("weftctl check after failover: %v\n%s", err, out)
		}
		// The killed one comes back as the standby.
		if err := c.StartController(leader); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	})

	var joined *testenv.Node
	t.Run("NodeJoins", func(t *testing.T) {
		begin := time.Now()
		n, err := c.AddNode(ctx)
		if err != nil {
			t.Fatal(err)
		}
		joined = n
		attached := time.Since(begin)
		took := eventually(t, 60*time.Second, "new node reachable from every other node's pods", func() (bool, string) {
			for _, from := range c.Pods() {
				if from.Node == n {
					continue
				}
				for _, to := range n.Pods {
					cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					err := testenv.CheckICMP(cctx, from.NS, to.Addr)
					cancel()
					if err != nil {
						return false, err.Error()
					}
				}
			}
			return true, ""
		})
		t.Logf("node %s joined: lease and pods after %v, reachable from every other node's pods %v after start", n.Name, attached, time.Since(begin))
		_ = took
		m := testenv.CheckAll(ctx, c.Targets(), c.CrossNode())
		if len(m.Failed()) > 0 {
			t.Fatalf("after join:\n%s", m)
		}
	})

	t.Run("NodeLeaves", func(t *testing.T) {
		if joined == nil {
			t.Skip("NodeJoins failed")
		}
		// Its agent dies and stays dead past the grace period (the node's
		// namespace, pods and pinned datapath stay, as on a machine whose
		// agent crashed); the namespace goes at the end.
		name := joined.Name
		if err := c.Kill(joined.Index, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		begin := time.Now()
		defer func() {
			if err := c.RemoveNode(ctx, joined.Index); err != nil {
				t.Error(err)
			}
		}()
		eventually(t, time.Duration(leaseTTL+grace+30)*time.Second, "left node removed from the store and every peer's datapath", func() (bool, string) {
			nodes, err := c.StoreNodes(ctx)
			if err != nil {
				return false, err.Error()
			}
			if _, ok := nodes[name]; ok {
				return false, name + " still in /weft/nodes"
			}
			if ok, why, err := c.Converged(ctx); !ok || err != nil {
				return false, fmt.Sprint(why, err)
			}
			for _, n := range c.Nodes() {
				if n == joined {
					continue
				}
				st, err := c.Status(ctx, n.Name)
				if err != nil || st == nil {
					return false, fmt.Sprint(n.Name, " status ", err)
				}
				if st.GetTunnelEntries() != 2 {
					return false, fmt.Sprintf("%s has %d tunnel entries, want 2", n.Name, st.GetTunnelEntries())
				}
			}
			return true, ""
		})
		t.Logf("%s removed from every peer %v after its agent died", name, time.Since(begin))
		// Nothing reaches its pods any more: no stale tunnel entry.
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if err := testenv.CheckICMP(cctx, c.Node(0).Pods[0].NS, joined.Pods[0].Addr); err == nil {
			t.Errorf("pod of removed node %s still reachable", name)
		}
		out, err := c.Weftctl(ctx, "nodes")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, name) {
			t.Fatalf("weftctl nodes still lists %s:\n%s", name, out)
		}
		for _, n := range c.Nodes() {
			if n != joined && !strings.Contains(out, n.Name) {
				t.Fatalf("weftctl nodes misses %s:\n%s", n.Name, out)
			}
		}
	})

	t.Run("RemovedNodeLockedOut", func(t *testing.T) {
		if joined == nil {
			t.Skip("NodeJoins failed")
		}
		removedNodeLockedOut(t, ctx, c, joined.Name)
	})

	t.Run("LiveMTUChange", func(t *testing.T) {
		// The config's mtu is the underlay MTU to assume; the overlay device
		// and the pods (FLANNEL_MTU) get it minus the VXLAN overhead.
		const underlay = 1400
		const mtu = underlay - spec.VXLANOverhead
		if out, err := c.Weftctl(ctx, "config", "set", "--mtu", fmt.Sprint(underlay)); err != nil {
			t.Fatalf("config set --mtu: %v\n%s", err, out)
		}
		took := eventually(t, 30*time.Second, "MTU reaches every node", func() (bool, string) {
			for _, n := range c.Nodes() {
				got, err := testenv.LinkMTU(n.NS, spec.VXLANDevice)
				if err != nil || got != mtu {
					return false, fmt.Sprintf("%s %s mtu %d, err %v", n.Name, spec.VXLANDevice, got, err)
				}
				s, err := testenv.ReadSubnetEnv(n.SubnetFile)
				if err != nil || s.MTU != mtu {
					return false, fmt.Sprintf("%s subnet file mtu %d, err %v", n.Name, s.MTU, err)
				}
				st, err := c.Status(ctx, n.Name)
				if err != nil || st.GetMtu() != mtu {
					return false, fmt.Sprintf("%s status mtu %d, err %v", n.Name, st.GetMtu(), err)
				}
			}
			return true, ""
		})
		t.Logf("config mtu %d: device, subnet file and status at %d on every node %v after config set", underlay, mtu, took)
		// Pods pick the MTU up when re-attached; then every pair works at it.
		for _, p := range c.Pods() {
			if err := testenv.SetPodMTU(p.Node.NS, p.NS, mtu); err != nil {
				t.Fatal(err)
			}
		}
		m := testenv.CheckAll(ctx, c.Targets(), c.CrossNode())
		if len(m.Failed()) > 0 {
			t.Fatalf("after MTU change:\n%s", m)
		}
	})

	t.Run("LogConsistent", func(t *testing.T) {
		if out, err := c.Weftctl(ctx, "check"); err != nil {
			t.Fatalf("weftctl check: %v\n%s", err, out)
		}
	})
}

func leaderOf(ctx context.Context, c *testenv.Cluster) (int, string) { return c.Leader(ctx) }

func leaderIndex(t *testing.T, ctx context.Context, c *testenv.Cluster) int {
	t.Helper()
	var idx int
	eventually(t, 20*time.Second, "a controller leads", func() (bool, string) {
		l, why := leaderOf(ctx, c)
		idx = l
		return l >= 0, why
	})
	return idx
}

// TestEmbeddedTwoSegments runs the default etcd (embedded in the
// controller, with TLS and auth: Secure) over a routed underlay: nodes
// alternate between two L2 segments joined by a router namespace, so VXLAN
// crosses a router. Pods are attached by the weft-cni plugin through
// libcni, as a runtime would.
func TestEmbeddedTwoSegments(t *testing.T) {
	needCluster(t)
	c := start(t, testenv.Options{Nodes: 3, PodsPerNode: 1, Segments: 2, Backend: "vxlan", Etcd: testenv.EtcdEmbedded,
		Attacher: testenv.NewCNIAttacher(binDir), Secure: true})
	ctx := context.Background()
	// The embedded etcd refuses the hijack too.
	l := keys.New("/weft")
	out, err := etcdctlAs(ctx, t, c, c.Names().Node(c.Node(0).Name), "put", l.Registration(c.Node(1).Name), hijack(c.Node(1), c.Node(0).UnderlayIP.String()))
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("node 0 rewrote node 1's registration on the embedded etcd: %v %q", err, out)
	}
	if c.Node(0).Segment == c.Node(1).Segment {
		t.Fatal("nodes 0 and 1 share a segment")
	}
	m := requireAllPairs(t, ctx, c)
	t.Logf("two-segment matrix:\n%s", m)
	out, err = c.Weftctl(ctx, "nodes")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes() {
		if !strings.Contains(out, n.Name) || !strings.Contains(out, n.UnderlayIP.String()) {
			t.Fatalf("weftctl nodes misses %s (%s):\n%s", n.Name, n.UnderlayIP, out)
		}
	}
	if out, err := c.Weftctl(ctx, "check"); err != nil {
		t.Fatalf("weftctl check: %v\n%s", err, out)
	}
}
