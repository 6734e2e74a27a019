package device

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/spec"
)

// Underlay resolves the underlay named by iface-or-IP ("" = the interface
// of the default route).
func Underlay(nl *netlink.Handle, name string) (spec.Underlay, error) {
	var link netlink.Link
	var ip netip.Addr
	switch {
	case name == "":
		l, err := defaultRouteLink(nl)
		if err != nil {
			return spec.Underlay{}, err
		}
		link = l
	default:
		if a, err := netip.ParseAddr(name); err == nil {
			ip = a.Unmap()
			addrs, err := nl.AddrList(nil, netlink.FAMILY_ALL)
			if err != nil {
				return spec.Underlay{}, fmt.Errorf("list addresses: %w", err)
			}
			for _, ad := range addrs {
				if x, ok := netip.AddrFromSlice(ad.IP); ok && x.Unmap() == ip {
					link, _ = nl.LinkByIndex(ad.LinkIndex)
				}
			}
			if link == nil {
				return spec.Underlay{}, fmt.Errorf("find underlay: no interface holds %s", ip)
			}
		} else {
			l, err := nl.LinkByName(name)
			if err != nil {
				return spec.Underlay{}, fmt.Errorf("find underlay %s: %w", name, err)
			}
			link = l
		}
	}
	fixedIP := ip.IsValid()
	a := link.Attrs()
	u := spec.Underlay{Interface: a.Name, MTU: a.MTU, IP: ip, TSOMaxSize: int(a.TSOMaxSize), BigTCPv4: a.GSOIPv4MaxSize != 0}
	addrs, err := nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return spec.Underlay{}, fmt.Errorf("list addresses of %s: %w", u.Interface, err)
	}
	for _, ad := range addrs {
		a, ok := netip.AddrFromSlice(ad.IP)
		if !ok || a.IsLinkLocalUnicast() {
			continue
		}
		a = a.Unmap()
		ones, _ := ad.Mask.Size()
		u.Networks = append(u.Networks, netip.PrefixFrom(a, ones).Masked())
		// Prefer the first IPv4 address, else the first global IPv6 one.
		if !fixedIP && (!u.IP.IsValid() || (u.IP.Is6() && a.Is4())) {
			u.IP = a
		}
	}
	if !u.IP.IsValid() {
		return spec.Underlay{}, fmt.Errorf("find underlay %s: no address", u.Interface)
	}
	if u.IP.Is4() {
		// A dual-stack underlay: the IPv6 address peers route this
		// node's IPv6 pod CIDR via (deprecated and tentative addresses
		// are no next hop to hand out).
		for _, ad := range addrs {
			a, ok := netip.AddrFromSlice(ad.IP)
			if !ok || a.Is4In6() || !a.Is6() || !a.IsGlobalUnicast() ||
				ad.Flags&(unix.IFA_F_DEPRECATED|unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
				continue
			}
			u.IPv6 = a
			break
		}
	}
	return u, nil
}

func defaultRouteLink(nl *netlink.Handle) (netlink.Link, error) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			if l, err := nl.LinkByIndex(r.LinkIndex); err == nil {
				return l, nil
			}
		}
	}
	return nil, errors.New("find underlay: no default route")
}
