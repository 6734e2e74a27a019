package bpf

import (
	"math"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// decapWant is n's overlay state with the in-program VXLAN receive on
// (endpoint ep as in overlayWant).
func (c *testCluster) decapWant(n *testNode, ep netip.Addr) *spec.Desired {
	w := c.overlayWant(n, spec.ModeVXLAN, ep)
	w.Overlay.InProgram = true
	if ep.Is6() {
		w.Overlay.MTU = 1430
	}
	return w
}

// deviceStats are n's weft_vxlan device's counters: what took the
// device path.
func deviceStats(t testing.TB, n *testNode) netlink.LinkStatistics {
	t.Helper()
	var st netlink.LinkStatistics
	n.ns.MustDo(t, func() error {
		l, err := netlink.LinkByName(spec.VXLANDevice)
		if err != nil {
			return err
		}
		st = *l.Attrs().Statistics
		return nil
	})
	return st
}

// deviceRx is the number of packets n's weft_vxlan device received.
func deviceRx(t testing.TB, n *testNode) uint64 { return deviceStats(t, n).RxPackets }

// deviceRxErrors is the number of receive errors of n's weft_vxlan (the
// driver counts a packet it refuses, e.g. for its ECN, there).
func deviceRxErrors(t testing.TB, n *testNode) uint64 { return deviceStats(t, n).RxErrors }

// bigPing sends one ICMP echo request of size bytes on the wire (IP header
// included, so the pods' MTU is 1450 at most) from ns to dst with DF (IPv4)
// and reports whether the reply came back.
func bigPing(t *testing.T, ns *netnstest.NS, dst netip.Addr, size int) bool {
	t.Helper()
	network, typ, hdr, proto := "ip4:icmp", icmp.Type(ipv4.ICMPTypeEcho), 20, 1
	if dst.Is6() {
		network, typ, hdr, proto = "ip6:ipv6-icmp", ipv6.ICMPTypeEchoRequest, 40, 58
	}
	var c *icmp.PacketConn
	ns.MustDo(t, func() error {
		var err error
		c, err = icmp.ListenPacket(network, "")
		return err
	})
	defer c.Close()
	if dst.Is4() {
		must(t, c.IPv4PacketConn().SetTOS(0))
	}
	body := make([]byte, size-hdr-8)
	for i := range body {
		body[i] = byte(i)
	}
	msg, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: 7, Data: body}}).Marshal(nil)
	must(t, err)
	for range 10 {
		if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			t.Fatalf("echo of %d bytes to %s: %v", size, dst, err)
		}
		buf := make([]byte, 2*size)
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || from.String() != dst.String() {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && (m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply) &&
				len(e.Data) == len(body) {
				return true
			}
		}
	}
	return false
}

