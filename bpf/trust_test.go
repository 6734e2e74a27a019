package bpf

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// The attacks of docs/datapath.md ("Trust"), each played by hand with
// frames the kernel would never send on its own: a host on the underlay
// that sends plain packets to a node's MAC, a pod that sends with another
// pod's address, a tunnel endpoint that hides an IPv4 source in an IPv6
// packet. Each must be dropped and counted under its reason, and a
// genuine packet of the same shape must still arrive (so the test cannot
// pass by breaking the path).

// token makes every payload unique, so a late arrival of one attempt is
// never taken for another.
var token atomic.Int64

func payload(what string) string { return fmt.Sprintf("%s #%d", what, token.Add(1)) }

// attack sends frame out of ifName in ns and reports whether sink (in
// the victim pod) received payload within d, and from which source.
func attack(t *testing.T, ns *netnstest.NS, ifName string, frame []byte, sink *netnstest.UDPSink, p string, d time.Duration) (netip.Addr, bool) {
	t.Helper()
	must(t, ns.SendFrame(ifName, frame))
	return sink.Wait(p, d)
}

func mac(t testing.TB, ns *netnstest.NS, ifName string) net.HardwareAddr {
	t.Helper()
	m, err := ns.MAC(ifName)
	must(t, err)
	return m
}

// delivered is how long a genuine packet may take; refused is how long
// the tests wait before they call a forged one dropped.
const (
	delivered = 2 * time.Second
	refused   = 500 * time.Millisecond
)

// dropsOf waits until n counted one more drop under reason than in c0.
func dropsOf(t *testing.T, n *testNode, c0 spec.Counters, reason string) {
	t.Helper()
	if !waitFor(time.Second, func() bool { return n.counters().Drops[reason] > c0.Drops[reason] }) {
		t.Fatalf("node %d: %s drops %d -> %d (all: %v)", n.idx, reason, c0.Drops[reason], n.counters().Drops[reason], n.counters().Drops)
	}
}

