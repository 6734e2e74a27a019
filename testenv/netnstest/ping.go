package netnstest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Pinger sends ICMP echo requests from inside a namespace over a raw
// socket (IPv4 or IPv6) and records the replies to its own identifier by
// sequence number.
type Pinger struct {
	conn *icmp.PacketConn
	ip   *net.IPConn // conn's socket, read with its control messages
	v6   bool
	id   int
	done chan struct{}

	mu      sync.Mutex
	replies map[int]Reply
	notify  chan struct{} // closed and replaced on every reply
	// upTo is the latest arrival (At) of a reply read: every reply that
	// arrived before it has been read.
	upTo time.Time
}

// Reply is a received echo reply.
type Reply struct {
	From netip.Addr
	// At is when the reply arrived: the kernel's receive timestamp
	// (SO_TIMESTAMPNS), so a reader the scheduler held back does not make
	// a reply late; the time it was read when the kernel gave none.
	At time.Time
	// Read is when the pinger read it.
	Read time.Time
}

// NewPinger opens an ICMP (v6: ICMPv6) socket in n. Close it.
func NewPinger(n *NS, v6 bool) (*Pinger, error) {
	p := &Pinger{v6: v6, id: rand.IntN(0xffff), done: make(chan struct{}),
		replies: map[int]Reply{}, notify: make(chan struct{})}
	err := n.Do(func() error {
		var err error
		if v6 {
			p.conn, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		} else {
			p.conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open icmp socket in %s: %w", n.Name, err)
	}
	if err := p.quiet(); err != nil {
		p.conn.Close()
		return nil, fmt.Errorf("open icmp socket in %s: %w", n.Name, err)
	}
	go p.read()
	return p, nil
}

// quiet makes the raw socket take echo replies only (a raw ICMP socket
// gets a copy of every ICMP message of the namespace, the echo requests
// other pingers send to it too), gives it a 4 MiB receive buffer, so a
// reader that the scheduler holds back for a moment on a loaded machine
// loses no reply to a full buffer, and has the kernel stamp each reply
// with its arrival, so such a reader does not take it for a late one.
func (p *Pinger) quiet() error {
	var inner net.PacketConn
	if p.v6 {
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeEchoReply)
		pc := p.conn.IPv6PacketConn()
		if err := pc.SetICMPFilter(&f); err != nil {
			return fmt.Errorf("set icmpv6 filter: %w", err)
		}
		inner = pc.PacketConn
	} else {
		var f ipv4.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv4.ICMPTypeEchoReply)
		pc := p.conn.IPv4PacketConn()
		if err := pc.SetICMPFilter(&f); err != nil {
			return fmt.Errorf("set icmp filter: %w", err)
		}
		inner = pc.PacketConn
	}
	ip, ok := inner.(*net.IPConn)
	if !ok {
		return fmt.Errorf("icmp socket is a %T, not an IP socket", inner)
	}
	p.ip = ip
	raw, err := ip.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
		if serr != nil {
			serr = fmt.Errorf("set receive buffer: %w", serr)
			return
		}
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); serr != nil {
			serr = fmt.Errorf("turn on receive timestamps: %w", serr)
		}
	}); err != nil {
		return err
	}
	return serr
}

// arrival returns the kernel's receive timestamp among the control
// messages oob, or read when there is none.
func arrival(oob []byte, read time.Time) time.Time {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return read
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			ts := *(*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			return time.Unix(ts.Unix())
		}
	}
	return read
}

