package bpf

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// runNFT runs nft with script on stdin inside n's namespace.
func runNFT(t testing.TB, n *netnstest.NS, script string) string {
	t.Helper()
	cmd := exec.Command("nsenter", "--net="+n.Path(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nft in %s: %v\n%s\n%s", n.Name, err, script, out)
	}
	return string(out)
}

// forwardDrop puts a DROP rule for traffic between the two pods into the
// FORWARD hook of n (an nftables chain at filter priority, as an
// iptables-nft FORWARD rule is) and returns a function reading how many
// packets it dropped. The table is removed when the test ends.
func forwardDrop(t *testing.T, n *testNode, a, b *testNode) func() int {
	t.Helper()
	table := "weftdrop" + strconv.Itoa(n.idx)
	runNFT(t, n.ns, fmt.Sprintf(`table inet %[1]s {
	chain drops {
		type filter hook forward priority filter; policy accept;
		ip saddr %[2]s ip daddr %[3]s counter drop
		ip6 saddr %[4]s ip6 daddr %[5]s counter drop
	}
}
`, table, a.podIP, b.podIP, a.podIP6, b.podIP6))
	t.Cleanup(func() { runNFT(t, n.ns, "delete table inet "+table+"\n") })
	re := regexp.MustCompile(`counter packets (\d+)`)
	return func() int {
		cmd := exec.Command("nsenter", "--net="+n.ns.Path(), "nft", "list", "chain", "inet", table, "drops")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v\n%s", err, out)
		}
		sum := 0
		for _, m := range re.FindAllStringSubmatch(string(out), -1) {
			v, _ := strconv.Atoi(m[1])
			sum += v
		}
		return sum
	}
}

// checkTraffic asserts ICMP, TCP and UDP, IPv4 and IPv6, pod to pod both
// ways (UDP arriving with the sending pod's own address: nothing
// masqueraded).
func checkTraffic(t *testing.T, c *testCluster) {
	t.Helper()
	a, b := c.nodes[0], c.nodes[1]
	for _, pair := range [][2]*testNode{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		for i, dst := range []netip.Addr{to.podIP, to.podIP6} {
			if !netnstest.Reach(t, from.pod, dst, reachTimeout) {
				t.Fatalf("pod %d cannot ping %s; counters %+v / %+v", from.idx, dst, from.counters(), to.counters())
			}
			tcpEcho(t, from.pod, to.pod, dst, 256<<10)
			want := []netip.Addr{from.podIP, from.podIP6}[i]
			if src := udpSource(t, from.pod, to.pod, dst); src != want {
				t.Fatalf("udp %s -> %s arrived from %s", want, dst, src)
			}
		}
	}
}

// serviceAddr is a Service address node 1 DNATs to pod 2's port 8080, as
// kube-proxy does (serviceDNAT).
var serviceAddr = netip.MustParseAddrPort("10.96.0.10:80")

// serviceBackendPort is the port serviceDNAT sends serviceAddr to on pod 2.
const serviceBackendPort = 8080

// serviceDNAT gives node a kube-proxy's part for one Service (a DNAT of
// serviceAddr to b's pod in a nat prerouting chain; with br_netfilter on,
// as on this machine and on Kubernetes nodes, it already applies to the
// pod's frame on the bridge) and runs its backend on b's pod: it answers
// every connection with "hi".
func serviceDNAT(t *testing.T, a, b *testNode) {
	t.Helper()
	runNFT(t, a.ns, fmt.Sprintf(`table ip weftsvc {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport %d dnat to %s:%d
	}
}
`, serviceAddr.Addr(), serviceAddr.Port(), b.podIP, serviceBackendPort))
	var ln net.Listener
	b.pod.MustDo(t, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(b.podIP, serviceBackendPort).String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hi"))
			c.Close()
		}
	}()
}

// dialService connects from a's pod to serviceAddr and reads the answer.
func dialService(t *testing.T, a *testNode) error {
	t.Helper()
	var err error
	a.pod.MustDo(t, func() error {
		conn, e := net.DialTimeout("tcp", serviceAddr.String(), 3*time.Second)
		if e != nil {
			err = e
			return nil
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 2)
		if _, e := io.ReadFull(conn, buf); e != nil || string(buf) != "hi" {
			err = fmt.Errorf("read %q: %v", buf, e)
		}
		return nil
	})
	return err
}