func TestTrustOverlay(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	for _, n := range c.nodes {
		n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
	}
	checkPath(t, c)
	sinkA, err := netnstest.NewUDPSink(a.pod, 0)
	must(t, err)
	defer sinkA.Close()
	sinkB, err := netnstest.NewUDPSink(b.pod, 0)
	must(t, err)
	defer sinkB.Close()

	t.Run("genuine traffic passes the checks", func(t *testing.T) {
		// checkPath above (ARP, neighbour discovery, ICMP, TCP, both
		// families) and the pod's own link-local address (EUI-64 of its
		// MAC, which the check computes from the record) to the gateway's.
		sink, err := netnstest.NewUDPSink(a.ns, 0)
		must(t, err)
		defer sink.Close()
		var gwLL netip.Addr
		a.ns.MustDo(t, func() error {
			br, err := netlink.LinkByName("weft0")
			if err != nil {
				return err
			}
			as, err := netlink.AddrList(br, netlink.FAMILY_V6)
			for _, x := range as {
				if ip, _ := netip.AddrFromSlice(x.IP); ip.IsLinkLocalUnicast() {
					gwLL = ip
				}
			}
			return err
		})
		p := payload("link-local")
		a.pod.MustDo(t, func() error {
			// A numeric zone: Go caches interface names process-wide,
			// across namespaces.
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			zone := strconv.Itoa(l.Attrs().Index)
			// Bound to the link-local address (the kernel would pick the
			// pod's global one), once duplicate address detection is done.
			from := net.UDPAddrFromAddrPort(netip.AddrPortFrom(object.LinkLocal(a.podMAC).WithZone(zone), 0))
			to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(gwLL.WithZone(zone), sink.Port()))
			var c *net.UDPConn
			for end := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				if c, err = net.DialUDP("udp6", from, to); err == nil || time.Now().After(end) {
					break
				}
			}
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(p))
			return err
		})
		src, ok := sink.Wait(p, delivered)
		if !ok || !src.IsLinkLocalUnicast() {

			t.Fatalf("datagram from the pod's link-local address to %s: arrived %v from %s; drops %v", gwLL, ok, src, a.counters().Drops)
		}
		for _, n := range c.nodes {
			for reason, v := range n.counters().Drops {
				if strings.HasPrefix(reason, "pod_") && v != 0 {
					t.Errorf("node %d dropped %d genuine packets as %s", n.idx, v, reason)
				}
			}
		}
	})

	// A host on the underlay (here node 2's namespace) sends plain frames
	// to node 1's MAC for node 1's pod.
	t.Run("plain frame from the underlay", func(t *testing.T) {
		for _, c0 := range []struct {
			name   string
			src    netip.Addr
			reason string
		}{
			{"remote pod source", b.podIP, "reverse_path"},
			{"local pod source", netip.MustParseAddr("10.244.1.3"), "reverse_path"},
			{"outside source", netip.MustParseAddr("192.168.50.77"), "plain_to_pod"},
			{"remote pod source v6", b.podIP6, "reverse_path"},
			{"outside source v6", netip.MustParseAddr("fd00:50::77"), "plain_to_pod"},
		} {
			t.Run(c0.name, func(t *testing.T) {
				dst := a.podIP
				if c0.src.Is6() {
					dst = a.podIP6
				}
				p := payload(c0.name)
				before := a.counters()
				f := netnstest.UDP{DstMAC: mac(t, a.ns, "ul0"), SrcMAC: mac(t, b.ns, "ul0"), Src: c0.src, Dst: dst,
					SrcPort: 4000, DstPort: sinkA.Port(), Payload: []byte(p)}
				if src, ok := attack(t, b.ns, "ul0", f.Frame(), sinkA, p, refused); ok {
					t.Fatalf("plain frame from the underlay with source %s reached the pod (seen from %s)", c0.src, src)
				}
				dropsOf(t, a, before, c0.reason)
			})
		}
		// Control: the same pod reached through the tunnel.
		p := payload("genuine")
		must(t, udpSend(b.pod, a.podIP, sinkA.Port(), p))
		if src, ok := sinkA.Wait(p, delivered); !ok || src != b.podIP {
			t.Fatalf("genuine datagram through the tunnel: arrived %v from %s", ok, src)
		}
	})

	t.Run("pod sends with a neighbour's address", func(t *testing.T) {
		gw := mac(t, a.ns, "weft0")
		podMAC := mac(t, a.pod, "eth0")
		for _, c0 := range []struct {
			name   string
			src    netip.Addr
			dst    netip.Addr
			srcMAC net.HardwareAddr
			reason string
		}{
			{"ipv4 source", netip.MustParseAddr("10.244.1.3"), b.podIP, podMAC, "pod_source"},
			{"ipv6 source", netip.MustParseAddr("fd00:244:1::3"), b.podIP6, podMAC, "pod_source"},
			{"remote pod source", b.podIP, b.podIP, podMAC, "pod_source"},
			{"another mac", a.podIP, b.podIP, net.HardwareAddr{0x02, 0xde, 0xad, 0, 0, 1}, "pod_mac"},
		} {
			t.Run(c0.name, func(t *testing.T) {
				p := payload(c0.name)
				before := a.counters()
				f := netnstest.UDP{DstMAC: gw, SrcMAC: c0.srcMAC, Src: c0.src, Dst: c0.dst, SrcPort: 4000, DstPort: sinkB.Port(), Payload: []byte(p)}
				if src, ok := attack(t, a.pod, "eth0", f.Frame(), sinkB, p, refused); ok {
					t.Fatalf("pod 1 sending as %s reached pod 2 (seen from %s)", c0.src, src)
				}
				dropsOf(t, a, before, c0.reason)
			})
		}
		// Control: the pod's own address, by the same hand-made frame.
		for _, dst := range []netip.Addr{b.podIP, b.podIP6} {
			src := a.podIP
			if dst.Is6() {
				src = a.podIP6
			}
			p := payload("own")
			f := netnstest.UDP{DstMAC: gw, SrcMAC: podMAC, Src: src, Dst: dst, SrcPort: 4000, DstPort: sinkB.Port(), Payload: []byte(p)}
			if got, ok := attack(t, a.pod, "eth0", f.Frame(), sinkB, p, delivered); !ok || got != src {
				t.Fatalf("pod 1 sending as itself to %s: arrived %v from %s", dst, ok, got)
			}
		}
	})

	t.Run("ipv4-mapped inner source", func(t *testing.T) {
		// Node 1 is the endpoint of 10.244.1.0/24; an IPv6 packet whose
		// source is that prefix IPv4-mapped is not one of its pods.
		p := payload("mapped")
		inner := netnstest.UDP{DstMAC: mac(t, b.ns, "weft0"), SrcMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 1},
			Src: netip.MustParseAddr("::ffff:10.244.1.2"), Dst: b.podIP6, SrcPort: 4000, DstPort: sinkB.Port(), Payload: []byte(p)}
		before := b.counters()
		forgeFrame(t, a, a.under, b.under, inner.Frame(), 1)
		if src, ok := sinkB.Wait(p, refused); ok {
			t.Fatalf("inner IPv6 packet from %s reached pod 2", src)
		}
		dropsOf(t, b, before, "ipv4_mapped")
		if got := b.counters(); got.RxPackets != before.RxPackets {
			t.Fatalf("node 2 accepted it out of the tunnel: rx %d -> %d", before.RxPackets, got.RxPackets)
		}
	})

	t.Run("wrong vni", func(t *testing.T) {
		// Pod 1's genuine packet from node 1's endpoint, in a VXLAN
		// header with another VNI (issue 12): the tunnel entry's VNI is
		// 1. The same frame with VNI 1 is the control.
		inner := func(p string) []byte {
			return netnstest.UDP{DstMAC: mac(t, b.ns, "weft0"), SrcMAC: mac(t, a.ns, spec.VXLANDevice),
				Src: a.podIP, Dst: b.podIP, SrcPort: 4000, DstPort: sinkB.Port(), Payload: []byte(p)}.Frame()
		}
		p := payload("vni 2")
		before := b.counters()
		forgeFrame(t, a, a.under, b.under, inner(p), 2)
		if src, ok := sinkB.Wait(p, refused); ok {
			t.Fatalf("a packet with VNI 2 reached pod 2 (seen from %s)", src)
		}
		dropsOf(t, b, before, "wrong_vni")
		if got := b.counters(); got.RxPackets != before.RxPackets || got.DropSpoofed != before.DropSpoofed+1 {
			t.Fatalf("rx %d -> %d, spoofed drops %d -> %d; want no packet accepted, one spoofed",
				before.RxPackets, got.RxPackets, before.DropSpoofed, got.DropSpoofed)
		}
		p = payload("vni 1")
		forgeFrame(t, a, a.under, b.under, inner(p), 1)
		if src, ok := sinkB.Wait(p, delivered); !ok || src != a.podIP {
			t.Fatalf("the same packet with VNI 1: arrived %v from %s", ok, src)
		}
	})
}

