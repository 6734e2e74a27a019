package model

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func cfgEvent(seq uint64, c *weftv1.ClusterConfig) []byte {
	return keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{Config: c}}})
}

func addEvent(seq uint64, name, ip string, cidrs ...string) []byte {
	return keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{
		Node: &weftv1.Node{Name: name, UnderlayIp: ip, PodCidrs: cidrs}}}})
}

func removeEvent(seq uint64, name string) []byte {
	return keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: name}}})
}

func baseConfig() *weftv1.ClusterConfig {
	return &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"}
}

func mustApply(t *testing.T, s *State, seq uint64, v []byte) {
	t.Helper()
	refused, err := s.Apply(seq, v)
	if err != nil || refused != nil {
		t.Fatalf("apply %d: refused=%v err=%v", seq, refused, err)
	}
}

func TestApplyOrderDuplicatesAndGaps(t *testing.T) {
	s := New()
	mustApply(t, s, 1, cfgEvent(1, baseConfig()))
	mustApply(t, s, 2, addEvent(2, "a", "192.168.1.1", "10.244.1.0/24"))
	before := s.String()
	// Duplicates and replays change nothing.
	mustApply(t, s, 2, addEvent(2, "a", "192.168.1.99", "10.244.9.0/24"))
	mustApply(t, s, 1, cfgEvent(1, &weftv1.ClusterConfig{ClusterCidr: "10.0.0.0/8"}))
	if s.String() != before {
		t.Fatalf("replay changed state:\n%s\n%s", before, s)
	}
	// A gap is refused with ErrGap and changes nothing.
	if _, err := s.Apply(4, removeEvent(4, "a")); !errors.Is(err, ErrGap) {
		t.Fatalf("gap: err = %v, want ErrGap", err)
	}
	if s.Applied() != 2 || s.Node("a") == nil {
		t.Fatalf("gap changed state: %s", s)
	}
	mustApply(t, s, 3, removeEvent(3, "a"))
	if s.Node("a") != nil || s.Applied() != 3 {
		t.Fatalf("remove: %s", s)
	}
	if s.Config().Vni != validate.DefaultVNI || !s.Config().Masquerade {
		t.Fatalf("config defaults not applied: %v", s.Config())
	}
}

func TestApplyRefusesBadInputAndKeepsState(t *testing.T) {
	s := New()
	mustApply(t, s, 1, cfgEvent(1, baseConfig()))
	mustApply(t, s, 2, addEvent(2, "self", "192.168.1.1", "10.244.1.0/24"))
	mustApply(t, s, 3, addEvent(3, "b", "192.168.1.2", "10.244.2.0/24"))
	cases := []struct {
		value []byte
		want  string
	}{
		{[]byte("{not json"), "decode event"},
		{addEvent(4, "c", "192.168.1.3", "10.99.0.0/24"), "outside the cluster CIDR"},
		{addEvent(4, "c", "not-an-ip", "10.244.3.0/24"), "underlay_ip"},
		{addEvent(4, "c", "192.168.1.3", "10.244.1.0/24"), `overlaps node "self"`},
		{addEvent(4, "b", "192.168.1.2", "10.244.1.0/24"), `overlaps node "self"`},
		{addEvent(4, "c", "192.168.1.3", "10.244.0.0/16"), "is not a /24, the node mask"},
		{addEvent(99, "c", "192.168.1.3", "10.244.3.0/24"), "does not match"},
		{cfgEvent(4, &weftv1.ClusterConfig{ClusterCidr: "10.244.0.1/16"}), "cluster_cidr"},
		{keys.Encode(&weftv1.Event{Seq: 4}), "no kind"},
	}
	seq := uint64(3)
	for _, c := range cases {
		seq++
		// Re-number the case's event to the next seq (all but the
		// mismatched-seq case, which tests the mismatch).
		v := c.value
		if !strings.Contains(c.want, "does not match") {
			if e, err := keys.DecodeEvent(v); err == nil {
				e.Seq = seq
				v = keys.Encode(e)
			}
		}
		refused, err := s.Apply(seq, v)
		if err != nil {
			t.Fatalf("seq %d: err = %v", seq, err)
		}
		if refused == nil || !strings.Contains(refused.Error(), c.want) {
			t.Fatalf("seq %d: refused = %v, want %q", seq, refused, c.want)
		}
		if s.Applied() != seq || s.Len() != 2 || s.Node("b").PodCidrs[0] != "10.244.2.0/24" || s.Config().ClusterCidr != "10.244.0.0/16" {
			t.Fatalf("seq %d: state changed: %s", seq, s)
		}
	}
	if got := len(s.Refused()); got != len(cases) {
		t.Fatalf("recorded %d refusals, want %d: %v", got, len(cases), s.Refused())
	}
}

