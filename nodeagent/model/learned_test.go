package model

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/bpf/spec"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// TestLearnedRoutesFiltered: in bgp mode only learned routes the log
// allows reach the spec; every other one is in Plan.RefusedRoutes with
// its reason, and the rest of the same set is kept. Three nodes on one
// dual-stack segment (self, b, c), a router at 192.168.1.254 /
// fd99::fe.
func TestLearnedRoutesFiltered(t *testing.T) {
	pfx := netip.MustParsePrefix
	ip := netip.MustParseAddr
	cfg := func(peers bool) *weftv1.ClusterConfig {
		c := &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", ClusterCidrV6: "fd00:10:244::/56", Backend: "bgp",
			Bgp: &weftv1.BGPConfig{Asn: 64512, FullMesh: true}}
		if peers {
			c.Bgp.Peers = []*weftv1.BGPPeer{{Address: "192.168.1.254", Asn: 65000}}
		}
		return c
	}
	state := func(c *weftv1.ClusterConfig) *State {
		s := New()
		mustApply(t, s, 1, cfgEvent(1, c))
		mustApply(t, s, 2, addEventV6(2, "self", "192.168.1.1", "fd99::1", "10.244.1.0/24", "fd00:10:244:1::/64"))
		mustApply(t, s, 3, addEventV6(3, "b", "192.168.1.2", "fd99::2", "10.244.2.0/24", "fd00:10:244:2::/64"))
		mustApply(t, s, 4, addEventV6(4, "c", "192.168.1.3", "fd99::3", "10.244.3.0/24", "fd00:10:244:3::/64"))
		return s
	}
	u := spec.Underlay{Interface: "eth0", IP: ip("192.168.1.1"), IPv6: ip("fd99::1"), MTU: 1500,
		Networks: []netip.Prefix{pfx("192.168.1.0/24"), pfx("fd99::/64")}}
	bgpRoute := func(p, via string) spec.Route {
		return spec.Route{Prefix: pfx(p), Via: ip(via), Proto: spec.ProtoBGP}
	}
	cases := []struct {
		name    string
		route   spec.Route
		noPeers bool   // config without bgp.peers (full mesh only)
		reason  string // "" for kept
		detail  string // part of the refusal's words
	}{
		{name: "legit direct", route: bgpRoute("10.244.2.0/24", "192.168.1.2")},
		{name: "legit direct, mesh only", route: bgpRoute("10.244.2.0/24", "192.168.1.2"), noPeers: true},
		{name: "legit more specific of the owner", route: bgpRoute("10.244.2.128/25", "192.168.1.2")},
		{name: "legit via router", route: bgpRoute("10.244.3.0/24", "192.168.1.254")},
		{name: "hijack more specific", route: bgpRoute("10.244.2.128/25", "192.168.1.3"), reason: RefuseWrongNextHop,
			detail: `next hop is node "c"'s underlay address, but 10.244.2.0/24 is node "b"'s`},
		{name: "victim's whole CIDR via another node", route: bgpRoute("10.244.2.0/24", "192.168.1.3"), reason: RefuseWrongNextHop,
			detail: `next hop is node "c"'s underlay address, but 10.244.2.0/24 is node "b"'s`},
		{name: "via this node", route: bgpRoute("10.244.2.0/24", "192.168.1.1"), reason: RefuseWrongNextHop,
			detail: "next hop is this node's own address"},
		{name: "own CIDR", route: bgpRoute("10.244.1.0/24", "192.168.1.2"), reason: RefuseOwn,
			detail: "overlaps this node's own pod CIDR 10.244.1.0/24"},
		{name: "inside own CIDR", route: bgpRoute("10.244.1.7/32", "192.168.1.254"), reason: RefuseOwn},
		{name: "covering own CIDR", route: bgpRoute("10.244.0.0/22", "192.168.1.254"), reason: RefuseOwn},
		{name: "cluster CIDR aggregate", route: bgpRoute("10.244.0.0/16", "192.168.1.254"), reason: RefuseOwn},
		{name: "default route", route: bgpRoute("0.0.0.0/0", "192.168.1.2"), reason: RefuseOutside,
			detail: "outside the cluster's pod network 10.244.0.0/16"},
		{name: "covering the cluster CIDR", route: bgpRoute("10.0.0.0/8", "192.168.1.254"), reason: RefuseOutside},
		{name: "non-pod prefix", route: bgpRoute("192.168.7.0/24", "192.168.1.2"), reason: RefuseOutside},
		{name: "unassigned pod-network prefix", route: bgpRoute("10.244.9.0/24", "192.168.1.254"), reason: RefuseUnassigned,
			detail: "within no node's pod CIDR"},
		{name: "aggregate of two other nodes", route: bgpRoute("10.244.2.0/23", "192.168.1.254"), reason: RefuseUnassigned},
		{name: "unknown next hop, mesh only", route: bgpRoute("10.244.3.0/24", "192.168.1.254"), noPeers: true, reason: RefuseUnknownNextHop,
			detail: "no router is configured"},
		{name: "host bits", route: bgpRoute("10.244.2.1/24", "192.168.1.2"), reason: RefuseMalformed},
		{name: "next hop of the other family", route: bgpRoute("10.244.2.0/24", "fd99::2"), reason: RefuseMalformed},

		{name: "v6 legit direct", route: bgpRoute("fd00:10:244:2::/64", "fd99::2")},
		{name: "v6 legit via router", route: bgpRoute("fd00:10:244:3::/64", "fd99::fe")},
		{name: "v6 hijack more specific", route: bgpRoute("fd00:10:244:2:8000::/65", "fd99::3"), reason: RefuseWrongNextHop},
		{name: "v6 victim's whole CIDR via another node", route: bgpRoute("fd00:10:244:2::/64", "fd99::3"), reason: RefuseWrongNextHop},
		{name: "v6 via this node", route: bgpRoute("fd00:10:244:2::/64", "fd99::1"), reason: RefuseWrongNextHop},
		{name: "v6 own CIDR", route: bgpRoute("fd00:10:244:1::/64", "fd99::2"), reason: RefuseOwn},
		{name: "v6 default route", route: bgpRoute("::/0", "fd99::2"), reason: RefuseOutside},
		{name: "v6 non-pod prefix", route: bgpRoute("2001:db8::/32", "fd99::2"), reason: RefuseOutside},
		{name: "v6 unassigned", route: bgpRoute("fd00:10:244:9::/64", "fd99::fe"), reason: RefuseUnassigned},
		{name: "v6 unknown next hop, mesh only", route: bgpRoute("fd00:10:244:3::/64", "fd99::fe"), noPeers: true, reason: RefuseUnknownNextHop},
	}
	// One honest route rides along with each case and must stay.
	honest := bgpRoute("10.244.3.128/25", "192.168.1.3")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Desired(state(cfg(!tc.noPeers)), "self", u, Options{ExtraRoutes: []spec.Route{honest, tc.route}})
			got := p.Desired.Routes
			if !slices.Contains(got, honest) {
				t.Errorf("honest route %v missing: %v", honest, got)
			}
			if tc.reason == "" {
				if !slices.Contains(got, tc.route) || len(p.RefusedRoutes) != 0 {
					t.Fatalf("routes %v, refused %v; want %v kept", got, p.RefusedRoutes, tc.route)
				}
				return
			}
			if slices.Contains(got, tc.route) || len(got) != 1 {
				t.Fatalf("refused route in the spec: %v", got)
			}
			if len(p.RefusedRoutes) != 1 {
				t.Fatalf("refused = %v, want %v", p.RefusedRoutes, tc.route)
			}
			r := p.RefusedRoutes[0]
			if r.Route != tc.route || r.Reason != tc.reason || !strings.Contains(r.Detail, tc.detail) {
				t.Fatalf("refused = %+v, want %v for %s (%q)", r, tc.route, tc.reason, tc.detail)
			}
			if s := r.String(); !strings.HasPrefix(s, tc.route.Prefix.String()+" via "+tc.route.Via.String()+": ") {
				t.Fatalf("String() = %q", s)
			}
		})
	}

	// Several paths of one prefix: the first allowed one is installed,
	// also when a refused one came first (the speaker's best: an eBGP
	// rogue beats the owner's iBGP path).
	t.Run("first allowed path of a prefix", func(t *testing.T) {
		rogue := bgpRoute("10.244.2.0/24", "192.168.1.3")
		owner := bgpRoute("10.244.2.0/24", "192.168.1.2")
		router := bgpRoute("10.244.2.0/24", "192.168.1.254")
		p := Desired(state(cfg(true)), "self", u, Options{ExtraRoutes: []spec.Route{rogue, owner, router}})
		if !slices.Equal(p.Desired.Routes, []spec.Route{owner}) || len(p.RefusedRoutes) != 1 || p.RefusedRoutes[0].Route != rogue {
			t.Fatalf("routes %v, refused %v; want %v alone, %v refused", p.Desired.Routes, p.RefusedRoutes, owner, rogue)
		}
		p = Desired(state(cfg(true)), "self", u, Options{ExtraRoutes: []spec.Route{router, owner}})
		if !slices.Equal(p.Desired.Routes, []spec.Route{router}) || len(p.RefusedRoutes) != 0 {
			t.Fatalf("routes %v, refused %v; want %v alone", p.Desired.Routes, p.RefusedRoutes, router)
		}
	})

	t.Run("whole set", func(t *testing.T) {
		var all []spec.Route
		kept := 0
		for _, tc := range cases {
			if !tc.noPeers {
				all = append(all, tc.route)
				if tc.reason == "" {
					kept++
				}
			}
		}
		p := Desired(state(cfg(true)), "self", u, Options{ExtraRoutes: all})
		if len(p.Desired.Routes) != kept || len(p.RefusedRoutes) != len(all)-kept {
			t.Fatalf("kept %v, refused %v", p.Desired.Routes, p.RefusedRoutes)
		}
	})

	// A node's CIDR follows the log: once it is removed, its routes are
	// unassigned; once it is another node's, that node's next hop is
	// the one allowed (in a full mesh without routers the removed node's
	// address is no node's, so its stale route is refused).
	t.Run("follows the log", func(t *testing.T) {
		s := state(cfg(false))
		r := bgpRoute("10.244.2.0/24", "192.168.1.2")
		mustApply(t, s, 5, removeEvent(5, "b"))
		p := Desired(s, "self", u, Options{ExtraRoutes: []spec.Route{r}})
		if len(p.Desired.Routes) != 0 || len(p.RefusedRoutes) != 1 || p.RefusedRoutes[0].Reason != RefuseUnassigned {
			t.Fatalf("removed owner: routes %v, refused %v", p.Desired.Routes, p.RefusedRoutes)
		}
		mustApply(t, s, 6, addEventV6(6, "d", "192.168.1.4", "fd99::4", "10.244.2.0/24"))
		p = Desired(s, "self", u, Options{ExtraRoutes: []spec.Route{r, bgpRoute("10.244.2.0/24", "192.168.1.4")}})
		if len(p.Desired.Routes) != 1 || p.Desired.Routes[0].Via != ip("192.168.1.4") || len(p.RefusedRoutes) != 1 ||
			p.RefusedRoutes[0].Reason != RefuseUnknownNextHop || !strings.Contains(p.RefusedRoutes[0].Detail, `node "d"'s`) {
			t.Fatalf("new owner: routes %v, refused %v", p.Desired.Routes, p.RefusedRoutes)
		}
	})

	// Outside bgp mode learned routes are ignored, not refused.
	t.Run("other modes", func(t *testing.T) {
		c := cfg(true)
		c.Backend = "vxlan"
		p := Desired(state(c), "self", u, Options{ExtraRoutes: []spec.Route{bgpRoute("0.0.0.0/0", "192.168.1.2")}})
		if len(p.Desired.Routes) != 0 || len(p.RefusedRoutes) != 0 {
			t.Fatalf("vxlan: routes %v, refused %v", p.Desired.Routes, p.RefusedRoutes)
		}
	})
}
