package controller_test

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// podCIDRs returns each node's pod CIDRs of one family.
func familyCIDRs(nodes map[string]*weftv1.Node, v6 bool) map[string]string {
	out := map[string]string{}
	for name, n := range nodes {
		for _, s := range n.PodCidrs {
			if netip.MustParsePrefix(s).Addr().Is6() == v6 {
				out[name] = s
			}
		}
	}
	return out
}

// TestAddIPv6ToRunningCluster: an IPv4 cluster with nodes gains an IPv6
// cluster CIDR through the desired config. Each node gets an IPv6 pod CIDR
// in a NodeUpdated that keeps its IPv4 one, a node joining later gets
// both, and the log checks out. Bad IPv6 plans are refused naming the
// field, and once nodes hold IPv6 pod CIDRs the IPv6 plan stays as it is.
func TestAddIPv6ToRunningCluster(t *testing.T) {
	_, c := etcdtest.New(t)
	start(t, c, baseConfig(), "c1")
	b := reg("b", 2)
	b.UnderlayIpV6 = "fd99::2"
	register(t, c, 0, reg("a", 1))
	register(t, c, 0, b)
	eventually(t, "two nodes", 10*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == 2 })
	inForce, before, head := load(t, c)
	if before["b"].UnderlayIpV6 != "fd99::2" {
		t.Fatalf("node b %v: the registration's underlay_ip_v6 is not in the log", before["b"])
	}
	v4 := familyCIDRs(before, false)
	good := keys.EncodeString(inForce)
	withV6 := func(cidr, mask string) string {
		return strings.Replace(good, `"cluster_cidr":"10.244.0.0/16"`, `"cluster_cidr":"10.244.0.0/16","cluster_cidr_v6":"`+cidr+`"`+mask, 1)
	}

	for _, tc := range []struct{ name, value, want string }{
		{"one IPv6 subnet", withV6("fd00:10:244::/64", `,"node_mask_size_v6":64`), "node_mask_size_v6: /64 gives fewer than two subnets of fd00:10:244::/64"},
		{"IPv6 CIDR over a node's underlay", withV6("fd99::/56", ""), `cluster_cidr_v6: fd99::/56 overlaps the underlay: it contains node "b"'s address fd99::2`},
		{"IPv4-mapped range", withV6("::/64", `,"node_mask_size_v6":80`), "cluster_cidr_v6: ::/64 overlaps ::ffff:0.0.0.0/96 (IPv4-mapped addresses"},
		{"IPv4 removed under its nodes", strings.Replace(good, `"cluster_cidr":"10.244.0.0/16"`, `"cluster_cidr_v6":"fd00:10:244::/56"`, 1),
			"cluster_cidr: cannot remove 10.244.0.0/16 while 2 nodes hold IPv4 pod CIDRs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := askConfig(t, c, tc.value)
			if s.Accepted || !strings.Contains(s.Reason, tc.want) {
				t.Fatalf("status %v, want a refusal with %q", s, tc.want)
			}
			if _, _, h := load(t, c); h != head {
				t.Fatalf("refused config changed the log: head %d -> %d", head, h)
			}
		})
	}

	s := askConfig(t, c, withV6("fd00:10:244::/56", ""))
	if !s.Accepted || s.Seq != head+1 {
		t.Fatalf("adding cluster_cidr_v6 to a running IPv4 cluster: %v", s)
	}
	var after map[string]*weftv1.Node
	eventually(t, "an IPv6 pod CIDR on every node", 10*time.Second, func() bool {
		_, after, _ = load(t, c)
		return len(familyCIDRs(after, true)) == 2
	})
	if got := familyCIDRs(after, false); !maps.Equal(got, v4) {
		t.Fatalf("IPv4 pod CIDRs changed: %v, were %v", got, v4)
	}
	evs := events(t, c)
	for _, e := range evs[head+1:] {
		if e.GetNodeUpdated() == nil {
			t.Errorf("event %d after the config change is %v, want NodeUpdated only", e.Seq, e)
		}
	}
	register(t, c, 0, reg("c", 3))
	eventually(t, "node c with both families", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return n["c"] != nil && len(n["c"].PodCidrs) == 2
	})
	mustCheck(t, c)

	// Now that nodes hold IPv6 pod CIDRs the IPv6 plan is fixed.
	inForce, _, head = load(t, c)
	good = keys.EncodeString(inForce)
	for _, tc := range []struct{ name, value, want string }{
		{"IPv6 removed", strings.Replace(good, `"cluster_cidr_v6":"fd00:10:244::/56",`, "", 1),
			"cluster_cidr_v6: cannot remove fd00:10:244::/56 while 3 nodes hold IPv6 pod CIDRs"},
		{"IPv6 moved", strings.Replace(good, "fd00:10:244::/56", "fd00:10:245::/56", 1),
			"cluster_cidr_v6: cannot change from fd00:10:244::/56 to fd00:10:245::/56 while 3 nodes hold IPv6 pod CIDRs"},
		{"IPv6 mask changed", strings.Replace(good, `"node_mask_size_v6":64`, `"node_mask_size_v6":80`, 1),
			"node_mask_size_v6: cannot change from 64 to 80 while 3 nodes hold IPv6 pod CIDRs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.value == good {
				t.Fatalf("the edit did not apply to %s", good)
			}
			s := askConfig(t, c, tc.value)
			if s.Accepted || !strings.Contains(s.Reason, tc.want) {
				t.Fatalf("status %v, want a refusal with %q", s, tc.want)
			}
			if _, _, h := load(t, c); h != head {
				t.Fatalf("refused config changed the log: head %d -> %d", head, h)
			}
		})
	}
}

