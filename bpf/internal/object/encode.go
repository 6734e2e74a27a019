package object

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/weftnet/weft/bpf/spec"
)

// Both address families share one LPM trie: an IPv4 prefix a.b.c.d/n is
// stored as the IPv4-mapped IPv6 prefix ::ffff:a.b.c.d/(96+n), which is
// exactly what the C programs build from an IPv4 header.
const mappedBits = 96

// TunnelKey turns a prefix into a key of the LPM tries (weft_tunnels,
// weft_local).
func TunnelKey(p netip.Prefix) WeftTunnelKey {
	p = p.Masked()
	a := p.Addr()
	bits := p.Bits()
	if a.Is4() {
		bits += mappedBits
	}
	return WeftTunnelKey{Prefixlen: uint32(bits), Addr: netip.AddrFrom16(a.As16()).As16()}
}

// Prefix is the inverse of TunnelKey.
func Prefix(k WeftTunnelKey) netip.Prefix {
	a := netip.AddrFrom16(k.Addr)
	bits := int(k.Prefixlen)
	if a.Is4In6() && bits >= mappedBits {
		return netip.PrefixFrom(a.Unmap(), bits-mappedBits)
	}
	return netip.PrefixFrom(a, bits)
}

// TunnelValue turns a tunnel into a map value. The IPv6-endpoint flag is
// derived from the endpoint itself, whatever t.Flags says.
func TunnelValue(t spec.Tunnel) WeftTunnelValue {
	ep := t.Endpoint.Unmap()
	flags := t.Flags &^ spec.FlagIPv6Endpoint
	if ep.Is6() {
		flags |= spec.FlagIPv6Endpoint
	}
	return WeftTunnelValue{Endpoint: netip.AddrFrom16(ep.As16()).As16(), Vni: t.VNI, Flags: flags}
}

// Tunnel is the inverse of TunnelValue.
func Tunnel(p netip.Prefix, v WeftTunnelValue) spec.Tunnel {
	ep := netip.AddrFrom16(v.Endpoint)
	if v.Flags&spec.FlagIPv6Endpoint == 0 {
		ep = ep.Unmap()
	}
	return spec.Tunnel{Prefix: p, Endpoint: ep, VNI: v.Vni, Flags: v.Flags}
}

// NormTunnel is t as it reads back from the map.
func NormTunnel(t spec.Tunnel) spec.Tunnel {
	p := t.Prefix.Masked()
	return Tunnel(p, TunnelValue(t))
}

// EndpointKey is the key of ip in weft_endpoints.
func EndpointKey(ip netip.Addr) WeftEndpointKey {
	return WeftEndpointKey{Addr: netip.AddrFrom16(ip.As16()).As16()}
}

// EndpointAddr is the inverse of EndpointKey.
func EndpointAddr(k WeftEndpointKey) netip.Addr {
	return netip.AddrFrom16(k.Addr).Unmap()
}

// LocalValue is the weft_local entry of the local pod CIDR p behind the
// bridge with ifindex bridge: the addresses in p the node itself answers
// for (gateway, network, IPv4 broadcast) go to the stack.
func LocalValue(p netip.Prefix, bridge int) WeftLocalValue {
	p = p.Masked()
	v := WeftLocalValue{BridgeIfindex: uint32(bridge)}
	v.Gateway = netip.AddrFrom16(p.Addr().Next().As16()).As16()
	v.Network = netip.AddrFrom16(p.Addr().As16()).As16()
	if p.Addr().Is4() {
		a := p.Addr().As4()
		host := uint32(1)<<(32-p.Bits()) - 1
		n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
		n |= host
		v.Broadcast = netip.AddrFrom16(netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}).As16()).As16()
	}
	return v
}

// Flags of WeftPodValue (POD_* in lib/maps.h).
const (
	PodIPv4 = 1 << 0
	PodIPv6 = 1 << 1
)

// LinkLocal is the IPv6 link-local address the kernel gives an interface
// with mac (addr_gen_mode eui64): fe80::/64 with the modified EUI-64.
func LinkLocal(mac net.HardwareAddr) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	if len(mac) == 6 {
		a[8], a[9], a[10] = mac[0]^0x02, mac[1], mac[2]
		a[11], a[12] = 0xff, 0xfe
		a[13], a[14], a[15] = mac[3], mac[4], mac[5]
	}
	return netip.AddrFrom16(a)
}

