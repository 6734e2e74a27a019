package bpf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/podguard"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
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
	podMAC   net.HardwareAddr
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

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

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
		n.podCIDR = pfx(fmt.Sprintf("10.244.%d.0/24", i+1))
		n.podCIDR6 = pfx(fmt.Sprintf("fd00:244:%d::/64", i+1))
		n.podIP = netip.MustParseAddr(fmt.Sprintf("10.244.%d.2", i+1))
		n.podIP6 = netip.MustParseAddr(fmt.Sprintf("fd00:244:%d::2", i+1))
		n.cfg = Config{NetNS: n.ns.Path(), PinDir: fmt.Sprintf("/sys/fs/bpf/%s-n%d", prefix, i+1), Underlay: "ul0", Attach: attach}
		pinDir := n.cfg.PinDir
		t.Cleanup(func() { os.RemoveAll(pinDir) })
		c.nodes[i] = n
	}
	must(t, c.nodes[0].ns.Veth("ul0", c.nodes[1].ns, "ul0"))
	for _, n := range c.nodes {
		gw, gw6 := n.podCIDR.Addr().Next(), n.podCIDR6.Addr().Next()
		must(t, n.ns.Addr("ul0", netip.PrefixFrom(n.under, 24), netip.PrefixFrom(n.under6, 64)))
		must(t, n.ns.Up("ul0"))
		must(t, n.ns.Bridge("weft0", netip.PrefixFrom(gw, 24), netip.PrefixFrom(gw6, 64)))
		mac, err := n.ns.Plug("weft0", "vpod", n.pod, "eth0", 1450,
			[]netip.Prefix{netip.PrefixFrom(n.podIP, 24), netip.PrefixFrom(n.podIP6, 64)}, gw, gw6)
		must(t, err)
		n.podMAC = mac
		n.ns.MustDo(t, func() error { n.before = snapshot(); return nil })
	}
	return c
}

// open opens n's datapath (bound to its namespace); the test tears it down.
func (n *testNode) open() {
	n.t.Helper()
	d, err := Open(n.cfg)
	must(n.t, err)
	n.dp = d
}

// openAll opens every node's datapath and, as weft-cni does at ADD, puts
// the pod check on each pod's port.
func (c *testCluster) openAll(t testing.TB) {
	for _, n := range c.nodes {
		n.open()
		t.Cleanup(func() {
			if n.dp != nil {
				_ = n.dp.Teardown()
			}
		})
		n.guardPort(t, "vpod", podguard.Pod{MAC: n.podMAC, IPv4: n.podIP, IPv6: n.podIP6})
	}
}

// guardPort records pod for n's port host and links the pod check to it,
// the way weft-cni does at ADD.
func (n *testNode) guardPort(t testing.TB, host string, pod podguard.Pod) {
	t.Helper()
	g, err := podguard.Open(n.ns.Path(), n.cfg.PinDir)
	must(t, err)
	defer g.Close()
	idx, err := n.ns.Index(host)
	must(t, err)
	must(t, g.Attach(idx, pod))
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
		PodNetworks:   []netip.Prefix{clusterCIDR, clusterCIDR6},
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
		PodNetworks:   []netip.Prefix{clusterCIDR, clusterCIDR6},
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
	rep, err := n.dp.Sync(context.Background(), want)
	must(n.t, err)
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