// TestHostRouting: in native mode with host routing in eBPF, pod traffic
// between the nodes is forwarded past both nodes' stacks (FIB lookup and
// redirect out, redirect_peer in); with StackRouting it goes through
// them, as in vxlan mode. Each way, every protocol and family works, and a
// DROP rule in a node's FORWARD hook takes effect exactly when the traffic
// goes through the stack.
func TestHostRouting(t *testing.T) {
	c := newTestCluster(t, AttachTCX)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	serviceDNAT(t, a, b)
	for _, tc := range []struct {
		mode  spec.Mode
		stack bool
	}{
		{spec.ModeNative, false},
		{spec.ModeNative, true},
		{spec.ModeVXLAN, false},
		{spec.ModeVXLAN, true},
		{spec.ModeNative, false}, // back from the stack: fast again
	} {
		name := fmt.Sprintf("%s/stack=%v", tc.mode, tc.stack)
		t.Run(name, func(t *testing.T) {
			for _, n := range c.nodes {
				var w *spec.Desired
				if tc.mode == spec.ModeNative {
					w = c.nativeWant(n, true)
				} else {
					w = c.overlayWant(n, tc.mode, netip.Addr{})
				}
				w.StackRouting = tc.stack
				n.sync(w)
			}
			ca0, cb0 := a.counters(), b.counters()
			checkTraffic(t, c)
			ca, cb := a.counters(), b.counters()
			// Packets that took the eBPF path, sent and received.
			fast := func(c0, c1 spec.Counters) (tx, rx uint64) {
				if tc.mode == spec.ModeNative {
					return c1.RoutedTx - c0.RoutedTx, c1.RoutedRx - c0.RoutedRx
				}
				return c1.TxDirect - c0.TxDirect, c1.RxDirect - c0.RxDirect
			}
			atx, arx := fast(ca0, ca)
			btx, brx := fast(cb0, cb)
			if tc.stack && atx+arx+btx+brx != 0 {
				t.Fatalf("stack routing: %d/%d and %d/%d packets took the eBPF path (%+v / %+v)", atx, arx, btx, brx, ca, cb)
			}
			if !tc.stack && min(atx, arx, btx, brx) < 40 {
				t.Fatalf("host routing in eBPF: only %d/%d and %d/%d packets (sent/received) took the eBPF path (%+v / %+v)", atx, arx, btx, brx, ca, cb)
			}
			if tc.mode == spec.ModeNative && (ca.TxPackets != ca0.TxPackets || cb.RxPackets != cb0.RxPackets) {
				t.Fatalf("native mode used the tunnel: %+v / %+v", ca, cb)
			}

			// A connection to a Service address DNATed on node 1 gets its
			// replies un-DNATed there: the fast paths leave a flow the
			// stack tracks to the stack.
			if err := dialService(t, a); err != nil {
				t.Fatalf("service %s (DNAT to %s): %v", serviceAddr, b.podIP, err)
			}

			// The same pings, with a DROP rule in one node's FORWARD hook.
			for _, side := range []struct {
				name string
				n    *testNode
			}{{"sender", a}, {"receiver", b}} {
				t.Run("forward drop on "+side.name, func(t *testing.T) {
					dropped := forwardDrop(t, side.n, a, b)
					f0 := forwarded(t, side.n)
					for _, dst := range []netip.Addr{b.podIP, b.podIP6} {
						lost := netnstest.Lost(t, a.pod, dst, 20, 5*time.Millisecond)
						if tc.stack && lost != 20 {
							t.Errorf("stack routing: %d of 20 pings to %s got through the FORWARD drop rule", 20-lost, dst)
						}
						if !tc.stack && lost != 0 {
							t.Errorf("host routing in eBPF: %d of 20 pings to %s lost, want the FORWARD rule bypassed", lost, dst)
						}
					}
					got := dropped()
					if tc.stack && got < 40 {
						t.Errorf("stack routing: the FORWARD rule dropped %d packets, want 40", got)
					}
					if !tc.stack {
						if got != 0 {
							t.Errorf("host routing in eBPF: the FORWARD rule saw %d packets, want none", got)
						}
						if df := forwarded(t, side.n) - f0; df >= 10 {
							t.Errorf("host routing in eBPF: the %s's stack forwarded %d IPv4 packets", side.name, df)
						}
					}
				})
			}
		})
	}
	t.Run("reconcile repairs the routed map", func(t *testing.T) {
		w := c.nativeWant(a, true)
		a.sync(w)
		k := object.TunnelKey(b.podCIDR)
		must(t, a.dp.objs.WeftRouted.Delete(&k))
		rep, err := a.dp.Reconcile(context.Background(), w)
		must(t, err)
		want := fmt.Sprintf("host routing %s in eBPF", b.podCIDR)
		if !slices.Contains(rep.Repaired, want) {
			t.Fatalf("repairs %q, want %q", rep.Repaired, want)
		}
		rs, err := a.dp.readRouted()
		must(t, err)
		if !rs[b.podCIDR] || !rs[b.podCIDR6] {
			t.Fatalf("routed map after reconcile: %v", rs)
		}
	})
	t.Run("the FIB's answer follows a neighbour change", func(t *testing.T) {
		// With a pair, host routing remembers the FIB's answer for it
		// (weft_routed_pairs, 100 ms): egress device and neighbour MAC.
		// After someone else moved node 2's neighbour entry to another
		// MAC, the pair's next packet past the 100 ms uses the new one;
		// a Sync forgets at once.
		a.sync(c.nativeWant(a, true))
		pk := object.WeftRoutedPairKey{Src: object.EndpointKey(a.podIP).Addr, Dst: object.EndpointKey(b.podIP).Addr}
		pair := func() object.WeftRoutedPairValue {
			t.Helper()
			c0 := a.counters()
			must(t, udpSend(a.pod, b.podIP, 9, "routed"))
			if c1 := a.counters(); c1.RoutedTx == c0.RoutedTx {
				t.Fatalf("a datagram to pod 2 did not take the eBPF path: %+v", c1)
			}
			var v object.WeftRoutedPairValue
			must(t, a.dp.objs.WeftRoutedPairs.Lookup(&pk, &v))
			return v
		}
		ul := linkIndex(t, a.ns, "ul0")
		setNeigh := func(hw net.HardwareAddr) { setUnderlayNeigh(t, a, b, hw) }
		own := mac(t, b.ns, "ul0")
		setNeigh(own)
		time.Sleep(150 * time.Millisecond) // past what an earlier subtest left remembered
		v := pair()
		if int(v.Ifindex) != ul || !slices.Equal(v.Dmac[:], own) {
			t.Fatalf("remembered FIB answer: ifindex %d MAC %s, want %d %s", v.Ifindex, net.HardwareAddr(v.Dmac[:]), ul, own)
		}
		// A packet that differs only in its ECN bits (ECT(0)), which the
		// FIB ignores, is sent with the same answer.
		c0 := a.counters()
		must(t, udpSendTOS(a.pod, b.podIP, 9, 0x02))
		if c1 := a.counters(); c1.RoutedTx == c0.RoutedTx {
			t.Fatalf("an ECT(0) datagram to pod 2 did not take the eBPF path: %+v", c1)
		}
		var ect object.WeftRoutedPairValue
		must(t, a.dp.objs.WeftRoutedPairs.Lookup(&pk, &ect))
		if ect != v {
			t.Fatalf("remembered after an ECT(0) datagram %+v, want the answer %+v kept", ect, v)
		}
		moved := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x23}
		setNeigh(moved)
		time.Sleep(150 * time.Millisecond)
		if v := pair(); !slices.Equal(v.Dmac[:], moved) {
			t.Fatalf("remembered neighbour MAC %s 150 ms after it moved to %s", net.HardwareAddr(v.Dmac[:]), moved)
		}
		setNeigh(own)
		a.sync(c.nativeWant(a, true))
		if v := pair(); !slices.Equal(v.Dmac[:], own) {
			t.Fatalf("remembered neighbour MAC %s right after a Sync, want %s", net.HardwareAddr(v.Dmac[:]), own)
		}
	})
	t.Run("masqueraded prefixes stay with the stack", func(t *testing.T) {
		// A flow host routing carries until the Sync: what the program
		// remembers about it (weft_routed_pairs, 100 ms) goes with the
		// Sync, so its next packet, sent at once, is masqueraded.
		a.sync(c.nativeWant(a, true))
		c0 := a.counters()
		must(t, udpSend(a.pod, b.podIP, 9, "routed"))
		if c1 := a.counters(); c1.RoutedTx == c0.RoutedTx {
			t.Fatalf("a datagram to pod 2 did not take the eBPF path: %+v", c1)
		}
		if n := entries(t, a.dp.objs.WeftRoutedPairs); n == 0 {
			t.Fatal("host routing remembered no pair")
		}
		// What is remembered is the pair: the same pod to node 2's own
		// address (no pod CIDR) still goes to the stack.
		c0 = a.counters()
		must(t, udpSend(a.pod, b.under, 9, "to the node"))
		if c1 := a.counters(); c1.RoutedTx != c0.RoutedTx {
			t.Fatalf("a datagram to node 2's address took the eBPF path: %+v", c1)
		}
		w := c.nativeWant(a, true)
		w.Masquerade.NativeCIDRs = nil
		if got := routedPrefixes(w); len(got) != 0 {
			t.Fatalf("routed with every prefix masqueraded: %v", got)
		}
		a.sync(w)
		if n := entries(t, a.dp.objs.WeftRoutedPairs); n != 0 {
			t.Fatalf("%d pairs remembered after the Sync", n)
		}
		c0 = a.counters()
		must(t, udpSend(a.pod, b.podIP, 9, "masqueraded"))
		if c1 := a.counters(); c1.RoutedTx != c0.RoutedTx {
			t.Fatalf("the same flow took the eBPF path right after the Sync that masquerades it: %+v", c1)
		}
		rs, err := a.dp.readRouted()
		must(t, err)
		if len(rs) != 0 {
			t.Fatalf("routed map %v with every prefix masqueraded", rs)
		}
		c0 = a.counters()
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("masqueraded ping lost")
		}
		if c1 := a.counters(); c1.RoutedTx != c0.RoutedTx {
			t.Fatalf("masqueraded traffic took the eBPF path: %+v", c1)
		}
	})
}