// A pod answers ARP and neighbour solicitations for its own addresses
// only: a reply that claims a neighbour's address would move the node's
// neighbour entry (and with it the traffic for that address) to it.
func TestTrustPodNeighbour(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	for _, n := range c.nodes {
		n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
	}
	checkPath(t, c)
	gw, podMAC := mac(t, a.ns, "weft0"), mac(t, a.pod, "eth0")
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x44} // the MAC of a pod 10.244.1.3 would have
	victim, victim6 := netip.MustParseAddr("10.244.1.3"), netip.MustParseAddr("fd00:244:1::3")
	neighMAC := func(ip netip.Addr) string {
		var out string
		a.ns.MustDo(t, func() error {
			br, err := netlink.LinkByName("weft0")
			if err != nil {
				return err
			}
			fam := netlink.FAMILY_V4
			if ip.Is6() {
				fam = netlink.FAMILY_V6
			}
			ns, err := netlink.NeighList(br.Attrs().Index, fam)
			if err != nil {
				return err
			}
			for _, n := range ns {
				if n.IP.Equal(ip.AsSlice()) {
					out = n.HardwareAddr.String()
				}
			}
			return nil
		})
		return out
	}
	a.ns.MustDo(t, func() error {
		br, err := netlink.LinkByName("weft0")
		if err != nil {
			return err
		}
		for _, ip := range []netip.Addr{victim, victim6} {
			fam := netlink.FAMILY_V4
			if ip.Is6() {
				fam = netlink.FAMILY_V6
			}
			n := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: fam, State: netlink.NUD_STALE, IP: ip.AsSlice(), HardwareAddr: other}
			if err := netlink.NeighSet(n); err != nil {
				return err
			}
		}
		return nil
	})
	time.Sleep(1100 * time.Millisecond) // past the neighbour entries' locktime (1 s)
	_ = b

	t.Run("arp reply for a neighbour's address", func(t *testing.T) {
		before := a.counters()
		f := netnstest.ARP{DstMAC: gw, SrcMAC: podMAC, SenderMAC: podMAC, SenderIP: victim,
			TargetMAC: gw, TargetIP: a.podCIDR.Addr().Next(), Reply: true}
		must(t, a.pod.SendFrame("eth0", f.Frame()))
		time.Sleep(refused)
		if got := neighMAC(victim); got != other.String() {
			t.Fatalf("the node's neighbour entry for %s moved to %s", victim, got)
		}
		dropsOf(t, a, before, "pod_arp")
	})

	t.Run("neighbour advertisement for a neighbour's address", func(t *testing.T) {
		before := a.counters()
		f := netnstest.NeighborAdvert{DstMAC: gw, SrcMAC: podMAC, Src: a.podIP6, Dst: a.podCIDR6.Addr().Next(), Target: victim6}
		must(t, a.pod.SendFrame("eth0", f.Frame()))
		time.Sleep(refused)
		if got := neighMAC(victim6); got != other.String() {
			t.Fatalf("the node's neighbour entry for %s moved to %s", victim6, got)
		}
		dropsOf(t, a, before, "pod_nd")
	})

	t.Run("own addresses still resolve", func(t *testing.T) {
		for _, ip := range []netip.Addr{a.podIP, a.podIP6} {
			if !netnstest.Reach(t, a.ns, ip, reachTimeout) {
				t.Fatalf("node 1 cannot reach its pod at %s", ip)
			}
			if got := neighMAC(ip); got != podMAC.String() {
				t.Fatalf("neighbour entry for %s is %q, want the pod's %s", ip, got, podMAC)
			}
		}
	})
}

