package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/spec"
)

// Route protocol numbers that mark weft's routes, so Sync, mode switches and
// Teardown touch only those. Neither number is assigned in iproute2's
// rt_protos; 186 (RTPROT_BGP) is avoided on purpose because other BGP
// daemons on the node (FRR, bird) use it.
const (
	// RouteProtocol marks cluster-CIDR routes to the overlay device and
	// direct routes to adjacent nodes.
	RouteProtocol = 0x57
	// RouteProtocolBGP marks routes learned by weft's BGP speaker.
	RouteProtocolBGP = 0x58
)

// kroute is one weft route as the kernel holds it: either a device route
// (Dev != 0, the overlay) or a route via a next hop.
type kroute struct {
	Prefix netip.Prefix
	Dev    int
	Via    netip.Addr
	Proto  int
}

func (r kroute) String() string {
	if r.Via.IsValid() {
		return fmt.Sprintf("route %s via %s proto %#x", r.Prefix, r.Via, r.Proto)
	}
	return fmt.Sprintf("route %s dev #%d proto %#x", r.Prefix, r.Dev, r.Proto)
}

// desiredRoutes is the route set for want; devIndex is the overlay
// device's ifindex (0 when there is none).
func desiredRoutes(want *spec.Desired, devIndex int) map[netip.Prefix]kroute {
	out := make(map[netip.Prefix]kroute, len(want.ClusterCIDRs)+len(want.Routes))
	if want.Overlay != nil && devIndex != 0 {
		for _, p := range want.ClusterCIDRs {
			p = p.Masked()
			out[p] = kroute{Prefix: p, Dev: devIndex, Proto: RouteProtocol}
		}
	}
	for _, r := range want.Routes {
		p := r.Prefix.Masked()
		proto := RouteProtocol
		if r.Proto == spec.ProtoBGP {
			proto = RouteProtocolBGP
		}
		out[p] = kroute{Prefix: p, Via: r.Via.Unmap(), Proto: proto}
	}
	return out
}

type routeDiff struct {
	Add, Update, Delete []kroute
}

func (d routeDiff) empty() bool { return len(d.Add)+len(d.Update)+len(d.Delete) == 0 }

func diffRoutes(have, want map[netip.Prefix]kroute) routeDiff {
	var d routeDiff
	for p, r := range want {
		old, ok := have[p]
		switch {
		case !ok:
			d.Add = append(d.Add, r)
		case old != r:
			d.Update = append(d.Update, r)
		}
	}
	for p, r := range have {
		if _, ok := want[p]; !ok {
			d.Delete = append(d.Delete, r)
		}
	}
	return d
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (r kroute) netlink() *netlink.Route {
	nr := &netlink.Route{
		Dst:      ipNet(r.Prefix),
		Protocol: netlink.RouteProtocol(r.Proto),
		Table:    unix.RT_TABLE_MAIN,
	}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
	} else {
		nr.LinkIndex = r.Dev
		nr.Scope = netlink.SCOPE_LINK
	}
	return nr
}

func replaceRoute(r kroute) error {
	if err := netlink.RouteReplace(r.netlink()); err != nil {
		return fmt.Errorf("replace %s: %w", r, err)
	}
	return nil
}

func deleteRoute(r kroute) error {
	if err := netlink.RouteDel(r.netlink()); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete %s: %w", r, err)
	}
	return nil
}

// listRoutes reads every weft route (both protocols) of the main table.
func listRoutes() (map[netip.Prefix]kroute, error) {
	out := make(map[netip.Prefix]kroute)
	for _, proto := range []int{RouteProtocol, RouteProtocolBGP} {
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{Protocol: netlink.RouteProtocol(proto), Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes proto %#x: %w", proto, err)
		}
		for _, r := range rs {
			if r.Dst == nil {
				continue
			}
			a, ok := netip.AddrFromSlice(r.Dst.IP)
			if !ok {
				continue
			}
			ones, _ := r.Dst.Mask.Size()
			p := netip.PrefixFrom(a.Unmap(), ones)
			kr := kroute{Prefix: p, Proto: proto}
			if gw, ok := netip.AddrFromSlice(r.Gw); ok && r.Gw != nil {
				kr.Via = gw.Unmap()
			} else {
				kr.Dev = r.LinkIndex
			}
			out[p] = kr
		}
	}
	return out, nil
}
