package bgp

import (
	"fmt"
	"net/netip"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// FromCluster derives the speaker's Apply arguments from the cluster's
// (validated) BGP config, this node and the whole node list (self may be
// in it): the node's ASN (its own, else the cluster's), its underlay IPv4
// as router id, local address and next hop, the configured peers plus, in
// full mesh, every other node of the same address family (a configured
// peer wins over a node with the same address), and the node's pod CIDRs
// of the next hop's family. A pod CIDR of the other family is left out:
// advertising IPv6 over an IPv4 next hop (RFC 8950) is not supported.
// It fails when self has no usable IPv4 underlay address.
func FromCluster(b *weftv1.BGPConfig, self *weftv1.Node, nodes []*weftv1.Node) (cfg Config, advertise []netip.Prefix, nexthop netip.Addr, err error) {
	if b == nil || self == nil {
		return Config{}, nil, netip.Addr{}, fmt.Errorf("%w: no bgp config or node", ErrInvalidConfig)
	}
	under, err := netip.ParseAddr(self.UnderlayIp)
	if err != nil || !under.Unmap().Is4() {
		return Config{}, nil, netip.Addr{}, fmt.Errorf("%w: node %s underlay %q is not IPv4 (needed as router id)", ErrInvalidConfig, self.Name, self.UnderlayIp)
	}
	under = under.Unmap()
	cfg = Config{
		RouterID: under, ASN: b.Asn, ListenPort: 179, LocalAddress: under,
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
			addr, err := netip.ParseAddr(n.UnderlayIp)
			if err != nil || n.Name == self.Name || seen[addr.Unmap()] || !addr.Unmap().Is4() {
				continue
			}
			seen[addr.Unmap()] = true
			asn := n.Asn
			if asn == 0 {
				asn = b.Asn
			}
			cfg.Peers = append(cfg.Peers, Peer{Address: addr.Unmap(), ASN: asn})
		}
	}
	for _, s := range self.PodCidrs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			advertise = append(advertise, p.Masked())
		}
	}
	return cfg, advertise, under, nil
}