func TestResetRefusesBadNodesKeepsLastGood(t *testing.T) {
	s := New()
	good := keys.Encode(&weftv1.Node{Name: "b", UnderlayIp: "192.168.1.2", PodCidrs: []string{"10.244.2.0/24"}, Seq: 2})
	s.Reset(Snapshot{Head: 2, Config: keys.Encode(validate.WithDefaults(baseConfig())), Nodes: map[string][]byte{
		"b": good,
		"x": []byte("garbage"),
		"y": keys.Encode(&weftv1.Node{Name: "z", UnderlayIp: "192.168.1.3", PodCidrs: []string{"10.244.3.0/24"}}),
	}})
	if s.Len() != 1 || s.Node("b") == nil || s.Applied() != 2 {
		t.Fatalf("after first reset: %s", s)
	}
	if len(s.Refused()) != 2 {
		t.Fatalf("refused = %v", s.Refused())
	}
	// b turns into garbage, the config too: the last good values stay.
	s.Reset(Snapshot{Head: 3, Config: []byte("{"), Nodes: map[string][]byte{
		"b": []byte(`{"name": 7}`),
		"c": keys.Encode(&weftv1.Node{Name: "c", UnderlayIp: "192.168.1.3", PodCidrs: []string{"10.244.2.0/25"}, Seq: 3}),
	}})
	if s.Node("b") == nil || s.Node("c") != nil || s.Config() == nil {
		t.Fatalf("after bad reset: %s", s)
	}
	var whats []string
	for _, r := range s.Refused() {
		whats = append(whats, r.What)
	}
	got := strings.Join(whats, ",")
	for _, w := range []string{"config", "node b", "node c", "node x", "node y"} {
		if !strings.Contains(got, w) {
			t.Errorf("refusals %q lack %q", got, w)
		}
	}
}

func underlay() spec.Underlay {
	return spec.Underlay{
		Interface: "eth0",
		IP:        netip.MustParseAddr("192.168.1.1"),
		MTU:       1500,
		Networks:  []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")},
	}
}

func stateWith(t *testing.T, cfg *weftv1.ClusterConfig) *State {
	s := New()
	mustApply(t, s, 1, cfgEvent(1, cfg))
	mustApply(t, s, 2, addEvent(2, "self", "192.168.1.1", "10.244.1.0/24"))
	mustApply(t, s, 3, addEvent(3, "near", "192.168.1.2", "10.244.2.0/24"))
	mustApply(t, s, 4, addEvent(4, "far", "192.168.7.2", "10.244.3.0/24"))
	return s
}

