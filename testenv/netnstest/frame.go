package netnstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Frames written by hand, for tests that play an attacker: a pod or an
// underlay host that sends what the kernel would never send for it
// (another source address, another MAC, a forged ARP or neighbour
// advertisement). Checksums are right, so only the datapath under test
// can refuse them.

// UDP is an Ethernet frame carrying one UDP datagram (IPv4 or IPv6 after
// the family of Src and Dst).
type UDP struct {
	DstMAC, SrcMAC   net.HardwareAddr
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Payload          []byte
	// TTL is the IPv4 TTL or IPv6 hop limit; 0 means 64.
	TTL uint8
	// DontFragment sets IPv4's DF bit.
	DontFragment bool
}

// Frame returns the frame's bytes.
func (u UDP) Frame() []byte {
	udp := make([]byte, 8+len(u.Payload))
	binary.BigEndian.PutUint16(udp[0:], u.SrcPort)
	binary.BigEndian.PutUint16(udp[2:], u.DstPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], u.Payload)
	sum := pseudoSum(u.Src, u.Dst, unix.IPPROTO_UDP, len(udp))
	ck := fold(sum + onesSum(udp))
	if ck == 0 {
		ck = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], ck)
	ttl := u.TTL
	if ttl == 0 {
		ttl = 64
	}
	ip := ipHeader(u.Src, u.Dst, unix.IPPROTO_UDP, udp)
	if u.Src.Is4() {
		ip[8] = ttl
		if u.DontFragment {
			ip[6] |= 0x40
		}
		binary.BigEndian.PutUint16(ip[10:], 0)
		binary.BigEndian.PutUint16(ip[10:], fold(onesSum(ip[:20])))
	} else {
		ip[7] = ttl
	}
	return append(ethernet(u.DstMAC, u.SrcMAC, u.Src), ip...)
}

// IPv6 is an Ethernet frame carrying an IPv6 packet with the given next
// header and payload (extension headers and upper layer as bytes, see
// HopByHop and ICMPv6Message), hop limit 255.
type IPv6 struct {
	DstMAC, SrcMAC net.HardwareAddr
	Src, Dst       netip.Addr
	Next           uint8
	Payload        []byte
}

// Frame returns the frame's bytes.
func (p IPv6) Frame() []byte {
	return append(ethernet(p.DstMAC, p.SrcMAC, p.Src), ipHeader(p.Src, p.Dst, p.Next, p.Payload)...)
}

// ICMPv6Message is an ICMPv6 message (type, code 0, body) with its
// checksum for src → dst.
func ICMPv6Message(src, dst netip.Addr, typ uint8, body []byte) []byte {
	msg := append([]byte{typ, 0, 0, 0}, body...)
	binary.BigEndian.PutUint16(msg[2:], fold(pseudoSum(src, dst, unix.IPPROTO_ICMPV6, len(msg))+onesSum(msg)))
	return msg
}

// HopByHop is an 8-byte IPv6 hop-by-hop options header (PadN only)
// followed by header next.
func HopByHop(next uint8) []byte {
	return []byte{next, 0, 1, 4, 0, 0, 0, 0}
}

// Ethernet is a frame of any type: payload behind an Ethernet header with
// ethertype typ.
func Ethernet(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	h := make([]byte, 14, 14+len(payload))
	copy(h[0:6], dst)
	copy(h[6:12], src)
	binary.BigEndian.PutUint16(h[12:], typ)
	return append(h, payload...)
}

// VLAN tags frame (an Ethernet frame) with 802.1Q VLAN id.
func VLAN(frame []byte, id uint16) []byte {
	out := make([]byte, 0, len(frame)+4)
	out = append(out, frame[:12]...)
	out = binary.BigEndian.AppendUint16(out, unix.ETH_P_8021Q)
	out = binary.BigEndian.AppendUint16(out, id&0x0fff)
	return append(out, frame[12:]...)
}

// ethernet is an Ethernet header for an IP packet of src's family.
func ethernet(dst, src net.HardwareAddr, ip netip.Addr) []byte {
	h := make([]byte, 14)
	copy(h[0:6], dst)
	copy(h[6:12], src)
	if ip.Is4() {
		binary.BigEndian.PutUint16(h[12:], unix.ETH_P_IP)
	} else {
		binary.BigEndian.PutUint16(h[12:], unix.ETH_P_IPV6)
	}
	return h
}

// ipHeader returns an IPv4 (TTL 64) or IPv6 (hop limit 255, so a
// neighbour discovery message is taken as on-link) header with body.
func ipHeader(src, dst netip.Addr, proto uint8, body []byte) []byte {
	if src.Is4() {
		h := make([]byte, 20, 20+len(body))
		h[0], h[8], h[9] = 0x45, 64, proto
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(body)))
		s, d := src.As4(), dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		binary.BigEndian.PutUint16(h[10:], fold(onesSum(h)))
		return append(h, body...)
	}
	h := make([]byte, 40, 40+len(body))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(body)))
	h[6], h[7] = proto, 255
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, body...)
}

// NeighborAdvert is an Ethernet frame carrying an ICMPv6 neighbour
// advertisement (solicited, override) for Target with SrcMAC as its
// target link-layer address option.
type NeighborAdvert struct {
	DstMAC, SrcMAC net.HardwareAddr
	Src, Dst       netip.Addr
	Target         netip.Addr
}