// udpSendTOS sends a datagram to the IPv4 address dst:port from a UDP
// socket in ns with the IP TOS byte tos.
func udpSendTOS(ns *netnstest.NS, dst netip.Addr, port uint16, tos int) error {
	return ns.Do(func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, port)))
		if err != nil {
			return err
		}
		defer c.Close()
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tos)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set IP_TOS: %w", serr)
		}
		_, err = c.Write([]byte("tos"))
		return err
	})
}

// linkIndex is the index of the link called name in ns.
func linkIndex(t testing.TB, ns *netnstest.NS, name string) int {
	t.Helper()
	var ix int
	ns.MustDo(t, func() error {
		l, err := netlink.LinkByName(name)
		if err == nil {
			ix = l.Attrs().Index
		}
		return err
	})
	return ix
}

// setUnderlayNeigh makes n's neighbour entry for peer's underlay address
// say hw, as someone else than weft would (a permanent entry).
func setUnderlayNeigh(t testing.TB, n, peer *testNode, hw net.HardwareAddr) {
	t.Helper()
	ul := linkIndex(t, n.ns, "ul0")
	n.ns.MustDo(t, func() error {
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: ul, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: peer.under.AsSlice(), HardwareAddr: hw})
	})
}

// entries counts m's entries (the programs' memos: weft_routed_pairs,
// weft_rp_accepted).
func entries(t testing.TB, m *ebpf.Map) int {
	t.Helper()
	n := 0
	key, val := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(key, val) {
		n++
	}
	must(t, it.Err())
	return n
}