func TestDesiredModes(t *testing.T) {
	pfx := netip.MustParsePrefix
	ip := netip.MustParseAddr
	t.Run("vxlan", func(t *testing.T) {
		c := baseConfig()
		c.Vni, c.UdpPort = 7, 4789
		p := Desired(stateWith(t, c), "self", underlay(), Options{})
		d := p.Desired
		if d.Overlay == nil || d.Overlay.MTU != 1450 || d.Overlay.VNI != 7 || d.Overlay.Port != 4789 || d.Overlay.Kind != spec.ModeVXLAN ||
			d.Overlay.MAC != spec.VTEPMAC("self") {
			t.Fatalf("overlay = %+v, want the MAC %s", d.Overlay, spec.VTEPMAC("self"))
		}
		if len(d.Tunnels) != 2 || d.Tunnels[0] != (spec.Tunnel{Prefix: pfx("10.244.2.0/24"), Endpoint: ip("192.168.1.2"), VNI: 7}) ||
			d.Tunnels[1].Endpoint != ip("192.168.7.2") {
			t.Fatalf("tunnels = %+v", d.Tunnels)
		}
		if len(d.ClusterCIDRs) != 1 || d.ClusterCIDRs[0] != pfx("10.244.0.0/16") || len(d.Routes) != 0 {
			t.Fatalf("desired = %s", d)
		}
		if len(d.PodNetworks) != 1 || d.PodNetworks[0] != pfx("10.244.0.0/16") || len(d.PodOwners) != 0 {
			t.Fatalf("pod networks = %v, owners %v (the tunnel map has them)", d.PodNetworks, d.PodOwners)
		}
		if d.Masquerade == nil || d.Masquerade.PodCIDRs[0] != pfx("10.244.1.0/24") || d.Masquerade.NativeCIDRs[0] != pfx("10.244.0.0/16") {
			t.Fatalf("masquerade = %+v", d.Masquerade)
		}
		if p.PodMTU != 1450 || len(p.Problems) != 0 {
			t.Fatalf("plan = %+v", p)
		}
	})
	t.Run("geneve-mtu-from-config", func(t *testing.T) {
		c := baseConfig()
		c.Backend, c.Mtu = "geneve", 9000
		d := Desired(stateWith(t, c), "self", underlay(), Options{}).Desired
		if d.Overlay.Kind != spec.ModeGeneve || d.Overlay.MTU != 9000-spec.GeneveOverhead || d.Overlay.DeviceName() != spec.GeneveDevice {
			t.Fatalf("overlay = %+v", d.Overlay)
		}
	})
	t.Run("native", func(t *testing.T) {
		c := baseConfig()
		c.Backend, c.AutoDirectNodeRoutes = "native", true
		p := Desired(stateWith(t, c), "self", underlay(), Options{})
		d := p.Desired
		if d.Overlay != nil || len(d.Tunnels) != 0 || len(d.ClusterCIDRs) != 0 {
			t.Fatalf("native has overlay state: %s", d)
		}
		if len(d.Routes) != 1 || d.Routes[0] != (spec.Route{Prefix: pfx("10.244.2.0/24"), Via: ip("192.168.1.2")}) {
			t.Fatalf("routes = %+v", d.Routes)
		}
		if len(p.Problems) != 1 || p.Problems[0].Node != "far" || !strings.Contains(p.Problems[0].Reason, "not on a directly connected network") {
			t.Fatalf("problems = %+v", p.Problems)
		}
		if p.PodMTU != 1500 {
			t.Fatalf("pod MTU = %d", p.PodMTU)
		}
	})
	t.Run("hybrid", func(t *testing.T) {
		c := baseConfig()
		c.Backend = "hybrid"
		p := Desired(stateWith(t, c), "self", underlay(), Options{})
		d := p.Desired
		if d.Overlay == nil || len(d.Routes) != 1 || d.Routes[0].Via != ip("192.168.1.2") ||
			len(d.Tunnels) != 1 || d.Tunnels[0].Endpoint != ip("192.168.7.2") || len(p.Problems) != 0 {
			t.Fatalf("hybrid = %s %+v %+v %+v", d, d.Routes, d.Tunnels, p.Problems)
		}
	})
	t.Run("host-routing", func(t *testing.T) {
		for _, tc := range []struct {
			config, override string
			stack            bool
		}{
			{"", "", false},
			{"bpf", "", false},
			{"stack", "", true},
			{"stack", "bpf", false},
			{"bpf", "stack", true},
			{"", "stack", true},
		} {
			c := baseConfig()
			c.HostRouting = tc.config
			d := Desired(stateWith(t, c), "self", underlay(), Options{HostRouting: tc.override}).Desired
			if d.StackRouting != tc.stack {
				t.Errorf("config %q, override %q: stack routing = %v, want %v", tc.config, tc.override, d.StackRouting, tc.stack)
			}
		}
	})
	t.Run("tunnel-datapath", func(t *testing.T) {
		for _, tc := range []struct {
			backend, config, override, hostRouting string
			inProgram                              bool
		}{
			{"vxlan", "", "", "", false},
			{"vxlan", "device", "", "", false},
			{"vxlan", "bpf", "", "", true},
			{"vxlan", "bpf", "device", "", false},
			{"vxlan", "device", "bpf", "", true},
			{"vxlan", "", "bpf", "", true},
			{"hybrid", "bpf", "", "", true},
			{"geneve", "bpf", "", "", false},     // the programs encapsulate VXLAN only
			{"vxlan", "bpf", "", "stack", false}, // no eBPF forwarding at all
		} {
			c := baseConfig()
			c.Backend, c.TunnelDatapath, c.HostRouting = tc.backend, tc.config, tc.hostRouting
			d := Desired(stateWith(t, c), "self", underlay(), Options{TunnelDatapath: tc.override}).Desired
			if d.Overlay == nil || d.Overlay.InProgram != tc.inProgram {
				t.Errorf("%+v: overlay %+v, want in program %v", tc, d.Overlay, tc.inProgram)
			}
		}
		c := baseConfig()
		c.Backend, c.TunnelDatapath = "native", "bpf"
		if d := Desired(stateWith(t, c), "self", underlay(), Options{}).Desired; d.Overlay != nil {
			t.Errorf("native with tunnel_datapath bpf: overlay %+v", d.Overlay)
		}
	})
	t.Run("gateway", func(t *testing.T) {
		c := baseConfig()
		c.Backend, c.Masquerade, c.DefaultsApplied = "gateway", false, true
		d := Desired(stateWith(t, c), "self", underlay(), Options{}).Desired
		if d.Overlay != nil || len(d.Routes)+len(d.Tunnels) != 0 || d.Masquerade != nil || len(d.LocalPodCIDRs) != 1 {
			t.Fatalf("gateway = %s", d)
		}
		// The underlay check protects the pod networks without an overlay
		// too, both families.
		c.ClusterCidrV6 = "fd00:244::/48"
		d = Desired(stateWith(t, c), "self", underlay(), Options{}).Desired
		if len(d.PodNetworks) != 2 || d.PodNetworks[0] != pfx("10.244.0.0/16") || d.PodNetworks[1] != pfx("fd00:244::/48") {
			t.Fatalf("gateway pod networks = %v", d.PodNetworks)
		}
		// Every other node's pod CIDR with its owner, adjacent or not.
		want := []spec.PodOwner{{Prefix: pfx("10.244.2.0/24"), Node: ip("192.168.1.2")}, {Prefix: pfx("10.244.3.0/24"), Node: ip("192.168.7.2")}}
		if !slices.Equal(d.PodOwners, want) {
			t.Fatalf("gateway pod owners = %v, want %v", d.PodOwners, want)
		}
	})
	t.Run("bgp", func(t *testing.T) {
		c := baseConfig()
		c.Backend = "bgp"
		// A router's route (bgp.peers) to another node's pod CIDR; see
		// TestLearnedRoutesFiltered for the routes refused.
		c.Bgp = &weftv1.BGPConfig{Asn: 64512, FullMesh: true, Peers: []*weftv1.BGPPeer{{Address: "192.168.1.254", Asn: 65000}}}
		learned := spec.Route{Prefix: pfx("10.244.3.0/24"), Via: ip("192.168.1.254"), Proto: spec.ProtoBGP}
		d := Desired(stateWith(t, c), "self", underlay(), Options{ExtraRoutes: []spec.Route{learned}}).Desired
		if d.Overlay != nil || len(d.Tunnels) != 0 || len(d.Routes) != 1 || d.Routes[0] != learned {
			t.Fatalf("bgp = %s %+v", d, d.Routes)
		}
		// Extra routes are ignored outside bgp mode.
		d = Desired(stateWith(t, baseConfig()), "self", underlay(), Options{ExtraRoutes: []spec.Route{learned}}).Desired
		if len(d.Routes) != 0 {
			t.Fatalf("vxlan took BGP routes: %+v", d.Routes)
		}
	})
	t.Run("no-config-no-self", func(t *testing.T) {
		p := Desired(New(), "self", underlay(), Options{})
		if p.Desired != nil || p.Self != nil {
			t.Fatalf("plan = %+v", p)
		}
		s := stateWith(t, baseConfig())
		p = Desired(s, "other", underlay(), Options{})
		if p.Self != nil || p.Desired.Masquerade != nil || len(p.Desired.Tunnels) != 2 || len(p.Problems) != 1 || !strings.Contains(p.Problems[0].Reason, "own") {
			t.Fatalf("unknown self: %+v %s", p, p.Desired)
		}
	})
	t.Run("ipv6-underlay", func(t *testing.T) {
		s := New()
		mustApply(t, s, 1, cfgEvent(1, baseConfig()))
		mustApply(t, s, 2, addEvent(2, "b", "fd00::2", "10.244.2.0/24"))
		u := spec.Underlay{IP: ip("fd00::1"), MTU: 1500, Networks: []netip.Prefix{pfx("fd00::/64")}}
		d := Desired(s, "self", u, Options{}).Desired
		if d.Overlay.MTU != 1500-spec.VXLANOverhead-spec.IPv6Extra || d.Tunnels[0].Flags&spec.FlagIPv6Endpoint == 0 {
			t.Fatalf("v6 underlay: %+v %+v", d.Overlay, d.Tunnels)
		}
	})
}

