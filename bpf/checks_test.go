package bpf

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/podguard"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// TestChecks covers the checks of weft.c and lib/*.h that the scenario
// tests do not reach: each subtest sends what one check exists for and
// proves the check's effect (a drop under its reason, a packet not
// delivered, a counter that does not move), so removing the check fails
// it. docs/datapath.md ("Mutations") lists which subtest catches which
// check.
//
// Where a subtest proves that something is *not* dropped or counted, it
// sends a sentinel of the same path afterwards whose effect is certain:
// frames of one port keep their order, so once the sentinel's effect is
// seen the frame before it has been judged.
func TestChecks(t *testing.T) {
	c := newTestCluster(t, AttachTCX)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	for _, n := range c.nodes {
		n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
	}
	checkPath(t, c)
	sinkB, err := netnstest.NewUDPSink(b.pod, 0)
	must(t, err)
	defer sinkB.Close()
	gw, podMAC := mac(t, a.ns, "weft0"), mac(t, a.pod, "eth0")
	neighbour4, neighbour6 := netip.MustParseAddr("10.244.1.3"), netip.MustParseAddr("fd00:244:1::3")

	// fromPod sends frame out of pod 1's eth0.
	fromPod := func(t *testing.T, frame []byte) {
		t.Helper()
		must(t, a.pod.SendFrame("eth0", frame))
	}
	// udp is a frame from pod 1 (its own MAC and addresses) to pod 2.
	udp := func(p string, v6 bool) netnstest.UDP {
		f := netnstest.UDP{DstMAC: gw, SrcMAC: podMAC, Src: a.podIP, Dst: b.podIP, SrcPort: 4000, DstPort: sinkB.Port(), Payload: []byte(p)}
		if v6 {
			f.Src, f.Dst = a.podIP6, b.podIP6
		}
		return f
	}
	// sentinel sends a genuine datagram from pod 1 to pod 2 and waits for
	// it.
	sentinel := func(t *testing.T, v6 bool) {
		t.Helper()
		p := payload("sentinel")
		fromPod(t, udp(p, v6).Frame())
		if _, ok := sinkB.Wait(p, delivered); !ok {
			t.Fatalf("sentinel (IPv6 %v) from pod 1 to pod 2 not delivered", v6)
		}
	}
	// dropsOne sends frame from pod 1 and waits until node 1 counted
	// exactly one more drop under reason.
	dropsOne := func(t *testing.T, reason string, frame []byte) {
		t.Helper()
		c0 := a.counters()
		fromPod(t, frame)
		dropsOf(t, a, c0, reason)
		if got := a.counters().Drops[reason]; got != c0.Drops[reason]+1 {
			t.Fatalf("%s drops %d -> %d, want one more", reason, c0.Drops[reason], got)
		}
	}
	// passes sends frame from pod 1, then a sentinel, and fails if node 1
	// counted any pod drop meanwhile (only the pod check's: node 1's own
	// IPv6 multicast on the fresh overlay device, dropped as
	// ipv6_multicast, may be counted at any time).
	passes := func(t *testing.T, frame []byte) {
		t.Helper()
		c0 := a.counters()
		fromPod(t, frame)
		sentinel(t, false)
		c1 := a.counters()
		for _, r := range object.DropReasons {
			if strings.HasPrefix(r.Name, "pod_") && c1.Drops[r.Name] != c0.Drops[r.Name] {
				t.Fatalf("dropped as %s: %d -> %d", r.Name, c0.Drops[r.Name], c1.Drops[r.Name])
			}
		}
	}
	record := func(t *testing.T, p podguard.Pod) { t.Helper(); a.guardPort(t, "vpod", p) }
	full := podguard.Pod{MAC: a.podMAC, IPv4: a.podIP, IPv6: a.podIP6}
	ll := object.LinkLocal(a.podMAC)
	icmp6 := func(src, dst netip.Addr, next uint8, payload []byte) []byte {
		dstMAC := gw
		if dst.IsMulticast() {
			dstMAC = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
		}
		return netnstest.IPv6{DstMAC: dstMAC, SrcMAC: podMAC, Src: src, Dst: dst, Next: next, Payload: payload}.Frame()
	}
	gw6 := a.podCIDR6.Addr().Next()
	allNodes := netip.MustParseAddr("ff02::1")
	target := func(ip netip.Addr) []byte { // neighbour solicitation / advertisement body
		b := make([]byte, 20)
		x := ip.As16()
		copy(b[4:], x[:])
		return b
	}

	t.Run("pod: the record's families decide", func(t *testing.T) {
		defer record(t, full)
		// Recorded without IPv4: 0.0.0.0 (its zero address) is no source.
		record(t, podguard.Pod{MAC: a.podMAC, IPv6: a.podIP6})
		f := udp(payload("v4 from 0.0.0.0"), false)
		f.Src = netip.IPv4Unspecified()
		dropsOne(t, "pod_source", f.Frame())
		// Recorded without IPv6: :: is no source towards a unicast address.
		record(t, podguard.Pod{MAC: a.podMAC, IPv4: a.podIP})
		f = udp(payload("v6 from ::"), true)
		f.Src = netip.IPv6Unspecified()
		dropsOne(t, "pod_source", f.Frame())
	})

	t.Run("pod: :: only towards a multicast group", func(t *testing.T) {
		f := udp(payload("to all nodes"), true)
		f.Src, f.Dst, f.DstMAC = neighbour6, allNodes, net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
		dropsOne(t, "pod_source", f.Frame())
		f.Src = netip.IPv6Unspecified()
		passes(t, f.Frame())
	})

	t.Run("pod: duplicate address detection", func(t *testing.T) {
		// The kernel's own DAD for the pod's address passes (it is
		// re-added without NODAD)...
		own := netnstest.IPNet(netip.PrefixFrom(a.podIP6, 64))
		c0 := a.counters()
		a.pod.MustDo(t, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if err := netlink.AddrDel(l, &netlink.Addr{IPNet: own}); err != nil {
				return err
			}
			return netlink.AddrAdd(l, &netlink.Addr{IPNet: own})
		})
		time.Sleep(1500 * time.Millisecond) // one DAD round (1 s)
		sentinel(t, true)
		if c1 := a.counters(); c1.Drops["pod_source"] != c0.Drops["pod_source"] || c1.Drops["pod_nd"] != c0.Drops["pod_nd"] {
			t.Fatalf("the kernel's DAD was dropped: %v -> %v", c0.Drops, c1.Drops)
		}
		// ...one for a neighbour's address does not.
		ns := icmp6(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1:ff00:3"), unix.IPPROTO_ICMPV6,
			netnstest.ICMPv6Message(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1:ff00:3"), 135, target(neighbour6)))
		dropsOne(t, "pod_nd", ns)
	})

	t.Run("pod: neighbour discovery behind extension headers", func(t *testing.T) {
		na := netnstest.ICMPv6Message(a.podIP6, gw6, 136, target(neighbour6))
		dropsOne(t, "pod_nd", icmp6(a.podIP6, gw6, unix.IPPROTO_HOPOPTS, append(netnstest.HopByHop(unix.IPPROTO_ICMPV6), na...)))
		// Five headers are more than a pod needs.
		chain := []byte{}
		for range 4 {
			chain = append(chain, netnstest.HopByHop(unix.IPPROTO_DSTOPTS)...)
		}
		chain = append(chain, netnstest.HopByHop(unix.IPPROTO_ICMPV6)...)
		dropsOne(t, "pod_protocol", icmp6(a.podIP6, gw6, unix.IPPROTO_DSTOPTS, append(chain, na...)))
		// Truncated: an extension header, an ICMPv6 type, an advertisement's target.
		dropsOne(t, "pod_protocol", icmp6(a.podIP6, gw6, unix.IPPROTO_HOPOPTS, nil))
		dropsOne(t, "pod_protocol", icmp6(a.podIP6, gw6, unix.IPPROTO_ICMPV6, nil))
		dropsOne(t, "pod_nd", icmp6(a.podIP6, gw6, unix.IPPROTO_ICMPV6, netnstest.ICMPv6Message(a.podIP6, gw6, 136, nil)))
	})

	t.Run("pod: router advertisement and redirect", func(t *testing.T) {
		ra := netnstest.ICMPv6Message(ll, allNodes, 134, make([]byte, 12))
		dropsOne(t, "pod_nd", icmp6(ll, allNodes, unix.IPPROTO_ICMPV6, ra))
		body := append(target(gw6), make([]byte, 16)...) // reserved, target, destination
		redirect := netnstest.ICMPv6Message(ll, gw6, 137, body)
		dropsOne(t, "pod_nd", icmp6(ll, gw6, unix.IPPROTO_ICMPV6, redirect))
	})

	t.Run("pod: UDP is not read as ICMPv6", func(t *testing.T) {
		// Source port 0x86xx: its first byte is a router advertisement's
		// type.
		p := payload("port 34400")
		f := udp(p, true)
		f.SrcPort = 34400
		fromPod(t, f.Frame())
		if _, ok := sinkB.Wait(p, delivered); !ok {
			t.Fatalf("IPv6 UDP from port 34400 not delivered: %v", a.counters().Drops)
		}
	})

	t.Run("pod: ARP", func(t *testing.T) {
		good := netnstest.ARP{DstMAC: gw, SrcMAC: podMAC, SenderMAC: podMAC, SenderIP: a.podIP, TargetMAC: gw, TargetIP: a.podCIDR.Addr().Next(), Reply: true}
		for name, mutate := range map[string]func(f []byte){
			"hardware type":   func(f []byte) { binary.BigEndian.PutUint16(f[14:], 6) },
			"protocol type":   func(f []byte) { binary.BigEndian.PutUint16(f[16:], unix.ETH_P_IPV6) },
			"hardware length": func(f []byte) { f[18] = 8 },
			"protocol length": func(f []byte) { f[19] = 16 },
			"another MAC":     func(f []byte) { copy(f[22:28], []byte{0x02, 0xde, 0xad, 0, 0, 2}) },
			"another address": func(f []byte) { copy(f[28:32], neighbour4.AsSlice()) },
		} {
			f := good.Frame()
			mutate(f)
			t.Run(name, func(t *testing.T) { dropsOne(t, "pod_arp", f) })
		}
		t.Run("truncated", func(t *testing.T) { dropsOne(t, "pod_arp", good.Frame()[:30]) })
		t.Run("probe", func(t *testing.T) {
			probe := good
			probe.SenderIP, probe.Reply, probe.DstMAC, probe.TargetMAC = netip.IPv4Unspecified(), false, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, net.HardwareAddr{0, 0, 0, 0, 0, 0}
			passes(t, probe.Frame())
		})
		t.Run("own", func(t *testing.T) { passes(t, good.Frame()) })
	})

	t.Run("pod: other protocols and VLAN tags", func(t *testing.T) {
		dropsOne(t, "pod_protocol", netnstest.Ethernet(net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 0x0e}, podMAC, 0x88cc, make([]byte, 46)))
		dropsOne(t, "pod_protocol", netnstest.VLAN(udp(payload("tagged"), false).Frame(), 100))
	})

	t.Run("pod: a port without a record", func(t *testing.T) {
		port, _ := a.podPort(t, "vpod", a.pod)
		must(t, a.dp.objs.WeftPods.Delete(uint32(port)))
		defer record(t, full)
		c0 := a.counters()
		if netnstest.Reach(t, a.pod, b.podIP, 300*time.Millisecond) {
			t.Fatal("a pod without a record reaches pod 2")
		}
		dropsOf(t, a, c0, "pod_unknown")
	})

	t.Run("fast path: TTL and hop limit", func(t *testing.T) {
		for _, v6 := range []bool{false, true} {
			// TTL 1 expires at node 1: the stack answers, the fast path
			// does not take it (tx_direct counts only the sentinel).
			c0 := a.counters()
			p := payload("ttl 1")
			f := udp(p, v6)
			f.TTL = 1
			fromPod(t, f.Frame())
			sentinel(t, v6)
			if c1 := a.counters(); c1.TxDirect != c0.TxDirect+1 {
				t.Fatalf("IPv6 %v: tx_direct %d -> %d for a TTL 1 packet and a sentinel, want +1", v6, c0.TxDirect, c1.TxDirect)
			}
			// TTL 2 expires at node 2, before pod 2.
			p = payload("ttl 2")
			f = udp(p, v6)
			f.TTL = 2
			fromPod(t, f.Frame())
			sentinel(t, v6)
			if _, ok := sinkB.Wait(p, 0); ok {
				t.Fatalf("IPv6 %v: a TTL 2 packet reached pod 2 through two routers", v6)
			}
		}
	})

	t.Run("fast path: too big for the tunnel goes to the stack", func(t *testing.T) {
		// 1480 bytes fit pod 1's link (raised to 1500), not the tunnel
		// (1450): the stack fragments it, the fast path leaves it alone.
		must(t, a.pod.MTU("eth0", 1500))
		defer func() { must(t, a.pod.MTU("eth0", 1450)) }()
		c0 := a.counters()
		p := payload("big")
		f := udp(p, false)
		f.Payload = append([]byte(p+" "), make([]byte, 1440)...)
		fromPod(t, f.Frame())
		if _, ok := sinkB.Wait(string(f.Payload), delivered); !ok {
			t.Fatal("the 1480-byte packet was not delivered (fragmented by node 1's stack)")
		}
		sentinel(t, false)
		if c1 := a.counters(); c1.TxDirect != c0.TxDirect+1 {
			t.Fatalf("tx_direct %d -> %d for a packet too big for the tunnel and a sentinel, want +1", c0.TxDirect, c1.TxDirect)
		}
	})

	t.Run("fast path: only frames to the gateway are routed", func(t *testing.T) {
		for _, dst := range []net.HardwareAddr{{0x02, 0, 0, 0, 0, 0x44}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}} {
			p := payload("to " + dst.String())
			f := udp(p, false)
			f.DstMAC = dst
			fromPod(t, f.Frame())
			sentinel(t, false)
			if _, ok := sinkB.Wait(p, 0); ok {
				t.Fatalf("a frame to %s was routed to pod 2", dst)
			}
		}
	})

	t.Run("fast path: IPv4-mapped destinations go to the stack", func(t *testing.T) {
		c0 := a.counters()
		f := udp(payload("mapped"), true)
		f.Dst = netip.AddrFrom16(b.podIP.As16())
		fromPod(t, f.Frame())
		sentinel(t, false)
		if c1 := a.counters(); c1.TxPackets != c0.TxPackets+1 || c1.TxDirect != c0.TxDirect+1 {
			t.Fatalf("tx %d -> %d, direct %d -> %d: something besides the sentinel was tunnelled", c0.TxPackets, c1.TxPackets, c0.TxDirect, c1.TxDirect)
		}
	})

	t.Run("fast path: a cleared config slot leaves pods to the stack", func(t *testing.T) {
		must(t, a.dp.objs.WeftConfig.Put(uint32(0), &object.WeftConfig{}))
		defer a.sync(c.overlayWant(a, spec.ModeVXLAN, netip.Addr{}))
		a.dp.stopWatch() // no refresh rewrites the slot meanwhile
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("no path with the config slot cleared")
		}
	})

	t.Run("egress: what never goes into the tunnel", func(t *testing.T) {
		dev := mac(t, a.ns, spec.VXLANDevice)
		for _, c0 := range []struct {
			reason string
			frame  []byte
		}{
			{"ipv6_multicast", netnstest.IPv6{DstMAC: dev, SrcMAC: dev, Src: a.podIP6, Dst: allNodes, Next: unix.IPPROTO_ICMPV6,
				Payload: netnstest.ICMPv6Message(a.podIP6, allNodes, 128, make([]byte, 4))}.Frame()},
			{"not_ip", netnstest.ARP{DstMAC: dev, SrcMAC: dev, SenderMAC: dev, SenderIP: a.podIP, TargetMAC: dev, TargetIP: b.podIP}.Frame()},
			{"ipv4_mapped", netnstest.UDP{DstMAC: dev, SrcMAC: dev, Src: a.podIP6, Dst: netip.AddrFrom16(b.podIP.As16()), SrcPort: 1, DstPort: 9}.Frame()},
		} {
			before := a.counters()
			// The program drops it on transmit: the sender hears ENOBUFS.
			if err := a.ns.SendFrame(spec.VXLANDevice, c0.frame); err != nil && !errors.Is(err, unix.ENOBUFS) {
				t.Fatal(err)
			}
			dropsOf(t, a, before, c0.reason)
		}
	})

	t.Run("ingress: only IP out of the tunnel", func(t *testing.T) {
		before := b.counters()
		arp := netnstest.ARP{DstMAC: gw, SrcMAC: podMAC, SenderMAC: podMAC, SenderIP: a.podIP, TargetMAC: gw, TargetIP: b.podIP}
		forgeFrame(t, a, a.under, b.under, arp.Frame(), 1)
		dropsOf(t, b, before, "not_ip")
	})

	t.Run("ingress: no tunnel metadata", func(t *testing.T) {
		// Only a decapsulated packet reaches the program on a real
		// device; a test run of the program has none.
		before := b.counters()
		in := udp("no metadata", false).Frame()
		ret, err := b.dp.objs.WeftIngress.Run(&ebpf.RunOptions{Data: in})
		must(t, err)
		if ret != 2 { // TC_ACT_SHOT
			t.Fatalf("verdict %d, want TC_ACT_SHOT", ret)
		}
		dropsOf(t, b, before, "no_tunnel_info")
	})

	t.Run("ingress: a mapped destination is not delivered direct", func(t *testing.T) {
		c0 := b.counters()
		inner := netnstest.UDP{DstMAC: mac(t, b.ns, "weft0"), SrcMAC: podMAC, Src: a.podIP6, Dst: netip.AddrFrom16(b.podIP.As16()), SrcPort: 1, DstPort: sinkB.Port(), Payload: []byte("mapped dst")}
		forgeFrame(t, a, a.under, b.under, inner.Frame(), 1)
		if !waitFor(time.Second, func() bool { return b.counters().RxPackets > c0.RxPackets }) {
			t.Fatal("the forged packet was not accepted out of the tunnel")
		}
		if c1 := b.counters(); c1.RxDirect != c0.RxDirect {
			t.Fatalf("rx_direct %d -> %d for an IPv4-mapped destination", c0.RxDirect, c1.RxDirect)
		}
	})

	t.Run("ingress: the node's own addresses go to the stack", func(t *testing.T) {
		// Pod 2's gateway answers pod 1...
		if !netnstest.Reach(t, a.pod, b.podCIDR.Addr().Next(), reachTimeout) {
			t.Fatal("pod 1 cannot reach node 2's pod gateway")
		}
		// ...and a directed broadcast is node 2's, not pod 2's.
		node, err := netnstest.NewUDPSink(b.ns, 0)
		must(t, err)
		defer node.Close()
		p := payload("broadcast")
		f := udp(p, false)
		f.Dst, f.DstPort = netip.MustParseAddr("10.244.2.255"), node.Port()
		fromPod(t, f.Frame())
		if _, ok := node.Wait(p, delivered); !ok {
			t.Fatal("a directed broadcast for 10.244.2.255 did not reach node 2")
		}
	})

	t.Run("underlay: IPv4-mapped pod addresses", func(t *testing.T) {
		ulA, ulB := mac(t, a.ns, "ul0"), mac(t, b.ns, "ul0")
		for _, f := range []netnstest.UDP{
			{DstMAC: ulA, SrcMAC: ulB, Src: netip.AddrFrom16(b.podIP.As16()), Dst: a.under6, SrcPort: 1, DstPort: 9},
			{DstMAC: ulA, SrcMAC: ulB, Src: b.under6, Dst: netip.AddrFrom16(a.podIP.As16()), SrcPort: 1, DstPort: 9},
		} {
			before := a.counters()
			must(t, b.ns.SendFrame("ul0", f.Frame()))
			dropsOf(t, a, before, "ipv4_mapped")
		}
	})

	t.Run("underlay: a local pod's MAC on the underlay", func(t *testing.T) {
		// The route to pod 1 leaves through the bridge, to pod 1's MAC: a
		// frame from that MAC on the underlay is still not pod 1.
		sinkA, err := netnstest.NewUDPSink(a.pod, 0)
		must(t, err)
		defer sinkA.Close()
		before := a.counters()
		p := payload("local pod mac")
		f := netnstest.UDP{DstMAC: mac(t, a.ns, "ul0"), SrcMAC: a.podMAC, Src: a.podIP, Dst: a.podCIDR.Addr().Next(), SrcPort: 1, DstPort: 9, Payload: []byte(p)}
		must(t, b.ns.SendFrame("ul0", f.Frame()))
		dropsOf(t, a, before, "reverse_path")
	})

	t.Run("underlay: a source the node does not route", func(t *testing.T) {
		// A blackhole route for part of the pod network: the FIB lookup
		// fails without touching the interface or the MAC it was given
		// (the ingress interface, zeros), so only its result code tells
		// a frame from MAC 00:00:00:00:00:00 apart from a routed one.
		hole := pfx("10.244.9.0/24")
		a.ns.MustDo(t, func() error {
			return netlink.RouteAdd(&netlink.Route{Dst: netnstest.IPNet(hole), Type: unix.RTN_BLACKHOLE})
		})
		defer a.ns.MustDo(t, func() error {
			return netlink.RouteDel(&netlink.Route{Dst: netnstest.IPNet(hole), Type: unix.RTN_BLACKHOLE})
		})
		sinkA, err := netnstest.NewUDPSink(a.pod, 0)
		must(t, err)
		defer sinkA.Close()
		before := a.counters()
		p := payload("blackholed source")
		f := netnstest.UDP{DstMAC: mac(t, a.ns, "ul0"), SrcMAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}, Src: netip.MustParseAddr("10.244.9.5"), Dst: a.podIP,
			SrcPort: 4000, DstPort: sinkA.Port(), Payload: []byte(p)}
		if src, ok := attack(t, b.ns, "ul0", f.Frame(), sinkA, p, refused); ok {
			t.Fatalf("a frame from a blackholed pod source reached pod 1 (seen from %s)", src)
		}
		dropsOf(t, a, before, "reverse_path")
	})

	t.Run("tunnel: an outer IPv6 source that maps an IPv4 endpoint", func(t *testing.T) {
		// Node 1's IPv4 endpoint as IPv4-mapped IPv6: the address bytes
		// match the entry, the family does not.
		before := b.counters()
		inner := udp(payload("outer family"), false).Frame()
		vx := append([]byte{0x08, 0, 0, 0, 0, 0, 1, 0}, inner...)
		outer := netnstest.UDP{DstMAC: mac(t, b.ns, "ul0"), SrcMAC: mac(t, a.ns, "ul0"), Src: netip.AddrFrom16(a.under.As16()), Dst: b.under6,
			SrcPort: 40000, DstPort: 8472, Payload: vx}
		must(t, a.ns.SendFrame("ul0", outer.Frame()))
		dropsOf(t, b, before, "wrong_endpoint")
	})
}