// In native modes a pod source is accepted from the underlay only from
// the neighbour this node routes that source through.
func TestTrustNative(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	for _, n := range c.nodes {
		n.sync(c.nativeWant(n, false))
	}
	checkNative(t, c)
	// A third node C (192.168.50.3, MAC 02:00:00:00:00:33) owns
	// 10.244.3.0/24; node 2 claims to speak for it.
	third := netip.MustParseAddr("192.168.50.3")
	w := c.nativeWant(a, false)
	w.Routes = append(w.Routes, spec.Route{Prefix: pfx("10.244.3.0/24"), Via: third})
	a.sync(w.Normalize())
	a.ns.MustDo(t, func() error {
		ul, err := netlink.LinkByName("ul0")
		if err != nil {
			return err
		}
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: third.AsSlice(), HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x33}})
	})
	sinkA, err := netnstest.NewUDPSink(a.pod, 0)
	must(t, err)
	defer sinkA.Close()
	ulA, ulB := mac(t, a.ns, "ul0"), mac(t, b.ns, "ul0")
	send := func(t *testing.T, src, dst netip.Addr, wait time.Duration) (netip.Addr, bool) {
		p := payload(src.String())
		f := netnstest.UDP{DstMAC: ulA, SrcMAC: ulB, Src: src, Dst: dst, SrcPort: 4000, DstPort: sinkA.Port(), Payload: []byte(p)}
		return attack(t, b.ns, "ul0", f.Frame(), sinkA, p, wait)
	}

	t.Run("another node's pod source", func(t *testing.T) {
		before := a.counters()
		if src, ok := send(t, netip.MustParseAddr("10.244.3.5"), a.podIP, refused); ok {
			t.Fatalf("node 2 sending as node 3's pod reached pod 1 (seen from %s)", src)
		}
		dropsOf(t, a, before, "reverse_path")
	})

	t.Run("next hops stay resolved", func(t *testing.T) {
		// The peer's next hops are managed neighbour entries: the kernel
		// keeps them resolved from the first packet on.
		managed := func() map[string]bool {
			out := map[string]bool{}
			a.ns.MustDo(t, func() error {
				ul, err := netlink.LinkByName("ul0")
				if err != nil {
					return err
				}
				ns, err := netlink.NeighList(ul.Attrs().Index, netlink.FAMILY_ALL)
				for _, n := range ns {
					if n.FlagsExt&netlink.NTF_EXT_MANAGED != 0 {
						out[n.IP.String()] = true
					}
				}
				return err
			})
			return out
		}
		if m := managed(); !m[b.under.String()] || !m[b.under6.String()] || m[third.String()] {
			t.Fatalf("managed neighbours %v, want node 2's addresses and not node 3's static entry", m)
		}
		// Without node 3's static entry Reconcile makes it a managed one;
		// nobody answers for it, so its pods' packets cannot be checked.
		a.ns.MustDo(t, func() error {
			ul, err := netlink.LinkByName("ul0")
			if err != nil {
				return err
			}
			return netlink.NeighDel(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: netlink.FAMILY_V4, IP: third.AsSlice()})
		})
		rep, err := a.dp.Reconcile(t.Context(), w)
		must(t, err)
		if !slices.Contains(rep.Repaired, "managed neighbour "+third.String()) || !managed()[third.String()] {
			t.Fatalf("reconcile repaired %q; managed %v", rep.Repaired, managed())
		}
		before := a.counters()
		if src, ok := send(t, netip.MustParseAddr("10.244.3.5"), a.podIP, refused); ok {
			t.Fatalf("node 2 sending as node 3's pod reached pod 1 (seen from %s)", src)
		}
		dropsOf(t, a, before, "reverse_path_unresolved")
	})

	t.Run("this node's own pod source", func(t *testing.T) {
		before := a.counters()
		if src, ok := send(t, netip.MustParseAddr("10.244.1.3"), a.podIP, refused); ok {
			t.Fatalf("a pod source of node 1 reached pod 1 from the underlay (seen from %s)", src)
		}
		dropsOf(t, a, before, "reverse_path")
	})

	t.Run("genuine", func(t *testing.T) {
		// Node 2's own pod, and a host outside the pod network: the
		// network routes pods in native mode.
		for _, src := range []netip.Addr{b.podIP, netip.MustParseAddr("192.168.50.77")} {
			if got, ok := send(t, src, a.podIP, delivered); !ok || got != src {
				t.Fatalf("plain datagram from %s: arrived %v from %s", src, ok, got)
			}
		}
	})
}

