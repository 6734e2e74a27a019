package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/bpf/spec"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv"
)

// TestFamilies runs a dual-stack and an IPv6-only cluster (both secure:
// etcd with TLS, client certificates and auth) through every backend on
// one cluster each, switched live: 4 nodes on two segments (n0,
// n2 on segment 0; n1, n3 on segment 1), one pod each, starting in bgp
// mode against BIRD in the router namespace, then gateway, native with
// direct routes (and masquerade), vxlan, hybrid and geneve (skipped with
// the reason when the kernel has none). In every mode the all-pairs
// matrix checks ICMP, TCP and UDP over each family the cluster runs, and
// every agent reaches every peer in each family.
func TestFamilies(t *testing.T) {
	if _, err := os.Stat(testenv.BIRDPath); err != nil {
		t.Skipf("needs BIRD 2 (Debian package bird2) at %s: %v", testenv.BIRDPath, err)
	}
	for _, family := range []string{testenv.FamilyDual, testenv.FamilyIPv6} {
		t.Run(family, func(t *testing.T) { familyModes(t, family) })
	}
}

func familyModes(t *testing.T, family string) {
	begin := time.Now()
	// The IPv6-only cluster's agents reach etcd over TLS at an IPv6
	// address.
	c := start(t, testenv.Options{Nodes: 4, PodsPerNode: 1, Segments: 2, Backend: "bgp", IPFamily: family,
		Reconcile: "2s", ProbeGrace: 5 * time.Second, Secure: true})
	t.Logf("%s cluster up and converged in %v", family, time.Since(begin).Round(100*time.Millisecond))
	ctx := context.Background()
	nodes := c.Nodes()
	fams := []bool{true}
	if family == testenv.FamilyDual {
		fams = []bool{false, true}
	}
	// cidr[node][v6] is the node's pod CIDR of a family.
	cidr := map[string]map[bool]netip.Prefix{}
	for _, n := range nodes {
		s, err := testenv.ReadSubnetEnv(n.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		cidr[n.Name] = map[bool]netip.Prefix{}
		for _, p := range s.PodCIDRs() {
			cidr[n.Name][p.Addr().Is6()] = p
		}
		for _, v6 := range fams {
			if !cidr[n.Name][v6].IsValid() {
				t.Fatalf("%s: subnet file %v has no %s pod CIDR", n.Name, s.Raw, famName(v6))
			}
			if !n.Pods[0].AddrOf(v6).IsValid() {
				t.Fatalf("%s: pod addresses %v, none of %s", n.Name, n.Pods[0].Addrs, famName(v6))
			}
		}
		if family == testenv.FamilyIPv6 && (s.Subnet.IsValid() || s.Network.IsValid()) {
			t.Errorf("%s: IPv6-only subnet file has IPv4 fields: %v", n.Name, s.Raw)
		}
	}
	// Every pair over every family, and every agent's probes answered in
	// every family.
	allPairs := func(t *testing.T) {
		t.Helper()
		m := testenv.CheckAll(ctx, c.Targets(), nil)
		for _, v6 := range fams {
			pairs, failed := m.Count(famName(v6))
			if pairs != len(nodes)*(len(nodes)-1) || failed != 0 {
				t.Fatalf("%s: %d pairs, %d failed:\n%s", famName(v6), pairs, failed, m)
			}
		}
		if got := len(m.Families()); got != len(fams) {
			t.Fatalf("matrix over %v, want %d families:\n%s", m.Families(), len(fams), m)
		}
		if err := c.WaitReachable(ctx, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s", strings.TrimSpace(m.Summary()))
	}
	switchTo := func(t *testing.T, mode string, mutate func(*weftv1.ClusterConfig)) {
		t.Helper()
		switchMode(t, ctx, c, nodes, mode, mutate)
	}
	// via is the next hop n uses for peer's pod CIDR of one family when
	// the network (BIRD, the router) routes between segments.
	via := func(n, peer *testenv.Node, v6 bool) netip.Addr {
		if n.Segment == peer.Segment {
			return peer.Underlay(v6)
		}
		if v6 {
			return testenv.RouterIP6(n.Segment)
		}
		return testenv.RouterIP(n.Segment)
	}
	routesOf := func(t *testing.T, n *testenv.Node, proto int) map[netip.Prefix]netip.Addr {
		t.Helper()
		rs, err := testenv.ProtoRoutes(n.NS, proto)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}

	t.Run("BGP", func(t *testing.T) {
		bird := c.BIRD()
		if bird == nil {
			t.Fatal("no BIRD in the router namespace")
		}
		// BIRD learns each pod CIDR from its node with the next hop of its
		// family (over IPv4 sessions in a dual-stack cluster).
		eventually(t, 20*time.Second, "BIRD routes every pod CIDR of every family via its node", func() (bool, string) {
			got, err := bird.Routes(ctx)
			if err != nil {
				return false, err.Error()
			}
			for _, n := range nodes {
				for _, v6 := range fams {
					if got[cidr[n.Name][v6]] != n.Underlay(v6) {
						return false, fmt.Sprintf("BIRD routes %v, want %s via %s", got, cidr[n.Name][v6], n.Underlay(v6))
					}
				}
			}
			return true, ""
		})
		eventually(t, 20*time.Second, "every node has BGP routes of every family", func() (bool, string) {
			for _, n := range nodes {
				rs := routesOf(t, n, protoBGP)
				for _, peer := range nodes {
					for _, v6 := range fams {
						if peer != n && rs[cidr[peer.Name][v6]] != via(n, peer, v6) {
							return false, fmt.Sprintf("%s: proto 0x58 routes %v, want %s via %s", n.Name, rs, cidr[peer.Name][v6], via(n, peer, v6))
						}
					}
				}
			}
			return true, ""
		})
		// One session per node (to the router on its segment) carries
		// every family's prefix.
		eventually(t, 20*time.Second, "one established session per node advertising every family", func() (bool, string) {
			for _, n := range nodes {
				st, err := c.Status(ctx, n.Name)
				if err != nil {
					return false, err.Error()
				}
				up := 0
				for _, s := range st.GetBgpSessions() {
					if s.GetState() == "established" && int(s.GetAdvertised()) == len(fams) {
						up++
					}
				}
				if up != 1 {
					return false, fmt.Sprintf("%s: sessions %v", n.Name, st.GetBgpSessions())
				}
			}
			return true, ""
		})
		allPairs(t)
	})

	// The network routes pod CIDRs between the segments from here on: the
	// router knows every pod CIDR of every family and every node sends the
	// cluster CIDRs to it. BIRD is done with the router's kernel first (it
	// removes what it exported when the agents withdraw).
	clusterCIDRs := map[bool]netip.Prefix{}
	cfg, err := c.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{cfg.GetClusterCidr(), cfg.GetClusterCidrV6()} {
		if p, err := netip.ParsePrefix(s); err == nil {
			clusterCIDRs[p.Addr().Is6()] = p
		}
	}
	addNetworkRoutes := func(t *testing.T) {
		eventually(t, 20*time.Second, "BIRD's routes withdrawn", func() (bool, string) {
			got, err := c.BIRD().Routes(ctx)
			return err == nil && len(got) == 0, fmt.Sprint(got, err)
		})
		for _, n := range nodes {
			for _, v6 := range fams {
				if err := testenv.AddRoute(c.RouterNS, cidr[n.Name][v6], n.Underlay(v6)); err != nil {
					t.Fatal(err)
				}
				gw := testenv.RouterIP(n.Segment)
				if v6 {
					gw = testenv.RouterIP6(n.Segment)
				}
				if err := testenv.AddRoute(n.NS, clusterCIDRs[v6], gw); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	delNetworkRoutes := func() {
		for _, n := range nodes {
			for _, v6 := range fams {
				testenv.DelRoute(c.RouterNS, cidr[n.Name][v6])
				testenv.DelRoute(n.NS, clusterCIDRs[v6])
			}
		}
	}

	t.Run("Gateway", func(t *testing.T) {
		switchTo(t, "gateway", nil)
		addNetworkRoutes(t)
		for _, n := range nodes {
			if rs := routesOf(t, n, protoWeft); len(rs) != 0 {
				t.Errorf("%s: weft routes %v in gateway mode", n.Name, rs)
			}
		}
		allPairs(t)
	})

	t.Run("Native", func(t *testing.T) {
		switchTo(t, "native", func(cfg *weftv1.ClusterConfig) { cfg.AutoDirectNodeRoutes, cfg.Masquerade = true, true })
		// Direct routes to the adjacent peer in every family, via its
		// underlay address of that family; the router for the others.
		for _, n := range nodes {
			rs := routesOf(t, n, protoWeft)
			for _, peer := range nodes {
				for _, v6 := range fams {
					got, ok := rs[cidr[peer.Name][v6]]
					if adjacent := peer != n && peer.Segment == n.Segment; adjacent != ok || (ok && got != peer.Underlay(v6)) {
						t.Errorf("%s: route to %s's %s (adjacent %v) is %v; weft routes %v", n.Name, peer.Name, cidr[peer.Name][v6], adjacent, got, rs)
					}
				}
			}
		}
		allPairs(t)
		// Masquerade, per family: a host on the underlay sees the node's
		// address of that family, a pod sees the pod's own.
		host, err := testenv.StartWhoami(c.CtlNS)
		if err != nil {
			t.Fatal(err)
		}
		defer host.Close()
		dst := nodes[2].Pods[0]
		peer, err := testenv.StartWhoami(dst.NS)
		if err != nil {
			t.Fatal(err)
		}
		defer peer.Close()
		src := nodes[0].Pods[0]
		for _, v6 := range fams {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			ctl := testenv.CtlIP()
			if v6 {
				ctl = testenv.CtlIP6()
			}
			seen, err := testenv.Whoami(cctx, src.NS, ctl)
			if err != nil {
				t.Fatal(err)
			}
			if seen != nodes[0].Underlay(v6) {
				t.Errorf("%s: underlay host saw pod %s as %s, want the node's %s", famName(v6), src.AddrOf(v6), seen, nodes[0].Underlay(v6))
			}
			seen, err = testenv.Whoami(cctx, src.NS, dst.AddrOf(v6))
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if seen != src.AddrOf(v6) {
				t.Errorf("%s: pod saw pod %s as %s, want its own address", famName(v6), src.AddrOf(v6), seen)
			}
		}
	})
	// The overlay modes own the cluster CIDR routes.
	delNetworkRoutes()

	t.Run("VXLAN", func(t *testing.T) {
		switchTo(t, "vxlan", nil)
		for _, n := range nodes {
			if rs := routesOf(t, n, protoWeft); len(rs) != len(fams) {
				t.Errorf("%s: weft routes %v, want one per cluster CIDR", n.Name, rs)
			}
		}
		before := map[string]float64{}
		for _, n := range nodes {
			before[n.Name], _ = counters(t, ctx, c, n)
		}
		allPairs(t)
		for _, n := range nodes {
			if tx, _ := counters(t, ctx, c, n); tx <= before[n.Name] {
				t.Errorf("%s: overlay tx counter %v → %v: the tunnel carried nothing", n.Name, before[n.Name], tx)
			}
		}
	})

	t.Run("Hybrid", func(t *testing.T) {
		switchTo(t, "hybrid", nil)
		for _, n := range nodes {
			rs := routesOf(t, n, protoWeft)
			for _, v6 := range fams {
				adj := nodes[(n.Index+2)%len(nodes)]
				if rs[cidr[adj.Name][v6]] != adj.Underlay(v6) {
					t.Errorf("%s: no direct route to adjacent %s's %s; weft routes %v", n.Name, adj.Name, cidr[adj.Name][v6], rs)
				}
			}
			if !hasLink(t, n, spec.VXLANDevice) {
				t.Errorf("%s: no %s in hybrid mode", n.Name, spec.VXLANDevice)
			}
		}
		allPairs(t)
	})

	t.Run("Geneve", func(t *testing.T) {
		has, err := testenv.HasGeneve(c.UnderlayNS)
		if err != nil {
			t.Fatal(err)
		}
		if !has {
			t.Skip(testenv.ErrNoGeneve.Error())
		}
		switchTo(t, "geneve", nil)
		allPairs(t)
	})
}

// protoWeft marks weft's cluster-CIDR and direct routes.
const protoWeft = 0x57

func famName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// TestAddIPv6Live: an IPv4 cluster (VXLAN over an IPv4 underlay) gains an
// IPv6 cluster CIDR through weftctl config set while pods ping each other
// over IPv4: not one ping is lost, every node gets an IPv6 pod CIDR (log,
// subnet file, status, weftctl), pods attached afterwards get an IPv6
// address and reach each other over IPv6 (the tunnel carries IPv6 over
// the IPv4 underlay), old pods keep IPv4, and every agent probes its
// peers in both families. A bad IPv6 plan is refused before, and removing
// the IPv6 CIDR is refused after, naming the field; neither changes the
// log.
func TestAddIPv6Live(t *testing.T) {
	c := start(t, testenv.Options{Nodes: 3, PodsPerNode: 1, ProbeGrace: 5 * time.Second, Secure: true})
	ctx := context.Background()
	nodes := c.Nodes()

	out, err := c.Weftctl(ctx, "config", "set", "--cluster-cidr-v6", "fd00:10:244::/64", "--node-mask-size-v6", "64")
	if err == nil || !strings.Contains(out, "refused: invalid: node_mask_size_v6: /64 gives fewer than two subnets of fd00:10:244::/64") {
		t.Fatalf("an IPv6 plan with one subnet: %v\n%s", err, out)
	}
	head, err := c.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// IPv4 traffic across every node pair while the family is added.
	var streams []*testenv.Stream
	for _, n := range nodes {
		var dsts []netip.Addr
		for _, p := range nodes {
			if p != n {
				dsts = append(dsts, p.Pods[0].Addr)
			}
		}
		s, err := testenv.StartStream(n.Pods[0].NS, dsts, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	time.Sleep(500 * time.Millisecond)
	begin := time.Now()
	out, err = c.Weftctl(ctx, "config", "set", "--cluster-cidr-v6", "fd00:10:244::/56")
	if err != nil || !strings.Contains(out, fmt.Sprintf("accepted as seq %d", head+1)) {
		t.Fatalf("weftctl config set --cluster-cidr-v6: %v\n%s", err, out)
	}
	cidr6 := map[string]netip.Prefix{}
	eventually(t, 30*time.Second, "an IPv6 pod CIDR on every node, applied", func() (bool, string) {
		for _, n := range nodes {
			s, err := testenv.ReadSubnetEnv(n.SubnetFile)
			if err != nil || !s.Subnet6.IsValid() || s.Network6 != netip.MustParsePrefix("fd00:10:244::/56") || !s.Subnet.IsValid() {
				return false, fmt.Sprintf("%s: subnet file %v %v", n.Name, s.Raw, err)
			}
			cidr6[n.Name] = s.Subnet6.Masked()
			st, err := c.Status(ctx, n.Name)
			if err != nil || st == nil || len(st.GetPodCidrs()) != 2 || st.GetPodCidrs()[1] != cidr6[n.Name].String() {
				return false, fmt.Sprintf("%s: status %v %v", n.Name, st, err)
			}
		}
		return true, ""
	})
	if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("every node applied its IPv6 pod CIDR %v after weftctl config set", time.Since(begin).Round(100*time.Millisecond))
	time.Sleep(time.Second)
	for i, s := range streams {
		st := s.Stop()
		if st.Lost != 0 || st.Sent < 50 {
			t.Errorf("IPv4 stream from %s: sent %d, lost %d %v", nodes[i].Name, st.Sent, st.Lost, st.LostAt)
		} else {
			t.Logf("IPv4 stream from %s: %d sent, 0 lost", nodes[i].Name, st.Sent)
		}
	}
	evs, err := c.Weftctl(ctx, "events", "--since", fmt.Sprint(head+1))
	if err != nil || !strings.Contains(evs, "cluster_cidr=10.244.0.0/16 cluster_cidr_v6=fd00:10:244::/56") || strings.Count(evs, "NodeUpdated") != len(nodes) {
		t.Errorf("events after the change (%v): want the ConfigChanged and a NodeUpdated per node:\n%s", err, evs)
	}
	for _, verb := range []string{"nodes", "status"} {
		out, err := c.Weftctl(ctx, verb)
		for _, n := range nodes {
			if err != nil || !strings.Contains(out, cidr6[n.Name].String()) {
				t.Errorf("weftctl %s (%v) does not show %s's IPv6 pod CIDR %s:\n%s", verb, err, n.Name, cidr6[n.Name], out)
			}
		}
	}

	// New pods get both families; the old ones keep what they had.
	var fresh []testenv.Target
	for _, n := range nodes {
		p, err := c.AddPod(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if !p.AddrOf(false).IsValid() || !cidr6[n.Name].Contains(p.AddrOf(true)) {
			t.Fatalf("%s: new pod addresses %v, want IPv4 and one in %s", n.Name, p.Addrs, cidr6[n.Name])
		}
		fresh = append(fresh, p.Target())
	}
	m := testenv.CheckAll(ctx, fresh, nil)
	if pairs, failed := m.Count("IPv6"); pairs != 6 || failed != 0 {
		t.Fatalf("new pods over IPv6:\n%s", m)
	}
	m = requireAllPairs(t, ctx, c)
	t.Logf("after the change:\n%s", strings.TrimSpace(m.Summary()))
	if err := c.WaitReachable(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	// Pods hold IPv6 addresses now: the IPv6 plan stays.
	head, err = c.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, err = c.Weftctl(ctx, "config", "set", "--cluster-cidr-v6", "")
	if err == nil || !strings.Contains(out, "refused: invalid: cluster_cidr_v6: cannot remove fd00:10:244::/56 while 3 nodes hold IPv6 pod CIDRs") {
		t.Fatalf("removing the IPv6 CIDR: %v\n%s", err, out)
	}
	if h, err := c.Head(ctx); err != nil || h != head {
		t.Errorf("the refused removal changed the log: head %d -> %d (%v)", head, h, err)
	}
}
