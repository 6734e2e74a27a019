package bpf

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/weftnet/weft/bpf/internal/device"
	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/internal/tc"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

const reachTimeout = 5 * time.Second

// checkPath asserts ICMP (v4 and v6) and TCP work pod to pod both ways and
// that the BPF counters of both nodes moved.
func checkPath(t *testing.T, c *testCluster) {
	t.Helper()
	a, b := c.nodes[0], c.nodes[1]
	ca0, cb0 := a.counters(), b.counters()
	for _, pair := range [][2]*testNode{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		for _, dst := range []netip.Addr{to.podIP, to.podIP6} {
			if !netnstest.Reach(t, from.pod, dst, reachTimeout) {
				t.Fatalf("pod %d cannot ping %s; counters %+v / %+v", from.idx, dst, from.counters(), to.counters())
			}
		}
	}
	tcpEcho(t, a.pod, b.pod, b.podIP, 256<<10)
	tcpEcho(t, b.pod, a.pod, a.podIP6, 256<<10)
	ca, cb := a.counters(), b.counters()
	if ca.TxPackets <= ca0.TxPackets || ca.RxPackets <= ca0.RxPackets || cb.TxPackets <= cb0.TxPackets || cb.RxPackets <= cb0.RxPackets {
		t.Fatalf("BPF counters did not move: a %+v -> %+v, b %+v -> %+v", ca0, ca, cb0, cb)
	}
	if ca.TxBytes-ca0.TxBytes < 256<<10 {
		t.Fatalf("node 1 encapsulated only %d bytes for 256 KiB of TCP", ca.TxBytes-ca0.TxBytes)
	}
}

// tcxCount is the number of tcx programs on the overlay device of n.
func tcxCount(t *testing.T, n *testNode, at ebpf.AttachType) int {
	t.Helper()
	var cnt int
	n.ns.MustDo(t, func() error {
		l, err := netlink.LinkByName(spec.VXLANDevice)
		if err != nil {
			return err
		}
		r, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
		if err != nil {
			return err
		}
		cnt = len(r.Programs)
		return nil
	})
	return cnt
}

// forgeVXLAN sends a VXLAN-encapsulated ICMP echo for src->dst pod
// addresses from outer source `from` (an address in n's namespace) to
// the peer's underlay port 8472 with VNI 1.
func forgeVXLAN(t *testing.T, n *testNode, from, to, src, dst netip.Addr) {
	forgeVNI(t, n, from, to, src, dst, 1)
}

// forgeVNI is forgeVXLAN with another VNI.
func forgeVNI(t *testing.T, n *testNode, from, to, src, dst netip.Addr, vni uint32) {
	t.Helper()
	icmpMsg, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 0x1234, Seq: 1}}).Marshal(nil)
	must(t, err)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 1
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmpMsg)))
	copy(ip[12:16], src.AsSlice())
	copy(ip[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], headerChecksum(ip))
	eth := []byte{0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00}
	vx := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	pkt := append(append(append(vx, eth...), ip...), icmpMsg...)
	n.ns.MustDo(t, func() error {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, &net.UDPAddr{IP: to.AsSlice(), Port: 8472})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(pkt)
		return err
	})
}

