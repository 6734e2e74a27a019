package bpf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/netnstest"
	"github.com/weftnet/weft/bpf/spec"
)

// testNode is one node namespace with a pod namespace behind it, wired the
// agreed way: bridge weft0 holding the gateway, pod eth0 on a veth.
type testNode struct {
	t        testing.TB
	idx      int
	ns, pod  *netnstest.NS
	dp       *Datapath
	cfg      Config
	under    netip.Addr // underlay IPv4
	under6   netip.Addr // underlay IPv6
	podIP    netip.Addr
	podIP6   netip.Addr
	podCIDR  netip.Prefix
	podCIDR6 netip.Prefix
	before   string // kernel snapshot before the datapath touched it
}

type testCluster struct {
	nodes [2]*testNode
}

var (
	clusterCIDR  = netip.MustParsePrefix("10.244.0.0/16")
	clusterCIDR6 = netip.MustParsePrefix("fd00:244::/32")
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addr(l netlink.Link, p string) error {
	a, err := netlink.ParseAddr(p)
	if err != nil {
		return err
	}
	a.Flags = unix.IFA_F_NODAD
	return netlink.AddrAdd(l, a)
}

// newTestCluster builds two nodes joined by a veth underlay (192.168.50.0/24
// and fd00:50::/64) and one pod behind each. Nothing is opened yet.
func newTestCluster(t testing.TB, attach AttachMode) *testCluster {
	netnstest.RequireRoot(t)
	prefix := netnstest.Prefix()
	c := &testCluster{}
	for i := range c.nodes {
		n := &testNode{t: t, idx: i + 1}
		n.ns = netnstest.New(t, fmt.Sprintf("%s-n%d", prefix, i+1))
		n.pod = netnstest.New(t, fmt.Sprintf("%s-p%d", prefix, i+1))
		n.under = netip.MustParseAddr(fmt.Sprintf("192.168.50.%d", i+1))
		n.under6 = netip.MustParseAddr(fmt.Sprintf("fd00:50::%d", i+1))
		n.podCIDR = netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i+1))
		n.podCIDR6 = netip.MustParsePrefix(fmt.Sprintf("fd00:244:%d::/64", i+1))
		n.podIP = netip.MustParseAddr(fmt.Sprintf("10.244.%d.2", i+1))
		n.podIP6 = netip.MustParseAddr(fmt.Sprintf("fd00:244:%d::2", i+1))
		n.cfg = Config{PinDir: fmt.Sprintf("/sys/fs/bpf/%s-n%d", prefix, i+1), Underlay: "ul0", Attach: attach}
		pinDir := n.cfg.PinDir
		t.Cleanup(func() { os.RemoveAll(pinDir) })
		c.nodes[i] = n
	}
	a, b := c.nodes[0], c.nodes[1]
	a.ns.MustDo(t, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0"}, PeerName: "ulpeer"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		p, err := netlink.LinkByName("ulpeer")
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(p, int(b.ns.Handle()))
	})
	b.ns.MustDo(t, func() error {
		p, err := netlink.LinkByName("ulpeer")
		if err != nil {
			return err
		}
		return netlink.LinkSetName(p, "ul0")
	})
	for _, n := range c.nodes {
		n.ns.MustDo(t, func() error {
			ul, err := netlink.LinkByName("ul0")
			if err != nil {
				return err
			}
			if err := addr(ul, n.under.String()+"/24"); err != nil {
				return err
			}
			if err := addr(ul, n.under6.String()+"/64"); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(ul); err != nil {
				return err
			}
			br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "weft0"}}
			if err := netlink.LinkAdd(br); err != nil {
				return err
			}
			if err := addr(br, fmt.Sprintf("10.244.%d.1/24", n.idx)); err != nil {
				return err
			}
			if err := addr(br, fmt.Sprintf("fd00:244:%d::1/64", n.idx)); err != nil {
				return err
			}
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vpod", MasterIndex: br.Index}, PeerName: "eth0"}
			if err := netlink.LinkAdd(v); err != nil {
				return err
			}
			pe, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if err := netlink.LinkSetNsFd(pe, int(n.pod.Handle())); err != nil {
				return err
			}
			for _, l := range []netlink.Link{br, v} {
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
			}
			n.before = snapshot()
			return nil
		})
		n.pod.MustDo(t, func() error {
			e, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if err := netlink.LinkSetMTU(e, 1450); err != nil {
				return err
			}
			if err := addr(e, n.podIP.String()+"/24"); err != nil {
				return err
			}
			if err := addr(e, n.podIP6.String()+"/64"); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(e); err != nil {
				return err
			}
			for _, gw := range []string{fmt.Sprintf("10.244.%d.1", n.idx), fmt.Sprintf("fd00:244:%d::1", n.idx)} {
				if err := netlink.RouteAdd(&netlink.Route{LinkIndex: e.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
					return fmt.Errorf("default via %s: %w", gw, err)
				}
			}
			return nil
		})
	}
	return c
}