// TestHostRoutingFlowMemories: what host routing and the underlay check
// remember per flow (lib/conntrack.h, "flow_ports"; weft_rp_accepted and
// weft_routed_pairs) is given up where it could be wrong: a changed
// endpoint empties the underlay check's memories at once, and the first
// packet of a TCP connection asks conntrack even when its ports are
// remembered as a flow conntrack did not know.
func TestHostRoutingFlowMemories(t *testing.T) {
	c := newTestCluster(t, AttachTCX)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	serviceDNAT(t, a, b)
	for _, n := range c.nodes {
		n.sync(c.nativeWant(n, true))
	}
	if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) || !netnstest.Reach(t, b.pod, a.podIP, reachTimeout) {
		t.Fatal("no pod-to-pod path")
	}

	t.Run("a changed endpoint is not remembered", func(t *testing.T) {
		// Node 1's endpoint for its pod pointed somewhere else (the
		// loopback device) when pod 2's datagram was accepted: the
		// acceptance remembers it. The loader's refresh puts the
		// endpoint right and forgets every acceptance, so the very
		// next datagram reaches the pod.
		a.sync(c.nativeWant(a, true))
		k := object.EndpointKey(a.podIP)
		var ep object.WeftEndpointValue
		must(t, a.dp.objs.WeftEndpoints.Lookup(&k, &ep))
		wrong := ep
		wrong.Ifindex = 1
		must(t, a.dp.objs.WeftEndpoints.Put(&k, &wrong))
		must(t, udpSend(b.pod, a.podIP, 9, "to the wrong endpoint"))
		if len(rpAccepted(t, a, func(rk object.WeftRpKey, rv object.WeftRpValue) bool {
			return rk.Dst == k.Addr && rv.EpIfindex == 1
		})) == 0 {
			t.Fatal("the underlay check remembered no acceptance with the endpoint")
		}
		must(t, a.dp.RefreshEndpoints())
		if n := entries(t, a.dp.objs.WeftRpAccepted); n != 0 {
			t.Fatalf("%d acceptances remembered after the endpoint changed", n)
		}
		var pc net.PacketConn
		a.pod.MustDo(t, func() error {
			var err error
			pc, err = net.ListenPacket("udp", netip.AddrPortFrom(a.podIP, 0).String())
			return err
		})
		defer pc.Close()
		c0 := a.counters()
		must(t, udpSend(b.pod, a.podIP, uint16(pc.LocalAddr().(*net.UDPAddr).Port), "first"))
		_ = pc.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 16)
		if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "first" {
			t.Fatalf("the first datagram after the refresh: %q %v", buf[:n], err)
		}
		if c1 := a.counters(); c1.RoutedRx == c0.RoutedRx {
			t.Fatalf("the datagram did not take the eBPF path: %+v", c1)
		}
	})

	t.Run("a connection's first packet asks conntrack", func(t *testing.T) {
		// Pod 1 connects to pod 2 directly from port 40123 (and closes
		// first, so the TIME_WAIT is its own): node 1 remembers pod 2's
		// side of the flow (8081 to 40123) as one conntrack has no entry
		// for. Right after, pod 1 connects from the same port to a
		// Service address node 1 DNATs to the same pod and port: the
		// backend's SYN-ACK has the remembered ports, and must go to
		// node 1's stack to be un-DNATed, not straight to the pod (which
		// would reset the connection). Repeated when the two connections
		// took longer than the memory's 100 ms (a loaded machine), where
		// the memory could not have answered.
		svc := netip.MustParseAddrPort("10.96.0.11:80")
		runNFT(t, a.ns, fmt.Sprintf(`table ip weftsvc2 {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport %d dnat to %s:8081
	}
}
`, svc.Addr(), svc.Port(), b.podIP))
		var ln net.Listener
		b.pod.MustDo(t, func() error {
			var err error
			ln, err = net.Listen("tcp", netip.AddrPortFrom(b.podIP, 8081).String())
			return err
		})
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte("hi"))
				_, _ = io.Copy(io.Discard, c) // until the client closes
				c.Close()
			}
		}()
		const port = 40123
		dial := func(to netip.AddrPort) (time.Time, error) {
			var err error
			var done time.Time
			a.pod.MustDo(t, func() error {
				d := net.Dialer{
					Timeout:   3 * time.Second,
					LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(a.podIP, port)),
					Control: func(_, _ string, rc syscall.RawConn) error {
						var serr error
						if err := rc.Control(func(fd uintptr) {
							serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
						}); err != nil {
							return err
						}
						return serr
					},
				}
				conn, e := d.Dial("tcp", to.String())
				if e != nil {
					err = e
					return nil
				}
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
				buf := make([]byte, 2)
				if _, e := io.ReadFull(conn, buf); e != nil || string(buf) != "hi" {
					err = fmt.Errorf("read %q: %v", buf, e)
				}
				done = time.Now()
				return nil
			})
			return done, err
		}
		backend := netip.AddrPortFrom(b.podIP, 8081)
		for try := 0; ; try++ {
			a.sync(c.nativeWant(a, true))
			direct, err := dial(backend)
			if err != nil {
				t.Fatalf("direct to %s: %v", backend, err)
			}
			// The direct connection's last ACK may still be on its way.
			c0 := a.counters()
			for {
				time.Sleep(10 * time.Millisecond)
				c1 := a.counters()
				if c1.RoutedRx == c0.RoutedRx {
					break
				}
				c0 = c1
			}
			if _, err := dial(svc); err != nil {
				t.Fatalf("service %s from port %d right after a direct connection: %v", svc, port, err)
			}
			if c1 := a.counters(); c1.RoutedRx != c0.RoutedRx {
				t.Fatalf("%d packets of the DNATed connection went straight to the pod", c1.RoutedRx-c0.RoutedRx)
			}
			if time.Since(direct) < 80*time.Millisecond {
				break
			}
			if try == 5 {
				t.Fatal("the two connections never within 80 ms of each other")
			}
		}
		// What the service connection's SYN-ACK left: the flow is the
		// stack's.
		es := rpAccepted(t, a, func(rk object.WeftRpKey, _ object.WeftRpValue) bool {
			// Ports in network order, as the keys hold them.
			return rk.Src == object.EndpointKey(b.podIP).Addr && rk.Sport == htons(8081) && rk.Dport == htons(port)
		})
		if len(es) == 0 {
			t.Fatal("no acceptance remembered for the flow")
		}
		for _, e := range es {
			if e.v.Ct != flowCTStack {
				t.Fatalf("remembered conntrack answer %d for the DNATed flow, want %d", e.v.Ct, flowCTStack)
			}
		}
	})
}

// flowCTStack is lib/conntrack.h's FLOW_CT_STACK.
const flowCTStack = 2