// TestAddedFamilyExhausted: the IPv6 CIDR added to a running cluster has
// room for two of three nodes. The third keeps its IPv4 pod CIDR, gets a
// problem naming the exhausted CIDR and still gets its other changes;
// when a node leaves, the freed IPv6 subnet goes to it.
func TestAddedFamilyExhausted(t *testing.T) {
	_, c := etcdtest.New(t)
	cfg := baseConfig()
	cfg.NodeGraceSeconds = 1
	start(t, c, cfg, "c1")
	la := grant(t, c)
	register(t, c, la, reg("a", 1))
	register(t, c, 0, reg("b", 2))
	register(t, c, 0, reg("c", 3))
	eventually(t, "three nodes", 10*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == 3 })
	inForce, _, _ := load(t, c)
	good := keys.EncodeString(inForce)
	s := askConfig(t, c, strings.Replace(good, `"cluster_cidr":"10.244.0.0/16"`, `"cluster_cidr":"10.244.0.0/16","cluster_cidr_v6":"fd00:10:244::/63"`, 1))
	if !s.Accepted {
		t.Fatalf("adding a /63: %v", s)
	}
	var nodes map[string]*weftv1.Node
	eventually(t, "two IPv6 pod CIDRs", 10*time.Second, func() bool {
		_, nodes, _ = load(t, c)
		return len(familyCIDRs(nodes, true)) == 2
	})
	var left string
	for _, name := range []string{"a", "b", "c"} {
		if _, ok := familyCIDRs(nodes, true)[name]; !ok {
			left = name
		}
	}
	eventually(t, "a problem for "+left, 10*time.Second, func() bool {
		return strings.Contains(problem(t, c, left), "no pod CIDR: allocate for node \""+left+"\": ipam: cluster CIDR exhausted: fd00:10:244::/63 has no free /64")
	})
	if len(nodes[left].PodCidrs) != 1 {
		t.Fatalf("%s: %v, want its IPv4 pod CIDR kept", left, nodes[left])
	}
	// Its other changes still reach the log.
	moved := reg(left, 77)
	register(t, c, 0, moved)
	eventually(t, left+" moved", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return n[left].UnderlayIp == moved.UnderlayIp && len(n[left].PodCidrs) == 1
	})
	if left == "a" {
		// a holds no IPv6 subnet: let b go instead.
		if _, err := c.Delete(context.Background(), k.Registration("b")); err != nil {
			t.Fatal(err)
		}
	} else if _, err := c.Revoke(context.Background(), la); err != nil {
		t.Fatal(err)
	}
	eventually(t, left+" gets the freed IPv6 subnet", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return n[left] != nil && len(n[left].PodCidrs) == 2 && problem(t, c, left) == ""
	})
	mustCheck(t, c)
}

