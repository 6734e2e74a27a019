package model

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// DefaultUnderlayMTU is assumed when neither the config nor the underlay
// names an MTU.
const DefaultUnderlayMTU = 1500

// PeerProblem names a remote node the datapath does not serve in the
// current mode, and why. It is never fatal.
type PeerProblem struct {
	Node   string
	Reason string
}

// Plan is what one node's datapath should be, derived from a State.
type Plan struct {
	// Desired is nil while the config is unknown.
	Desired *spec.Desired
	// Problems lists peers not served, sorted by node name.
	Problems []PeerProblem
	// Self is this node's value, nil until its NodeAdded.
	Self *weftv1.Node
	// PodMTU is the MTU pods on this node should use (FLANNEL_MTU).
	PodMTU int
	// RefusedRoutes are the learned routes (Options.ExtraRoutes, bgp
	// mode) left out of Desired, in the order given (see filterLearned).
	RefusedRoutes []RefusedRoute
	// BigTCPNotes say why a family the config asks BIG TCP for keeps
	// 64 KiB on this node (kernel, underlay), one line each.
	BigTCPNotes []string
}

// Options tune Desired.
type Options struct {
	// ExtraRoutes are routes learned elsewhere (BGP); in bgp mode those
	// the log allows (filterLearned) are merged into the spec and the
	// others listed in Plan.RefusedRoutes; every other mode ignores them.
	ExtraRoutes []spec.Route
	// HostRouting overrides the config's host_routing for this node
	// (the agent's --host-routing): "bpf", "stack" or "" (the config's).
	HostRouting string
	// TunnelDatapath overrides the config's tunnel_datapath for this node
	// (the agent's --tunnel-datapath): "device", "bpf" or "" (the
	// config's).
	TunnelDatapath string
}

// TunnelDatapath is who encapsulates on a node: its own override when
// set, else the config's tunnel_datapath, else "device".
func TunnelDatapath(cfg *weftv1.ClusterConfig, override string) string {
	switch {
	case override != "":
		return override
	case cfg != nil && cfg.TunnelDatapath != "":
		return cfg.TunnelDatapath
	}
	return validate.TunnelDatapathDevice
}

// HostRouting is the host routing a node uses: its own override when set,
// else the config's host_routing, else "bpf".
func HostRouting(cfg *weftv1.ClusterConfig, override string) string {
	switch {
	case override != "":
		return override
	case cfg != nil && cfg.HostRouting != "":
		return cfg.HostRouting
	}
	return validate.HostRoutingBPF
}

// tunnelEndpoint picks where this node tunnels to peer pn: the peer's
// underlay address of this node's own underlay family (so both ends use
// one family and each end's outer source is the address the other's
// tunnel map holds), else the peer's underlay_ip when this node has an
// address of that family too. When neither works the reason names the
// fields.
func tunnelEndpoint(u spec.Underlay, pn *parsedNode) (netip.Addr, string) {
	if a := pn.addr(u.IP.Is6()); a.IsValid() {
		return a, ""
	}
	if u.Addr(pn.ip.Is6()).IsValid() {
		return pn.ip, ""
	}
	return netip.Addr{}, fmt.Sprintf("no tunnel: the underlay families differ: this node's underlay has only %s (%s), the peer's only %s (%s)",
		validate.Family(u.IP), u.IP, validate.Family(pn.ip), pn.ip)
}

// UnderlayMTU is the underlay MTU the config asks for, else the
// interface's, else 1500.
func UnderlayMTU(cfg *weftv1.ClusterConfig, u spec.Underlay) int {
	switch {
	case cfg != nil && cfg.Mtu != 0:
		return int(cfg.Mtu)
	case u.MTU > 0:
		return u.MTU
	}
	return DefaultUnderlayMTU
}

