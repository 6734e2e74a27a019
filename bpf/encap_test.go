package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// encapWant is n's VXLAN desired state with the in-program switch set to on
// (the peer's endpoint ep as in overlayWant).
func (c *testCluster) encapWant(n *testNode, on bool, ep netip.Addr) *spec.Desired {
	w := c.overlayWant(n, spec.ModeVXLAN, ep)
	w.Overlay.InProgram = on
	return w
}

// deviceTx is the transmit packet counter of n's overlay device.
func deviceTx(t testing.TB, n *testNode) uint64 { return deviceStats(t, n).TxPackets }

// encapDelta is what one node sent between two reads: packets the programs
// encapsulated themselves, all packets (and their bytes) into the tunnel,
// and packets the overlay device transmitted.
type encapDelta struct{ encap, tx, bytes, device uint64 }

func measure(t *testing.T, n *testNode, fn func()) encapDelta {
	t.Helper()
	c0, d0 := n.counters(), deviceTx(t, n)
	fn()
	c1, d1 := n.counters(), deviceTx(t, n)
	return encapDelta{encap: c1.TxEncap - c0.TxEncap, tx: c1.TxPackets - c0.TxPackets, bytes: c1.TxBytes - c0.TxBytes, device: d1 - d0}
}

// udpDF sends one UDP datagram of size bytes of payload from pod `from` to
// dst with fragmentation forbidden (IPv4 DF, IPv6 DONTFRAG) and checks that
// it arrives whole.
func udpDF(t *testing.T, from, to *netnstest.NS, dst netip.Addr, size int) {
	t.Helper()
	if err := udpDFOnce(t, from, to, dst, size, 20, false); err != nil {
		t.Fatal(err)
	}
}

// udpDFOnce is udpDF's attempt: up to tries sends, each waited for; an
// error says what went wrong (a send refused, nothing arrived). probe
// (IPv4) sends at the interface's MTU whatever path MTU the pod learned
// (IP_PMTUDISC_PROBE: DF set, no local refusal).
func udpDFOnce(t *testing.T, from, to *netnstest.NS, dst netip.Addr, size, tries int, probe bool) error {
	t.Helper()
	var pc net.PacketConn
	to.MustDo(t, func() error {
		var err error
		pc, err = net.ListenPacket("udp", net.JoinHostPort(dst.String(), "0"))
		return err
	})
	defer pc.Close()
	var c *net.UDPConn
	from.MustDo(t, func() error {
		a, err := net.ResolveUDPAddr("udp", pc.LocalAddr().String())
		if err != nil {
			return err
		}
		c, err = net.DialUDP("udp", nil, a)
		if err != nil {
			return err
		}
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = raw.Control(func(fd uintptr) {
			if dst.Is4() {
				mode := unix.IP_PMTUDISC_DO
				if probe {
					mode = unix.IP_PMTUDISC_PROBE
				}
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, mode)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DONTFRAG, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	})
	defer c.Close()
	msg := bytes.Repeat([]byte{0xa5}, size)
	buf := make([]byte, size+100)
	for range tries {
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("send %d bytes to %s with DF: %w", size, dst, err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := pc.ReadFrom(buf)
		if err == nil {
			if n != size {
				return fmt.Errorf("udp to %s: %d bytes arrived, sent %d", dst, n, size)
			}
			return nil
		}
	}
	return fmt.Errorf("udp of %d bytes with DF to %s: nothing arrived", size, dst)
}

// capture reads VXLAN frames (UDP to port 8472) arriving on n's underlay
// interface until fn has run and stop matches one (or 5 s pass).
func capture(t *testing.T, n *testNode, fn func(), stop func([]byte) bool) [][]byte {
	t.Helper()
	var fd int
	n.ns.MustDo(t, func() error {
		idx, err := n.ns.Index("ul0")
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_IP))
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, proto)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: idx})
	})
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	must(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	fn()
	var out [][]byte
	buf := make([]byte, 65536)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		k, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		f := buf[:k]
		// Ethernet, IPv4 without options, UDP to 8472.
		if k < 14+20+8+8+14 || f[14] != 0x45 || f[14+9] != 17 || binary.BigEndian.Uint16(f[14+20+2:]) != 8472 {
			continue
		}
		out = append(out, bytes.Clone(f))
		if stop(f) {
			break
		}
	}
	return out
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// pairTunnel is lib/pairs.h's PAIR_TUNNEL.
const pairTunnel = 1

