package bgp

import (
	"errors"
	"fmt"
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
	if cfg.RouterID != ip("10.0.0.1") || cfg.LocalAddress != nh || nh != ip("10.0.0.1") || cfg.ASN != 65001 || cfg.ListenPort != 179 ||
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
		t.Errorf("advertise %v, want only the IPv4 pod CIDR", adv)
	}
	if _, _, _, err := FromCluster(b, &weftv1.Node{Name: "v6", UnderlayIp: "fd00::1"}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("IPv6 underlay: err = %v, want ErrInvalidConfig", err)
	}
}