func (p *Pinger) read() {
	defer close(p.done)
	buf := make([]byte, 1500)
	oob := make([]byte, 128)
	proto := 1
	if p.v6 {
		proto = 58
	}
	for {
		n, oobn, _, from, err := p.ip.ReadMsgIP(buf, oob)
		if err != nil {
			return
		}
		read := time.Now()
		at := arrival(oob[:oobn], read)
		b := buf[:n]
		if !p.v6 {
			// A raw IPv4 socket reads the IP header too (ReadFrom
			// strips it, ReadMsgIP does not).
			if len(b) < 20 || b[0]>>4 != 4 || len(b) < int(b[0]&0x0f)*4 {
				continue
			}
			b = b[int(b[0]&0x0f)*4:]
		}
		m, err := icmp.ParseMessage(proto, b)
		if err != nil {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || (m.Type != ipv4.ICMPTypeEchoReply && m.Type != ipv6.ICMPTypeEchoReply) || e.ID != p.id {
			continue
		}
		src := netip.Addr{}
		if from != nil {
			src, _ = netip.AddrFromSlice(from.IP)
			src = src.Unmap()
		}
		p.mu.Lock()
		if _, seen := p.replies[e.Seq]; !seen {
			p.replies[e.Seq] = Reply{From: src, At: at, Read: read}
		}
		if at.After(p.upTo) {
			p.upTo = at
		}
		close(p.notify)
		p.notify = make(chan struct{})
		p.mu.Unlock()
	}
}

// Send sends echo request seq (0–65535) to dst.
func (p *Pinger) Send(dst netip.Addr, seq int) error {
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if p.v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	b, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: p.id, Seq: seq & 0xffff, Data: []byte("weft-ping")}}).Marshal(nil)
	if err != nil {
		return err
	}
	_, err = p.conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()})
	return err
}

// Reply returns the reply to seq, if one came.
func (p *Pinger) Reply(seq int) (Reply, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.replies[seq&0xffff]
	return r, ok
}

// ReadUpTo returns the arrival of the latest reply read: a reply that
// arrived before it has been read (the socket's queue is in arrival
// order), so one not among the replies by then did not arrive by then.
func (p *Pinger) ReadUpTo() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.upTo
}

// Forget drops what is known about seq, so the sequence number can be
// used again.
func (p *Pinger) Forget(seq int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.replies, seq&0xffff)
}

// Wait waits until the reply to seq has come from `from` (any source when
// invalid) or the deadline passes.
func (p *Pinger) Wait(seq int, from netip.Addr, deadline time.Time) error {
	for {
		p.mu.Lock()
		r, ok := p.replies[seq&0xffff]
		notify := p.notify
		p.mu.Unlock()
		if ok && (!from.IsValid() || r.From == from) {
			return nil
		}
		select {
		case <-notify:
		case <-p.done:
			return fmt.Errorf("no reply to echo %d: socket closed", seq)
		case <-time.After(time.Until(deadline)):
			return fmt.Errorf("no reply to echo %d: %w", seq, errTimeout)
		}
	}
}

var errTimeout = errors.New("timed out")

// Ping sends one echo request to dst and waits up to timeout for its reply
// from dst.
func (p *Pinger) Ping(dst netip.Addr, seq int, timeout time.Duration) error {
	if err := p.Send(dst, seq); err != nil {
		return fmt.Errorf("ping %s: %w", dst, err)
	}
	if err := p.Wait(seq, dst, time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("ping %s: %w", dst, err)
	}
	return nil
}

// Close closes the socket and waits for the reader.
func (p *Pinger) Close() error {
	err := p.conn.Close()
	<-p.done
	return err
}

// Reach pings dst from n every 100 ms until a reply arrives (true) or
// timeout passes (false).
func Reach(t testing.TB, n *NS, dst netip.Addr, timeout time.Duration) bool {
	t.Helper()
	p, err := NewPinger(n, dst.Is6())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	deadline := time.Now().Add(timeout)
	for seq := 1; time.Now().Before(deadline); seq++ {
		_ = p.Send(dst, seq)
		wait := time.Now().Add(100 * time.Millisecond)
		for s := 1; s <= seq; s++ {
			if _, ok := p.Reply(s); ok {
				return true
			}
		}
		if p.Wait(seq, netip.Addr{}, wait) == nil {
			return true
		}
	}
	return false
}

// Lost sends count echo requests from n to dst every interval and returns
// how many got no reply within 300 ms after the last one.
func Lost(t testing.TB, n *NS, dst netip.Addr, count int, interval time.Duration) int {
	t.Helper()
	p, err := NewPinger(n, dst.Is6())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 1; seq <= count; seq++ {
		<-tick.C
		_ = p.Send(dst, seq)
	}
	time.Sleep(300 * time.Millisecond)
	lost := 0
	for seq := 1; seq <= count; seq++ {
		if _, ok := p.Reply(seq); !ok {
			lost++
		}
	}
	return lost
}