func TestNodesBeforeConfigAreRefused(t *testing.T) {
	s := New()
	refused, err := s.Apply(1, addEvent(1, "a", "192.168.1.1", "10.99.0.0/24"))
	if err != nil || refused == nil || !strings.Contains(refused.Error(), "no cluster config") || s.Len() != 0 {
		t.Fatalf("refused=%v err=%v state %s", refused, err, s)
	}
	s.Reset(Snapshot{Head: 1, Nodes: map[string][]byte{"a": keys.Encode(&weftv1.Node{Name: "a", UnderlayIp: "192.168.1.1", PodCidrs: []string{"10.99.0.0/24"}})}})
	if s.Len() != 0 || len(s.Refused()) != 2 {
		t.Fatalf("reset without config: %s %v", s, s.Refused())
	}
}

// TestResetQuarantinesAndTakesTheLog: a fresh model (an agent that just
// started) refuses a bad node value, holds what the retained log says
// instead, and reports the quarantine; an event for that node ends it.
func TestResetQuarantinesAndTakesTheLog(t *testing.T) {
	cfg := keys.Encode(validate.WithDefaults(baseConfig()))
	a := keys.Encode(&weftv1.Node{Name: "a", UnderlayIp: "192.168.1.1", PodCidrs: []string{"10.244.1.0/24"}, Seq: 2})
	bLog := keys.Encode(&weftv1.Node{Name: "b", UnderlayIp: "192.168.1.2", PodCidrs: []string{"10.244.2.0/24"}})
	snap := Snapshot{Head: 4, Config: cfg, Nodes: map[string][]byte{
		"a": a,
		"b": []byte("not json {"),
		"c": []byte(`{"name":"c","underlay_ip":"nope"}`),
		"d": []byte("{"),
	}}
	cfgBad, suspects := Suspects(&snap)
	if cfgBad || strings.Join(suspects, ",") != "b,c,d" {
		t.Fatalf("suspects %v %v", cfgBad, suspects)
	}
	snap.FromLog = map[string]LogValue{"b": {Node: bLog, Seq: 3}, "d": {Seq: 4}}
	s := New()
	s.Reset(snap)
	if s.Node("b") == nil || s.Node("b").Seq != 3 || s.Node("c") != nil || s.Node("d") != nil || s.Len() != 2 {
		t.Fatalf("state %s", s)
	}
	q := s.Quarantined()
	if len(q) != 3 || q[0].Node != "b" || q[0].Kept != "the log's event 3" || !strings.Contains(q[0].Reason, "decode node") ||
		q[1].Node != "c" || q[1].Kept != "nothing" || !strings.Contains(q[1].Reason, "underlay_ip") ||
		q[2].Node != "d" || !strings.Contains(q[2].Kept, "removed it") {
		t.Fatalf("quarantine %+v", q)
	}
	// An event for b says what b is now: its quarantine ends.
	e := keys.Encode(&weftv1.Event{Seq: 5, Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{Node: &weftv1.Node{
		Name: "b", UnderlayIp: "192.168.1.22", PodCidrs: []string{"10.244.2.0/24"}}}}})
	if refused, err := s.Apply(5, e); refused != nil || err != nil {
		t.Fatalf("apply: %v %v", refused, err)
	}
	if q := s.Quarantined(); len(q) != 2 || q[0].Node != "c" {
		t.Fatalf("quarantine after b's event %+v", q)
	}
	// A later list with good values ends the rest; the previous good
	// value is what a bad config keeps.
	s.Reset(Snapshot{Head: 5, Config: []byte("{"), Nodes: map[string][]byte{"a": a}})
	if q := s.Quarantined(); len(q) != 1 || q[0].Node != "" || q[0].Kept != "its last good value" || s.Config() == nil {
		t.Fatalf("quarantine %+v, config %v", q, s.Config())
	}
	// A fresh model with a bad config takes the log's.
	f := New()
	f.Reset(Snapshot{Head: 5, Config: []byte("{"), LogConfig: cfg, Nodes: map[string][]byte{"a": a}})
	if f.Config() == nil || f.Node("a") == nil || f.Quarantined()[0].Kept != "the log's last config" {
		t.Fatalf("fresh model with a bad config: %s %+v", f, f.Quarantined())
	}
}

