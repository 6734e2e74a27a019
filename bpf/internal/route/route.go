// Package route manages weft's routes in the main table: the cluster-CIDR
// routes to the overlay device, direct routes to adjacent nodes and routes
// learned over BGP, each marked with weft's route protocol so nothing else
// is touched.
package route

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/device"
	"github.com/weftnet/weft/bpf/spec"
)

// Route protocol numbers that mark weft's routes, so Sync, mode switches
// and Teardown touch only those. Neither number is assigned in iproute2's
// rt_protos; 186 (RTPROT_BGP) is avoided on purpose because other BGP
// daemons on the node (FRR, bird) use it.
const (
	// Protocol marks cluster-CIDR routes to the overlay device and direct
	// routes to adjacent nodes.
	Protocol = 0x57
	// ProtocolBGP marks routes learned by weft's BGP speaker.
	ProtocolBGP = 0x58
)

// Route is one weft route as the kernel holds it: either a device route
// (Dev != 0, the overlay) or a route via a next hop.
type Route struct {
	Prefix netip.Prefix
	Dev    int
	Via    netip.Addr
	Proto  int
}

func (r Route) String() string {
	if r.Via.IsValid() {
		return fmt.Sprintf("route %s via %s proto %#x", r.Prefix, r.Via, r.Proto)
	}
	return fmt.Sprintf("route %s dev #%d proto %#x", r.Prefix, r.Dev, r.Proto)
}

// Desired is the route set for want; devIndex is the overlay device's
// ifindex (0 when there is none).
func Desired(want *spec.Desired, devIndex int) map[netip.Prefix]Route {
	out := make(map[netip.Prefix]Route, len(want.ClusterCIDRs)+len(want.Routes))
	if want.Overlay != nil && devIndex != 0 {
		for _, p := range want.ClusterCIDRs {
			p = p.Masked()
			out[p] = Route{Prefix: p, Dev: devIndex, Proto: Protocol}
		}
	}
	for _, r := range want.Routes {
		p := r.Prefix.Masked()
		proto := Protocol
		if r.Proto == spec.ProtoBGP {
			proto = ProtocolBGP
		}
		out[p] = Route{Prefix: p, Via: r.Via.Unmap(), Proto: proto}
	}
	return out
}

// Diff is what a sync writes to the main table.
type Diff struct {
	Add, Update, Delete []Route
}

// Empty reports whether d writes nothing.
func (d Diff) Empty() bool { return len(d.Add)+len(d.Update)+len(d.Delete) == 0 }

// Compare returns the writes that turn have into want.
func Compare(have, want map[netip.Prefix]Route) Diff {
	var d Diff
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

func (r Route) netlink() *netlink.Route {
	nr := &netlink.Route{
		Dst:      device.IPNet(r.Prefix),
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

// Replace adds r or replaces the route of its prefix.
func Replace(nl *netlink.Handle, r Route) error {
	if err := nl.RouteReplace(r.netlink()); err != nil {
		return fmt.Errorf("replace %s: %w", r, err)
	}
	return nil
}

// Delete deletes r; a missing route is not an error.
func Delete(nl *netlink.Handle, r Route) error {
	if err := nl.RouteDel(r.netlink()); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete %s: %w", r, err)
	}
	return nil
}

// List reads every weft route (both protocols) of the main table.
func List(nl *netlink.Handle) (map[netip.Prefix]Route, error) {
	out := make(map[netip.Prefix]Route)
	for _, proto := range []int{Protocol, ProtocolBGP} {
		rs, err := nl.RouteListFiltered(netlink.FAMILY_ALL,
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
			kr := Route{Prefix: p, Proto: proto}
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