// innerUDP reports whether VXLAN frame f carries a UDP datagram with
// payload p.
func innerUDP(f []byte, p []byte) bool {
	return bytes.HasSuffix(f, p)
}

func TestInProgramEncap(t *testing.T) {
	c := newTestCluster(t, AttachTCX)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]

	both := func(t *testing.T, aOn, bOn bool) {
		t.Helper()
		a.sync(c.encapWant(a, aOn, netip.Addr{}))
		b.sync(c.encapWant(b, bOn, netip.Addr{}))
	}
	// check runs fn and asserts which path n's packets into the tunnel
	// took: the programs' own encapsulation (none through the device), or
	// the device (none encapsulated in the programs).
	check := func(t *testing.T, n *testNode, inProgram bool, min uint64, fn func()) encapDelta {
		t.Helper()
		d := measure(t, n, fn)
		if inProgram && (d.encap < min || d.device != 0 || d.tx != d.encap) {
			t.Fatalf("node %d: %d packets encapsulated in the program, %d into the tunnel, %d through %s; want >= %d, all in the program",
				n.idx, d.encap, d.tx, d.device, spec.VXLANDevice, min)
		}
		if !inProgram && (d.encap != 0 || d.device < min) {
			t.Fatalf("node %d: %d packets encapsulated in the program, %d through %s; want none, >= %d through the device",
				n.idx, d.encap, d.device, spec.VXLANDevice, min)
		}
		return d
	}

	for _, tc := range []struct {
		name     string
		aOn, bOn bool
	}{
		{"on", true, true},
		{"mixed: node 1 in the program, node 2 the device", true, false},
		{"off", false, false},
		{"on again", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			both(t, tc.aOn, tc.bOn)
			var db encapDelta
			da := check(t, a, tc.aOn, 40, func() {
				db = measure(t, b, func() { checkTraffic(t, c) })
			})
			if tc.bOn && (db.encap < 40 || db.device != 0) || !tc.bOn && (db.encap != 0 || db.device < 40) {
				t.Fatalf("node 2 (in program %t): %+v", tc.bOn, db)
			}
			t.Logf("node 1 %+v, node 2 %+v", da, db)
		})
	}

	t.Run("sync writes once, reconcile repairs the switch", func(t *testing.T) {
		w := c.encapWant(a, true, netip.Addr{})
		a.sync(w)
		if rep := a.sync(w); rep.Changed() {
			t.Fatalf("second identical sync wrote: %+v", rep)
		}
		// Someone turns the encapsulation off behind weft's back.
		var cfg object.WeftConfig
		must(t, a.dp.objs.WeftConfig.Lookup(uint32(0), &cfg))
		if cfg.Flags&object.ConfigEncap == 0 || cfg.UnderlayIpv4 != a.under.As4() || cfg.Port != htons(8472) {
			t.Fatalf("config slot %+v: want encapsulation on from %s to port 8472", cfg, a.under)
		}
		cfg.Flags &^= object.ConfigEncap
		must(t, a.dp.objs.WeftConfig.Put(uint32(0), &cfg))
		rep, err := a.dp.Reconcile(context.Background(), w)
		must(t, err)
		if !slices.ContainsFunc(rep.Repaired, func(s string) bool { return strings.Contains(s, "in-program encapsulation true") }) {
			t.Fatalf("reconcile repaired %q, want the in-program encapsulation", rep.Repaired)
		}
		check(t, a, true, 1, func() {
			if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
				t.Fatal("no path after the repair")
			}
		})
	})

	t.Run("large TCP transfer is sent as GSO packets", func(t *testing.T) {
		both(t, true, true)
		const size = 8 << 20
		c0 := a.counters()
		check(t, a, true, 100, func() { tcpEcho(t, a.pod, b.pod, b.podIP, size) })
		check(t, a, true, 100, func() { tcpEcho(t, a.pod, b.pod, b.podIP6, size) })
		c1 := a.counters()
		// Bigger than the MTU on average: the pod's TSO packets were
		// encapsulated whole and segmented after.
		if pkts, bytes := c1.TxEncap-c0.TxEncap, c1.TxBytes-c0.TxBytes; bytes < 2*size || bytes/pkts <= 1500 {
			t.Fatalf("%d bytes in %d packets encapsulated for 2 x %d bytes of TCP: want GSO packets (> 1500 bytes on average)", bytes, pkts, size)
		}
	})

	t.Run("MTU-sized packets with DF", func(t *testing.T) {
		both(t, true, false)
		// The pod's MTU is the overlay's (1450): the outer packet is 1500
		// bytes, the underlay's MTU.
		check(t, a, true, 2, func() {
			udpDF(t, a.pod, b.pod, b.podIP, 1450-28)
			udpDF(t, a.pod, b.pod, b.podIP6, 1450-48)
		})
	})

	t.Run("IPv6 underlay endpoints keep the device", func(t *testing.T) {
		// An IPv6 underlay costs 20 more bytes of overhead: MTU 1430.
		for _, n := range c.nodes {
			w := c.encapWant(n, true, c.peer(n).under6)
			w.Overlay.MTU = 1430
			n.sync(w)
		}
		check(t, a, false, 10, func() { checkPath(t, c) })
	})

	t.Run("wire format is the device's", func(t *testing.T) {
		// The same datagram from the same socket, through the device,
		// then encapsulated in the program: the outer headers must agree
		// except for the IPv4 ID (and so the checksum), and the inner
		// Ethernet source is node 1's VTEP MAC.
		both(t, false, false)
		var conn net.Conn
		var pc net.PacketConn
		b.pod.MustDo(t, func() error {
			var err error
			pc, err = net.ListenPacket("udp", net.JoinHostPort(b.podIP.String(), "0"))
			return err
		})
		defer pc.Close()
		a.pod.MustDo(t, func() error {
			var err error
			conn, err = net.Dial("udp", pc.LocalAddr().String())
			return err
		})
		defer conn.Close()
		// Neighbours on both sides resolved first.
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("no path")
		}
		send := func(p []byte) []byte {
			frames := capture(t, b, func() {
				for range 3 {
					_, _ = conn.Write(p)
				}
			}, func(f []byte) bool { return innerUDP(f, p) })
			for _, f := range frames {
				if innerUDP(f, p) {
					return f
				}
			}
			t.Fatalf("no VXLAN frame with %q arrived", p)
			return nil
		}
		payload := []byte("the same datagram twice")
		dev := send(payload)
		both(t, true, false)
		var prog []byte
		d := measure(t, a, func() { prog = send(payload) })
		if d.encap == 0 || d.device != 0 {
			t.Fatalf("not encapsulated in the program: %+v", d)
		}
		if len(dev) != len(prog) {
			t.Fatalf("frame lengths differ: device %d, program %d", len(dev), len(prog))
		}
		ip := func(f []byte) []byte { return f[14:34] }
		if headerChecksum(ip(prog)) != 0 {
			t.Errorf("outer IPv4 checksum wrong: % x", ip(prog))
		}
		mask := func(f []byte) []byte {
			g := bytes.Clone(f[:14+20+8+8+14])
			copy(g[0:12], make([]byte, 12))  // outer MACs: the neighbour layer's
			copy(g[14+4:14+6], []byte{0, 0}) // ID
			copy(g[14+10:14+12], []byte{0, 0})
			copy(g[14+20+8+8+6:14+20+8+8+12], make([]byte, 6)) // inner source
			return g
		}
		if !bytes.Equal(mask(dev), mask(prog)) {
			t.Errorf("headers differ (MACs, ID and checksum masked):\ndevice  % x\nprogram % x", mask(dev), mask(prog))
		}
		mac, err := a.dp.VTEPMAC()
		must(t, err)
		if !bytes.Equal(prog[14+20+8+8+6:14+20+8+8+12], mac) {
			t.Errorf("inner source %x, want node 1's VTEP MAC %s", prog[14+20+8+8+6:14+20+8+8+12], mac)
		}
		// The inner packet: TTL decremented once in both, UDP header and
		// payload unchanged (the inner IPv4 ID differs: another datagram).
		in := 14 + 20 + 8 + 8 + 14
		if dev[in+8] != prog[in+8] || !bytes.Equal(dev[in+20:], prog[in+20:]) {
			t.Errorf("inner packets differ:\ndevice  % x\nprogram % x", dev[in:], prog[in:])
		}
		t.Logf("device  % x\nprogram % x", dev[:64], prog[:64])
	})

	t.Run("too big for the overlay goes to the stack", func(t *testing.T) {
		// An overlay MTU below the pods' 1450: the MTU check before the
		// encapsulation sends a full-sized datagram to the stack, which
		// answers "fragmentation needed"; it is never encapsulated.
		for _, n := range c.nodes {
			w := c.encapWant(n, true, netip.Addr{})
			w.Overlay.MTU = 1400
			n.sync(w)
		}
		// Sent once at the pod's MTU whatever path MTU it learned
		// before: it reaches node 1, whose stack refuses it (FragFails)
		// and answers with the ICMP error.
		f0 := ipStat(t, a, "FragFails")
		d := measure(t, a, func() {
			if err := udpDFOnce(t, a.pod, b.pod, b.podIP, 1450-28, 1, true); err == nil {
				t.Error("a 1450-byte datagram with DF crossed an overlay of MTU 1400")
			}
		})
		// Small packets of earlier connections may still go out; the
		// datagram's frame alone would be 1464 bytes.
		if bytes := d.bytes; bytes >= 1450 {
			t.Fatalf("%d bytes in %d packets encapsulated in the program, %d packets sent by the device: the too-big datagram went into the tunnel", bytes, d.encap, d.device)
		}
		if f := ipStat(t, a, "FragFails") - f0; f != 1 {
			t.Fatalf("node 1's stack refused %d datagrams as too big, want the one sent", f)
		}
		check(t, a, true, 1, func() { udpDF(t, a.pod, b.pod, b.podIP, 1400-28) })
	})

	t.Run("the outer header's FIB answer follows a neighbour change", func(t *testing.T) {
		// The flow's memory (weft_routed_pairs, PAIR_TUNNEL, 100 ms)
		// keeps the FIB's answer for the outer header: the underlay and
		// node 2's MAC, which later packets are sent to without asking
		// (bpf_redirect). After someone else moved node 2's neighbour
		// entry to another MAC, the flow's next packet past the 100 ms
		// takes the new one; a Sync forgets at once.
		both(t, true, true)
		pk := object.WeftRoutedPairKey{Src: object.EndpointKey(a.podIP).Addr, Dst: object.EndpointKey(b.podIP).Addr, Kind: pairTunnel}
		pair := func() object.WeftRoutedPairValue {
			t.Helper()
			check(t, a, true, 1, func() { must(t, udpSend(a.pod, b.podIP, 9, "tunnel")) })
			var v object.WeftRoutedPairValue
			must(t, a.dp.objs.WeftRoutedPairs.Lookup(&pk, &v))
			return v
		}
		ul := linkIndex(t, a.ns, "ul0")
		own := mac(t, b.ns, "ul0")
		setUnderlayNeigh(t, a, b, own)
		time.Sleep(150 * time.Millisecond) // past what an earlier subtest left remembered
		if v := pair(); int(v.Ifindex) != ul || !slices.Equal(v.Dmac[:], own) || v.Bridge != 0 {
			t.Fatalf("remembered %+v: want the FIB's answer ifindex %d MAC %s", v, ul, own)
		}
		c0 := b.counters()
		must(t, udpSend(a.pod, b.podIP, 9, "sent to the remembered MAC"))
		if !waitFor(delivered, func() bool { return b.counters().RxDecap > c0.RxDecap }) {
			t.Fatal("node 2 received nothing sent with the remembered answer")
		}
		moved := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x24}
		setUnderlayNeigh(t, a, b, moved)
		time.Sleep(150 * time.Millisecond)
		if v := pair(); !slices.Equal(v.Dmac[:], moved) {
			t.Fatalf("remembered neighbour MAC %s 150 ms after it moved to %s", net.HardwareAddr(v.Dmac[:]), moved)
		}
		setUnderlayNeigh(t, a, b, own)
		a.sync(c.encapWant(a, true, netip.Addr{}))
		if v := pair(); !slices.Equal(v.Dmac[:], own) {
			t.Fatalf("remembered neighbour MAC %s right after a Sync, want %s", net.HardwareAddr(v.Dmac[:]), own)
		}
	})

	t.Run("from the bridge: a pod without the pod check", func(t *testing.T) {
		// Its frames reach the bridge, where weft_from_pods takes the
		// same tail into the tunnel. Last: the test bridge takes its
		// lowest port's MAC (weft's own bridge has a fixed one), so the
		// new port and its removal at the subtest's end may change the
		// gateway's MAC; pod 1 then sends to the MAC it cached, which no
		// port has any more, until ARP learns the new one (seconds:
		// later subtests failed "no path" when this one came before them).
		both(t, true, false)
		pod2, _ := c.addPod(t, a, "vpod2", netip.MustParseAddr("10.244.1.3"))
		check(t, a, true, 3, func() {
			if !netnstest.Reach(t, pod2, b.podIP, reachTimeout) {
				t.Fatal("pod without the pod check cannot reach the remote pod")
			}
			tcpEcho(t, pod2, b.pod, b.podIP, 64<<10)
		})
	})
}