// TestResetTakesDecodedValues: a snapshot whose nodes the lister decoded
// already (Decoded, as the follower lists) folds to the same state,
// refusals and quarantine as one holding the stored bytes, and names the
// same suspects.
func TestResetTakesDecodedValues(t *testing.T) {
	cfg := keys.Encode(validate.WithDefaults(baseConfig()))
	raw := map[string][]byte{
		"a": keys.Encode(&weftv1.Node{Name: "a", UnderlayIp: "192.168.1.1", PodCidrs: []string{"10.244.1.0/24"}, Seq: 2}),
		"b": []byte("not json {"),
		"c": []byte(`{"name":"c","underlay_ip":"nope"}`),
		"d": keys.Encode(&weftv1.Node{Name: "d", UnderlayIp: "192.168.1.4", PodCidrs: []string{"10.244.4.0/24"}, Seq: 3}),
	}
	decoded := map[string]NodeValue{}
	for name, v := range raw {
		decoded[name] = DecodeNode(v)
	}
	fromBytes := Snapshot{Head: 4, Config: cfg, Nodes: raw}
	fromDecoded := Snapshot{Head: 4, Config: cfg, Decoded: decoded}
	c1, s1 := Suspects(&fromBytes)
	c2, s2 := Suspects(&fromDecoded)
	if c1 != c2 || !slices.Equal(s1, s2) || strings.Join(s2, ",") != "b,c" {
		t.Fatalf("suspects from bytes %v %v, decoded %v %v", c1, s1, c2, s2)
	}
	want, got := New(), New()
	want.Reset(fromBytes)
	got.Reset(fromDecoded)
	// Refusals are recorded in map order; compared as sets.
	byWhat := func(a, b Refusal) int { return strings.Compare(a.What, b.What) }
	gotRefused, wantRefused := got.Refused(), want.Refused()
	slices.SortFunc(gotRefused, byWhat)
	slices.SortFunc(wantRefused, byWhat)
	if !got.Equal(want) || got.Len() != 2 || !slices.Equal(got.Quarantined(), want.Quarantined()) || !slices.Equal(gotRefused, wantRefused) {
		t.Fatalf("from decoded values %s %+v %v\nwant %s %+v %v", got, got.Quarantined(), got.Refused(), want, want.Quarantined(), want.Refused())
	}
}

// TestListValidatesEachNodeOnce: Suspects marks the decoded nodes it
// found good against the snapshot's config, and Reset, putting that
// config in force, takes them without validating them again; a node
// Suspects found bad (a VTEP MAC only validation refuses) stays refused,
// and marks made under one config value do not hold under another.
func TestListValidatesEachNodeOnce(t *testing.T) {
	node := func(name, ip, cidr, mac string) NodeValue {
		return DecodeNode(keys.Encode(&weftv1.Node{Name: name, UnderlayIp: ip, PodCidrs: []string{cidr}, VtepMac: mac, Seq: 2}))
	}
	decoded := map[string]NodeValue{
		"a": node("a", "192.168.1.1", "10.244.1.0/24", ""),
		"m": node("m", "192.168.1.3", "10.244.3.0/24", "zz"),
	}
	snap := Snapshot{Head: 4, Config: keys.Encode(validate.WithDefaults(baseConfig())), Decoded: decoded}
	if cfgBad, suspects := Suspects(&snap); cfgBad || !slices.Equal(suspects, []string{"m"}) {
		t.Fatalf("suspects %v %v", cfgBad, suspects)
	}
	if !snap.Decoded["a"].valid || snap.Decoded["m"].valid {
		t.Fatalf("marks: a %v, m %v", snap.Decoded["a"].valid, snap.Decoded["m"].valid)
	}
	s := New()
	s.Reset(snap)
	if s.Node("a") == nil || s.Node("m") != nil || len(s.Quarantined()) != 1 {
		t.Fatalf("state %s, quarantine %+v", s, s.Quarantined())
	}

	// Once: a value marked good is not looked at again. (Only Suspects
	// sets the mark; forged here to see that Reset trusts it.)
	forged := snap
	forged.Decoded = map[string]NodeValue{"a": decoded["a"], "m": decoded["m"]}
	nv := forged.Decoded["m"]
	nv.valid = true
	forged.Decoded["m"] = nv
	s = New()
	s.Reset(forged)
	if s.Node("m") == nil {
		t.Fatalf("a marked value was validated again: %s %+v", s, s.Quarantined())
	}

	// Another config value, whose cluster CIDR a's pod CIDR is outside
	// of: the marks made under the first do not hold.
	other := snap
	other.Config = keys.Encode(validate.WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.96.0.0/16"}))
	s = New()
	s.Reset(other)
	if s.Node("a") != nil || len(s.Quarantined()) != 2 {
		t.Fatalf("under another config: %s %+v", s, s.Quarantined())
	}
}

func addEventV6(seq uint64, name, ip, ip6 string, cidrs ...string) []byte {
	return keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{
		Node: &weftv1.Node{Name: name, UnderlayIp: ip, UnderlayIpV6: ip6, PodCidrs: cidrs}}}})
}

