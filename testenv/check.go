package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/weftnet/weft/testenv/netnstest"
)

// EchoPort is the TCP and UDP port of the echo server in every pod.
const EchoPort = 7777

// DiscardPort is the TCP port of the discard server in every pod (reads
// and drops everything: for throughput measurements).
const DiscardPort = 7779

// Echo is a TCP and UDP echo server listening inside a pod namespace. Its
// sockets were created on a thread in that namespace, so the goroutines
// serving them can run anywhere.
type Echo struct {
	tcp     net.Listener
	discard net.Listener
	udp     net.PacketConn
	wg      sync.WaitGroup
}

// StartEcho starts an echo server on EchoPort inside the named namespace,
// on every address of both families (one dual-stack socket each).
func StartEcho(ns string) (*Echo, error) {
	e := &Echo{}
	err := InNS(ns, func() error {
		var err error
		if e.tcp, err = net.Listen("tcp", fmt.Sprintf(":%d", EchoPort)); err != nil {
			return fmt.Errorf("listen tcp in %s: %w", ns, err)
		}
		if e.udp, err = net.ListenPacket("udp", fmt.Sprintf(":%d", EchoPort)); err != nil {
			e.tcp.Close()
			return fmt.Errorf("listen udp in %s: %w", ns, err)
		}
		if e.discard, err = net.Listen("tcp", fmt.Sprintf(":%d", DiscardPort)); err != nil {
			e.tcp.Close()
			e.udp.Close()
			return fmt.Errorf("listen tcp in %s: %w", ns, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	e.wg.Add(3)
	serve := func(l net.Listener, handle func(net.Conn)) {
		defer e.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}
	go serve(e.tcp, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		io.Copy(c, c)
	})
	go serve(e.discard, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		io.Copy(io.Discard, c)
	})
	go func() {
		defer e.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := e.udp.ReadFrom(buf)
			if err != nil {
				return
			}
			e.udp.WriteTo(buf[:n], from)
		}
	}()
	return e, nil
}

// Close stops the server and waits for its goroutines.
func (e *Echo) Close() {
	e.tcp.Close()
	e.discard.Close()
	e.udp.Close()
	e.wg.Wait()
}

// WhoPort is the TCP and UDP port of the name server StartWho runs in a
// pod (a Service's backends answer with who they are).
const WhoPort = 7780

// Who answers every TCP connection and every UDP datagram on WhoPort with
// its name and a newline: a Service's client learns which backend it
// reached.
type Who struct {
	tcp net.Listener
	udp net.PacketConn
	wg  sync.WaitGroup
}

// StartWho starts a Who server named name inside namespace ns.
func StartWho(ns, name string) (*Who, error) {
	w := &Who{}
	err := InNS(ns, func() error {
		var err error
		if w.tcp, err = net.Listen("tcp", fmt.Sprintf(":%d", WhoPort)); err != nil {
			return fmt.Errorf("listen tcp in %s: %w", ns, err)
		}
		if w.udp, err = net.ListenPacket("udp", fmt.Sprintf(":%d", WhoPort)); err != nil {
			w.tcp.Close()
			return fmt.Errorf("listen udp in %s: %w", ns, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	answer := []byte(name + "\n")
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		for {
			c, err := w.tcp.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(answer)
			c.Close()
		}
	}()
	go func() {
		defer w.wg.Done()
		buf := make([]byte, 1500)
		for {
			_, from, err := w.udp.ReadFrom(buf)
			if err != nil {
				return
			}
			w.udp.WriteTo(answer, from)
		}
	}()
	return w, nil
}

// Close stops the server and waits for its goroutines.
func (w *Who) Close() {
	w.tcp.Close()
	w.udp.Close()
	w.wg.Wait()
}

// AskWho asks the Who server behind dst (a pod's, or a Service's address
// that leads to one) from namespace ns over network ("tcp" or "udp") and
// returns the name it answered with and the address the answer came
// from. A TCP answer comes from dst by construction (a connected socket
// takes no SYN-ACK from another address, so an established connection
// proves the reverse NAT); a UDP question is sent from an unconnected
// socket, which takes an answer from any address and says which.
func AskWho(ctx context.Context, ns, network string, dst netip.AddrPort) (string, netip.AddrPort, error) {
	deadline := time.Now().Add(3 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	buf := make([]byte, 256)
	switch network {
	case "tcp":
		dctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		c, err := dialIn(dctx, ns, "tcp", dst.String())
		if err != nil {
			return "", netip.AddrPort{}, err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		var got []byte
		for {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				return "", netip.AddrPort{}, fmt.Errorf("tcp %s→%s: read: %w", ns, dst, err)
			}
		}
		from, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		return strings.TrimSpace(string(got)), from, nil
	case "udp":
		var pc net.PacketConn
		err := InNS(ns, func() error {
			var err error
			pc, err = net.ListenPacket("udp", ":0")
			return err
		})
		if err != nil {
			return "", netip.AddrPort{}, fmt.Errorf("udp socket in %s: %w", ns, err)
		}
		defer pc.Close()
		pc.SetDeadline(deadline)
		if _, err := pc.WriteTo([]byte("who\n"), net.UDPAddrFromAddrPort(dst)); err != nil {
			return "", netip.AddrPort{}, fmt.Errorf("udp %s→%s: %w", ns, dst, err)
		}
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return "", netip.AddrPort{}, fmt.Errorf("udp %s→%s: %w", ns, dst, err)
		}
		src := from.(*net.UDPAddr).AddrPort()
		return strings.TrimSpace(string(buf[:n])), netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), nil
	}
	return "", netip.AddrPort{}, fmt.Errorf("ask who: network %q", network)
}

// dialIn dials from inside the named namespace.
func dialIn(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNS(ns, func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// CheckTCP connects from namespace ns to dst's echo server, sends a payload
// and expects it back.
func CheckTCP(ctx context.Context, ns string, dst netip.Addr) error {
	c, err := dialIn(ctx, ns, "tcp", netip.AddrPortFrom(dst, EchoPort).String())
	if err != nil {
		return fmt.Errorf("tcp %s→%s: %w", ns, dst, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	// Larger than one MSS, so a broken MTU shows up as a failure.
	msg := bytes.Repeat([]byte("weft-tcp "), 400)
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("tcp %s→%s: write: %w", ns, dst, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("tcp %s→%s: read: %w", ns, dst, err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("tcp %s→%s: echo differs", ns, dst)
	}
	return nil
}

// CheckUDP sends a datagram from namespace ns to dst's echo server and
// expects it back, retrying a few times (UDP may be dropped once while
// neighbours resolve).
func CheckUDP(ctx context.Context, ns string, dst netip.Addr) error {
	c, err := dialIn(ctx, ns, "udp", netip.AddrPortFrom(dst, EchoPort).String())
	if err != nil {
		return fmt.Errorf("udp %s→%s: %w", ns, dst, err)
	}
	defer c.Close()
	msg := []byte(fmt.Sprintf("weft-udp %s %d", ns, time.Now().UnixNano()))
	buf := make([]byte, 2048)
	var last error
	for try := 0; try < 5 && ctx.Err() == nil; try++ {
		if _, err := c.Write(msg); err != nil {
			last = err
			time.Sleep(200 * time.Millisecond)
			continue
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			last = err
			continue
		}
		if bytes.Equal(buf[:n], msg) {
			return nil
		}
		last = errors.New("echo differs")
	}
	if last == nil {
		last = ctx.Err()
	}
	return fmt.Errorf("udp %s→%s: %w", ns, dst, last)
}

// newPinger opens an ICMP socket in the named namespace for dst's family.
func newPinger(ns string, dst netip.Addr) (*netnstest.Pinger, error) {
	var p *netnstest.Pinger
	err := withNS(ns, func(n *netnstest.NS) error {
		var err error
		p, err = netnstest.NewPinger(n, dst.Is6())
		return err
	})
	return p, err
}

// CheckICMP pings dst from namespace ns, up to 3 tries.
func CheckICMP(ctx context.Context, ns string, dst netip.Addr) error {
	p, err := newPinger(ns, dst)
	if err != nil {
		return err
	}
	defer p.Close()
	var last error
	for try := 0; try < 3 && ctx.Err() == nil; try++ {
		if last = p.Ping(dst, try+1, time.Second); last == nil {
			return nil
		}
	}
	if last == nil {
		last = ctx.Err()
	}
	return fmt.Errorf("icmp %s→%s: %w", ns, dst, last)
}

// Target is one end of a connectivity check.
type Target struct {
	Name string     // printable name (the pod name)
	NS   string     // namespace the check runs from
	Addr netip.Addr // address checked when this is the destination
	// Addrs are the target's addresses, one per family (IPv4 first);
	// empty means Addr alone.
	Addrs []netip.Addr
}

// addrOf is t's address of one family, invalid when it has none.
func (t Target) addrOf(v6 bool) netip.Addr {
	if len(t.Addrs) == 0 {
		if t.Addr.Is6() == v6 {
			return t.Addr
		}
		return netip.Addr{}
	}
	for _, a := range t.Addrs {
		if a.Is6() == v6 {
			return a
		}
	}
	return netip.Addr{}
}

// PairResult is the outcome of the checks from one pod to another over
// one address family; a nil error means that protocol worked.
type PairResult struct {
	From, To Target
	// Family is "IPv4" or "IPv6": the family of the destination address
	// checked.
	Family    string
	ICMP, TCP error
	UDP       error
}

// OK reports whether every protocol worked.
func (r PairResult) OK() bool { return r.ICMP == nil && r.TCP == nil && r.UDP == nil }

// Matrix is the result of an all-pairs check, over every family the
// targets share.
type Matrix struct {
	Targets []Target
	Results []PairResult
}

// Failed returns the pairs where some protocol failed.
func (m Matrix) Failed() []PairResult {
	var out []PairResult
	for _, r := range m.Results {
		if !r.OK() {
			out = append(out, r)
		}
	}
	return out
}

// Families lists the families checked, IPv4 first.
func (m Matrix) Families() []string {
	var out []string
	for _, f := range []string{"IPv4", "IPv6"} {
		for _, r := range m.Results {
			if r.Family == f {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

// Count returns how many pairs were checked over family and how many of
// them failed.
func (m Matrix) Count(family string) (pairs, failed int) {
	for _, r := range m.Results {
		if r.Family == family {
			pairs++
			if !r.OK() {
				failed++
			}
		}
	}
	return pairs, failed
}

// Summary is one line per family: "IPv4: 30 pairs, 0 failed".
func (m Matrix) Summary() string {
	var b strings.Builder
	for _, f := range m.Families() {
		n, failed := m.Count(f)
		fmt.Fprintf(&b, "%s: %d pairs, %d failed\n", f, n, failed)
	}
	return b.String()
}

// String renders the matrix as one table per family: rows are sources,
// columns destinations, each cell "ITU" for the protocols that worked
// (ICMP, TCP, UDP) and "-" in a failed protocol's place; then every
// failure, naming its family.
func (m Matrix) String() string {
	var b strings.Builder
	w := 6
	for _, t := range m.Targets {
		w = max(w, len(t.Name))
	}
	cell := map[[3]string]string{}
	for _, r := range m.Results {
		s := []byte("ITU")
		if r.ICMP != nil {
			s[0] = '-'
		}
		if r.TCP != nil {
			s[1] = '-'
		}
		if r.UDP != nil {
			s[2] = '-'
		}
		cell[[3]string{r.Family, r.From.Name, r.To.Name}] = string(s)
	}
	for _, fam := range m.Families() {
		fmt.Fprintf(&b, "%s:\n", fam)
		fmt.Fprintf(&b, "%-*s", w+2, "from\\to")
		for _, t := range m.Targets {
			fmt.Fprintf(&b, " %-*s", w, t.Name)
		}
		b.WriteString("\n")
		for _, f := range m.Targets {
			fmt.Fprintf(&b, "%-*s", w+2, f.Name)
			for _, t := range m.Targets {
				c, ok := cell[[3]string{fam, f.Name, t.Name}]
				if !ok {
					c = "."
				}
				fmt.Fprintf(&b, " %-*s", w, c)
			}
			b.WriteString("\n")
		}
	}
	for _, r := range m.Failed() {
		for _, err := range []error{r.ICMP, r.TCP, r.UDP} {
			if err != nil {
				fmt.Fprintf(&b, "FAIL %s %v\n", r.Family, err)
			}
		}
	}
	return b.String()
}

// CheckAll runs ICMP, TCP and UDP from every target to every other one
// (skipping pairs for which skip returns true), over each family both
// ends have an address of, a few pairs at a time.
func CheckAll(ctx context.Context, targets []Target, skip func(from, to Target) bool) Matrix {
	m := Matrix{Targets: targets}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, v6 := range []bool{false, true} {
		for _, f := range targets {
			for _, t := range targets {
				dst := t.addrOf(v6)
				if f.Name == t.Name || !dst.IsValid() || !f.addrOf(v6).IsValid() || (skip != nil && skip(f, t)) {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					c, cancel := context.WithTimeout(ctx, 10*time.Second)
					defer cancel()
					r := PairResult{From: f, To: t, Family: familyName(v6)}
					r.ICMP = CheckICMP(c, f.NS, dst)
					r.TCP = CheckTCP(c, f.NS, dst)
					r.UDP = CheckUDP(c, f.NS, dst)
					mu.Lock()
					m.Results = append(m.Results, r)
					mu.Unlock()
				}()
			}
		}
	}
	wg.Wait()
	return m
}

// Stream is a continuous ping from one namespace to a set of destinations
// (of one address family), counting requests sent and replies lost.
type Stream struct {
	p        *netnstest.Pinger
	dsts     []netip.Addr
	interval time.Duration
	timeout  time.Duration
	stop     chan struct{}
	sending  sync.WaitGroup

	mu       sync.Mutex
	seq      int
	pending  map[int]time.Time // seq → sent
	lost     []string
	sent     int
	received int
}

// StartStream pings every destination from namespace ns every interval
// until Stop. A request without a reply within 2 s counts as lost.
func StartStream(ns string, dsts []netip.Addr, interval time.Duration) (*Stream, error) {
	if len(dsts) == 0 {
		return nil, errors.New("start stream: no destinations")
	}
	p, err := newPinger(ns, dsts[0])
	if err != nil {
		return nil, err
	}
	s := &Stream{p: p, dsts: dsts, interval: interval, pending: map[int]time.Time{},
		stop: make(chan struct{}), timeout: 2 * time.Second}
	s.sending.Add(1)
	go s.sender()
	return s, nil
}

func (s *Stream) sender() {
	defer s.sending.Done()
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		for _, d := range s.dsts {
			s.mu.Lock()
			// ICMP sequence numbers are 16 bits; 0 is left out.
			s.seq = s.seq%0xffff + 1
			seq := s.seq
			s.sent++
			s.pending[seq] = time.Now()
			// A reply that came after its request was counted lost must
			// not count for this request once the seq has wrapped.
			s.p.Forget(seq)
			s.mu.Unlock()
			// A failed send is a lost packet too; it stays pending.
			_ = s.p.Send(d, seq)
		}
		s.settle(false)
	}
}

// settle counts each pending request whose reply came within the timeout
// as received, and one without as lost once the timeout has passed (or at
// once when all).
func (s *Stream) settle(all bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for seq, at := range s.pending {
		r, ok := s.p.Reply(seq)
		switch {
		case ok && !r.At.Before(at) && r.At.Sub(at) <= s.timeout:
			s.received++
		case all || now.Sub(at) > s.timeout:
			s.lost = append(s.lost, fmt.Sprintf("seq %d sent %s", seq, at.Format("15:04:05.000")))
		default:
			continue
		}
		delete(s.pending, seq)
		s.p.Forget(seq)
	}
}

// Stats is what a stream counted.
type Stats struct {
	Sent, Received, Lost int
	LostAt               []string // seq and send time of each lost request
}

// Stop ends the stream, waits up to the reply timeout for outstanding
// replies, and returns the counts.
func (s *Stream) Stop() Stats {
	close(s.stop)
	s.sending.Wait()
	for waitUntil := time.Now().Add(s.timeout); time.Now().Before(waitUntil); time.Sleep(50 * time.Millisecond) {
		s.settle(false)
		s.mu.Lock()
		n := len(s.pending)
		s.mu.Unlock()
		if n == 0 {
			break
		}
	}
	s.settle(true)
	s.p.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Sent: s.sent, Received: s.received, Lost: len(s.lost), LostAt: append([]string(nil), s.lost...)}
}

// Snapshot returns the counts so far without stopping.
func (s *Stream) Snapshot() Stats {
	s.settle(false)
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Sent: s.sent, Received: s.received, Lost: len(s.lost)}
}

// WhoamiPort is the port of the "whoami" TCP server: it writes the source
// address it sees and closes (to check masquerading).
const WhoamiPort = 7778

// StartWhoami starts a whoami server inside the named namespace; close the
// listener to stop it.
func StartWhoami(ns string) (net.Listener, error) {
	var l net.Listener
	err := InNS(ns, func() error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", WhoamiPort))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("start whoami in %s: %w", ns, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			c.Write([]byte(ap.Addr().Unmap().String()))
			c.Close()
		}
	}()
	return l, nil
}

// Whoami connects from namespace ns to dst's whoami server and returns the
// source address dst saw.
func Whoami(ctx context.Context, ns string, dst netip.Addr) (netip.Addr, error) {
	c, err := dialIn(ctx, ns, "tcp", netip.AddrPortFrom(dst, WhoamiPort).String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("whoami %s→%s: %w", ns, dst, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("whoami %s→%s: %w", ns, dst, err)
	}
	return netip.ParseAddr(string(b))
}
