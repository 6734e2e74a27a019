package bpf

import (
	"net/netip"

	"github.com/weftnet/weft/bpf/spec"
)

// Both address families share one LPM trie: an IPv4 prefix a.b.c.d/n is
// stored as the IPv4-mapped IPv6 prefix ::ffff:a.b.c.d/(96+n), which is
// exactly what the C programs build from an IPv4 header.
const mappedBits = 96

// encodeKey turns a pod prefix into a tunnel map key.
func encodeKey(p netip.Prefix) weftTunnelKey {
	p = p.Masked()
	a := p.Addr()
	bits := p.Bits()
	if a.Is4() {
		bits += mappedBits
	}
	return weftTunnelKey{Prefixlen: uint32(bits), Addr: netip.AddrFrom16(a.As16()).As16()}
}

// decodeKey is the inverse of encodeKey.
func decodeKey(k weftTunnelKey) netip.Prefix {
	a := netip.AddrFrom16(k.Addr)
	bits := int(k.Prefixlen)
	if a.Is4In6() && bits >= mappedBits {
		return netip.PrefixFrom(a.Unmap(), bits-mappedBits)
	}
	return netip.PrefixFrom(a, bits)
}

// encodeValue turns a tunnel into a map value. The IPv6-endpoint flag is
// derived from the endpoint itself, whatever t.Flags says.
func encodeValue(t spec.Tunnel) weftTunnelValue {
	ep := t.Endpoint.Unmap()
	flags := t.Flags &^ spec.FlagIPv6Endpoint
	if ep.Is6() {
		flags |= spec.FlagIPv6Endpoint
	}
	return weftTunnelValue{Endpoint: netip.AddrFrom16(ep.As16()).As16(), Vni: t.VNI, Flags: flags}
}

// decodeValue is the inverse of encodeValue.
func decodeValue(p netip.Prefix, v weftTunnelValue) spec.Tunnel {
	ep := netip.AddrFrom16(v.Endpoint)
	if v.Flags&spec.FlagIPv6Endpoint == 0 {
		ep = ep.Unmap()
	}
	return spec.Tunnel{Prefix: p, Endpoint: ep, VNI: v.Vni, Flags: v.Flags}
}

// normTunnel is t as it reads back from the map.
func normTunnel(t spec.Tunnel) spec.Tunnel {
	p := t.Prefix.Masked()
	return decodeValue(p, encodeValue(t))
}

// tunnelDiff is what a sync writes to the tunnel map.
type tunnelDiff struct {
	Add, Update []spec.Tunnel
	Delete      []netip.Prefix
}

func (d tunnelDiff) empty() bool { return len(d.Add)+len(d.Update)+len(d.Delete) == 0 }

// diffTunnels compares the map content have with want. A later entry for
// the same prefix in want wins.
func diffTunnels(have map[netip.Prefix]spec.Tunnel, want []spec.Tunnel) tunnelDiff {
	var d tunnelDiff
	seen := make(map[netip.Prefix]spec.Tunnel, len(want))
	for _, t := range want {
		t = normTunnel(t)
		seen[t.Prefix] = t
	}
	for p, t := range seen {
		old, ok := have[p]
		switch {
		case !ok:
			d.Add = append(d.Add, t)
		case old != t:
			d.Update = append(d.Update, t)
		}
	}
	for p := range have {
		if _, ok := seen[p]; !ok {
			d.Delete = append(d.Delete, p)
		}
	}
	return d
}

// apply updates have to reflect d having been written.
func (d tunnelDiff) apply(have map[netip.Prefix]spec.Tunnel) {
	for _, t := range d.Add {
		have[t.Prefix] = t
	}
	for _, t := range d.Update {
		have[t.Prefix] = t
	}
	for _, p := range d.Delete {
		delete(have, p)
	}
}
