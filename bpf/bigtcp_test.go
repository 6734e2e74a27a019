package bpf

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/gsosize"
	"github.com/weftnet/weft/bpf/internal/device"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// gsoSizes reads name's four GSO/GRO limits in ns: IPv6 gso, gro, IPv4
// gso, gro.
func gsoSizes(t testing.TB, ns *netnstest.NS, name string) []uint32 {
	t.Helper()
	var out []uint32
	ns.MustDo(t, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		a := l.Attrs()
		out = []uint32{a.GSOMaxSize, a.GROMaxSize, a.GSOIPv4MaxSize, a.GROIPv4MaxSize}
		return nil
	})
	return out
}

// TestBigTCPSync: a Sync that asks for BIG TCP raises the underlay and
// the pod bridge to the sizes (read back through netlink), names what it
// changed, writes nothing the second time, and a Reconcile puts back a
// limit lowered behind its back; pods keep talking over both families.
func TestBigTCPSync(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	big := spec.BigTCP{IPv4: 192 << 10, IPv6: 160 << 10}
	for _, n := range c.nodes {
		w := c.nativeWant(n, false)
		w.BigTCP = big
		rep := n.sync(w)
		if rep.Updated < 8 {
			t.Errorf("node %d: first Sync updated %d, want the 8 limits of ul0 and weft0", n.idx, rep.Updated)
		}
		for _, dev := range []string{"ul0", "weft0"} {
			want := []uint32{160 << 10, 160 << 10, 192 << 10, 192 << 10}
			if got := gsoSizes(t, n.ns, dev); !slices.Equal(got, want) {
				t.Errorf("node %d %s: gso/gro IPv6, IPv4 = %v, want %v", n.idx, dev, got, want)
			}
		}
		if rep := n.sync(w); rep.Changed() {
			t.Errorf("node %d: second Sync changed %+v", n.idx, rep)
		}
		n.ns.MustDo(t, func() error {
			l, err := netlink.LinkByName("ul0")
			if err != nil {
				return err
			}
			return netlink.LinkSetGSOIPv4MaxSize(l, 65536)
		})
		rep, err := n.dp.Reconcile(context.Background(), w)
		must(t, err)
		if !slices.ContainsFunc(rep.Repaired, func(s string) bool { return strings.Contains(s, "ul0 gso_ipv4_max_size 65536 -> 196608") }) {
			t.Errorf("node %d: Reconcile repaired %q, want ul0's gso_ipv4_max_size", n.idx, rep.Repaired)
		}
		if got := gsoSizes(t, n.ns, "ul0"); got[2] != 192<<10 {
			t.Errorf("node %d: ul0 gso_ipv4_max_size %d after Reconcile", n.idx, got[2])
		}
	}
	for _, dst := range []netip.Addr{c.nodes[1].podIP, c.nodes[1].podIP6} {
		if !netnstest.Reach(t, c.nodes[0].pod, dst, reachTimeout) {
			t.Fatalf("pod 1 does not reach %s with BIG TCP on", dst)
		}
	}
}

// TestBigTCPUnderlayLimit: what the underlay reports is what the agent
// caps BIG TCP by. A veth segments up to 512 KiB; a device without BIG
// TCP (a VXLAN device with no lower device keeps the kernel's 64 KiB
// tso_max_size, as a NIC whose driver never raised it does) reports
// 64 KiB, and Raise never sets more than a device's tso_max_size.
func TestBigTCPUnderlayLimit(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, netnstest.Prefix()+"-big")
	ns.MustDo(t, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "big0"}, PeerName: "big1"}); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "small0"}, VxlanId: 9, Port: 4789}); err != nil {
			return err
		}
		nl, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer nl.Close()
		for i, name := range []string{"big0", "small0"} {
			l, err := nl.LinkByName(name)
			if err != nil {
				return err
			}
			if err := nl.AddrAdd(l, &netlink.Addr{IPNet: netnstest.IPNet(netip.MustParsePrefix(fmt.Sprintf("192.168.%d.1/24", 60+i)))}); err != nil {
				return err
			}
			u, err := device.Underlay(nl, name)
			if err != nil {
				return err
			}
			t.Logf("%s: tso_max_size %d, IPv4 BIG TCP %v", name, u.TSOMaxSize, u.BigTCPv4)
			if !u.BigTCPv4 {
				return fmt.Errorf("%s: the kernel reports no gso_ipv4_max_size (Linux >= 6.3 does)", name)
			}
			if want := []int{524280, 65536}[i]; u.TSOMaxSize != want {
				return fmt.Errorf("%s: Underlay().TSOMaxSize %d, want %d", name, u.TSOMaxSize, want)
			}
			if _, err := gsosize.Raise(nl, l, spec.BigTCP{IPv4: 192 << 10, IPv6: 192 << 10}); err != nil {
				return err
			}
			l, _ = nl.LinkByName(name)
			if got, want := int(l.Attrs().GSOIPv4MaxSize), min(192<<10, u.TSOMaxSize); got != want {
				return fmt.Errorf("%s: gso_ipv4_max_size %d after Raise, want %d", name, got, want)
			}
		}
		return nil
	})
}
