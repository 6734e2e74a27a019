package proc

import (
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// The Go types travel as their proto messages; addresses as strings, an
// invalid netip.Addr as "".

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func parseAddr(field, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: %s %q is not an IP address", bgp.ErrInvalidConfig, field, s)
	}
	return a, nil
}

func applyToProto(cfg bgp.Config, advertise []netip.Prefix, nexthops []netip.Addr) *weftv1.SpeakerApply {
	c := &weftv1.SpeakerConfig{
		RouterId: addrString(cfg.RouterID), Asn: cfg.ASN, ListenPort: cfg.ListenPort, LocalAddress: addrString(cfg.LocalAddress),
		GracefulRestart: cfg.GracefulRestart, RestartTimeSeconds: cfg.RestartTime,
		HoldTimeSeconds: cfg.HoldTime, KeepaliveSeconds: cfg.Keepalive,
	}
	for _, p := range cfg.Peers {
		c.Peers = append(c.Peers, &weftv1.SpeakerPeer{Address: addrString(p.Address), Asn: p.ASN, Password: p.Password,
			HoldTimeSeconds: p.HoldTime, KeepaliveSeconds: p.Keepalive, MultihopTtl: p.MultihopTTL})
	}
	a := &weftv1.SpeakerApply{Config: c}
	for _, p := range advertise {
		a.Advertise = append(a.Advertise, p.String())
	}
	for _, n := range nexthops {
		a.Nexthops = append(a.Nexthops, addrString(n))
	}
	return a
}

// applyFromProto decodes an Apply; its errors wrap bgp.ErrInvalidConfig
// and name the field.
func applyFromProto(a *weftv1.SpeakerApply) (cfg bgp.Config, advertise []netip.Prefix, nexthops []netip.Addr, err error) {
	c := a.GetConfig()
	cfg = bgp.Config{ASN: c.GetAsn(), ListenPort: c.GetListenPort(), GracefulRestart: c.GetGracefulRestart(),
		RestartTime: c.GetRestartTimeSeconds(), HoldTime: c.GetHoldTimeSeconds(), Keepalive: c.GetKeepaliveSeconds()}
	if cfg.RouterID, err = parseAddr("router_id", c.GetRouterId()); err != nil {
		return bgp.Config{}, nil, nil, err
	}
	if cfg.LocalAddress, err = parseAddr("local_address", c.GetLocalAddress()); err != nil {
		return bgp.Config{}, nil, nil, err
	}
	for i, p := range c.GetPeers() {
		addr, err := parseAddr(fmt.Sprintf("peers[%d].address", i), p.GetAddress())
		if err != nil {
			return bgp.Config{}, nil, nil, err
		}
		cfg.Peers = append(cfg.Peers, bgp.Peer{Address: addr, ASN: p.GetAsn(), Password: p.GetPassword(),
			HoldTime: p.GetHoldTimeSeconds(), Keepalive: p.GetKeepaliveSeconds(), MultihopTTL: p.GetMultihopTtl()})
	}
	for i, s := range a.GetAdvertise() {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return bgp.Config{}, nil, nil, fmt.Errorf("%w: advertise[%d] %q is not a prefix", bgp.ErrInvalidConfig, i, s)
		}
		advertise = append(advertise, p)
	}
	for i, s := range a.GetNexthops() {
		n, err := parseAddr(fmt.Sprintf("nexthops[%d]", i), s)
		if err != nil {
			return bgp.Config{}, nil, nil, err
		}
		nexthops = append(nexthops, n)
	}
	return cfg, advertise, nexthops, nil
}

func routesToProto(rs []spec.Route) []*weftv1.SpeakerRoute {
	out := make([]*weftv1.SpeakerRoute, 0, len(rs))
	for _, r := range rs {
		out = append(out, &weftv1.SpeakerRoute{Prefix: r.Prefix.String(), Via: addrString(r.Via)})
	}
	return out
}

// routesFromProto decodes the learned routes. A route that does not
// parse is left out and described in bad, naming the route and the field
// (the child sends only what it parsed itself, so such a route is a bug,
// or a child of another version).
func routesFromProto(rs []*weftv1.SpeakerRoute) (out []spec.Route, bad []string) {
	for _, r := range rs {
		p, err := netip.ParsePrefix(r.GetPrefix())
		if err != nil {
			bad = append(bad, fmt.Sprintf("route %q via %q: prefix is not a prefix", r.GetPrefix(), r.GetVia()))
			continue
		}
		via, err := netip.ParseAddr(r.GetVia())
		if err != nil {
			bad = append(bad, fmt.Sprintf("route %q via %q: via is not an IP address", r.GetPrefix(), r.GetVia()))
			continue
		}
		out = append(out, spec.Route{Prefix: p, Via: via, Proto: spec.ProtoBGP})
	}
	return out, bad
}
