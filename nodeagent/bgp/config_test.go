package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func TestFromCluster(t *testing.T) {
	b := &weftv1.BGPConfig{Asn: 64512, FullMesh: true, GracefulRestart: true, GracefulRestartSeconds: 60, HoldTimeSeconds: 9, KeepaliveSeconds: 3,
		Peers: []*weftv1.BGPPeer{{Address: "10.0.0.254", Asn: 65000, Password: "pw", MultihopTtl: 2}, {Address: "10.0.0.3", Asn: 65000}}}
	self := &weftv1.Node{Name: "a", UnderlayIp: "10.0.0.1", PodCidrs: []string{"10.244.1.0/24", "fd00:244:1::/64"}, Asn: 65001}
	nodes := []*weftv1.Node{self, {Name: "b", UnderlayIp: "10.0.0.2"}, {Name: "c", UnderlayIp: "10.0.0.3", Asn: 65003}, {Name: "d", UnderlayIp: "fd00::4"}}
	cfg, adv, nh, err := FromCluster(b, self, nodes)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RouterID != ip("10.0.0.1") || cfg.LocalAddress != ip("10.0.0.1") || fmt.Sprint(nh) != "[10.0.0.1]" || cfg.ASN != 65001 || cfg.ListenPort != 179 ||
		!cfg.GracefulRestart || cfg.RestartTime != 60 || cfg.HoldTime != 9 || cfg.Keepalive != 3 {
		t.Errorf("global settings wrong: %+v", cfg)
	}
	got := fmt.Sprint(cfg.Peers)
	want := fmt.Sprint([]Peer{
		{Address: ip("10.0.0.254"), ASN: 65000, Password: "pw", MultihopTTL: 2},
		{Address: ip("10.0.0.3"), ASN: 65000},
		{Address: ip("10.0.0.2"), ASN: 64512},
	})
	if got != want {
		t.Errorf("peers\n got %s\nwant %s", got, want)
	}
	if fmt.Sprint(adv) != "[10.244.1.0/24]" {
		t.Errorf("advertise %v, want only the IPv4 pod CIDR (no IPv6 next hop)", adv)
	}
	if _, _, _, err := FromCluster(b, &weftv1.Node{Name: "v6", UnderlayIp: "fd00::"}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("IPv6 underlay without a router id: err = %v, want ErrInvalidConfig", err)
	}
}

// TestFromClusterDualStack: a dual-stack node advertises both pod CIDRs,
// each with the next hop of its family, over sessions to the peers' IPv4
// addresses; an IPv6-only node takes its router id from its address and
// peers over IPv6.
func TestFromClusterDualStack(t *testing.T) {
	b := &weftv1.BGPConfig{Asn: 64512, FullMesh: true}
	self := &weftv1.Node{Name: "a", UnderlayIp: "10.0.0.1", UnderlayIpV6: "fd99::1", PodCidrs: []string{"10.244.1.0/24", "fd00:244:1::/64"}}
	nodes := []*weftv1.Node{self, {Name: "b", UnderlayIp: "10.0.0.2", UnderlayIpV6: "fd99::2"}, {Name: "c", UnderlayIp: "fd99::3"}}
	cfg, adv, nh, err := FromCluster(b, self, nodes)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RouterID != ip("10.0.0.1") || fmt.Sprint(nh) != "[10.0.0.1 fd99::1]" || fmt.Sprint(adv) != "[10.244.1.0/24 fd00:244:1::/64]" ||
		fmt.Sprint(cfg.Peers) != fmt.Sprint([]Peer{{Address: ip("10.0.0.2"), ASN: 64512}}) {
		t.Errorf("dual-stack node: router id %v next hops %v advertise %v peers %v", cfg.RouterID, nh, adv, cfg.Peers)
	}
	for _, p := range adv {
		if NextHopFor(p, nh).Is4() != p.Addr().Is4() {
			t.Errorf("%v would be advertised via %v", p, NextHopFor(p, nh))
		}
	}

	self = &weftv1.Node{Name: "c", UnderlayIp: "fd99::3", PodCidrs: []string{"fd00:244:3::/64"}}
	cfg, adv, nh, err = FromCluster(b, self, nodes)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RouterID != ip("0.0.0.3") || cfg.LocalAddress != ip("fd99::3") || fmt.Sprint(nh) != "[fd99::3]" || fmt.Sprint(adv) != "[fd00:244:3::/64]" ||
		fmt.Sprint(cfg.Peers) != fmt.Sprint([]Peer{{Address: ip("fd99::1"), ASN: 64512}, {Address: ip("fd99::2"), ASN: 64512}}) {
		t.Errorf("IPv6-only node: router id %v local %v next hops %v advertise %v peers %v", cfg.RouterID, cfg.LocalAddress, nh, adv, cfg.Peers)
	}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }
