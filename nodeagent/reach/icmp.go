package reach

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// magic starts every probe's payload, so a reply is ours beyond its ID.
var magic = []byte("weftprobe")

// rawConn is a raw ICMP socket of one family in the network namespace of
// the thread that opened it. The source address of each probe is the one
// the kernel picks for the route (the overlay device's pod-CIDR address
// in overlay modes, the underlay address in native ones), which is what a
// peer's datapath accepts from this node.
type rawConn struct {
	pc  *icmp.PacketConn
	v6  bool
	id  uint16
	buf []byte
}

// ListenICMP opens a raw ICMP (v6 false) or ICMPv6 socket that receives
// only echo replies and the ICMP errors about its own requests. It needs
// CAP_NET_RAW and works in the network namespace of the calling thread.
func ListenICMP(v6 bool) (Conn, error) {
	network, addr := "ip4:icmp", "0.0.0.0"
	if v6 {
		network, addr = "ip6:ipv6-icmp", "::"
	}
	pc, err := icmp.ListenPacket(network, addr)
	if err != nil {
		return nil, fmt.Errorf("open probe socket %s: %w", network, err)
	}
	// The socket sees every ICMP message the node receives; let the kernel
	// drop all but the answers a probe can get.
	if v6 {
		var f ipv6.ICMPFilter
		f.SetAll(true)
		for _, t := range []ipv6.ICMPType{ipv6.ICMPTypeEchoReply, ipv6.ICMPTypeDestinationUnreachable, ipv6.ICMPTypeTimeExceeded} {
			f.Accept(t)
		}
		err = pc.IPv6PacketConn().SetICMPFilter(&f)
	} else {
		var f ipv4.ICMPFilter
		f.SetAll(true)
		for _, t := range []ipv4.ICMPType{ipv4.ICMPTypeEchoReply, ipv4.ICMPTypeDestinationUnreachable, ipv4.ICMPTypeTimeExceeded} {
			f.Accept(t)
		}
		err = pc.IPv4PacketConn().SetICMPFilter(&f)
	}
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("filter probe socket: %w", err)
	}
	return &rawConn{pc: pc, v6: v6, id: uint16(rand.N(1 << 16)), buf: make([]byte, 1500)}, nil
}

func (c *rawConn) echoType() icmp.Type {
	if c.v6 {
		return ipv6.ICMPTypeEchoRequest
	}
	return ipv4.ICMPTypeEcho
}

func (c *rawConn) Send(dst netip.Addr, seq uint16) error {
	m := icmp.Message{Type: c.echoType(), Body: &icmp.Echo{ID: int(c.id), Seq: int(seq), Data: magic}}
	// The kernel computes the ICMPv6 checksum itself (it knows the
	// pseudo-header); Marshal(nil) leaves it zero.
	b, err := m.Marshal(nil)
	if err != nil {
		return fmt.Errorf("build probe: %w", err)
	}
	_, err = c.pc.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()})
	if errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) {
		return fmt.Errorf("send probe to %s: %w (%w)", dst, ErrNoRoute, err)
	}
	if err != nil {
		return fmt.Errorf("send probe to %s: %w", dst, err)
	}
	return nil
}

func (c *rawConn) Recv() (Reply, error) {
	proto := 1
	if c.v6 {
		proto = 58
	}
	for {
		n, from, err := c.pc.ReadFrom(c.buf)
		if err != nil {
			return Reply{}, err
		}
		m, err := icmp.ParseMessage(proto, c.buf[:n])
		if err != nil {
			continue
		}
		src := addrOf(from)
		switch b := m.Body.(type) {
		case *icmp.Echo:
			if uint16(b.ID) == c.id && bytes.HasPrefix(b.Data, magic) {
				return Reply{Seq: uint16(b.Seq), From: src}, nil
			}
		case *icmp.DstUnreach:
			if seq, ok := c.quoted(b.Data); ok {
				return Reply{Seq: seq, From: src, Err: unreachText(c.v6, m.Code)}, nil
			}
		case *icmp.TimeExceeded:
			if seq, ok := c.quoted(b.Data); ok {
				return Reply{Seq: seq, From: src, Err: "time exceeded (a routing loop?)"}, nil
			}
		}
	}
}

// quoted finds one of this Conn's echo requests in the datagram an ICMP
// error quotes (its IP header and at least 8 bytes of ICMP) and returns
// its sequence number.
func (c *rawConn) quoted(d []byte) (uint16, bool) {
	var icmpHdr []byte
	if c.v6 {
		if len(d) < 48 || d[6] != 58 {
			return 0, false
		}
		icmpHdr = d[40:]
		if icmpHdr[0] != byte(ipv6.ICMPTypeEchoRequest) {
			return 0, false
		}
	} else {
		if len(d) < 20 || d[0]>>4 != 4 || d[9] != 1 {
			return 0, false
		}
		ihl := int(d[0]&0x0f) * 4
		if len(d) < ihl+8 {
			return 0, false
		}
		icmpHdr = d[ihl:]
		if icmpHdr[0] != byte(ipv4.ICMPTypeEcho) {
			return 0, false
		}
	}
	if binary.BigEndian.Uint16(icmpHdr[4:6]) != c.id {
		return 0, false
	}
	return binary.BigEndian.Uint16(icmpHdr[6:8]), true
}

func (c *rawConn) Close() error { return c.pc.Close() }

func addrOf(a net.Addr) netip.Addr {
	if ip, ok := a.(*net.IPAddr); ok {
		if x, ok := netip.AddrFromSlice(ip.IP); ok {
			return x.Unmap()
		}
	}
	return netip.Addr{}
}

// unreachText names an ICMP destination-unreachable code.
func unreachText(v6 bool, code int) string {
	if v6 {
		switch code {
		case 0:
			return "no route to destination"
		case 1:
			return "administratively prohibited"
		case 3:
			return "address unreachable"
		case 4:
			return "port unreachable"
		}
		return fmt.Sprintf("destination unreachable (code %d)", code)
	}
	switch code {
	case 0:
		return "network unreachable"
	case 1:
		return "host unreachable"
	case 3:
		return "port unreachable"
	case 4:
		return "fragmentation needed"
	case 9, 10, 13:
		return "administratively prohibited"
	}
	return fmt.Sprintf("destination unreachable (code %d)", code)
}