// TestDecapInProgram: with Overlay.InProgram the receiving node's underlay
// program takes VXLAN packets for its pods out of the tunnel itself. The
// senders here still encapsulate in weft_vxlan (the device path), so
// every exchange is also the interoperation of the two.
func TestDecapInProgram(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	for _, n := range c.nodes {
		n.sync(c.decapWant(n, netip.Addr{}))
		if rep := n.sync(c.decapWant(n, netip.Addr{})); rep.Changed() {
			t.Fatalf("second identical sync wrote: %+v", rep)
		}
		var g object.WeftGuard
		must(t, n.dp.objs.WeftGuard.Lookup(uint32(0), &g))
		if g.Flags&object.GuardDecap == 0 || g.Port != 8472 || netip.AddrFrom4(g.Under4) != n.under ||
			netip.AddrFrom16(g.Under6) != n.under6 {
			t.Fatalf("node %d guard %+v", n.idx, g)
		}
	}
	// The first packets of a pod may go through the device, before its
	// endpoint is learned.
	checkPath(t, c)

	// taken runs traffic and checks that it was taken out of the tunnel in
	// the program on both nodes, never by the device.
	taken := func(t *testing.T, what string, traffic func()) (da, db spec.Counters) {
		t.Helper()
		ca, cb := a.counters(), b.counters()
		ra, rb := deviceRx(t, a), deviceRx(t, b)
		traffic()
		ca1, cb1 := a.counters(), b.counters()
		for _, x := range []struct {
			n        *testNode
			c0, c1   spec.Counters
			rx0, rx1 uint64
		}{{a, ca, ca1, ra, deviceRx(t, a)}, {b, cb, cb1, rb, deviceRx(t, b)}} {
			if x.c1.RxDecap <= x.c0.RxDecap {
				t.Errorf("%s: node %d decapsulated nothing in the program: %+v -> %+v", what, x.n.idx, x.c0, x.c1)
			}
			if x.rx1 != x.rx0 {
				t.Errorf("%s: node %d's %s received %d packets", what, x.n.idx, spec.VXLANDevice, x.rx1-x.rx0)
			}
			// Counters reads the maps one after the other: a packet
			// in flight (a late ACK) may be in a snapshot's decap count
			// and not yet in its rx count, hence the slack of two.
			if d := x.c1.RxDecap - x.c0.RxDecap; x.c1.RxDirect-x.c0.RxDirect+2 < d || x.c1.RxPackets-x.c0.RxPackets+2 < d {
				t.Errorf("%s: node %d: %d decapsulated, rx %d, rx direct %d", what, x.n.idx, d,
					x.c1.RxPackets-x.c0.RxPackets, x.c1.RxDirect-x.c0.RxDirect)
			}
		}
		return diff(ca, ca1), diff(cb, cb1)
	}

	t.Run("icmp tcp udp, both families", func(t *testing.T) {
		taken(t, "pod to pod", func() { checkPath(t, c) })
		taken(t, "udp", func() {
			for _, pair := range [][2]*testNode{{a, b}, {b, a}} {
				for _, dst := range []netip.Addr{pair[1].podIP, pair[1].podIP6} {
					want := a.podIP
					if pair[0] == b {
						want = b.podIP
					}
					if dst.Is6() {
						want = pair[0].podIP6
					}
					if got := udpSource(t, pair[0].pod, pair[1].pod, dst); got != want {
						t.Errorf("udp to %s seen from %s, want %s", dst, got, want)
					}
				}
			}
		})
	})

	t.Run("service replies go through the stack", func(t *testing.T) {
		// Node 1 DNATs a Service address to pod 2 (kube-proxy's part). Pod
		// 2's replies carry pod 2's address until node 1's conntrack
		// reverses the DNAT, so node 1's receive in the program must
		// leave them to the device and the stack (stack_flow on the inner
		// headers); taken to the pod, they reach a client that never
		// spoke to pod 2, which resets the connection.
		serviceDNAT(t, a, b)
		ra := deviceRx(t, a)
		for range 3 {
			if err := dialService(t, a); err != nil {
				t.Fatalf("service %s (DNAT to %s): %v", serviceAddr, b.podIP, err)
			}
		}
		if deviceRx(t, a) == ra {
			t.Errorf("node 1's %s received none of the service's replies", spec.VXLANDevice)
		}
		// The replies' flows are remembered as the stack's (RP_DECAP,
		// conntrack's answer for the SYN-ACK), so their later packets
		// take the device without asking again.
		es := rpAccepted(t, a, func(k object.WeftRpKey, _ object.WeftRpValue) bool {
			return k.Kind == rpDecap && k.Src == object.EndpointKey(b.podIP).Addr && k.Sport == htons(serviceBackendPort)
		})
		if len(es) == 0 {
			t.Fatal("node 1 remembers no inner flow from the backend")
		}
		for _, e := range es {
			if e.v.Ct != flowCTStack {
				t.Fatalf("remembered conntrack answer %d for a DNATed flow, want %d", e.v.Ct, flowCTStack)
			}
		}
	})

	t.Run("mtu-sized packets", func(t *testing.T) {
		taken(t, "ping of 1450 bytes", func() {
			for _, pair := range [][2]*testNode{{a, b}, {b, a}} {
				for _, dst := range []netip.Addr{pair[1].podIP, pair[1].podIP6} {
					if !bigPing(t, pair[0].pod, dst, 1450) {
						t.Errorf("pod %d: no reply to a 1450-byte echo to %s", pair[0].idx, dst)
					}
				}
			}
		})
	})

	t.Run("large tcp transfers", func(t *testing.T) {
		// 8 MiB each way: the senders' TSO packets cross the veth
		// underlay as UDP tunnel GSO packets and are decapsulated whole.
		da, db := taken(t, "8 MiB of tcp", func() {
			tcpEcho(t, a.pod, b.pod, b.podIP, 8<<20)
			tcpEcho(t, b.pod, a.pod, a.podIP6, 8<<20)
		})
		for _, d := range []spec.Counters{da, db} {
			if d.RxDecapBytes < 8<<20 || d.RxDecapBytes/d.RxDecap <= 1500 {
				t.Errorf("decapsulated %d packets of %d bytes: not the transfer's aggregates", d.RxDecap, d.RxDecapBytes)
			}
		}
	})

	t.Run("ipv6 underlay", func(t *testing.T) {
		for _, n := range c.nodes {
			n.sync(c.decapWant(n, c.peer(n).under6))
		}
		defer func() {
			for _, n := range c.nodes {
				n.sync(c.decapWant(n, netip.Addr{}))
			}
		}()
		checkPath(t, c) // the endpoints are learned already; conntrack has nothing
		taken(t, "over an ipv6 underlay", func() {
			checkPath(t, c)
			tcpEcho(t, a.pod, b.pod, b.podIP6, 4<<20)
		})
	})

	t.Run("mixed pair", func(t *testing.T) {
		// Node 2 back on the device path, node 1 still in the program.
		b.sync(c.overlayWant(b, spec.ModeVXLAN, netip.Addr{}))
		defer b.sync(c.decapWant(b, netip.Addr{}))
		ca, cb, rb := a.counters(), b.counters(), deviceRx(t, b)
		checkPath(t, c)
		tcpEcho(t, b.pod, a.pod, a.podIP, 1<<20)
		if d := a.counters().RxDecap - ca.RxDecap; d == 0 {
			t.Errorf("node 1 decapsulated nothing in the program")
		}
		if d := b.counters().RxDecap - cb.RxDecap; d != 0 {
			t.Errorf("node 2, switched off, decapsulated %d packets in the program", d)
		}
		if deviceRx(t, b) == rb {
			t.Errorf("nothing went through node 2's %s", spec.VXLANDevice)
		}
	})

	t.Run("switch off", func(t *testing.T) {
		for _, n := range c.nodes {
			n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
			var g object.WeftGuard
			must(t, n.dp.objs.WeftGuard.Lookup(uint32(0), &g))
			if g.Flags&object.GuardDecap != 0 {
				t.Fatalf("node %d: in-program receive still on: %+v", n.idx, g)
			}
		}
		ca, ra := a.counters(), deviceRx(t, a)
		checkPath(t, c)
		if d := a.counters().RxDecap - ca.RxDecap; d != 0 {
			t.Errorf("switched off, node 1 decapsulated %d packets in the program", d)
		}
		if deviceRx(t, a) == ra {
			t.Errorf("switched off, nothing went through node 1's %s", spec.VXLANDevice)
		}
		for _, n := range c.nodes {
			n.sync(c.decapWant(n, netip.Addr{}))
		}
		taken(t, "switched on again", func() { checkPath(t, c) })
	})
}