// TestIPv6OnlyThenIPv4: an IPv6-only cluster hands out IPv6 pod CIDRs
// only; adding an IPv4 cluster CIDR later gives every node an IPv4 one.
func TestIPv6OnlyThenIPv4(t *testing.T) {
	_, c := etcdtest.New(t)
	start(t, c, &weftv1.ClusterConfig{ClusterCidrV6: "fd00:10:244::/56", NodeGraceSeconds: 30}, "c1")
	for i, name := range []string{"a", "b"} {
		register(t, c, 0, &weftv1.Registration{Name: name, UnderlayIp: netip.AddrFrom16([16]byte{0xfd, 0x99, 15: byte(i + 1)}).String()})
	}
	var nodes map[string]*weftv1.Node
	eventually(t, "two nodes", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return len(nodes) == 2 })
	for name, n := range nodes {
		if len(n.PodCidrs) != 1 || !netip.MustParsePrefix(n.PodCidrs[0]).Addr().Is6() {
			t.Errorf("node %s in an IPv6-only cluster: %v", name, n)
		}
	}
	inForce, _, _ := load(t, c)
	if inForce.ClusterCidr != "" || inForce.NativeRoutingCidrV6 != "fd00:10:244::/56" {
		t.Errorf("IPv6-only config in force: %v", inForce)
	}
	good := keys.EncodeString(inForce)
	s := askConfig(t, c, strings.Replace(good, `{`, `{"cluster_cidr":"10.244.0.0/16",`, 1))
	if !s.Accepted {
		t.Fatalf("adding cluster_cidr to an IPv6-only cluster: %v", s)
	}
	eventually(t, "an IPv4 pod CIDR on every node", 10*time.Second, func() bool {
		_, nodes, _ = load(t, c)
		return len(familyCIDRs(nodes, false)) == 2 && len(familyCIDRs(nodes, true)) == 2
	})
	for name, n := range nodes {
		// IPv4 first, as the allocator orders them.
		if !slices.IsSortedFunc(n.PodCidrs, func(a, b string) int {
			return netip.MustParsePrefix(a).Addr().BitLen() - netip.MustParsePrefix(b).Addr().BitLen()
		}) {
			t.Errorf("node %s: pod CIDRs %v, want IPv4 first", name, n.PodCidrs)
		}
	}
	mustCheck(t, c)
}

// TestDuplicateUnderlayV6: a registration whose underlay_ip_v6 is a
// registered node's address is skipped with a problem naming the field and
// the owner; the owner keeps its node, and the second node is added once
// it registers an address of its own.
func TestDuplicateUnderlayV6(t *testing.T) {
	_, c := etcdtest.New(t)
	cfg := baseConfig()
	cfg.ClusterCidrV6 = "fd00:10:244::/56"
	start(t, c, cfg, "c1")
	a, b := reg("a", 1), reg("b", 2)
	a.UnderlayIpV6, b.UnderlayIpV6 = "fd99::1", "fd99::1"
	register(t, c, 0, a)
	eventually(t, "node a", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] != nil })
	register(t, c, 0, b)
	eventually(t, "a problem for b", 10*time.Second, func() bool {
		return strings.Contains(problem(t, c, "b"), `underlay_ip_v6: fd99::1 is node "a"'s, which is registered`)
	})
	_, nodes, head := load(t, c)
	if nodes["b"] != nil || nodes["a"].UnderlayIpV6 != "fd99::1" {
		t.Fatalf("nodes %v: b added or a changed", nodes)
	}
	b.UnderlayIpV6 = "fd99::2"
	register(t, c, 0, b)
	eventually(t, "node b with its own address", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return n["b"] != nil && n["b"].UnderlayIpV6 == "fd99::2" && problem(t, c, "b") == ""
	})
	if _, n, h := load(t, c); h != head+1 || n["a"].Seq != nodes["a"].Seq {
		t.Fatalf("head %d -> %d, a %v: want b's NodeAdded only", head, h, n["a"])
	}
	mustCheck(t, c)
}