// Where the network routes pods (gateway mode), a pod source is accepted
// from the next hop of its route (the router) and, because a node on the
// same segment answers this node's own address directly, from its owner
// node; from nobody else.
func TestTrustGateway(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	router, routerMAC := netip.MustParseAddr("192.168.50.9"), net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	third, thirdMAC := netip.MustParseAddr("192.168.50.3"), net.HardwareAddr{0x02, 0, 0, 0, 0, 0x33}
	fourth := netip.MustParseAddr("192.168.50.4") // answers nobody: never resolved
	want := &spec.Desired{
		Mode:          spec.ModeGateway,
		LocalPodCIDRs: []netip.Prefix{a.podCIDR},
		PodNetworks:   []netip.Prefix{clusterCIDR},
		PodOwners: []spec.PodOwner{
			{Prefix: b.podCIDR, Node: b.under},
			{Prefix: pfx("10.244.3.0/24"), Node: third},
			{Prefix: pfx("10.244.4.0/24"), Node: fourth},
		},
	}
	// The router and node 3 answer nobody here: static neighbours, and
	// the pod network routed via the router (the operator's route).
	a.ns.MustDo(t, func() error {
		ul, err := netlink.LinkByName("ul0")
		if err != nil {
			return err
		}
		for ip, m := range map[netip.Addr]net.HardwareAddr{router: routerMAC, third: thirdMAC} {
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: ip.AsSlice(), HardwareAddr: m}); err != nil {
				return err
			}
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: ul.Attrs().Index, Dst: netnstest.IPNet(clusterCIDR), Gw: router.AsSlice()})
	})
	a.sync(want.Normalize())
	var o object.WeftTunnelValue
	k := object.TunnelKey(b.podCIDR)
	must(t, a.dp.objs.WeftOwners.Lookup(&k, &o))
	if got := object.Tunnel(b.podCIDR, o).Endpoint; got != b.under {
		t.Fatalf("owner of %s recorded as %s", b.podCIDR, got)
	}
	sinkA, err := netnstest.NewUDPSink(a.pod, 0)
	must(t, err)
	defer sinkA.Close()
	ulA := mac(t, a.ns, "ul0")
	send := func(t *testing.T, src netip.Addr, from net.HardwareAddr, wait time.Duration) (netip.Addr, bool) {
		p := payload(src.String() + " from " + from.String())
		f := netnstest.UDP{DstMAC: ulA, SrcMAC: from, Src: src, Dst: a.podIP, SrcPort: 4000, DstPort: sinkA.Port(), Payload: []byte(p)}
		return attack(t, b.ns, "ul0", f.Frame(), sinkA, p, wait)
	}

	t.Run("from the router", func(t *testing.T) {
		if got, ok := send(t, b.podIP, routerMAC, delivered); !ok || got != b.podIP {
			t.Fatalf("pod 2's packet through the router: arrived %v from %s", ok, got)
		}
	})
	t.Run("from the owner directly", func(t *testing.T) {
		if got, ok := send(t, b.podIP, mac(t, b.ns, "ul0"), delivered); !ok || got != b.podIP {
			t.Fatalf("pod 2's packet from node 2 itself: arrived %v from %s", ok, got)
		}
	})
	t.Run("from another node", func(t *testing.T) {
		before := a.counters()
		if src, ok := send(t, netip.MustParseAddr("10.244.3.5"), mac(t, b.ns, "ul0"), refused); ok {
			t.Fatalf("node 2 sending as node 3's pod reached pod 1 (seen from %s)", src)
		}
		dropsOf(t, a, before, "reverse_path")
	})
	t.Run("a remembered source from another MAC", func(t *testing.T) {
		// Pod 2's packet from node 2 was accepted (and remembered) a
		// moment ago; from another sender on the segment it is not.
		if got, ok := send(t, b.podIP, mac(t, b.ns, "ul0"), delivered); !ok || got != b.podIP {
			t.Fatalf("pod 2's packet from node 2 itself: arrived %v from %s", ok, got)
		}
		before := a.counters()
		if src, ok := send(t, b.podIP, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}, refused); ok {
			t.Fatalf("pod 2's packet from a stranger's MAC reached pod 1 (seen from %s)", src)
		}
		dropsOf(t, a, before, "reverse_path")
	})
	t.Run("the owner's next hop moved", func(t *testing.T) {
		// The check remembers for at most 100 ms that node 2's MAC may
		// send pod 2's packets (weft_rp_accepted, filled by the subtest
		// above and by this one's first packet); after the neighbour
		// entry moved to another MAC, node 2's MAC no longer speaks for
		// its pods, and the new one does.
		if got, ok := send(t, b.podIP, mac(t, b.ns, "ul0"), delivered); !ok || got != b.podIP {
			t.Fatalf("pod 2's packet from node 2 itself: arrived %v from %s", ok, got)
		}
		moved := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x22}
		a.ns.MustDo(t, func() error {
			ul, err := netlink.LinkByName("ul0")
			if err != nil {
				return err
			}
			return netlink.NeighSet(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: b.under.AsSlice(), HardwareAddr: moved})
		})
		time.Sleep(150 * time.Millisecond)
		before := a.counters()
		if src, ok := send(t, b.podIP, mac(t, b.ns, "ul0"), refused); ok {
			t.Fatalf("pod 2's packet from node 2's old MAC reached pod 1 (seen from %s)", src)
		}
		dropsOf(t, a, before, "reverse_path")
		if got, ok := send(t, b.podIP, moved, delivered); !ok || got != b.podIP {
			t.Fatalf("pod 2's packet from node 2's new MAC: arrived %v from %s", ok, got)
		}
		// A Sync forgets at once: back to node 2's own MAC.
		a.ns.MustDo(t, func() error {
			ul, err := netlink.LinkByName("ul0")
			if err != nil {
				return err
			}
			return netlink.NeighSet(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: b.under.AsSlice(), HardwareAddr: mac(t, b.ns, "ul0")})
		})
		if n := entries(t, a.dp.objs.WeftRpAccepted); n == 0 {
			t.Fatal("the underlay check remembered no acceptance")
		}
		a.sync(want.Normalize())
		if n := entries(t, a.dp.objs.WeftRpAccepted); n != 0 {
			t.Fatalf("%d acceptances remembered after the Sync", n)
		}
		before = a.counters()
		if src, ok := send(t, b.podIP, moved, refused); ok {
			t.Fatalf("pod 2's packet from the MAC node 2 left reached pod 1 after a Sync (seen from %s)", src)
		}
		dropsOf(t, a, before, "reverse_path")
	})
	t.Run("owner not resolved", func(t *testing.T) {
		// Not from the router, and node 4's MAC is unknown: the packet
		// cannot be checked, which is counted apart.
		before := a.counters()
		if src, ok := send(t, netip.MustParseAddr("10.244.4.5"), mac(t, b.ns, "ul0"), refused); ok {
			t.Fatalf("a pod of an unresolved owner reached pod 1 (seen from %s)", src)
		}
		dropsOf(t, a, before, "reverse_path_unresolved")
	})
}

// udpSend sends payload to dst:port from a UDP socket in ns.
func udpSend(ns *netnstest.NS, dst netip.Addr, port uint16, payload string) error {
	return ns.Do(func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(dst, port).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(payload))
		return err
	})
}

// forgeFrame sends inner (an Ethernet frame) VXLAN-encapsulated with vni
// from outer source `from` (an address in n's namespace) to `to`:8472.
func forgeFrame(t *testing.T, n *testNode, from, to netip.Addr, inner []byte, vni uint32) {
	t.Helper()
	vx := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	n.ns.MustDo(t, func() error {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, &net.UDPAddr{IP: to.AsSlice(), Port: 8472})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(append(vx, inner...))
		return err
	})
}
