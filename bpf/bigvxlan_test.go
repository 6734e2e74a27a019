package bpf

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// bigSize is the GSO/GRO size the BIG TCP tests raise every device to.
const bigSize = 192 << 10

// bigTransfer is what each TCP transfer of the BIG TCP tests carries.
const bigTransfer = 48 << 20

// bigWant is n's VXLAN desired state with the in-program VXLAN on and BIG
// TCP, as the agent asks for it (nodeagent/model: IPv4 only over the
// tunnel): peerBig says whether the peer registered spec.CapBigDecap
// (FlagBigDecap on its IPv4 tunnels). Both ends of n's pod veth are raised
// as weft-cni raises them.
func (c *testCluster) bigWant(t testing.TB, n *testNode, peerBig bool) *spec.Desired {
	w := c.encapWant(n, true, netip.Addr{})
	w.BigTCP = spec.BigTCP{IPv4: bigSize}
	if peerBig {
		for i := range w.Tunnels {
			if w.Tunnels[i].Flags&spec.FlagIPv6Endpoint == 0 {
				w.Tunnels[i].Flags |= spec.FlagBigDecap
			}
		}
	}
	raiseGSO(t, n.ns, "vpod", w.BigTCP)
	raiseGSO(t, n.pod, "eth0", w.BigTCP)
	return w
}

// ulTx reads n's underlay transmit counters: packets per byte show the
// size of the packets a setup sends between the nodes.
func ulTx(t testing.TB, n *testNode) (pkts, bytes uint64) {
	n.ns.MustDo(t, func() error {
		l, err := netlink.LinkByName("ul0")
		if err != nil {
			return err
		}
		pkts, bytes = l.Attrs().Statistics.TxPackets, l.Attrs().Statistics.TxBytes
		return nil
	})
	return pkts, bytes
}

// udpInErrors is the kernel's count of UDP datagrams dropped on receive in
// ns (a VXLAN packet whose UDP length field the stack refuses among them).
func udpInErrors(t testing.TB, ns *netnstest.NS) uint64 {
	var v uint64
	ns.MustDo(t, func() error {
		// thread-self: the namespace of this (locked) thread, not the
		// process's.
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		v, err = netnstest.SNMP(string(b), "Udp", "InErrors")
		return err
	})
	return v
}

// tcpTransfer sends size bytes over one TCP connection from namespace
// from to dst (listening in namespace to), in 1 MiB writes so the sender
// builds packets as large as its limits allow, and fails t unless every
// byte arrives in order. A minute is long enough on a loaded machine for
// a transfer that loses nothing and short enough to end one that stalls.
func tcpTransfer(t *testing.T, from, to *netnstest.NS, dst netip.Addr) {
	t.Helper()
	var ln net.Listener
	to.MustDo(t, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(dst.String(), "0"))
		return err
	})
	defer ln.Close()
	deadline := time.Now().Add(time.Minute)
	chunk := bytes.Repeat([]byte("weft-big-tcp-"), (1<<20)/13+1)[:1<<20]
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		buf := make([]byte, 1<<20)
		n := 0
		for n < bigTransfer {
			k, err := io.ReadFull(c, buf)
			if err != nil {
				got <- fmt.Errorf("after %d bytes: %w", n, err)
				return
			}
			if !bytes.Equal(buf[:k], chunk) {
				got <- fmt.Errorf("bytes %d..%d differ from what was sent", n, n+k)
				return
			}
			n += k
		}
		got <- nil
	}()
	var c net.Conn
	from.MustDo(t, func() error {
		var err error
		c, err = net.Dial("tcp", ln.Addr().String())
		return err
	})
	defer c.Close()
	_ = c.SetDeadline(deadline)
	for sent := 0; sent < bigTransfer; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("tcp to %s: write after %d bytes: %v", dst, sent, err)
		}
	}
	if err := <-got; err != nil {
		t.Fatalf("tcp to %s: %v", dst, err)
	}
}

// bigDelta is what one transfer cost: the sender's counters and underlay
// packets, the receiver's counters and UDP receive errors.
type bigDelta struct {
	tx, rx          spec.Counters
	ulPkts, ulBytes uint64
	rxUDPErrs       uint64
	deviceTx        uint64
	perPacket       float64
	desc            string
}