// headerChecksum is the IPv4 header checksum of h (20 bytes, checksum
// field zero).
func headerChecksum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func TestOverlay(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	for _, n := range c.nodes {
		rep := n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
		if !rep.Changed() || rep.Added < 5 {
			t.Fatalf("first sync report %+v", rep)
		}
		if rep := n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{})); rep.Changed() {
			t.Fatalf("second identical sync wrote: %+v", rep)
		}
	}

	t.Run("traffic", func(t *testing.T) { checkPath(t, c) })

	t.Run("node to remote pod", func(t *testing.T) {
		// The node's own traffic leaves with its overlay address (the
		// network address of its pod CIDR), which the peer's map accepts.
		for _, dst := range []netip.Addr{b.podIP, b.podIP6} {
			if !netnstest.Reach(t, a.ns, dst, reachTimeout) {
				t.Fatalf("node 1 cannot reach %s: %+v / %+v", dst, a.counters(), b.counters())
			}
		}
	})

	t.Run("underlay", func(t *testing.T) {
		// Called from the test's own namespace (which has no ul0), the
		// datapath answers for the namespace it was opened in.
		u, err := a.dp.Underlay()
		if err != nil || u.Interface != "ul0" || u.IP != a.under {
			t.Errorf("Underlay() = %+v, %v", u, err)
		}
		for _, name := range []string{"ul0", "192.168.50.1", "fd00:50::1"} {
			u, err := device.Underlay(a.dp.ns.NL, name)
			must(t, err)
			// A dual-stack underlay: the IPv4 address with the IPv6 one
			// beside it; told the IPv6 address, that one alone.
			wantIP, want6 := a.under, a.under6
			if name == "fd00:50::1" {
				wantIP, want6 = a.under6, netip.Addr{}
			}
			if u.Interface != "ul0" || u.IP != wantIP || u.IPv6 != want6 || u.MTU != 1500 ||
				!u.Adjacent(b.under) || !u.Adjacent(b.under6) || u.Adjacent(netip.MustParseAddr("192.168.51.1")) {
				t.Errorf("underlay %q: %+v", name, u)
			}
		}
	})

	t.Run("fast path bypasses the node's forwarding", func(t *testing.T) {
		// Echo requests leave through the bridge program straight into the
		// tunnel, replies go from the tunnel straight to the bridge: node
		// 1's IP stack forwards neither (it forwards 200 without the fast
		// path).
		f0 := forwarded(t, a)
		if lost := netnstest.Lost(t, a.pod, b.podIP, 100, 2*time.Millisecond); lost != 0 {
			t.Fatalf("%d of 100 pings lost", lost)
		}
		if df := forwarded(t, a) - f0; df >= 20 {
			t.Fatalf("node 1 forwarded %d packets for 100 echo requests and 100 replies, want none", df)
		}
	})

	t.Run("removal and restore", func(t *testing.T) {
		w := c.overlayWant(a, spec.ModeVXLAN, netip.Addr{})
		w.Tunnels = w.Tunnels[1:] // drop the peer's IPv4 prefix
		if rep := a.sync(w); rep.Removed != 1 {
			t.Fatalf("report %+v", rep)
		}
		before := a.counters().DropNoTunnel
		if netnstest.Reach(t, a.pod, b.podIP, 500*time.Millisecond) {
			t.Fatal("ping works without a tunnel entry")
		}
		if got := a.counters().DropNoTunnel; got <= before {
			t.Fatalf("no-tunnel drops %d -> %d", before, got)
		}
		if c := a.counters(); c.Drops["no_tunnel"] != c.DropNoTunnel {
			t.Fatalf("no_tunnel drops %d, DropNoTunnel %d", c.Drops["no_tunnel"], c.DropNoTunnel)
		}
		a.sync(c.overlayWant(a, spec.ModeVXLAN, netip.Addr{}))
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("ping fails after the entry came back")
		}
	})

	t.Run("endpoint update to IPv6 underlay", func(t *testing.T) {
		// Point both nodes at each other's IPv6 underlay address: the
		// programs must switch to IPv6 outer headers on live traffic.
		// An IPv6 underlay costs 20 more bytes of overhead: MTU 1430.
		for _, n := range c.nodes {
			w := c.overlayWant(n, spec.ModeVXLAN, c.peer(n).under6)
			w.Overlay.MTU = 1430
			if rep := n.sync(w); rep.Updated != 3 {
				t.Fatalf("report %+v", rep)
			}
		}
		checkPath(t, c)
		// Only one side updated: the receiver rejects the new outer source.
		a.sync(c.overlayWant(a, spec.ModeVXLAN, netip.Addr{}))
		sp := b.counters().DropSpoofed
		if netnstest.Reach(t, a.pod, b.podIP, 500*time.Millisecond) {
			t.Fatal("ping works with mismatched endpoints")
		}
		if got := b.counters().DropSpoofed; got <= sp {
			t.Fatalf("spoofed drops on node 2: %d -> %d", sp, got)
		}
		b.sync(c.overlayWant(b, spec.ModeVXLAN, netip.Addr{}))
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("ping fails after restoring IPv4 endpoints")
		}
	})

	t.Run("forged source is dropped", func(t *testing.T) {
		forged := netip.MustParseAddr("192.168.50.3")
		must(t, a.ns.Addr("ul0", netip.PrefixFrom(forged, 24)))
		c0 := b.counters()
		forgeVXLAN(t, a, forged, b.under, a.podIP, b.podIP)
		if !waitFor(time.Second, func() bool { return b.counters().DropSpoofed == c0.DropSpoofed+1 }) {
			t.Fatalf("spoofed drops %d -> %d", c0.DropSpoofed, b.counters().DropSpoofed)
		}
		if got := b.counters().Drops["wrong_endpoint"]; got != c0.Drops["wrong_endpoint"]+1 {
			t.Fatalf("wrong_endpoint drops %d -> %d", c0.Drops["wrong_endpoint"], got)
		}
		// Control: the same frame from the real endpoint is accepted.
		c1 := b.counters()
		forgeVXLAN(t, a, a.under, b.under, a.podIP, b.podIP)
		if !waitFor(time.Second, func() bool { return b.counters().RxPackets > c1.RxPackets }) {
			t.Fatalf("genuine frame not accepted: %+v -> %+v", c1, b.counters())
		}
		if got := b.counters().DropSpoofed; got != c1.DropSpoofed {
			t.Fatalf("genuine frame counted as spoofed: %d -> %d", c1.DropSpoofed, got)
		}
	})

	t.Run("drops are counted by reason", func(t *testing.T) {
		// Each forged frame is dropped for one reason, counted once under
		// it and once in its class.
		for _, c := range []struct {
			reason   string
			src      netip.Addr
			vni      uint32
			spoofing bool
		}{
			{"wrong_vni", a.podIP, 2, true},
			{"unknown_source", netip.MustParseAddr("10.250.0.1"), 1, true},
		} {
			c0 := b.counters()
			forgeVNI(t, a, a.under, b.under, c.src, b.podIP, c.vni)
			if !waitFor(time.Second, func() bool { return b.counters().Drops[c.reason] == c0.Drops[c.reason]+1 }) {
				t.Fatalf("%s drops %d -> %d", c.reason, c0.Drops[c.reason], b.counters().Drops[c.reason])
			}
			c1 := b.counters()
			if c.spoofing && c1.DropSpoofed != c0.DropSpoofed+1 {
				t.Errorf("%s: spoofed drops %d -> %d", c.reason, c0.DropSpoofed, c1.DropSpoofed)
			}
		}
		cs := b.counters()
		if cs.DropSpoofed != cs.Drops["unknown_source"]+cs.Drops["wrong_endpoint"]+cs.Drops["wrong_vni"] ||
			cs.DropNoTunnel != cs.Drops["no_tunnel"] {
			t.Errorf("classes do not add up: %+v", cs)
		}
		var sum uint64
		for _, n := range cs.Drops {
			sum += n
		}
		if sum != cs.DropSpoofed+cs.DropNoTunnel+cs.DropOther {
			t.Errorf("reasons sum to %d, classes to %d: %+v", sum, cs.DropSpoofed+cs.DropNoTunnel+cs.DropOther, cs)
		}
	})

	t.Run("attach twice", func(t *testing.T) {
		dev, err := device.Read(a.dp.ns.NL, spec.VXLANDevice)
		must(t, err)
		must(t, a.dp.attach(dev.Index))
		must(t, a.dp.attach(dev.Index))
		// A second Datapath on the same pins takes the links over.
		d2, err := Open(a.cfg)
		must(t, err)
		must(t, d2.Close())
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXEgress, ebpf.AttachTCXIngress} {
			if n := tcxCount(t, a, at); n != 1 {
				t.Fatalf("%s: %d programs attached", at, n)
			}
		}
		a.ns.MustDo(t, func() error {
			br, err := netlink.LinkByName("weft0")
			if err != nil {
				return err
			}
			r, err := link.QueryPrograms(link.QueryOptions{Target: br.Attrs().Index, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return err
			}
			if len(r.Programs) != 1 {
				t.Errorf("bridge: %d programs attached", len(r.Programs))
			}
			return nil
		})
		// Take over again with a's own programs for the next subtests.
		must(t, a.dp.attach(dev.Index))
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("ping fails after attaching twice")
		}
	})

	t.Run("reconcile repairs drift", func(t *testing.T) {
		want := c.overlayWant(a, spec.ModeVXLAN, netip.Addr{})
		a.ns.MustDo(t, func() error {
			// Break four things behind the datapath's back.
			if err := netlink.RouteDel(&netlink.Route{Dst: device.IPNet(clusterCIDR), Protocol: RouteProtocol, Scope: netlink.SCOPE_LINK}); err != nil {
				return err
			}
			k := object.TunnelKey(b.podCIDR6)
			if err := a.dp.objs.WeftTunnels.Delete(&k); err != nil {
				return err
			}
			dev, err := netlink.LinkByName(spec.VXLANDevice)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetMTU(dev, 1500); err != nil {
				return err
			}
			l, err := link.LoadPinnedLink(a.cfg.PinDir+"/"+tc.Ingress.Name, nil)
			if err != nil {
				return err
			}
			if err := l.Unpin(); err != nil {
				return err
			}
			return l.Close() // last reference: the ingress program detaches
		})
		if n := tcxCount(t, a, ebpf.AttachTCXIngress); n != 0 {
			t.Fatalf("ingress still has %d programs", n)
		}
		rep, err := a.dp.Reconcile(t.Context(), want)
		must(t, err)
		t.Logf("repairs: %q", rep.Repaired)
		for _, sub := range []string{"route 10.244.0.0/16", "tunnel fd00:244:2::/64", "mtu 1500 -> 1450", "programs attached"} {
			found := false
			for _, r := range rep.Repaired {
				found = found || strings.Contains(r, sub)
			}
			if !found {
				t.Errorf("repair %q not reported in %q", sub, rep.Repaired)
			}
		}
		rep, err = a.dp.Reconcile(t.Context(), want)
		must(t, err)
		if rep.Changed() {
			t.Fatalf("second reconcile changed %+v", rep)
		}
		checkPath(t, c)
	})

	t.Run("port change replaces the device", func(t *testing.T) {
		for _, n := range c.nodes {
			w := c.overlayWant(n, spec.ModeVXLAN, netip.Addr{})
			w.Overlay.Port = 4789
			rep := n.sync(w)
			dev, err := device.Read(n.dp.ns.NL, spec.VXLANDevice)
			must(t, err)
			if dev.Port != 4789 {
				t.Errorf("node %d: port %d after %+v", n.idx, dev.Port, rep)
			}
		}
		checkPath(t, c)
		for _, n := range c.nodes {
			n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
		}
		checkPath(t, c)
	})

	t.Run("close and reopen without loss", func(t *testing.T) {
		done := make(chan int)
		go func() { done <- netnstest.Lost(t, a.pod, b.podIP, 200, 10*time.Millisecond) }()
		time.Sleep(300 * time.Millisecond)
		for _, n := range c.nodes {
			must(t, n.dp.Close())
			n.open()
			// The maps kept their entries: nothing to write.
			if rep := n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{})); rep.Changed() {
				t.Errorf("sync after reopen wrote %+v", rep)
			}
		}
		if lost := <-done; lost != 0 {
			t.Fatalf("%d of 200 pings lost across close/reopen", lost)
		}
		// Every link now runs the reopened datapath's programs: the
		// pods' checks and the underlay check too.
		for _, n := range c.nodes {
			port, _ := n.podPort(t, "vpod", n.pod)
			if ok, err := tc.TCXAttached(n.cfg.PinDir, port, tc.Pod(port), n.dp.objs.WeftFromPort); err != nil || !ok {
				t.Errorf("node %d: pod check not switched to the new program (%v)", n.idx, err)
			}
			under, err := n.dp.underlayIndex()
			must(t, err)
			if ok, err := n.dp.underlayAttached(under, n.dp.objs.WeftFromUnderlay); err != nil || !ok {
				t.Errorf("node %d: underlay check not switched to the new program (%v)", n.idx, err)
			}
		}
	})
}

// forwarded reads Ip ForwDatagrams of n's namespace.
func forwarded(t *testing.T, n *testNode) int {
	t.Helper()
	return ipStat(t, n, "ForwDatagrams")
}

// ipStat is the IPv4 statistic key (an Ip field of /proc/net/snmp) of n's
// namespace.
func ipStat(t *testing.T, n *testNode, key string) int {
	t.Helper()
	var v uint64
	n.ns.MustDo(t, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		v, err = netnstest.SNMP(string(b), "Ip", key)
		return err
	})
	return int(v)
}