// Desired computes the datapath spec of node self from s, given what the
// node's underlay looks like. It is a pure function of its arguments:
//
//   - vxlan, geneve: the overlay device (MTU from config.mtu or the
//     underlay MTU minus the overhead), one route per cluster CIDR to it,
//     a tunnel entry for every pod CIDR of every other node;
//   - native with auto_direct_node_routes: a direct route per remote pod
//     CIDR via the node's underlay IP when that IP is on a directly
//     connected network, else a PeerProblem; without
//     auto_direct_node_routes the network routes pod CIDRs (like gateway);
//   - hybrid: the overlay device, direct routes for adjacent peers and
//     tunnel entries for the others;
//   - gateway: no per-node routes or tunnels;
//   - bgp: no static per-node routes; opts.ExtraRoutes are merged in,
//     except those the log does not allow (Plan.RefusedRoutes: outside
//     the pod networks, this node's own CIDRs, another node's CIDR via
//     the wrong node; see filterLearned).
//
// In every mode the cluster CIDRs are the pod networks the datapath's
// underlay check protects; without an overlay every remote pod CIDR is
// listed with its owner's underlay IP of the prefix's family (PodOwners)
// for it as well.
//
// Tunnel endpoints and next hops per family: a peer's IPv6 pod CIDR is
// routed via its IPv6 underlay address (underlay_ip, or underlay_ip_v6
// beside an IPv4 one); a peer without one gets a PeerProblem. Tunnels use
// the peer's underlay address of this node's own underlay family (see
// tunnelEndpoint).
//
// StackRouting follows config.host_routing unless opts.HostRouting
// overrides it. Overlay.InProgram follows config.tunnel_datapath unless
// opts.TunnelDatapath overrides it, for a VXLAN overlay (vxlan, hybrid)
// without StackRouting.
//
// Masquerade follows config.masquerade: the node's pod CIDRs are
// masqueraded unless the destination is in native_routing_cidr (IPv4) or
// native_routing_cidr_v6 (IPv6).
func Desired(s *State, self string, u spec.Underlay, opts Options) Plan {
	cfg := s.config
	plan := Plan{Self: s.log.Nodes[self]}
	if cfg == nil {
		return plan
	}
	mode := spec.Mode(cfg.Backend)
	base := UnderlayMTU(cfg, u)
	d := &spec.Desired{Mode: mode, StackRouting: HostRouting(cfg, opts.HostRouting) == validate.HostRoutingStack}
	overlay := mode == spec.ModeVXLAN || mode == spec.ModeGeneve || mode == spec.ModeHybrid
	bigPeers := false
	plan.PodMTU = base
	if overlay {
		kind := spec.ModeVXLAN
		if mode == spec.ModeGeneve {
			kind = spec.ModeGeneve
		}
		// The MTU is set below, once the tunnel endpoints are known.
		d.Overlay = &spec.Overlay{Kind: kind, Port: uint16(cfg.UdpPort), VNI: cfg.Vni, MAC: spec.VTEPMAC(self)}
		// The programs encapsulate only VXLAN, and only on their eBPF
		// forwarding paths, which stack routing turns off.
		d.Overlay.InProgram = kind == spec.ModeVXLAN && !d.StackRouting &&
			TunnelDatapath(cfg, opts.TunnelDatapath) == validate.TunnelDatapathBPF
		// BIG packets in the programs to peers that take them: those
		// that register spec.CapBigDecap decapsulate in their programs
		// whenever the config says so (no override of theirs turns it
		// off).
		bigPeers = d.Overlay.InProgram &&
			TunnelDatapath(cfg, "") == validate.TunnelDatapathBPF && HostRouting(cfg, "") != validate.HostRoutingStack
		for _, c := range []string{cfg.ClusterCidr, cfg.ClusterCidrV6} {
			if p, err := netip.ParsePrefix(c); err == nil {
				d.ClusterCIDRs = append(d.ClusterCIDRs, p)
			}
		}
	}
	// BIG TCP without encapsulation, or with VXLAN in the programs
	// (which send BIG packets whole to peers that take them, else
	// through the device; the config allows it only there, and IPv4
	// only).
	if !overlay || d.Overlay.InProgram {
		d.BigTCP, plan.BigTCPNotes = bigTCP(cfg, u)
	} else if cfg.BigTcp || cfg.BigTcpV6 {
		plan.BigTCPNotes = append(plan.BigTCPNotes, "big_tcp: this node encapsulates in the VXLAN device (--tunnel-datapath device or host_routing stack), which would segment packets over 64 KiB in software; its pods keep 64 KiB")
	}

	if plan.Self != nil {
		local, err := validate.PodCIDRs(cfg, plan.Self.PodCidrs)
		if err != nil {
			plan.Problems = append(plan.Problems, PeerProblem{self, fmt.Sprintf("own pod CIDRs unusable: %v", err)})
		}
		d.LocalPodCIDRs = local
	}

	direct := mode == spec.ModeHybrid || (mode == spec.ModeNative && cfg.AutoDirectNodeRoutes)
	cl4, _ := netip.ParsePrefix(cfg.ClusterCidr)
	cl6, _ := netip.ParsePrefix(cfg.ClusterCidrV6)
	// The underlay check protects the cluster's pod networks in every mode.
	for _, p := range []netip.Prefix{cl4, cl6} {
		if p.IsValid() {
			d.PodNetworks = append(d.PodNetworks, p.Masked())
		}
	}
	inCluster := func(p netip.Prefix) bool {
		cl := cl4
		if p.Addr().Is6() {
			cl = cl6
		}
		return cl.IsValid() && p.Bits() >= cl.Bits() && cl.Contains(p.Addr())
	}
	d.Tunnels = make([]spec.Tunnel, 0, len(s.sorted))
	for i := range s.sorted {
		pn := &s.sorted[i]
		name := pn.name
		if name == self {
			continue
		}
		// validate.PodCIDRs only when the cheap check fails: it names the
		// field in its error, which costs an allocation per CIDR.
		if slices.ContainsFunc(pn.prefixes, func(p netip.Prefix) bool { return !inCluster(p) }) {
			_, err := validate.PodCIDRs(cfg, s.log.Nodes[name].PodCidrs)
			if err == nil {
				err = fmt.Errorf("a pod CIDR of %v is outside the cluster CIDR", s.log.Nodes[name].PodCidrs)
			}
			plan.Problems = append(plan.Problems, PeerProblem{name, fmt.Sprintf("pod CIDRs unusable under the current config: %v", err)})
			continue
		}
		ip := pn.ip
		if ip == u.IP {
			plan.Problems = append(plan.Problems, PeerProblem{name, fmt.Sprintf("underlay IP %s is this node's own", ip)})
			continue
		}
		// The tunnel endpoint is computed once per peer, when a prefix
		// needs it.
		var endpoint netip.Addr
		endpointDone := false
		for _, p := range pn.prefixes {
			via := pn.addr(p.Addr().Is6())
			if !overlay {
				// The owner's address of the prefix's family, which the
				// network routes that family's pods via.
				owner := via
				if !owner.IsValid() {
					owner = ip
				}
				d.PodOwners = append(d.PodOwners, spec.PodOwner{Prefix: p, Node: owner})
			}
			switch {
			case direct && via.IsValid() && u.Adjacent(via):
				d.Routes = append(d.Routes, spec.Route{Prefix: p, Via: via, Proto: spec.ProtoDirect})
			case overlay:
				if !endpointDone {
					endpointDone = true
					var why string
					if endpoint, why = tunnelEndpoint(u, pn); why != "" {
						plan.Problems = append(plan.Problems, PeerProblem{name, why})
					}
				}
				if !endpoint.IsValid() {
					continue
				}
				t := spec.Tunnel{Prefix: p, Endpoint: endpoint, VNI: cfg.Vni}
				switch {
				case endpoint.Is6():
					t.Flags |= spec.FlagIPv6Endpoint
				case bigPeers && slices.Contains(s.log.Nodes[name].GetCapabilities(), spec.CapBigDecap):
					// BIG packets to it in the programs (lib/encap.h).
					t.Flags |= spec.FlagBigDecap
				}
				d.Tunnels = append(d.Tunnels, t)
			case direct && !via.IsValid():
				plan.Problems = append(plan.Problems, PeerProblem{name, fmt.Sprintf("%s cannot be routed: the node has no %s underlay address (an %s route needs a next hop of its family)",
					p, validate.Family(p.Addr()), validate.Family(p.Addr()))})
			case direct:
				plan.Problems = append(plan.Problems, PeerProblem{name, fmt.Sprintf("not on a directly connected network: %s via %s", p, via)})
			}
		}
	}
	if len(d.Tunnels) == 0 {
		d.Tunnels = nil
	}
	if d.Overlay != nil {
		overhead := spec.VXLANOverhead
		if mode == spec.ModeGeneve {
			overhead = spec.GeneveOverhead
		}
		// An IPv6 outer header is 20 bytes longer: on an IPv6 underlay,
		// or towards any peer reached over IPv6.
		if u.IP.Is6() || slices.ContainsFunc(d.Tunnels, func(t spec.Tunnel) bool { return t.Endpoint.Is6() }) {
			overhead += spec.IPv6Extra
		}
		d.Overlay.MTU = base - overhead
		plan.PodMTU = d.Overlay.MTU
	}
	if mode == spec.ModeBGP {
		keep, refused := filterLearned(s, self, u, cfg, opts.ExtraRoutes)
		d.Routes = append(d.Routes, keep...)
		plan.RefusedRoutes = refused
	}

	if cfg.Masquerade && len(d.LocalPodCIDRs) > 0 {
		m := &spec.Masquerade{PodCIDRs: append([]netip.Prefix(nil), d.LocalPodCIDRs...)}
		for _, c := range []string{cfg.NativeRoutingCidr, cfg.NativeRoutingCidrV6} {
			if p, err := netip.ParsePrefix(c); err == nil {
				m.NativeCIDRs = append(m.NativeCIDRs, p)
			}
		}
		d.Masquerade = m
	}
	plan.Desired = d.Normalize()
	return plan
}