func measureBig(t *testing.T, from, to *testNode, desc string, fn func()) bigDelta {
	t.Helper()
	t0, r0 := from.counters(), to.counters()
	p0, b0 := ulTx(t, from)
	e0, d0 := udpInErrors(t, to.ns), deviceTx(t, from)
	fn()
	t1, r1 := from.counters(), to.counters()
	p1, b1 := ulTx(t, from)
	e1, d1 := udpInErrors(t, to.ns), deviceTx(t, from)
	d := bigDelta{tx: diff(t0, t1), rx: diff(r0, r1), ulPkts: p1 - p0, ulBytes: b1 - b0, rxUDPErrs: e1 - e0, deviceTx: d1 - d0, desc: desc}
	d.perPacket = float64(d.ulBytes) / float64(max(d.ulPkts, 1))
	t.Logf("%s: %d bytes per underlay packet (%d packets); sender: %d encapsulated in the program, %d of them BIG, %d through the device; receiver: %d decapsulated in the program, %d BIG, %d of those to the device's receive, %d UDP receive errors",
		desc, int(d.perPacket), d.ulPkts, d.tx.TxEncap, d.tx.TxEncapBig, d.deviceTx, d.rx.RxDecap, d.rx.RxDecapBig, d.rx.RxDecapStack, d.rxUDPErrs)
	return d
}

// requireBig fails t unless the transfer went in BIG packets encapsulated
// and decapsulated in the programs: most of the sender's underlay bytes
// in packets over 64 KiB, none refused by the receiver's UDP.
func (d bigDelta) requireBig(t *testing.T, toStack bool) {
	t.Helper()
	if d.tx.TxEncapBig == 0 || d.rx.RxDecapBig < d.tx.TxEncapBig {
		t.Errorf("%s: %d BIG packets encapsulated in the program, %d decapsulated: want some, all taken", d.desc, d.tx.TxEncapBig, d.rx.RxDecapBig)
	}
	if d.perPacket <= 64<<10 {
		t.Errorf("%s: %.0f bytes per underlay packet: the packets did not stay BIG", d.desc, d.perPacket)
	}
	if toStack && d.rx.RxDecapStack < d.rx.RxDecapBig/2 {
		t.Errorf("%s: %d of %d BIG packets handed to the device's receive: want most (the destination is no pod)", d.desc, d.rx.RxDecapStack, d.rx.RxDecapBig)
	}
	if !toStack && d.rx.RxDecapStack != 0 {
		t.Errorf("%s: %d BIG packets to the device's receive: want all straight into the pod", d.desc, d.rx.RxDecapStack)
	}
	if d.rxUDPErrs != 0 {
		t.Errorf("%s: the receiver's UDP refused %d datagrams", d.desc, d.rxUDPErrs)
	}
}

