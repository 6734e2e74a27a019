package testenv

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// IP families a cluster runs (Options.IPFamily). Dual: every namespace on
// the underlay has an IPv4 and an IPv6 address, the cluster config has
// both cluster CIDRs, every pod an address of each, and agents, etcd and
// BGP sessions use IPv4 (BGP carries both families over it). IPv6: the
// underlay, etcd endpoints, pod CIDRs, tunnel endpoints and BGP sessions
// are all IPv6; nothing has an IPv4 address but loopback.
const (
	FamilyIPv4 = "ipv4"
	FamilyIPv6 = "ipv6"
	FamilyDual = "dual"
)

// Families are the values of Options.IPFamily.
var Families = []string{FamilyIPv4, FamilyIPv6, FamilyDual}

// IPv6 address plan (only inside the run's namespaces): segment s is
// fd99:s::/64 (s in hex), node i has fd99:s::(i+1), the control namespace
// fd99::fa (250) and the router fd99:s::fe (254). Pods get the IPv6
// cluster CIDR, fd00:10:244::/56 unless set, a /64 per node.
const (
	defaultPodNet6 = "fd00:10:244::/56"
	underlayBits6  = 64
)

var (
	underlayNet4 = netip.MustParsePrefix("10.99.0.0/16")
	underlayNet6 = netip.MustParsePrefix("fd99::/16")
)

func addr6(seg, host int) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0x99, byte(seg >> 8), byte(seg), 15: byte(host)})
}

func segmentNet6(s int) netip.Prefix { return netip.PrefixFrom(addr6(s, 0), underlayBits6) }
func routerIP6(s int) netip.Addr     { return addr6(s, 254) }
func ctlIP6() netip.Addr             { return addr6(0, 250) }

// RouterIP6 is the router's IPv6 address on segment s.
func RouterIP6(s int) netip.Addr { return routerIP6(s) }

// CtlIP6 is the control namespace's IPv6 underlay address (dual and IPv6
// clusters): a host on the underlay that is not a node.
func CtlIP6() netip.Addr { return ctlIP6() }

// IPv4 reports whether the cluster runs IPv4 (ipv4 and dual).
func (c *Cluster) IPv4() bool { return c.Opts.IPFamily != FamilyIPv6 }

// IPv6 reports whether the cluster runs IPv6 (ipv6 and dual).
func (c *Cluster) IPv6() bool { return c.Opts.IPFamily != FamilyIPv4 }

// families lists the cluster's families as "is IPv6" flags, IPv4 first.
func (c *Cluster) families() []bool {
	var out []bool
	if c.IPv4() {
		out = append(out, false)
	}
	if c.IPv6() {
		out = append(out, true)
	}
	return out
}

// ctlAddrs are the control namespace's underlay addresses.
func (c *Cluster) ctlAddrs() []netip.Prefix {
	var out []netip.Prefix
	if c.IPv4() {
		out = append(out, netip.PrefixFrom(netip.MustParseAddr(ctlIP), underlayBits))
	}
	if c.IPv6() {
		out = append(out, netip.PrefixFrom(ctlIP6(), underlayBits6))
	}
	return out
}

// ctlEndpointHost is the host part of the etcd URLs agents and
// controllers use: the control namespace's address of the cluster's
// first family.
func (c *Cluster) ctlEndpointHost() string {
	if c.IPv4() {
		return ctlIP
	}
	return "[" + ctlIP6().String() + "]"
}

// routerAddrs are the router's addresses on segment s.
func (c *Cluster) routerAddrs(s int) []netip.Prefix {
	var out []netip.Prefix
	if c.IPv4() {
		out = append(out, netip.PrefixFrom(routerIP(s), underlayBits))
	}
	if c.IPv6() {
		out = append(out, netip.PrefixFrom(routerIP6(s), underlayBits6))
	}
	return out
}

// routerOf is the router's address of one family on segment s.
func routerOf(s int, v6 bool) netip.Addr {
	if v6 {
		return routerIP6(s)
	}
	return routerIP(s)
}

// Underlay returns the node's underlay address of one family, invalid
// when the cluster does not run it.
func (n *Node) Underlay(v6 bool) netip.Addr {
	if v6 {
		return n.UnderlayIP6
	}
	if n.UnderlayIP.Is4() {
		return n.UnderlayIP
	}
	return netip.Addr{}
}

// AddrOf returns the pod's address of one family, invalid when it has
// none.
func (p *Pod) AddrOf(v6 bool) netip.Addr {
	for _, a := range p.Addrs {
		if a.Is6() == v6 {
			return a
		}
	}
	return netip.Addr{}
}

// clusterCIDR is the cluster CIDR of one family ("" when the cluster does
// not run it).
func (c *Cluster) clusterCIDR(v6 bool) string {
	switch {
	case v6 && c.IPv6():
		return c.Opts.ClusterCIDRv6
	case !v6 && c.IPv4():
		return c.Opts.ClusterCIDR
	}
	return ""
}

// familyName is "IPv4" or "IPv6".
func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func checkFamily(f string) error {
	if !slices.Contains(Families, f) {
		return fmt.Errorf("ip family %q: want one of %s", f, strings.Join(Families, ", "))
	}
	return nil
}
