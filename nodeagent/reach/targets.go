package reach

import (
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/bpf/spec"
)

// Peer is a remote node as the log describes it.
type Peer struct {
	Node     string
	Underlay netip.Addr
	// Underlay6 is the peer's underlay_ip_v6 (invalid when unset).
	Underlay6 netip.Addr
	PodCIDRs  []netip.Prefix
}

// addr is the peer's underlay address of one family, invalid when none.
func (p Peer) addr(v6 bool) netip.Addr {
	switch {
	case p.Underlay.Is6() == v6:
		return p.Underlay
	case v6:
		return p.Underlay6
	}
	return netip.Addr{}
}

// Targets derives what a node probes from the datapath spec it synced: one
// target per peer and address family this node has a pod CIDR of (both in
// a dual-stack cluster; IPv4 while it has none yet), the pod gateway
// (first address) of the peer's pod CIDR of that family. The path is the
// spec's tunnel entry or route for that address; without one, the network
// must carry it, and Needs says why weft installs nothing there: direct
// routes off, a non-adjacent peer, a peer without an underlay address of
// the family, gateway mode, no BGP route. autoDirect is the config's
// auto_direct_node_routes; u is this node's underlay. It is a pure
// function; peers with no pod CIDR of a family get no target for it.
func Targets(d *spec.Desired, autoDirect bool, u spec.Underlay, peers []Peer) []Target {
	if d == nil {
		return nil
	}
	var families []bool // v6 per family probed
	for _, v6 := range []bool{false, true} {
		for _, p := range d.LocalPodCIDRs {
			if p.Addr().Is6() == v6 {
				families = append(families, v6)
				break
			}
		}
	}
	if len(families) == 0 {
		families = []bool{false}
	}
	tunnels := make(map[netip.Prefix]spec.Tunnel, len(d.Tunnels))
	for _, t := range d.Tunnels {
		tunnels[t.Prefix] = t
	}
	routes := make(map[netip.Prefix]spec.Route, len(d.Routes))
	for _, r := range d.Routes {
		routes[r.Prefix] = r
	}
	out := make([]Target, 0, len(peers)*len(families))
	for _, pr := range peers {
		if pr.Underlay == u.IP {
			continue
		}
		for _, v6 := range families {
			var cidr netip.Prefix
			for _, c := range pr.PodCIDRs {
				if c.IsValid() && c.Addr().Is6() == v6 {
					cidr = c.Masked()
					break
				}
			}
			if !cidr.IsValid() {
				continue
			}
			t := Target{Node: pr.Node, Addr: cidr.Addr().Next(), Prefix: cidr, Mode: string(d.Mode)}
			if tn, ok := tunnels[cidr]; ok {
				t.Path, t.Via = PathTunnel, tn.Endpoint
			} else if r, ok := routes[cidr]; ok {
				t.Path, t.Via = routePath(r), r.Via
			} else if tn, r, ok := covering(d, t.Addr); ok {
				// An aggregate (a BGP route for a wider prefix, say).
				if tn != nil {
					t.Path, t.Via = PathTunnel, tn.Endpoint
				} else {
					t.Path, t.Via = routePath(*r), r.Via
				}
			} else {
				t.Path, t.Needs = PathNetwork, needs(d.Mode, autoDirect, u, pr.addr(v6), cidr)
			}
			out = append(out, t)
		}
	}
	return out
}

func routePath(r spec.Route) Path {
	if r.Proto == spec.ProtoBGP {
		return PathBGP
	}
	return PathDirect
}

// covering finds the most specific tunnel entry or route holding a.
func covering(d *spec.Desired, a netip.Addr) (*spec.Tunnel, *spec.Route, bool) {
	var bt *spec.Tunnel
	var br *spec.Route
	bits := -1
	for i := range d.Tunnels {
		if p := d.Tunnels[i].Prefix; p.Contains(a) && p.Bits() > bits {
			bt, br, bits = &d.Tunnels[i], nil, p.Bits()
		}
	}
	for i := range d.Routes {
		if p := d.Routes[i].Prefix; p.Contains(a) && p.Bits() > bits {
			bt, br, bits = nil, &d.Routes[i], p.Bits()
		}
	}
	return bt, br, bits >= 0
}

// needs names what a mode relies on to reach a pod CIDR weft routes
// nothing to.
func needs(mode spec.Mode, autoDirect bool, u spec.Underlay, peer netip.Addr, cidr netip.Prefix) string {
	switch mode {
	case spec.ModeNative:
		switch {
		case !autoDirect:
			return fmt.Sprintf("direct routes are off (auto_direct_node_routes=false), so the network must route %s", cidr)
		case !peer.IsValid():
			fam := "IPv4"
			if cidr.Addr().Is6() {
				fam = "IPv6"
			}
			return fmt.Sprintf("the peer has no %s underlay address to route %s via, so the network must route it", fam, cidr)
		case !u.Adjacent(peer):
			return fmt.Sprintf("the peer %s is not on a directly connected network, so the network must route %s", peer, cidr)
		}
		return fmt.Sprintf("the network must route %s", cidr)
	case spec.ModeGateway:
		return fmt.Sprintf("no gateway route: gateway mode needs this node's gateway to route %s", cidr)
	case spec.ModeBGP:
		return fmt.Sprintf("no BGP route for %s learned from any peer", cidr)
	}
	return fmt.Sprintf("weft routes nothing to %s in %s mode", cidr, mode)
}
