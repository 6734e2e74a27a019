package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/internal/tc"
	"github.com/weftnet/weft/bpf/podguard"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// endpoint reads n's endpoint map entry for ip.
func (n *testNode) endpoint(ip netip.Addr) (object.WeftEndpointValue, bool) {
	var v object.WeftEndpointValue
	k := object.EndpointKey(ip)
	err := n.dp.objs.WeftEndpoints.Lookup(&k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false
	}
	must(n.t, err)
	return v, true
}

// podPort is the ifindex of the host side of a pod veth and the pod's MAC.
func (n *testNode) podPort(t testing.TB, host string, pod *netnstest.NS) (int, net.HardwareAddr) {
	idx, err := n.ns.Index(host)
	must(t, err)
	mac, err := pod.MAC("eth0")
	must(t, err)
	return idx, mac
}

func waitFor(d time.Duration, f func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if f() {
			return true
		}
	}
	return f()
}

func TestPeerFastPath(t *testing.T) {
	c := newTestCluster(t, AttachTCX)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	wants := map[*testNode]*spec.Desired{}
	for _, n := range c.nodes {
		wants[n] = c.overlayWant(n, spec.ModeVXLAN, netip.Addr{})
		n.sync(wants[n])
	}

	t.Run("derived from the recorded pods and used", func(t *testing.T) {
		// No traffic yet: the entries come from what weft-cni recorded,
		// not from the kernel's neighbour table.
		for _, n := range c.nodes {
			port, mac := n.podPort(t, "vpod", n.pod)
			for _, ip := range []netip.Addr{n.podIP, n.podIP6} {
				v, ok := n.endpoint(ip)
				if !ok {
					t.Fatalf("node %d: no endpoint for %s after Sync", n.idx, ip)
				}
				if int(v.Ifindex) != port || net.HardwareAddr(v.PodMac[:]).String() != mac.String() {
					t.Fatalf("node %d endpoint %s = port %d mac %s, want port %d mac %s",
						n.idx, ip, v.Ifindex, net.HardwareAddr(v.PodMac[:]), port, mac)
				}
			}
		}
		ca0, cb0 := a.counters(), b.counters()
		// Both families, both directions, ICMP and TCP.
		checkPath(t, c)
		ca, cb := a.counters(), b.counters()
		// 256 KiB of TCP each way: at least a few dozen GRO packets.
		if ca.RxDirect-ca0.RxDirect < 20 || cb.RxDirect-cb0.RxDirect < 20 {
			t.Fatalf("direct deliveries: node 1 %d, node 2 %d (want ≥ 20 each)",
				ca.RxDirect-ca0.RxDirect, cb.RxDirect-cb0.RxDirect)
		}
		if ca.TxDirect-ca0.TxDirect < 20 || cb.TxDirect-cb0.TxDirect < 20 {
			t.Fatalf("direct sends: node 1 %d, node 2 %d (want ≥ 20 each)",
				ca.TxDirect-ca0.TxDirect, cb.TxDirect-cb0.TxDirect)
		}
		for _, n := range c.nodes {
			port, _ := n.podPort(t, "vpod", n.pod)
			if ok, err := tc.TCXAttached(n.cfg.PinDir, port, tc.Pod(port), n.dp.objs.WeftFromPort); err != nil || !ok {
				t.Fatalf("node %d: pod check not on vpod #%d: %v", n.idx, port, err)
			}
		}
	})

	t.Run("the neighbour table is not an authority", func(t *testing.T) {
		// A neighbour entry and FDB entry for an address no pod was given
		// (what a gratuitous ARP leaves): no endpoint.
		fake := netip.MustParseAddr("10.244.2.77")
		b.ns.MustDo(t, func() error {
			br, err := netlink.LinkByName("weft0")
			if err != nil {
				return err
			}
			return netlink.NeighSet(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4,
				State: netlink.NUD_REACHABLE, IP: fake.AsSlice(), HardwareAddr: b.podMAC})
		})
		must(t, b.dp.RefreshEndpoints())
		if v, ok := b.endpoint(fake); ok {
			t.Fatalf("endpoint for %s from the neighbour table: %+v", fake, v)
		}
	})

	// The rest runs without the watch, so the map changes only when the
	// test says so.
	for _, n := range c.nodes {
		n.dp.stopWatch()
	}

	t.Run("missing entry falls back to the bridge", func(t *testing.T) {
		for _, ip := range []netip.Addr{b.podIP, b.podIP6} {
			k := object.EndpointKey(ip)
			must(t, b.dp.objs.WeftEndpoints.Delete(&k))
		}
		c0 := b.counters()
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("no reach without an endpoint entry")
		}
		tcpEcho(t, a.pod, b.pod, b.podIP, 64<<10)
		c1 := b.counters()
		if c1.RxDirect != c0.RxDirect || c1.RxPackets-c0.RxPackets < 5 {
			t.Fatalf("without an entry: direct %d -> %d, rx %d -> %d", c0.RxDirect, c1.RxDirect, c0.RxPackets, c1.RxPackets)
		}
		// Sync derives them again.
		b.sync(wants[b])
		if _, ok := b.endpoint(b.podIP); !ok {
			t.Fatal("Sync did not derive the endpoint again")
		}
	})

	// A second pod on node 2, attached as weft-cni does.
	pod2IP := netip.MustParseAddr("10.244.2.3")
	pod2, pod2MAC := c.addPod(t, b, "vpod2", pod2IP)
	b.guardPort(t, "vpod2", podguard.Pod{MAC: pod2MAC, IPv4: pod2IP})
	var p2port int

	t.Run("stale entry is replaced, never trusted", func(t *testing.T) {
		must(t, b.dp.RefreshEndpoints())
		p2, ok := b.endpoint(pod2IP)
		if !ok {
			t.Fatal("second pod's endpoint not derived")
		}
		p2port = int(p2.Ifindex)
		if !netnstest.Reach(t, a.pod, pod2IP, reachTimeout) {
			t.Fatal("second pod unreachable")
		}
		right, _ := b.endpoint(b.podIP)
		// Point the first pod's address at the second pod (what an ifindex
		// or address reuse could leave behind): a refresh corrects it.
		k := object.EndpointKey(b.podIP)
		must(t, b.dp.objs.WeftEndpoints.Put(&k, &p2))
		must(t, b.dp.RefreshEndpoints())
		if got, _ := b.endpoint(b.podIP); got != right {
			t.Fatalf("stale entry kept: %+v, want %+v", got, right)
		}
		tcpEcho(t, a.pod, b.pod, b.podIP, 64<<10)
		// An entry pointing at a port that is no pod's is removed.
		ul, err := b.ns.Index("ul0")
		must(t, err)
		bogus := right
		bogus.Ifindex = uint32(ul)
		k = object.EndpointKey(netip.MustParseAddr("10.244.2.78"))
		must(t, b.dp.objs.WeftEndpoints.Put(&k, &bogus))
		must(t, b.dp.RefreshEndpoints())
		if _, ok := b.endpoint(netip.MustParseAddr("10.244.2.78")); ok {
			t.Fatal("unknown endpoint kept")
		}
	})

	t.Run("removed pod is forgotten", func(t *testing.T) {
		b.ns.MustDo(t, func() error {
			l, err := netlink.LinkByName("vpod2")
			if err != nil {
				return err
			}
			return netlink.LinkDel(l)
		})
		must(t, pod2.Delete())
		must(t, b.dp.RefreshEndpoints())
		if _, ok := b.endpoint(pod2IP); ok {
			t.Fatal("removed pod's endpoint kept")
		}
		if _, err := os.Stat(filepath.Join(b.cfg.PinDir, tc.Pod(p2port).Name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("removed pod's check still pinned: %v", err)
		}
		var v object.WeftPodValue
		if err := b.dp.objs.WeftPods.Lookup(uint32(p2port), &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("removed pod still recorded: %+v, %v", v, err)
		}
		// Losing a port may change the bridge's MAC: the first pod's
		// entry and the port fast path follow it.
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("first pod unreachable after the second left")
		}
		ep, ok := b.endpoint(b.podIP)
		if !ok {
			t.Fatal("first pod's endpoint lost")
		}
		brMAC, err := b.ns.MAC("weft0")
		must(t, err)
		var cfg object.WeftConfig
		must(t, b.dp.objs.WeftConfig.Lookup(uint32(0), &cfg))
		if got := net.HardwareAddr(ep.GwMac[:]).String(); got != brMAC.String() ||
			net.HardwareAddr(cfg.GwMac[:]).String() != brMAC.String() || cfg.Flags&object.ConfigPortFast == 0 {
			t.Fatalf("endpoint source MAC %s, config %+v, bridge has %s", got, cfg, brMAC)
		}
	})

	t.Run("no entries without the bridge fast path", func(t *testing.T) {
		b.dp.cfg.NoBridgeFastPath = true
		b.sync(wants[b])
		if _, ok := b.endpoint(b.podIP); ok {
			t.Fatal("endpoint kept with the fast path off")
		}
		var cfg object.WeftConfig
		must(t, b.dp.objs.WeftConfig.Lookup(uint32(0), &cfg))
		if cfg.Flags&object.ConfigPortFast != 0 {
			t.Fatalf("port fast path still on: %+v", cfg)
		}
		c0 := b.counters()
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) || !netnstest.Reach(t, b.pod, a.podIP, reachTimeout) {
			t.Fatal("no reach with the fast path off")
		}
		if c1 := b.counters(); c1.TxDirect != c0.TxDirect || c1.RxDirect != c0.RxDirect {
			t.Fatalf("direct paths used with the fast path off: %+v -> %+v", c0, c1)
		}
		// The pod check stays: it is not part of the fast path.
		port, _ := b.podPort(t, "vpod", b.pod)
		if ok, err := tc.TCXAttached(b.cfg.PinDir, port, tc.Pod(port), nil); err != nil || !ok {
			t.Fatalf("pod check gone with the fast path: %v", err)
		}
	})
}

// addPod adds a pod namespace with eth0 at ip on n's bridge (host side
// named host) and returns it with its MAC.
func (c *testCluster) addPod(t *testing.T, n *testNode, host string, ip netip.Addr) (*netnstest.NS, net.HardwareAddr) {
	pod := netnstest.New(t, fmt.Sprintf("%s-x%d", c.nodes[0].ns.Name, n.idx))
	mac, err := n.ns.Plug("weft0", host, pod, "eth0", 1450, []netip.Prefix{netip.PrefixFrom(ip, 24)}, n.podCIDR.Addr().Next())
	must(t, err)
	return pod, mac
}
