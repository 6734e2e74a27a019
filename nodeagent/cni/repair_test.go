package cni_test

// A repeated ADD of an attachment whose links are weft's but drifted from
// what ADD makes sets them right in place; CHECK reports the drift.

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/nodeagent/cni"
)

// onLink runs fn on link name in netns nsPath.
func onLink(nsPath, name string, fn func(netlink.Link) error) error {
	return inNS(nsPath, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return fn(l)
	})
}

// hasDefaultRoute reports whether eth0 in pod has a default route via gw.
func hasDefaultRoute(pod string, gw netip.Addr) (bool, error) {
	found := false
	err := onLink(pod, "eth0", func(l netlink.Link) error {
		fam := netlink.FAMILY_V4
		if gw.Is6() {
			fam = netlink.FAMILY_V6
		}
		rs, err := netlink.RouteList(l, fam)
		for _, r := range rs {
			ones := 0
			if r.Dst != nil {
				ones, _ = r.Dst.Mask.Size()
			}
			found = found || ones == 0 && r.Gw.Equal(gw.AsSlice())
		}
		return err
	})
	return found, err
}

// hasAddr reports whether eth0 in pod holds a.
func hasAddr(pod string, a netip.Addr) (bool, error) {
	found := false
	err := onLink(pod, "eth0", func(l netlink.Link) error {
		as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		for _, x := range as {
			found = found || x.IP.Equal(a.AsSlice())
		}
		return err
	})
	return found, err
}

// attrs reads link name's attributes in nsPath.
func attrs(nsPath, name string) (netlink.LinkAttrs, error) {
	var a netlink.LinkAttrs
	err := onLink(nsPath, name, func(l netlink.Link) error { a = *l.Attrs(); return nil })
	return a, err
}

