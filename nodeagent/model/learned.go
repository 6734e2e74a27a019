package model

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Why a learned route was refused: the reason label of
// weft_agent_bgp_routes_refused_total.
const (
	// RefuseMalformed: the prefix has host bits set, or the next hop is
	// missing or of the other family.
	RefuseMalformed = "malformed"
	// RefuseOutside: the prefix is not inside the cluster's pod network
	// of its family (a default route, a host or underlay prefix, an
	// aggregate covering the cluster CIDR).
	RefuseOutside = "outside_pod_networks"
	// RefuseOwn: the prefix overlaps one of this node's own pod CIDRs.
	RefuseOwn = "own_pod_cidr"
	// RefuseUnassigned: the prefix lies within no single node's pod CIDR.
	RefuseUnassigned = "unassigned"
	// RefuseWrongNextHop: the next hop is a node's underlay address, but
	// not that of the node owning the prefix (or it is this node's).
	RefuseWrongNextHop = "wrong_next_hop"
	// RefuseUnknownNextHop: the next hop is no node's address and the
	// config names no router (bgp.peers is empty), so nothing but nodes
	// speaks BGP in the cluster.
	RefuseUnknownNextHop = "unknown_next_hop"
)

// RefuseReasons lists every reason a learned route is refused for.
var RefuseReasons = []string{RefuseMalformed, RefuseOutside, RefuseOwn, RefuseUnassigned, RefuseWrongNextHop, RefuseUnknownNextHop}

// RefusedRoute is a learned route Desired left out of the spec.
type RefusedRoute struct {
	Route spec.Route
	// Reason is one of the Refuse* constants.
	Reason string
	// Detail says why in words, naming the nodes and prefixes concerned.
	Detail string
}

func (r RefusedRoute) String() string {
	return fmt.Sprintf("%s via %s: %s", r.Route.Prefix, r.Route.Via, r.Detail)
}

