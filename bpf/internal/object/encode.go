package object

import (
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
