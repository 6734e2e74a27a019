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

	t.Run("learned and used", func(t *testing.T) {
		ca0, cb0 := a.counters(), b.counters()
		checkPath(t, c)
		for _, n := range c.nodes {
			port, mac := n.podPort(t, "vpod", n.pod)
			for _, ip := range []netip.Addr{n.podIP, n.podIP6} {
				if !waitFor(2*time.Second, func() bool { _, ok := n.endpoint(ip); return ok }) {
					t.Fatalf("node %d did not learn endpoint %s", n.idx, ip)
				}
				v, _ := n.endpoint(ip)
				if int(v.Ifindex) != port || net.HardwareAddr(v.PodMac[:]).String() != mac.String() {
					t.Fatalf("node %d endpoint %s = port %d mac %s, want port %d mac %s",
						n.idx, ip, v.Ifindex, net.HardwareAddr(v.PodMac[:]), port, mac)
				}
			}
		}
		// Both families, both directions, ICMP and TCP, with endpoints known.
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
			if port, _ := n.podPort(t, "vpod", n.pod); !n.dp.ports[port] {
				t.Fatalf("node %d: transmit fast path not attached to vpod #%d", n.idx, port)
			}
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
		// The pod's replies take the bridge too: its source is unknown.
		if c1.TxDirect != c0.TxDirect || c1.TxPackets-c0.TxPackets < 5 {
			t.Fatalf("without an entry: direct sends %d -> %d, tx %d -> %d", c0.TxDirect, c1.TxDirect, c0.TxPackets, c1.TxPackets)
		}
		// Sync learns it again.
		b.sync(wants[b])
		if _, ok := b.endpoint(b.podIP); !ok {
			t.Fatal("Sync did not learn the endpoint again")
		}
	})

	// A second pod on node 2.
	pod2IP := netip.MustParseAddr("10.244.2.3")
	pod2 := c.addPod(t, b, "vpod2", pod2IP)
	var p2port int

	t.Run("stale entry is replaced, never trusted", func(t *testing.T) {
		if !netnstest.Reach(t, a.pod, pod2IP, reachTimeout) {
			t.Fatal("second pod unreachable")
		}
		must(t, b.dp.RefreshEndpoints())
		p2, ok := b.endpoint(pod2IP)
		if !ok {
			t.Fatal("second pod's endpoint not learned")
		}
		p2port = int(p2.Ifindex)
		if _, err := os.Stat(filepath.Join(b.cfg.PinDir, tc.Port(p2port).Name)); err != nil {
			t.Fatalf("second pod's port link not pinned: %v", err)
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
		// A port that is not a veth of the bridge is never learned: an
		// entry pointing elsewhere is removed.
		ul, err := b.ns.Index("ul0")
		must(t, err)
		bogus := right
		bogus.Ifindex = uint32(ul)
		k = object.EndpointKey(netip.MustParseAddr("10.244.2.77"))
		must(t, b.dp.objs.WeftEndpoints.Put(&k, &bogus))
		must(t, b.dp.RefreshEndpoints())
		if _, ok := b.endpoint(netip.MustParseAddr("10.244.2.77")); ok {
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
		if _, err := os.Stat(filepath.Join(b.cfg.PinDir, tc.Port(p2port).Name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("removed pod's port link still pinned: %v", err)
		}
		// Losing a port may change the bridge's MAC, which flushes its
		// neighbours: the first pod is learned again from new traffic,
		// with the bridge's current MAC.
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("first pod unreachable after the second left")
		}
		must(t, b.dp.RefreshEndpoints())
		v, ok := b.endpoint(b.podIP)
		if !ok {
			t.Fatalf("first pod's endpoint not learned again: %s", kernelTables(t, b))
		}
		brMAC, err := b.ns.MAC("weft0")
		must(t, err)
		if got := net.HardwareAddr(v.GwMac[:]).String(); got != brMAC.String() {
			t.Fatalf("endpoint source MAC %s, bridge has %s", got, brMAC)
		}
	})

	t.Run("no entries without the bridge fast path", func(t *testing.T) {
		b.dp.cfg.NoBridgeFastPath = true
		b.sync(wants[b])
		if _, ok := b.endpoint(b.podIP); ok {
			t.Fatal("endpoint kept with the fast path off")
		}
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("no reach with the fast path off")
		}
		if len(b.dp.ports) != 0 {
			t.Fatalf("transmit fast path still on ports %v", b.dp.ports)
		}
	})
}

// addPod adds a pod namespace with eth0 at ip on n's bridge (host side
// named host).
func (c *testCluster) addPod(t *testing.T, n *testNode, host string, ip netip.Addr) *netnstest.NS {
	pod := netnstest.New(t, fmt.Sprintf("%s-x%d", c.nodes[0].ns.Name, n.idx))
	_, err := n.ns.Plug("weft0", host, pod, "eth0", 1450, []netip.Prefix{netip.PrefixFrom(ip, 24)}, n.podCIDR.Addr().Next())
	must(t, err)
	return pod
}

// kernelTables describes n's bridge neighbours and FDB (for failures).
func kernelTables(t testing.TB, n *testNode) string {
	var out string
	n.ns.MustDo(t, func() error {
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6, 7} {
			ns, err := netlink.NeighList(0, fam)
			if err != nil {
				return err
			}
			for _, e := range ns {
				out += fmt.Sprintf("\n  fam %d dev #%d master #%d %s %s state %#x flags %#x", fam, e.LinkIndex, e.MasterIndex, e.IP, e.HardwareAddr, e.State, e.Flags)
			}
		}
		return nil
	})
	return out
}
