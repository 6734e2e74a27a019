package gobgp

import (
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/weftnet/weft/nodeagent/bgp"
)

// peerKey is a peer's effective settings; a peer is re-created when its
// key changes.
type peerKey struct {
	addr, local     netip.Addr
	asn, localASN   uint32
	password        string
	hold, keepalive uint32
	ttl             uint32
	gr              bool
	restart         uint32
}

func peerKeyOf(cfg *bgp.Config, p *bgp.Peer) peerKey {
	k := peerKey{
		addr:      p.Address,
		local:     cfg.LocalAddress,
		asn:       p.ASN,
		localASN:  cfg.ASN,
		password:  p.Password,
		hold:      cmp0(p.HoldTime, cmp0(cfg.HoldTime, bgp.DefaultHoldTime)),
		keepalive: cmp0(p.Keepalive, cmp0(cfg.Keepalive, bgp.DefaultKeepalive)),
		ttl:       p.MultihopTTL,
		gr:        cfg.GracefulRestart,
	}
	if k.asn == 0 {
		k.asn = cfg.ASN // iBGP unless told otherwise
	}
	if k.gr {
		k.restart = cmp0(cfg.RestartTime, bgp.DefaultRestartTime)
	}
	return k
}

// apiPeer turns k into GoBGP's peer config: IPv4 and IPv6 unicast, the
// session timers, MD5, multihop and graceful restart (full mode, without
// the RFC 8538 "N" bit, which BIRD 2.0 does not implement, so a Cease from
// a stopping agent is a hard reset everywhere).
func (k *peerKey) apiPeer() *api.Peer {
	p := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: k.addr.String(),
			PeerAsn:         k.asn,
			LocalAsn:        k.localASN,
			AuthPassword:    k.password,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          uint64(k.hold),
			KeepaliveInterval: uint64(k.keepalive),
			ConnectRetry:      connectRetry,
		}},
		Transport: &api.Transport{},
	}
	if k.local.IsValid() && k.local.Is4() == k.addr.Is4() {
		p.Transport.LocalAddress = k.local.String()
	}
	if k.ttl > 0 {
		p.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: k.ttl}
	}
	if k.gr {
		p.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: k.restart}
	}
	for _, afi := range []api.Family_Afi{api.Family_AFI_IP, api.Family_AFI_IP6} {
		af := &api.AfiSafi{Config: &api.AfiSafiConfig{
			Family:  &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST},
			Enabled: true,
		}}
		if k.gr {
			af.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
		}
		p.AfiSafis = append(p.AfiSafis, af)
	}
	return p
}