// TestDesiredDualStack: in a dual-stack cluster each family is routed via
// the peer's underlay address of that family and tunnelled to the peer's
// address of this node's underlay family; a peer without an address of a
// family is a problem for that family only, and a peer whose underlay
// family this node cannot reach at all is a problem for that peer only.
func TestDesiredDualStack(t *testing.T) {
	pfx := netip.MustParsePrefix
	ip := netip.MustParseAddr
	cfg := func(backend string) *weftv1.ClusterConfig {
		c := &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", ClusterCidrV6: "fd00:10:244::/56", Backend: backend, AutoDirectNodeRoutes: true}
		if backend == "bgp" {
			c.Bgp = &weftv1.BGPConfig{Asn: 64512, FullMesh: true}
		}
		return c
	}
	state := func(c *weftv1.ClusterConfig) *State {
		s := New()
		mustApply(t, s, 1, cfgEvent(1, c))
		mustApply(t, s, 2, addEventV6(2, "self", "192.168.1.1", "fd99::1", "10.244.1.0/24", "fd00:10:244:1::/64"))
		mustApply(t, s, 3, addEventV6(3, "dual", "192.168.1.2", "fd99::2", "10.244.2.0/24", "fd00:10:244:2::/64"))
		mustApply(t, s, 4, addEvent(4, "only4", "192.168.1.3", "10.244.3.0/24", "fd00:10:244:3::/64"))
		mustApply(t, s, 5, addEvent(5, "only6", "fd99::4", "10.244.4.0/24", "fd00:10:244:4::/64"))
		return s
	}
	u := spec.Underlay{Interface: "eth0", IP: ip("192.168.1.1"), IPv6: ip("fd99::1"), MTU: 1500,
		Networks: []netip.Prefix{pfx("192.168.1.0/24"), pfx("fd99::/64")}}

	t.Run("native", func(t *testing.T) {
		p := Desired(state(cfg("native")), "self", u, Options{})
		want := []spec.Route{
			{Prefix: pfx("10.244.2.0/24"), Via: ip("192.168.1.2")},
			{Prefix: pfx("10.244.3.0/24"), Via: ip("192.168.1.3")},
			{Prefix: pfx("fd00:10:244:2::/64"), Via: ip("fd99::2")},
			{Prefix: pfx("fd00:10:244:4::/64"), Via: ip("fd99::4")},
		}
		if !slices.Equal(p.Desired.Routes, want) {
			t.Errorf("routes %+v\nwant %+v", p.Desired.Routes, want)
		}
		wantProblems := []PeerProblem{
			{"only4", "fd00:10:244:3::/64 cannot be routed: the node has no IPv6 underlay address (an IPv6 route needs a next hop of its family)"},
			{"only6", "10.244.4.0/24 cannot be routed: the node has no IPv4 underlay address (an IPv4 route needs a next hop of its family)"},
		}
		if !slices.Equal(p.Problems, wantProblems) {
			t.Errorf("problems %+v\nwant %+v", p.Problems, wantProblems)
		}
		m := p.Desired.Masquerade
		if m == nil || !slices.Equal(m.PodCIDRs, []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}) ||
			!slices.Equal(m.NativeCIDRs, []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/56")}) {
			t.Errorf("masquerade %+v", m)
		}
	})
	t.Run("vxlan", func(t *testing.T) {
		p := Desired(state(cfg("vxlan")), "self", u, Options{})
		d := p.Desired
		ends := map[netip.Prefix]netip.Addr{}
		for _, tn := range d.Tunnels {
			ends[tn.Prefix] = tn.Endpoint
			if tn.Endpoint.Is6() != (tn.Flags&spec.FlagIPv6Endpoint != 0) {
				t.Errorf("tunnel %+v: flag does not match the endpoint", tn)
			}
		}
		// Both families of a peer over one endpoint of this node's
		// underlay family; the IPv6-only peer over IPv6, which this node
		// has too.
		want := map[netip.Prefix]netip.Addr{
			pfx("10.244.2.0/24"): ip("192.168.1.2"), pfx("fd00:10:244:2::/64"): ip("192.168.1.2"),
			pfx("10.244.3.0/24"): ip("192.168.1.3"), pfx("fd00:10:244:3::/64"): ip("192.168.1.3"),
			pfx("10.244.4.0/24"): ip("fd99::4"), pfx("fd00:10:244:4::/64"): ip("fd99::4"),
		}
		if len(ends) != len(want) || len(p.Problems) != 0 {
			t.Fatalf("tunnels %v problems %v, want %v", ends, p.Problems, want)
		}
		for k, v := range want {
			if ends[k] != v {
				t.Errorf("tunnel %s -> %s, want %s", k, ends[k], v)
			}
		}
		if !slices.Equal(d.ClusterCIDRs, []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/56")}) {
			t.Errorf("cluster CIDRs %v", d.ClusterCIDRs)
		}
		// A peer reached over IPv6 costs 20 bytes more of outer header.
		if d.Overlay.MTU != 1500-spec.VXLANOverhead-spec.IPv6Extra || p.PodMTU != d.Overlay.MTU {
			t.Errorf("overlay MTU %d, pod MTU %d", d.Overlay.MTU, p.PodMTU)
		}
	})
	t.Run("hybrid", func(t *testing.T) {
		p := Desired(state(cfg("hybrid")), "self", u, Options{})
		d := p.Desired
		// only4's IPv6 CIDR cannot be routed directly: the tunnel carries
		// it.
		if len(d.Routes) != 4 || len(d.Tunnels) != 2 || len(p.Problems) != 0 {
			t.Fatalf("routes %+v tunnels %+v problems %+v", d.Routes, d.Tunnels, p.Problems)
		}
		for _, tn := range d.Tunnels {
			if tn.Prefix != pfx("fd00:10:244:3::/64") && tn.Prefix != pfx("10.244.4.0/24") {
				t.Errorf("tunnel %+v, want only the CIDRs without a next hop of their family", tn)
			}
		}
	})
	t.Run("ipv6-only-node", func(t *testing.T) {
		// This node has an IPv6 underlay only: peers with an IPv6
		// address are tunnelled to it, an IPv4-only peer is a problem of
		// its own and the rest keep working.
		u6 := spec.Underlay{Interface: "eth0", IP: ip("fd99::9"), MTU: 1500, Networks: []netip.Prefix{pfx("fd99::/64")}}
		p := Desired(state(cfg("vxlan")), "self", u6, Options{})
		wantProblems := []PeerProblem{{"only4", "no tunnel: the underlay families differ: this node's underlay has only IPv6 (fd99::9), the peer's only IPv4 (192.168.1.3)"}}
		if !slices.Equal(p.Problems, wantProblems) {
			t.Errorf("problems %+v\nwant %+v", p.Problems, wantProblems)
		}
		for _, tn := range p.Desired.Tunnels {
			if !tn.Endpoint.Is6() || strings.HasPrefix(tn.Prefix.String(), "10.244.3.") || strings.HasPrefix(tn.Prefix.String(), "fd00:10:244:3:") {
				t.Errorf("tunnel %+v", tn)
			}
		}
		if len(p.Desired.Tunnels) != 4 {
			t.Errorf("tunnels %+v, want both CIDRs of dual and only6", p.Desired.Tunnels)
		}
	})
	t.Run("ipv4-only-node", func(t *testing.T) {
		// The other side: an IPv4-only node cannot tunnel to the
		// IPv6-only peer; that peer alone is a problem, every other
		// peer keeps its tunnel over IPv4.
		u4 := spec.Underlay{Interface: "eth0", IP: ip("192.168.1.1"), MTU: 1500, Networks: []netip.Prefix{pfx("192.168.1.0/24")}}
		p := Desired(state(cfg("vxlan")), "self", u4, Options{})
		wantProblems := []PeerProblem{{"only6", "no tunnel: the underlay families differ: this node's underlay has only IPv4 (192.168.1.1), the peer's only IPv6 (fd99::4)"}}
		if !slices.Equal(p.Problems, wantProblems) {
			t.Errorf("problems %+v\nwant %+v", p.Problems, wantProblems)
		}
		if len(p.Desired.Tunnels) != 4 || p.Desired.Overlay.MTU != 1450 {
			t.Errorf("tunnels %+v mtu %d, want both CIDRs of dual and only4 over IPv4", p.Desired.Tunnels, p.Desired.Overlay.MTU)
		}
	})
}

