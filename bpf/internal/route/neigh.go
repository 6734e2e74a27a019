package route

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/spec"
)

// The underlay check compares a pod packet's source MAC with the MAC of
// the next hop this node routes that pod's network through, which it
// finds in the neighbour table. That entry must exist before the first
// packet arrives: an IPv6 peer resolves this node from its link-local
// address, so nothing else would ever put the peer's global address there,
// and an idle entry is garbage-collected. Managed entries
// (NTF_EXT_MANAGED, Linux 5.16) are kept resolved by the kernel itself.
// weft treats every managed entry on the underlay interface as its own.

// NextHops returns the neighbours on the underlay interface (ifindex)
// whose MAC the underlay check needs: the next hop of each of want's
// routes and, when the network routes pods (no overlay: native, gateway,
// bgp modes), the gateway of the route to each pod network and every pod
// CIDR's owner (a node on the same segment answers this node directly).
// OnUnderlay tells which of them are neighbours on ifindex (the caller
// asks only about new ones: it costs a route lookup each).
func NextHops(nl *netlink.Handle, ifindex int, want *spec.Desired) (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	if len(want.PodNetworks) == 0 {
		return out, nil
	}
	for _, r := range want.Routes {
		if r.Via.IsValid() {
			out[r.Via.Unmap()] = true
		}
	}
	for _, o := range want.PodOwners {
		out[o.Node.Unmap()] = true
	}
	if want.Overlay == nil {
		for _, p := range want.PodNetworks {
			rs, err := nl.RouteGet(p.Masked().Addr().AsSlice())
			if err != nil {
				continue // no route: nothing to resolve
			}
			for _, r := range rs {
				if gw, ok := netip.AddrFromSlice(r.Gw); ok && r.LinkIndex == ifindex {
					out[gw.Unmap()] = true
				}
			}
		}
	}
	return out, nil
}

// OnUnderlay reports whether hop is a neighbour on ifindex: the kernel
// reaches it through ifindex without a gateway.
func OnUnderlay(nl *netlink.Handle, ifindex int, hop netip.Addr) bool {
	rs, err := nl.RouteGet(hop.AsSlice())
	return err == nil && len(rs) > 0 && rs[0].LinkIndex == ifindex && rs[0].Gw == nil
}

// Neighbours lists the managed and the permanent (static, never to be
// replaced) neighbour entries on ifindex.
func Neighbours(nl *netlink.Handle, ifindex int) (managed, permanent map[netip.Addr]bool, err error) {
	managed, permanent = map[netip.Addr]bool{}, map[netip.Addr]bool{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := nl.NeighList(ifindex, fam)
		if err != nil {
			return nil, nil, fmt.Errorf("list underlay neighbours: %w", err)
		}
		for _, n := range ns {
			a, ok := netip.AddrFromSlice(n.IP)
			if !ok {
				continue
			}
			switch {
			case n.FlagsExt&netlink.NTF_EXT_MANAGED != 0:
				managed[a.Unmap()] = true
			case n.State&netlink.NUD_PERMANENT != 0:
				permanent[a.Unmap()] = true
			}
		}
	}
	return managed, permanent, nil
}

// SetManaged makes the neighbour entry of ip on ifindex a managed one.
func SetManaged(nl *netlink.Handle, ifindex int, ip netip.Addr) error {
	n := &netlink.Neigh{LinkIndex: ifindex, Family: family(ip), IP: ip.AsSlice(),
		Flags: netlink.NTF_EXT_LEARNED, FlagsExt: netlink.NTF_EXT_MANAGED}
	if err := nl.NeighSet(n); err != nil {
		return fmt.Errorf("add managed neighbour %s: %w", ip, err)
	}
	return nil
}

// DeleteNeigh deletes the neighbour entry of ip on ifindex (gone already
// is fine).
func DeleteNeigh(nl *netlink.Handle, ifindex int, ip netip.Addr) error {
	n := &netlink.Neigh{LinkIndex: ifindex, Family: family(ip), IP: ip.AsSlice()}
	if err := nl.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete managed neighbour %s: %w", ip, err)
	}
	return nil
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}
