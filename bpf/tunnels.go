package bpf

import (
	"net/netip"
	"slices"

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

func cmpPrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// sortedTunnels turns a map into the sorted slice diffTunnels works on.
func sortedTunnels(m map[netip.Prefix]spec.Tunnel) []spec.Tunnel {
	out := make([]spec.Tunnel, 0, len(m))
	for _, t := range m {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b spec.Tunnel) int { return cmpPrefix(a.Prefix, b.Prefix) })
	return out
}

// diffTunnels compares the map content have (sorted by prefix, unique)
// with want and returns the writes plus the content after them. A later
// entry for the same prefix in want wins.
//
// The common case of an agent's Sync (same prefixes, in Normalize order,
// a few endpoints changed) is one pass without allocation and updates have
// in place; anything else is a merge of two sorted slices. Neither hashes,
// so a one-entry change in 50,000 costs a linear scan only.
func diffTunnels(have, want []spec.Tunnel) (tunnelDiff, []spec.Tunnel) {
	var d tunnelDiff
	if len(want) == len(have) {
		same := true
		for i := range want {
			if want[i] == have[i] {
				continue // have is normalized, so want[i] is too
			}
			t := normTunnel(want[i])
			if t.Prefix != have[i].Prefix {
				same = false
				break
			}
			if t != have[i] {
				d.Update = append(d.Update, t)
			}
		}
		if same {
			if len(d.Update) > 0 {
				// Apply to a copy only where needed: have is ours.
				j := 0
				for i := range have {
					if j < len(d.Update) && have[i].Prefix == d.Update[j].Prefix {
						have[i] = d.Update[j]
						j++
					}
				}
			}
			return d, have
		}
		d.Update = nil
	}
	w := make([]spec.Tunnel, len(want))
	for i, t := range want {
		w[i] = normTunnel(t)
	}
	slices.SortStableFunc(w, func(a, b spec.Tunnel) int { return cmpPrefix(a.Prefix, b.Prefix) })
	// Deduplicate, keeping the last entry of each prefix.
	out := w[:0]
	for i := range w {
		if i+1 < len(w) && w[i+1].Prefix == w[i].Prefix {
			continue
		}
		out = append(out, w[i])
	}
	w = out
	i, j := 0, 0
	for i < len(have) || j < len(w) {
		switch {
		case j == len(w) || (i < len(have) && cmpPrefix(have[i].Prefix, w[j].Prefix) < 0):
			d.Delete = append(d.Delete, have[i].Prefix)
			i++
		case i == len(have) || cmpPrefix(have[i].Prefix, w[j].Prefix) > 0:
			d.Add = append(d.Add, w[j])
			j++
		default:
			if have[i] != w[j] {
				d.Update = append(d.Update, w[j])
			}
			i++
			j++
		}
	}
	return d, w
}