// TestAddAgainRepairsInPlace: for each difference ADD can set right
// without a new pair, broken by hand after ADD: CHECK fails naming it; a
// repeated ADD repairs it in place and logs what (same ifindexes and MACs
// on both ends, the same result), the difference is gone, a TCP
// connection from the pod still carries data, both addresses are
// reachable, and CHECK passes.
func TestAddAgainRepairsInPlace(t *testing.T) {
	v4gw, v6gw := netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("fd00:10:244:1::1")
	type pod struct {
		e        *env
		ns, host string
		v4, v6   netip.Addr
	}
	for _, tc := range []struct {
		name, reason string
		breakIt      func(p pod) error
		gone         func(p pod) error
	}{
		{"host veth hairpin off", "has hairpin mode off",
			func(p pod) error {
				return onLink(p.e.nodeNS, p.host, func(l netlink.Link) error { return netlink.LinkSetHairpin(l, false) })
			},
			func(p pod) error {
				return inNS(p.e.nodeNS, func() error {
					if on, err := cni.Hairpin(p.host); err != nil || !on {
						return fmt.Errorf("hairpin %v (%v)", on, err)
					}
					return nil
				})
			}},
		{"host veth down", "is down",
			func(p pod) error { return onLink(p.e.nodeNS, p.host, netlink.LinkSetDown) },
			func(p pod) error {
				if a, err := attrs(p.e.nodeNS, p.host); err != nil || a.Flags&net.FlagUp == 0 {
					return fmt.Errorf("host veth flags %v (%v)", a.Flags, err)
				}
				return nil
			}},
		{"host veth mtu", "host veth " + cni.HostVethName("ctr-1", "eth0") + " has mtu 1400, want 1450",
			func(p pod) error {
				return onLink(p.e.nodeNS, p.host, func(l netlink.Link) error { return netlink.LinkSetMTU(l, 1400) })
			},
			func(p pod) error {
				if a, err := attrs(p.e.nodeNS, p.host); err != nil || a.MTU != 1450 {
					return fmt.Errorf("host veth mtu %d (%v)", a.MTU, err)
				}
				return nil
			}},
		{"pod interface mtu", "pod interface eth0 has mtu 1400, want 1450",
			func(p pod) error {
				return onLink(p.ns, "eth0", func(l netlink.Link) error { return netlink.LinkSetMTU(l, 1400) })
			},
			func(p pod) error {
				if a, err := attrs(p.ns, "eth0"); err != nil || a.MTU != 1450 {
					return fmt.Errorf("pod mtu %d (%v)", a.MTU, err)
				}
				return nil
			}},
		// Down, the pod loses its default routes and its IPv6 address:
		// the repair puts back all three.
		{"pod interface down", "pod interface eth0 is down",
			func(p pod) error { return onLink(p.ns, "eth0", netlink.LinkSetDown) },
			func(p pod) error {
				if a, err := attrs(p.ns, "eth0"); err != nil || a.Flags&net.FlagUp == 0 {
					return fmt.Errorf("pod flags %v (%v)", a.Flags, err)
				}
				for _, gw := range []netip.Addr{v4gw, v6gw} {
					if ok, err := hasDefaultRoute(p.ns, gw); err != nil || !ok {
						return fmt.Errorf("default route via %s: %v (%v)", gw, ok, err)
					}
				}
				if ok, err := hasAddr(p.ns, p.v6); err != nil || !ok {
					return fmt.Errorf("address %s: %v (%v)", p.v6, ok, err)
				}
				return nil
			}},
		{"pod IPv4 default route removed", "pod interface eth0 has no default route via 10.244.1.1",
			func(p pod) error {
				return onLink(p.ns, "eth0", func(l netlink.Link) error {
					dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
					return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &dst, Gw: v4gw.AsSlice()})
				})
			},
			func(p pod) error {
				if ok, err := hasDefaultRoute(p.ns, v4gw); err != nil || !ok {
					return fmt.Errorf("default route via %s: %v (%v)", v4gw, ok, err)
				}
				return nil
			}},
		// Without its address the pod loses the IPv4 default route too.
		{"pod IPv4 address removed", "pod interface eth0 lacks address 10.244.1.",
			func(p pod) error {
				return onLink(p.ns, "eth0", func(l netlink.Link) error {
					return netlink.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.v4.AsSlice(), Mask: net.CIDRMask(24, 32)}})
				})
			},
			func(p pod) error {
				if ok, err := hasAddr(p.ns, p.v4); err != nil || !ok {
					return fmt.Errorf("address %s: %v (%v)", p.v4, ok, err)
				}
				if ok, err := hasDefaultRoute(p.ns, v4gw); err != nil || !ok {
					return fmt.Errorf("default route via %s: %v (%v)", v4gw, ok, err)
				}
				return nil
			}},
		{"pod IPv6 address removed", "pod interface eth0 lacks address fd00:10:244:1::",
			func(p pod) error {
				return onLink(p.ns, "eth0", func(l netlink.Link) error {
					return netlink.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.v6.AsSlice(), Mask: net.CIDRMask(64, 128)}})
				})
			},
			func(p pod) error {
				if ok, err := hasAddr(p.ns, p.v6); err != nil || !ok {
					return fmt.Errorf("address %s: %v (%v)", p.v6, ok, err)
				}
				return nil
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, subnetDual, "1.1.0")
			log := e.logTo(t)
			peerNS, podNS := newNS(t), newNS(t)
			peer, err := e.add(e.list, "ctr-peer", peerNS)
			if err != nil {
				t.Fatalf("ADD peer: %v", err)
			}
			first, err := e.add(e.list, "ctr-1", podNS)
			if err != nil {
				t.Fatalf("ADD: %v\n%s", err, log.Take())
			}
			p := pod{e: e, ns: podNS, host: cni.HostVethName("ctr-1", "eth0"), v4: podIP(t, first, true), v6: podIP(t, first, false)}
			conn := openEcho(t, podNS, peerNS, podIP(t, peer, true))
			if err := conn.roundTrip("before"); err != nil {
				t.Fatal(err)
			}
			podBefore, hostBefore := readLink(t, podNS, "eth0"), readLink(t, e.nodeNS, p.host)

			if err := tc.breakIt(p); err != nil {
				t.Fatalf("break the pair: %v", err)
			}
			if err := e.check("ctr-1", podNS); err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("CHECK of the broken pair: %v, want an error naming %q", err, tc.reason)
			}
			log.Take()
			second, err := e.add(e.list, "ctr-1", podNS)
			if err != nil {
				t.Fatalf("ADD again: %v\n%s", err, log.Take())
			}
			l := log.Take()
			if !strings.Contains(l, "repaired its veth pair in place") || !strings.Contains(l, tc.reason) || strings.Contains(l, "replacing") {
				t.Errorf("weft-cni logged %q, want that it repaired %q in place", l, tc.reason)
			}
			if d := sameResult(first, second); d != "" {
				t.Errorf("repeated ADD printed %s", d)
			}
			podAfter, hostAfter := readLink(t, podNS, "eth0"), readLink(t, e.nodeNS, p.host)
			if podAfter.index != podBefore.index || podAfter.mac != podBefore.mac {
				t.Errorf("pod eth0 #%d %s after the repeated ADD, was #%d %s (recreated)", podAfter.index, podAfter.mac, podBefore.index, podBefore.mac)
			}
			if hostAfter.index != hostBefore.index || hostAfter.mac != hostBefore.mac {
				t.Errorf("host veth #%d %s after the repeated ADD, was #%d %s (recreated)", hostAfter.index, hostAfter.mac, hostBefore.index, hostBefore.mac)
			}
			if err := tc.gone(p); err != nil {
				t.Errorf("after the repeated ADD: %v", err)
			}
			if err := conn.roundTrip("after"); err != nil {
				t.Errorf("connection from the pod across the repair: %v", err)
			}
			for _, a := range []netip.Addr{p.v4, p.v6} {
				if err := reachable(e.nodeNS, a); err != nil {
					t.Error(err)
				}
			}
			if err := e.check("ctr-1", podNS); err != nil {
				t.Errorf("CHECK after the repair: %v", err)
			}
		})
	}
}