// open opens n's datapath inside its namespace; the test tears it down.
func (n *testNode) open() {
	n.t.Helper()
	n.ns.MustDo(n.t, func() error {
		d, err := Open(n.cfg)
		n.dp = d
		return err
	})
}

func (c *testCluster) openAll(t testing.TB) {
	for _, n := range c.nodes {
		n.open()
		t.Cleanup(func() {
			_ = n.ns.Do(func() error {
				if n.dp != nil {
					return n.dp.Teardown()
				}
				return nil
			})
		})
	}
}

func (c *testCluster) peer(n *testNode) *testNode {
	if n == c.nodes[0] {
		return c.nodes[1]
	}
	return c.nodes[0]
}

// overlayWant is n's desired state in VXLAN mode, with the peer's endpoint
// ep (its IPv4 underlay address when invalid).
func (c *testCluster) overlayWant(n *testNode, kind spec.Mode, ep netip.Addr) *spec.Desired {
	p := c.peer(n)
	if !ep.IsValid() {
		ep = p.under
	}
	return (&spec.Desired{
		Mode:          kind,
		Overlay:       &spec.Overlay{Kind: kind, Port: 8472, VNI: 1, MTU: 1450},
		ClusterCIDRs:  []netip.Prefix{clusterCIDR, clusterCIDR6},
		LocalPodCIDRs: []netip.Prefix{n.podCIDR, n.podCIDR6},
		Tunnels: []spec.Tunnel{
			{Prefix: p.podCIDR, Endpoint: ep, VNI: 1},
			{Prefix: p.podCIDR6, Endpoint: ep, VNI: 1},
		},
	}).Normalize()
}

func (c *testCluster) nativeWant(n *testNode, masq bool) *spec.Desired {
	p := c.peer(n)
	d := &spec.Desired{
		Mode:          spec.ModeNative,
		ClusterCIDRs:  []netip.Prefix{clusterCIDR, clusterCIDR6},
		LocalPodCIDRs: []netip.Prefix{n.podCIDR, n.podCIDR6},
		Routes: []spec.Route{
			{Prefix: p.podCIDR, Via: p.under},
			{Prefix: p.podCIDR6, Via: p.under6},
		},
	}
	if masq {
		d.Masquerade = &spec.Masquerade{PodCIDRs: d.LocalPodCIDRs, NativeCIDRs: d.ClusterCIDRs}
	}
	return d.Normalize()
}

func (n *testNode) sync(want *spec.Desired) spec.Report {
	n.t.Helper()
	var rep spec.Report
	n.ns.MustDo(n.t, func() error {
		var err error
		rep, err = n.dp.Sync(context.Background(), want)
		return err
	})
	return rep
}

func (n *testNode) counters() spec.Counters {
	n.t.Helper()
	c, err := n.dp.Counters()
	must(n.t, err)
	return c
}

// snapshot lists what a Teardown must restore: links, routes of every
// table (except those the kernel derives from addresses), nftables tables.
func snapshot() string {
	var out []string
	links, _ := netlink.LinkList()
	for _, l := range links {
		out = append(out, "link "+l.Attrs().Name+" "+l.Type())
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			if r, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at}); err == nil && len(r.Programs) > 0 {
				out = append(out, fmt.Sprintf("link %s %s programs %d", l.Attrs().Name, at, len(r.Programs)))
			}
		}
	}
	rs, _ := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	for _, r := range rs {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue // address and link-local routes the kernel derives itself
		}
		out = append(out, fmt.Sprintf("route %v gw %v dev %d proto %d table %d", r.Dst, r.Gw, r.LinkIndex, r.Protocol, r.Table))
	}
	if c, err := nftables.New(); err == nil {
		ts, _ := c.ListTables()
		for _, t := range ts {
			out = append(out, "nft "+t.Name)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// pinger sends ICMP echo requests from a pod namespace.
type pinger struct {
	conn *icmp.PacketConn
	v6   bool
	id   int
	mu   sync.Mutex
	got  map[int]bool
	done chan struct{}
}

func newPinger(t testing.TB, ns *netnstest.NS, v6 bool) *pinger {
	t.Helper()
	p := &pinger{v6: v6, id: rand.IntN(0xffff), got: map[int]bool{}, done: make(chan struct{})}
	ns.MustDo(t, func() error {
		var err error
		if v6 {
			p.conn, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		} else {
			p.conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		}
		return err
	})
	t.Cleanup(func() { p.conn.Close() })
	go p.read()
	return p
}

func (p *pinger) read() {
	defer close(p.done)
	buf := make([]byte, 1500)
	proto := 1
	if p.v6 {
		proto = 58
	}
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && (m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply) && e.ID == p.id {
			p.mu.Lock()
			p.got[e.Seq] = true
			p.mu.Unlock()
		}
	}
}

func (p *pinger) send(dst netip.Addr, seq int) error {
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if p.v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	b, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: p.id, Seq: seq, Data: []byte("weft-datapath-test")}}).Marshal(nil)
	if err != nil {
		return err
	}
	_, err = p.conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()})
	return err
}

func (p *pinger) has(seq int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.got[seq]
}

// reach pings dst from ns until a reply arrives or timeout passes.
func reach(t testing.TB, ns *netnstest.NS, dst netip.Addr, timeout time.Duration) bool {
	t.Helper()
	p := newPinger(t, ns, dst.Is6())
	deadline := time.Now().Add(timeout)
	for seq := 1; time.Now().Before(deadline); seq++ {
		_ = p.send(dst, seq)
		for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
			for s := 1; s <= seq; s++ {
				if p.has(s) {
					return true
				}
			}
		}
	}
	return false
}

// stream sends count echo requests every interval and reports how many got
// no reply within grace after the last one.
func stream(t testing.TB, ns *netnstest.NS, dst netip.Addr, count int, interval time.Duration) (lost int) {
	p := newPinger(t, ns, dst.Is6())
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 1; seq <= count; seq++ {
		<-tick.C
		_ = p.send(dst, seq)
	}
	time.Sleep(300 * time.Millisecond)
	for seq := 1; seq <= count; seq++ {
		if !p.has(seq) {
			lost++
		}
	}
	return lost
}

// tcpEcho sends size bytes from ns `from` to a TCP echo server in `to` and
// checks they come back.
func tcpEcho(t testing.TB, from, to *netnstest.NS, dst netip.Addr, size int) {
	t.Helper()
	var ln net.Listener
	to.MustDo(t, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(dst.String(), "0"))
		return err
	})
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	var conn net.Conn
	from.MustDo(t, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
		return err
	})
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(msg)
		errc <- err
	}()
	back := make([]byte, size)
	if _, err := io.ReadFull(conn, back); err != nil {
		t.Fatalf("tcp echo %s: %v", dst, err)
	}
	must(t, <-errc)
	if !slices.Equal(msg, back) {
		t.Fatalf("tcp echo %s: data differs", dst)
	}
}

// udpSource sends one UDP datagram from ns `from` to dst:port in ns `to`
// and returns the source address the receiver saw.
func udpSource(t testing.TB, from, to *netnstest.NS, dst netip.Addr) netip.Addr {
	t.Helper()
	var pc net.PacketConn
	to.MustDo(t, func() error {
		var err error
		pc, err = net.ListenPacket("udp", net.JoinHostPort(dst.String(), "0"))
		return err
	})
	defer pc.Close()
	var c net.Conn
	from.MustDo(t, func() error {
		var err error
		c, err = net.Dial("udp", pc.LocalAddr().String())
		return err
	})
	defer c.Close()
	buf := make([]byte, 64)
	for range 20 {
		_, _ = c.Write([]byte("who am i"))
		_ = pc.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
		_, src, err := pc.ReadFrom(buf)
		if err == nil {
			return src.(*net.UDPAddr).AddrPort().Addr().Unmap()
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal(err)
		}
	}
	t.Fatalf("udp to %s: nothing arrived", dst)
	return netip.Addr{}
}