// TestDesiredIPv6Only: an IPv6-only cluster on an IPv6 underlay tunnels
// over IPv6 with the IPv6 overhead, routes via IPv6 next hops in native
// mode and masquerades with the IPv6 native routing CIDR.
func TestDesiredIPv6Only(t *testing.T) {
	pfx := netip.MustParsePrefix
	ip := netip.MustParseAddr
	for _, backend := range []string{"vxlan", "native"} {
		s := New()
		mustApply(t, s, 1, cfgEvent(1, &weftv1.ClusterConfig{ClusterCidrV6: "fd00:10:244::/56", Backend: backend, AutoDirectNodeRoutes: true}))
		mustApply(t, s, 2, addEvent(2, "self", "fd99::1", "fd00:10:244:1::/64"))
		mustApply(t, s, 3, addEvent(3, "b", "fd99::2", "fd00:10:244:2::/64"))
		u := spec.Underlay{Interface: "eth0", IP: ip("fd99::1"), MTU: 1500, Networks: []netip.Prefix{pfx("fd99::/64")}}
		p := Desired(s, "self", u, Options{})
		d := p.Desired
		if len(p.Problems) != 0 || d.Masquerade == nil || !slices.Equal(d.Masquerade.NativeCIDRs, []netip.Prefix{pfx("fd00:10:244::/56")}) {
			t.Fatalf("%s: problems %v masquerade %+v", backend, p.Problems, d.Masquerade)
		}
		switch backend {
		case "vxlan":
			want := []spec.Tunnel{{Prefix: pfx("fd00:10:244:2::/64"), Endpoint: ip("fd99::2"), VNI: 1, Flags: spec.FlagIPv6Endpoint}}
			if !slices.Equal(d.Tunnels, want) || d.Overlay.MTU != 1430 || !slices.Equal(d.ClusterCIDRs, []netip.Prefix{pfx("fd00:10:244::/56")}) {
				t.Errorf("vxlan: %s %+v", d, d.Tunnels)
			}
		case "native":
			want := []spec.Route{{Prefix: pfx("fd00:10:244:2::/64"), Via: ip("fd99::2")}}
			if !slices.Equal(d.Routes, want) || p.PodMTU != 1500 {
				t.Errorf("native: %+v", d.Routes)
			}
		}
	}
}