// PodValue is the weft_pods entry of a pod with mac and the addresses v4
// and v6 (either may be the zero Addr).
func PodValue(mac net.HardwareAddr, v4, v6 netip.Addr) (WeftPodValue, error) {
	var v WeftPodValue
	if len(mac) != 6 {
		return v, fmt.Errorf("pod mac %q: not a 6-byte Ethernet address", mac)
	}
	copy(v.Mac[:], mac)
	v.Ipv6Ll = LinkLocal(mac).As16()
	if v4.IsValid() {
		if !v4.Unmap().Is4() {
			return v, fmt.Errorf("pod ipv4 %s: not an IPv4 address", v4)
		}
		v.Ipv4 = v4.Unmap().As4()
		v.Flags |= PodIPv4
	}
	if v6.IsValid() {
		if !v6.Is6() || v6.Is4In6() {
			return v, fmt.Errorf("pod ipv6 %s: not an IPv6 address", v6)
		}
		v.Ipv6 = v6.As16()
		v.Flags |= PodIPv6
	}
	return v, nil
}

// GuardTunnelOnly is WeftGuard's flag GUARD_TUNNEL_ONLY (lib/maps.h).
const GuardTunnelOnly = 1 << 1

// GuardValue is the weft_guard slot for the cluster's pod networks;
// tunnelOnly drops plain packets for pods (overlay modes). No networks:
// the zero value, nothing to check (the datapath detaches the program).
func GuardValue(nets []netip.Prefix, tunnelOnly bool) (WeftGuard, error) {
	var g WeftGuard
	if len(nets) == 0 {
		return g, nil
	}
	if len(nets) > len(g.Net) {
		return g, fmt.Errorf("pod networks %v: %d, at most %d", nets, len(nets), len(g.Net))
	}
	if tunnelOnly {
		g.Flags = GuardTunnelOnly
	}
	for i, p := range nets {
		k := TunnelKey(p)
		g.Net[i].Addr = k.Addr
		bits := int(k.Prefixlen)
		for b := range 16 {
			switch {
			case bits >= 8:
				g.Net[i].Mask[b] = 0xff
			case bits > 0:
				g.Net[i].Mask[b] = byte(0xff << (8 - bits))
			}
			bits = max(bits-8, 0)
		}
	}
	g.Nets = uint32(len(nets))
	return g, nil
}

// GuardDecap is WeftGuard's flag GUARD_DECAP (lib/maps.h).
const GuardDecap = 1 << 2

// WithDecap is g (GuardValue's, with networks) with the in-program VXLAN
// receive on (lib/decap.h): VXLAN packets to port at this node's underlay
// address v4 or v6 (either may be the zero Addr: none of that family).
// A guard without networks stays the zero value: the program is detached
// then, and nothing could decapsulate.
func WithDecap(g WeftGuard, v4, v6 netip.Addr, port uint16) (WeftGuard, error) {
	if g.Nets == 0 {
		return g, nil
	}
	if port == 0 {
		return g, fmt.Errorf("in-program vxlan receive: no port")
	}
	if v4 = v4.Unmap(); v4.IsValid() {
		if !v4.Is4() {
			return g, fmt.Errorf("in-program vxlan receive: underlay %s is not IPv4", v4)
		}
		g.Under4 = v4.As4()
	}
	if v6.IsValid() {
		if !v6.Is6() || v6.Is4In6() {
			return g, fmt.Errorf("in-program vxlan receive: underlay %s is not IPv6", v6)
		}
		g.Under6 = v6.As16()
	}
	if !v4.IsValid() && !v6.IsValid() {
		return g, fmt.Errorf("in-program vxlan receive: no underlay address")
	}
	g.Flags |= GuardDecap
	g.Port = port
	return g, nil
}

// Flags of WeftConfig (CONFIG_* in lib/maps.h).
const (
	ConfigPortFast = 1 << 0
	ConfigEncap    = 1 << 1
)