// filterLearned splits learned (BGP) routes into those the datapath may
// install and those it must not, using only what the log says: the
// cluster CIDRs, every node's pod CIDRs and underlay addresses, this
// node's own. A route is kept when
//
//   - its prefix lies inside the cluster CIDR of its family,
//   - overlaps none of this node's pod CIDRs,
//   - lies within the pod CIDR of one other node N, and
//   - its next hop is N's underlay address, or no node's address at all
//     while the config names peers (a router re-advertising with its own
//     next hop). A next hop that is another node's (or this node's) is
//     refused: a node announces only its own pod CIDRs.
//
// A speaker lists every path of a prefix, its best first: the first path
// allowed is kept, so an honest path stays when a refused one won the
// speaker's selection.
//
// Peers are not known here (a learned route carries its prefix and next
// hop only), so a configured peer that is a router is trusted to route
// other nodes' pod CIDRs; it cannot take this node's own CIDRs, a node's
// CIDR to another node, or anything outside the pod networks.
func filterLearned(s *State, self string, u spec.Underlay, cfg *weftv1.ClusterConfig, routes []spec.Route) (keep []spec.Route, refused []RefusedRoute) {
	if len(routes) == 0 {
		return nil, nil
	}
	cl4, _ := netip.ParsePrefix(cfg.ClusterCidr)
	cl6, _ := netip.ParsePrefix(cfg.ClusterCidrV6)
	var own []netip.Prefix
	var selfAddrs []netip.Addr
	for _, a := range []netip.Addr{u.IP, u.IPv6} {
		if a.IsValid() {
			selfAddrs = append(selfAddrs, a)
		}
	}
	if i, ok := slices.BinarySearchFunc(s.sorted, self, byName); ok {
		pn := &s.sorted[i]
		own = pn.prefixes
		selfAddrs = append(selfAddrs, pn.ip)
		if pn.ip6.IsValid() {
			selfAddrs = append(selfAddrs, pn.ip6)
		}
	}
	// Every other node's underlay addresses, built on the first next hop
	// that is not the owner's (an honest full mesh never needs it).
	var nodeAt map[netip.Addr]string
	nodeOf := func(a netip.Addr) (string, bool) {
		if nodeAt == nil {
			nodeAt = make(map[netip.Addr]string, 2*len(s.sorted))
			for i := range s.sorted {
				if pn := &s.sorted[i]; pn.name != self {
					nodeAt[pn.ip] = pn.name
					if pn.ip6.IsValid() {
						nodeAt[pn.ip6] = pn.name
					}
				}
			}
		}
		name, ok := nodeAt[a]
		return name, ok
	}
	// One route per prefix: the first allowed path (the speaker lists a
	// prefix's best path first).
	kept := make(map[netip.Prefix]bool, len(routes))
	routers := cfg.GetBgp() != nil && len(cfg.GetBgp().GetPeers()) > 0
	refuse := func(r spec.Route, reason, format string, args ...any) {
		refused = append(refused, RefusedRoute{Route: r, Reason: reason, Detail: fmt.Sprintf(format, args...)})
	}
	for _, r := range routes {
		p, via := r.Prefix, r.Via
		cl := cl4
		if p.Addr().Is6() {
			cl = cl6
		}
		switch {
		case !p.IsValid() || p != p.Masked():
			refuse(r, RefuseMalformed, "prefix has host bits set")
			continue
		case !via.IsValid() || via.Is4() != p.Addr().Is4():
			refuse(r, RefuseMalformed, "next hop is not an address of the prefix's family")
			continue
		case !cl.IsValid():
			refuse(r, RefuseOutside, "the cluster has no %s pod network", validate.Family(p.Addr()))
			continue
		case p.Bits() < cl.Bits() || !cl.Contains(p.Addr()):
			refuse(r, RefuseOutside, "outside the cluster's pod network %s", cl)
			continue
		}
		if i := slices.IndexFunc(own, p.Overlaps); i >= 0 {
			refuse(r, RefuseOwn, "overlaps this node's own pod CIDR %s", own[i])
			continue
		}
		owner, ownerCIDR := s.claims.within(p)
		if owner == "" {
			refuse(r, RefuseUnassigned, "within no node's pod CIDR")
			continue
		}
		if ownerCIDR.Bits() < cl.Bits() {
			refuse(r, RefuseUnassigned, "node %q's pod CIDR %s is not inside the cluster's pod network %s", owner, ownerCIDR, cl)
			continue
		}
		if slices.Contains(selfAddrs, via) {
			refuse(r, RefuseWrongNextHop, "next hop is this node's own address; %s is node %q's", ownerCIDR, owner)
			continue
		}
		// Not the owner's address (a node sharing it with the owner
		// counts as the owner): another node's is refused; no node's at
		// all is a router's, allowed when routers are configured.
		if !ownsAddr(s, owner, via) {
			if at, isNode := nodeOf(via); isNode {
				refuse(r, RefuseWrongNextHop, "next hop is node %q's underlay address, but %s is node %q's (a node announces only its own pod CIDRs)", at, ownerCIDR, owner)
				continue
			}
			if !routers {
				refuse(r, RefuseUnknownNextHop, "next hop is no node's underlay address and no router is configured (bgp.peers is empty); %s is node %q's", ownerCIDR, owner)
				continue
			}
		}
		if !kept[p] {
			kept[p] = true
			keep = append(keep, r)
		}
	}
	return keep, refused
}

// ownsAddr tells whether node name has underlay address a.
func ownsAddr(s *State, name string, a netip.Addr) bool {
	i, ok := slices.BinarySearchFunc(s.sorted, name, byName)
	return ok && (s.sorted[i].ip == a || s.sorted[i].ip6 == a)
}

// within returns the node whose claimed pod CIDR contains p, and that
// CIDR; "" when none does. Claims never overlap, so at most one does.
func (c claims) within(p netip.Prefix) (string, netip.Prefix) {
	for bits, m := range c {
		if bits > p.Bits() {
			continue
		}
		q, err := p.Addr().Prefix(bits)
		if err != nil {
			continue
		}
		if owner, ok := m[q]; ok {
			return owner, q
		}
	}
	return "", netip.Prefix{}
}