// TestUnderlayInsideThePodNetworkIsRefused: a node whose underlay
// address (tunnel endpoint) is a pod address, and a config whose cluster
// CIDR swallows the nodes' underlay, are refused naming the field, by
// event and by list, and the tunnels the agent had stay.
func TestUnderlayInsideThePodNetworkIsRefused(t *testing.T) {
	wantTunnels := "10.244.2.0/24->192.168.1.2,10.244.3.0/24->192.168.7.2"
	tunnels := func(s *State) string {
		var out []string
		for _, tu := range Desired(s, "self", underlay(), Options{}).Desired.Tunnels {
			out = append(out, tu.Prefix.String()+"->"+tu.Endpoint.String())
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name  string
		event []byte
		want  string
	}{
		{"node at a pod address", addEvent(5, "bad", "10.244.9.5", "10.244.5.0/24"), "underlay_ip: 10.244.9.5 is inside the cluster CIDR 10.244.0.0/16"},
		{"node at an IPv4-mapped pod address", addEvent(5, "bad", "::ffff:10.244.9.5", "10.244.5.0/24"), "underlay_ip: 10.244.9.5 is inside the cluster CIDR"},
		{"node at a link-local address", addEvent(5, "bad", "169.254.1.1", "10.244.5.0/24"), "underlay_ip: 169.254.1.1 is link-local"},
		{"node at the broadcast address", addEvent(5, "bad", "255.255.255.255", "10.244.5.0/24"), "underlay_ip: 255.255.255.255 cannot be a node address"},
		{"config over the underlay", cfgEvent(5, &weftv1.ClusterConfig{ClusterCidr: "192.168.0.0/16", NodeMaskSize: 24}), "cluster_cidr: 192.168.0.0/16 overlaps node far's underlay address 192.168.7.2"},
	} {
		s := stateWith(t, baseConfig())
		refused, err := s.Apply(5, tc.event)
		if err != nil || refused == nil || !strings.Contains(refused.Error(), tc.want) {
			t.Errorf("%s: refused = %v, err = %v, want %q", tc.name, refused, err, tc.want)
		}
		if got := tunnels(s); got != wantTunnels || s.Config().ClusterCidr != "10.244.0.0/16" {
			t.Errorf("%s: tunnels %s, config %s; want %s under 10.244.0.0/16", tc.name, got, s.Config().ClusterCidr, wantTunnels)
		}
	}

	// The same config in the projection, at a list: the last good config
	// stays and the projection's value is quarantined.
	s := stateWith(t, baseConfig())
	snap := Snapshot{Head: 5, Config: keys.Encode(validate.WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "192.168.0.0/16", NodeMaskSize: 24})), Nodes: map[string][]byte{}}
	for _, name := range []string{"self", "near", "far"} {
		snap.Nodes[name] = keys.Encode(s.Node(name))
	}
	s.Reset(snap)
	q := s.Quarantined()
	if len(q) != 1 || q[0].Node != "" || q[0].Kept != "its last good value" || !strings.Contains(q[0].Reason, "cluster_cidr: 192.168.0.0/16 overlaps node far's underlay") {
		t.Fatalf("quarantine %+v", q)
	}
	if got := tunnels(s); got != wantTunnels {
		t.Fatalf("after the list: tunnels %s, want %s", got, wantTunnels)
	}
}

// TestOversizedPodCIDRKeepsTheOthers: a node value holding more than the
// node mask (here the whole cluster CIDR, with an early seq so it would
// claim first at a list) is refused naming the field; the agent keeps its
// last good value and every other node, its own included.
func TestOversizedPodCIDRKeepsTheOthers(t *testing.T) {
	s := stateWith(t, baseConfig())
	snap := Snapshot{Head: 4, Config: keys.Encode(validate.WithDefaults(baseConfig())), Nodes: map[string][]byte{}}
	for _, name := range []string{"self", "near", "far"} {
		snap.Nodes[name] = keys.Encode(s.Node(name))
	}
	snap.Nodes["near"] = keys.Encode(&weftv1.Node{Name: "near", UnderlayIp: "192.168.1.2", PodCidrs: []string{"10.244.0.0/16"}, Seq: 1})
	s.Reset(snap)
	q := s.Quarantined()
	if len(q) != 1 || q[0].Node != "near" || !strings.Contains(q[0].Reason, "pod_cidrs[0]: 10.244.0.0/16 is not a /24") || q[0].Kept != "its last good value (seq 3)" {
		t.Fatalf("quarantine %+v", q)
	}
	var got []string
	for _, tu := range Desired(s, "self", underlay(), Options{}).Desired.Tunnels {
		got = append(got, tu.Prefix.String()+"->"+tu.Endpoint.String())
	}
	if want := "10.244.2.0/24->192.168.1.2,10.244.3.0/24->192.168.7.2"; strings.Join(got, ",") != want || s.Node("self") == nil {
		t.Fatalf("tunnels %v (self held: %v), want %s", got, s.Node("self") != nil, want)
	}
}