// rpDecap is lib/underlay.h's RP_DECAP: the in-program receive's inner
// flows in weft_rp_accepted.
const rpDecap = 1

// keepDecapFlow finds what n's in-program receive remembers about the
// inner flow src to dst (UDP: ports 0) and makes it outlive the test (an
// expiry far ahead), so the packets that follow find it whatever the
// machine's load.
func keepDecapFlow(t *testing.T, n *testNode, src, dst netip.Addr) {
	t.Helper()
	es := rpAccepted(t, n, func(k object.WeftRpKey, _ object.WeftRpValue) bool {
		return k.Kind == rpDecap && k.Src == object.EndpointKey(src).Addr && k.Dst == object.EndpointKey(dst).Addr
	})
	if len(es) == 0 {
		t.Fatalf("node %d remembers no inner flow %s -> %s", n.idx, src, dst)
	}
	e := es[0]
	e.v.Until = math.MaxUint64
	must(t, n.dp.objs.WeftRpAccepted.Put(&e.k, &e.v))
}

// rpEntry is one entry of weft_rp_accepted.
type rpEntry struct {
	k object.WeftRpKey
	v object.WeftRpValue
}

// rpAccepted returns the entries of n's weft_rp_accepted (the underlay
// check's acceptances and the in-program receive's inner flows) that match
// takes.
func rpAccepted(t testing.TB, n *testNode, match func(object.WeftRpKey, object.WeftRpValue) bool) []rpEntry {
	t.Helper()
	var es []rpEntry
	var e rpEntry
	it := n.dp.objs.WeftRpAccepted.Iterate()
	for it.Next(&e.k, &e.v) {
		if match(e.k, e.v) {
			es = append(es, e)
		}
	}
	must(t, it.Err())
	return es
}