// Frame returns the frame's bytes.
func (n NeighborAdvert) Frame() []byte {
	msg := make([]byte, 32)
	msg[0] = 136  // neighbour advertisement
	msg[4] = 0x60 // solicited, override
	t := n.Target.As16()
	copy(msg[8:], t[:])
	msg[24], msg[25] = 2, 1 // target link-layer address, 8 bytes
	copy(msg[26:], n.SrcMAC)
	binary.BigEndian.PutUint16(msg[2:], fold(pseudoSum(n.Src, n.Dst, unix.IPPROTO_ICMPV6, len(msg))+onesSum(msg)))
	return append(ethernet(n.DstMAC, n.SrcMAC, n.Src), ipHeader(n.Src, n.Dst, unix.IPPROTO_ICMPV6, msg)...)
}

// ARP is an Ethernet frame carrying an ARP message: a request when
// Reply is false (target MAC zero), else a reply.
type ARP struct {
	DstMAC, SrcMAC net.HardwareAddr
	SenderMAC      net.HardwareAddr
	SenderIP       netip.Addr
	TargetMAC      net.HardwareAddr
	TargetIP       netip.Addr
	Reply          bool
}

// Frame returns the frame's bytes.
func (a ARP) Frame() []byte {
	f := make([]byte, 42)
	copy(f[0:6], a.DstMAC)
	copy(f[6:12], a.SrcMAC)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_ARP)
	binary.BigEndian.PutUint16(f[14:], 1) // Ethernet
	binary.BigEndian.PutUint16(f[16:], unix.ETH_P_IP)
	f[18], f[19] = 6, 4
	op := uint16(1)
	if a.Reply {
		op = 2
	}
	binary.BigEndian.PutUint16(f[20:], op)
	copy(f[22:28], a.SenderMAC)
	s, t := a.SenderIP.As4(), a.TargetIP.As4()
	copy(f[28:32], s[:])
	copy(f[32:38], a.TargetMAC)
	copy(f[38:42], t[:])
	return f
}

func pseudoSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	var p []byte
	if src.Is4() {
		p = make([]byte, 12)
		s, d := src.As4(), dst.As4()
		copy(p[0:], s[:])
		copy(p[4:], d[:])
		p[9] = proto
		binary.BigEndian.PutUint16(p[10:], uint16(length))
	} else {
		p = make([]byte, 40)
		s, d := src.As16(), dst.As16()
		copy(p[0:], s[:])
		copy(p[16:], d[:])
		binary.BigEndian.PutUint32(p[32:], uint32(length))
		p[39] = proto
	}
	return onesSum(p)
}

func onesSum(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// SendFrame writes frame as it is out of the interface ifName in n
// (an AF_PACKET socket: the kernel adds nothing and checks nothing).
func (n *NS) SendFrame(ifName string, frame []byte) error {
	return SendFrameAt(n.Path(), ifName, frame)
}

// SendFrameAt is SendFrame for the namespace at path.
func SendFrameAt(path, ifName string, frame []byte) error {
	return RunAt(path, func() error {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return fmt.Errorf("send frame: %w", err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("send frame: open packet socket: %w", err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		copy(sa.Addr[:], frame[0:6])
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			return fmt.Errorf("send frame out of %s: %w", ifName, err)
		}
		return nil
	})
}

// UDPSink receives UDP datagrams in a namespace (both families, one
// port) and remembers the source of each payload it got.
type UDPSink struct {
	conn net.PacketConn
	done chan struct{}

	mu   sync.Mutex
	got  map[string]netip.Addr
	note chan struct{} // closed and replaced on every datagram
}

// NewUDPSink opens a UDP socket on port (0: any) in n. Close it.
func NewUDPSink(n *NS, port uint16) (*UDPSink, error) {
	return NewUDPSinkAt(n.Path(), port)
}

// NewUDPSinkAt is NewUDPSink for the namespace at path.
func NewUDPSinkAt(path string, port uint16) (*UDPSink, error) {
	s := &UDPSink{done: make(chan struct{}), got: map[string]netip.Addr{}, note: make(chan struct{})}
	err := RunAt(path, func() error {
		var err error
		s.conn, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open udp sink in %s: %w", path, err)
	}
	go s.read()
	return s, nil
}

// Port is the sink's UDP port.
func (s *UDPSink) Port() uint16 { return uint16(s.conn.LocalAddr().(*net.UDPAddr).Port) }

func (s *UDPSink) read() {
	defer close(s.done)
	buf := make([]byte, 2048)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
		s.mu.Lock()
		s.got[string(buf[:n])] = src
		close(s.note)
		s.note = make(chan struct{})
		s.mu.Unlock()
	}
}

// Wait returns the source of the datagram carrying payload once it has
// arrived, or false when it has not within d.
func (s *UDPSink) Wait(payload string, d time.Duration) (netip.Addr, bool) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		src, ok := s.got[payload]
		note := s.note
		s.mu.Unlock()
		if ok {
			return src, true
		}
		select {
		case <-note:
		case <-deadline.C:
			return netip.Addr{}, false
		}
	}
}

// Close closes the socket and waits for the reader.
func (s *UDPSink) Close() error {
	err := s.conn.Close()
	<-s.done
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}
