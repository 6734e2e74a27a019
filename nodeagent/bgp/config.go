package bgp

import (
	"fmt"
	"net/netip"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// FromCluster derives the speaker's Apply arguments from the cluster's
// (validated) BGP config, this node and the whole node list (self may be
// in it): the node's ASN (its own, else the cluster's), its router id, its
// underlay_ip as local address, the configured peers plus, in full mesh,
// every other node at its underlay address of self's underlay_ip family
// (a configured peer wins over a node with the same address), and the
// node's pod CIDRs, each with a next hop of its own family: underlay_ip,
// or underlay_ip_v6 for IPv6 beside an IPv4 underlay_ip. One session
// carries both families (multiprotocol BGP: IPv6 routes over an IPv4
// session with an IPv6 next hop). A pod CIDR of a family the node has no
// underlay address of is left out: an IPv6 route cannot have an IPv4
// next hop.
//
// The router id is the underlay IPv4 address; an IPv6-only node has none,
// and uses the last 32 bits of its IPv6 underlay address (unique among
// nodes numbered within one /96, as underlays are). It fails when self's
// underlay address is unusable or gives the router id 0.0.0.0.
func FromCluster(b *weftv1.BGPConfig, self *weftv1.Node, nodes []*weftv1.Node) (cfg Config, advertise []netip.Prefix, nexthops []netip.Addr, err error) {
	if b == nil || self == nil {
		return Config{}, nil, nil, fmt.Errorf("%w: no bgp config or node", ErrInvalidConfig)
	}
	under, err := netip.ParseAddr(self.UnderlayIp)
	if err != nil {
		return Config{}, nil, nil, fmt.Errorf("%w: node %s underlay %q is not an IP address", ErrInvalidConfig, self.Name, self.UnderlayIp)
	}
	under = under.Unmap()
	nexthops = []netip.Addr{under}
	routerID := under
	if under.Is6() {
		a := under.As16()
		routerID = netip.AddrFrom4([4]byte(a[12:]))
		if routerID.IsUnspecified() {
			return Config{}, nil, nil, fmt.Errorf("%w: node %s underlay %s gives no router id (its last 32 bits are 0)", ErrInvalidConfig, self.Name, under)
		}
	} else if a, err := netip.ParseAddr(self.UnderlayIpV6); err == nil && a.Is6() {
		nexthops = append(nexthops, a)
	}
	cfg = Config{
		RouterID: routerID, ASN: b.Asn, ListenPort: 179, LocalAddress: under,
		GracefulRestart: b.GracefulRestart, RestartTime: b.GracefulRestartSeconds,
		HoldTime: b.HoldTimeSeconds, Keepalive: b.KeepaliveSeconds,
	}
	if self.Asn != 0 {
		cfg.ASN = self.Asn
	}
	seen := map[netip.Addr]bool{under: true}
	for _, p := range b.Peers {
		addr, err := netip.ParseAddr(p.Address)
		if err != nil || seen[addr.Unmap()] {
			continue
		}
		seen[addr.Unmap()] = true
		cfg.Peers = append(cfg.Peers, Peer{Address: addr.Unmap(), ASN: p.Asn, Password: p.Password,
			HoldTime: p.HoldTimeSeconds, Keepalive: p.KeepaliveSeconds, MultihopTTL: p.MultihopTtl})
	}
	if b.FullMesh {
		for _, n := range nodes {
			if n.Name == self.Name {
				continue
			}
			addr := meshAddr(n, under.Is6())
			if !addr.IsValid() || seen[addr] {
				continue
			}
			seen[addr] = true
			asn := n.Asn
			if asn == 0 {
				asn = b.Asn
			}
			cfg.Peers = append(cfg.Peers, Peer{Address: addr, ASN: asn})
		}
	}
	for _, s := range self.PodCidrs {
		if p, err := netip.ParsePrefix(s); err == nil && NextHopFor(p, nexthops).IsValid() {
			advertise = append(advertise, p.Masked())
		}
	}
	return cfg, advertise, nexthops, nil
}

// meshAddr is where a full-mesh peer is dialled: its underlay address of
// the family asked for (underlay_ip, or underlay_ip_v6 for IPv6), invalid
// when it has none.
func meshAddr(n *weftv1.Node, v6 bool) netip.Addr {
	for _, s := range []string{n.UnderlayIp, n.UnderlayIpV6} {
		if a, err := netip.ParseAddr(s); err == nil && a.Unmap().Is6() == v6 {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}