// diff is c1 - c0 for the counters the tests here look at.
func diff(c0, c1 spec.Counters) spec.Counters {
	return spec.Counters{RxPackets: c1.RxPackets - c0.RxPackets, RxDirect: c1.RxDirect - c0.RxDirect,
		RxDecap: c1.RxDecap - c0.RxDecap, RxDecapBytes: c1.RxDecapBytes - c0.RxDecapBytes,
		TxEncap: c1.TxEncap - c0.TxEncap, TxEncapBig: c1.TxEncapBig - c0.TxEncapBig,
		RxDecapBig: c1.RxDecapBig - c0.RxDecapBig, RxDecapStack: c1.RxDecapStack - c0.RxDecapStack}
}

// TestDecapTrust: what the program does not accept it leaves to the
// device, whose weft_ingress drops and counts it as before: forged VXLAN
// packets never reach the pod, and only the genuine one is decapsulated
// in the program.
func TestDecapTrust(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	for _, n := range c.nodes {
		n.sync(c.decapWant(n, netip.Addr{}))
	}
	checkPath(t, c)
	sink, err := netnstest.NewUDPSink(b.pod, 0)
	must(t, err)
	defer sink.Close()
	forged := netip.MustParseAddr("192.168.50.3")
	must(t, a.ns.Addr("ul0", netip.PrefixFrom(forged, 24)))

	inner := func(src, dst netip.Addr, p string) []byte {
		return netnstest.UDP{DstMAC: mac(t, b.ns, "weft0"), SrcMAC: mac(t, a.ns, spec.VXLANDevice),
			Src: src, Dst: dst, SrcPort: 4000, DstPort: sink.Port(), Payload: []byte(p)}.Frame()
	}
	for _, x := range []struct {
		name     string
		from     netip.Addr // outer source
		src, dst netip.Addr // inner
		vni      uint32
		reason   string
	}{
		{"outer source not the endpoint", forged, a.podIP, b.podIP, 1, "wrong_endpoint"},
		{"outer source not the endpoint v6", forged, a.podIP6, b.podIP6, 1, "wrong_endpoint"},
		{"wrong vni", a.under, a.podIP, b.podIP, 2, "wrong_vni"},
		{"unknown inner source", a.under, netip.MustParseAddr("10.250.0.1"), b.podIP, 1, "unknown_source"},
		{"ipv4-mapped inner source", a.under, netip.MustParseAddr("::ffff:10.244.1.2"), b.podIP6, 1, "ipv4_mapped"},
		{"another node's pod as inner source", a.under, netip.MustParseAddr("10.244.2.3"), b.podIP, 1, "unknown_source"},
	} {
		t.Run(x.name, func(t *testing.T) {
			p := payload(x.name)
			before := b.counters()
			forgeFrame(t, a, x.from, b.under, inner(x.src, x.dst, p), x.vni)
			if src, ok := sink.Wait(p, refused); ok {
				t.Fatalf("forged packet reached pod 2 (seen from %s)", src)
			}
			// Dropped by weft_ingress: it went to the device, untouched
			// by the program (which hands what it takes to the pod).
			dropsOf(t, b, before, x.reason)
		})
	}

	// genuine sends a genuine datagram from pod 1's src to pod 2 of the
	// same family, which must arrive; it returns that destination.
	genuine := func(t *testing.T, src netip.Addr, p string) netip.Addr {
		t.Helper()
		dst := b.podIP
		if src.Is6() {
			dst = b.podIP6
		}
		forgeFrame(t, a, a.under, b.under, inner(src, dst, p), 1)
		if got, ok := sink.Wait(p, delivered); !ok || got != src {
			t.Fatalf("genuine packet from %s: arrived %v from %s", src, ok, got)
		}
		return dst
	}

	t.Run("genuine packets are decapsulated in the program", func(t *testing.T) {
		for _, src := range []netip.Addr{a.podIP, a.podIP6} {
			before, rx := b.counters(), deviceRx(t, b)
			genuine(t, src, payload("genuine"))
			if d := b.counters().RxDecap - before.RxDecap; d == 0 {
				t.Errorf("from %s: not decapsulated in the program", src)
			}
			if d := deviceRx(t, b) - rx; d != 0 {
				t.Errorf("from %s: the device received %d", src, d)
			}
		}
	})

	t.Run("a remembered flow is checked on every packet", func(t *testing.T) {
		// A genuine datagram leaves its inner flow remembered
		// (weft_rp_accepted, RP_DECAP: the endpoint and conntrack's
		// answer), made here to outlive the packets that follow. Packets
		// of the same inner flow with a forged outer source or another
		// VNI still meet check_outer: the program leaves them to the
		// device, whose weft_ingress drops them.
		for _, src := range []netip.Addr{a.podIP, a.podIP6} {
			dst := genuine(t, src, payload("remembered"))
			keepDecapFlow(t, b, src, dst)
			for _, f := range []struct {
				from   netip.Addr
				vni    uint32
				reason string
			}{{forged, 1, "wrong_endpoint"}, {a.under, 2, "wrong_vni"}} {
				p := payload(f.reason)
				before := b.counters()
				forgeFrame(t, a, f.from, b.under, inner(src, dst, p), f.vni)
				if got, ok := sink.Wait(p, refused); ok {
					t.Fatalf("%s: a packet of a remembered flow reached pod 2 (seen from %s)", f.reason, got)
				}
				dropsOf(t, b, before, f.reason)
			}
		}
	})

	t.Run("congestion mark: the device's", func(t *testing.T) {
		// Outer ECN CE over a not-ECT inner packet: RFC 6040 drops it,
		// which the driver does; the program leaves marked packets alone.
		p := payload("ce")
		before, errs := b.counters(), deviceRxErrors(t, b)
		frame := append([]byte{0x08, 0, 0, 0, 0, 0, 1, 0}, inner(a.podIP, b.podIP, p)...)
		a.ns.MustDo(t, func() error {
			c, err := net.DialUDP("udp", &net.UDPAddr{IP: a.under.AsSlice()}, &net.UDPAddr{IP: b.under.AsSlice(), Port: 8472})
			if err != nil {
				return err
			}
			defer c.Close()
			if err := ipv4.NewConn(c).SetTOS(3); err != nil {
				return err
			}
			_, err = c.Write(frame)
			return err
		})
		if src, ok := sink.Wait(p, refused); ok {
			t.Fatalf("a CE-marked packet over a not-ECT one reached pod 2 (seen from %s)", src)
		}
		if !waitFor(delivered, func() bool { return deviceRxErrors(t, b) > errs }) {
			t.Fatalf("the device did not judge it: rx errors %d", errs)
		}
		if d := b.counters().RxDecap - before.RxDecap; d != 0 {
			t.Fatalf("%d decapsulated in the program", d)
		}
	})

	t.Run("outer ip options: the device's", func(t *testing.T) {
		// A genuine packet whose outer IPv4 header carries options (four
		// NOPs' worth: IHL 6) is not parsed by the program; the device
		// takes it and delivers it.
		p := payload("options")
		before, rx := b.counters(), deviceRx(t, b)
		frame := append([]byte{0x08, 0, 0, 0, 0, 0, 1, 0}, inner(a.podIP, b.podIP, p)...)
		a.ns.MustDo(t, func() error {
			c, err := net.DialUDP("udp", &net.UDPAddr{IP: a.under.AsSlice()}, &net.UDPAddr{IP: b.under.AsSlice(), Port: 8472})
			if err != nil {
				return err
			}
			defer c.Close()
			rc, err := c.SyscallConn()
			if err != nil {
				return err
			}
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IP, unix.IP_OPTIONS, "\x01\x01\x01\x01")
			}); err != nil {
				return err
			}
			if serr != nil {
				return serr
			}
			_, err = c.Write(frame)
			return err
		})
		if got, ok := sink.Wait(p, delivered); !ok || got != a.podIP {
			t.Fatalf("arrived %v from %s", ok, got)
		}
		if deviceRx(t, b) == rx {
			t.Errorf("the device received nothing")
		}
		if d := b.counters().RxDecap - before.RxDecap; d != 0 {
			t.Errorf("%d decapsulated in the program", d)
		}
	})

	t.Run("for the node itself: the device's", func(t *testing.T) {
		// The inner destination is node 2's gateway address, not a pod:
		// the program leaves it to the device, which accepts it.
		before, rx := b.counters(), deviceRx(t, b)
		forgeVXLAN(t, a, a.under, b.under, a.podIP, b.podCIDR.Addr().Next())
		if !waitFor(delivered, func() bool { return deviceRx(t, b) > rx }) {
			t.Fatalf("the device received nothing")
		}
		if after := b.counters(); after.RxDecap != before.RxDecap || after.RxPackets == before.RxPackets {
			t.Fatalf("decap %d -> %d, rx %d -> %d", before.RxDecap, after.RxDecap, before.RxPackets, after.RxPackets)
		}
	})
}