// TestBigTCPInProgram: with BIG TCP over VXLAN in the programs, an IPv4
// pod's packets over 64 KiB cross the underlay whole, encapsulated by
// weft_from_port and decapsulated by weft_from_underlay, each way (IPv6
// pods, at 64 KiB, arrive too); a BIG packet for the peer's gateway
// address (no pod) is decapsulated all the same and handed to the overlay
// device's receive, which delivers it to the node (before: the UDP
// receive dropped it for its length 0, and the connection crawled on
// retransmissions). With the sender's underlay back at 64 KiB, which
// segments BIG packets in software as UDP tunnel packets, IPv4 still
// arrives, and an IPv6 pod whose veth someone raised by hand gets no BIG
// packet encapsulated in the program (segmented as a UDP tunnel packet,
// IPv6 BIG TCP comes out broken: 48 MiB took 14.5 s instead of 62 ms) but
// the device, which segments before encapsulating.
func TestBigTCPInProgram(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	for _, n := range c.nodes {
		n.sync(c.bigWant(t, n, true))
	}
	a, z := c.nodes[0], c.nodes[1]
	for _, p := range [][2]*testNode{{a, z}, {z, a}} {
		from, to := p[0], p[1]
		if !netnstest.Reach(t, from.pod, to.podIP, reachTimeout) {
			t.Fatalf("node %d: no path to pod %s", from.idx, to.podIP)
		}
		d := measureBig(t, from, to, fmt.Sprintf("pod %s -> pod %s", from.podIP, to.podIP), func() { tcpTransfer(t, from.pod, to.pod, to.podIP) })
		d.requireBig(t, false)
		d = measureBig(t, from, to, fmt.Sprintf("pod %s -> pod %s", from.podIP6, to.podIP6), func() { tcpTransfer(t, from.pod, to.pod, to.podIP6) })
		if d.tx.TxEncapBig != 0 || d.tx.TxEncap == 0 || d.rxUDPErrs != 0 {
			t.Errorf("IPv6: %d BIG of %d packets encapsulated in the program, %d UDP receive errors: want 64 KiB ones in the program", d.tx.TxEncapBig, d.tx.TxEncap, d.rxUDPErrs)
		}
	}
	gw := z.podCIDR.Addr().Next()
	d := measureBig(t, a, z, fmt.Sprintf("pod %s -> gateway %s", a.podIP, gw), func() { tcpTransfer(t, a.pod, z.ns, gw) })
	d.requireBig(t, true)

	// The sender's underlay segments what is over 64 KiB in software.
	a.ns.MustDo(t, func() error {
		l, err := netlink.LinkByName("ul0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetGSOMaxSize(l, 64<<10); err != nil {
			return err
		}
		return netlink.LinkSetGSOIPv4MaxSize(l, 64<<10)
	})
	d = measureBig(t, a, z, "IPv4, segmented by the sender's underlay", func() { tcpTransfer(t, a.pod, z.pod, z.podIP) })
	if d.tx.TxEncapBig == 0 || d.perPacket > 1600 || d.rxUDPErrs != 0 {
		t.Errorf("IPv4 segmented: %d BIG packets encapsulated in the program, %.0f bytes per underlay packet, %d UDP receive errors: want BIG ones, cut to the MTU, none refused", d.tx.TxEncapBig, d.perPacket, d.rxUDPErrs)
	}
	raiseGSO(t, a.ns, "vpod", spec.BigTCP{IPv6: bigSize})
	raiseGSO(t, a.pod, "eth0", spec.BigTCP{IPv6: bigSize})
	d = measureBig(t, a, z, "IPv6 raised by hand, segmented by the sender's underlay", func() { tcpTransfer(t, a.pod, z.pod, z.podIP6) })
	if d.tx.TxEncapBig != 0 || d.deviceTx == 0 || d.rxUDPErrs != 0 {
		t.Errorf("IPv6 raised by hand: %d BIG packets encapsulated in the program, %d through the device, %d UDP receive errors: want the BIG ones through the device", d.tx.TxEncapBig, d.deviceTx, d.rxUDPErrs)
	}
}

// TestBigTCPMixedPair: a node whose agent encapsulates in the device
// (--tunnel-datapath=device) does not register spec.CapBigDecap, so its
// peer's tunnel to it lacks FlagBigDecap and the peer's programs hand BIG
// packets to the device, which segments them: the transfer arrives whole
// either way, and no BIG packet is sent in the program to the node that
// could not take it.
func TestBigTCPMixedPair(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a, z := c.nodes[0], c.nodes[1]
	a.sync(c.bigWant(t, a, false))
	z.sync(c.overlayWant(z, spec.ModeVXLAN, netip.Addr{}))
	if !netnstest.Reach(t, a.pod, z.podIP, reachTimeout) {
		t.Fatal("no pod-to-pod path")
	}
	d := measureBig(t, a, z, "in-program node -> device node", func() { tcpTransfer(t, a.pod, z.pod, z.podIP) })
	if d.tx.TxEncapBig != 0 || d.rx.RxDecap != 0 {
		t.Errorf("%d BIG packets encapsulated in the program, %d decapsulated by the device node's program: want none", d.tx.TxEncapBig, d.rx.RxDecap)
	}
	if d.deviceTx == 0 || d.rxUDPErrs != 0 {
		t.Errorf("%d packets through the overlay device, %d refused by the receiver's UDP: want the BIG ones through the device, none refused", d.deviceTx, d.rxUDPErrs)
	}
	back := measureBig(t, z, a, "device node -> in-program node", func() { tcpTransfer(t, z.pod, a.pod, a.podIP) })
	if back.rxUDPErrs != 0 {
		t.Errorf("the in-program node's UDP refused %d datagrams", back.rxUDPErrs)
	}
}
