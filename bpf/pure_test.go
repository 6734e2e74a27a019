package bpf

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf/btf"
	"pgregory.net/rapid"

	"github.com/weftnet/weft/bpf/spec"
)

// TestStructSizes checks that every struct shared with the C programs has
// the same size in Go and in the compiled object's BTF.
func TestStructSizes(t *testing.T) {
	cs, err := loadWeft()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		goSz int
		want int
	}{
		{"tunnel_key", binary.Size(weftTunnelKey{}), 20},
		{"tunnel_value", binary.Size(weftTunnelValue{}), 24},
		{"stats", binary.Size(weftStats{}), 72},
		{"config", binary.Size(weftConfig{}), 8},
		{"local_value", binary.Size(weftLocalValue{}), 56},
		{"endpoint_key", binary.Size(weftEndpointKey{}), 16},
		{"endpoint_value", binary.Size(weftEndpointValue{}), 16},
	} {
		var st *btf.Struct
		if err := cs.Types.TypeByName(c.name, &st); err != nil {
			t.Fatalf("btf %s: %v", c.name, err)
		}
		cSz, err := btf.Sizeof(st)
		if err != nil {
			t.Fatal(err)
		}
		if c.goSz != cSz || cSz != c.want {
			t.Errorf("%s: go %d bytes, C %d bytes, want %d", c.name, c.goSz, cSz, c.want)
		}
	}
	tm := cs.Maps[weftMapWeftTunnels]
	if int(tm.KeySize) != binary.Size(weftTunnelKey{}) || int(tm.ValueSize) != binary.Size(weftTunnelValue{}) {
		t.Errorf("tunnel map key/value %d/%d bytes", tm.KeySize, tm.ValueSize)
	}
	if cm := cs.Maps[weftMapWeftConfig]; int(cm.ValueSize) != binary.Size(weftConfig{}) {
		t.Errorf("config map value %d bytes", cm.ValueSize)
	}
	if lm := cs.Maps[weftMapWeftLocal]; int(lm.KeySize) != binary.Size(weftTunnelKey{}) || int(lm.ValueSize) != binary.Size(weftLocalValue{}) {
		t.Errorf("local map key/value %d/%d bytes", lm.KeySize, lm.ValueSize)
	}
	if em := cs.Maps[weftMapWeftEndpoints]; int(em.KeySize) != binary.Size(weftEndpointKey{}) || int(em.ValueSize) != binary.Size(weftEndpointValue{}) {
		t.Errorf("endpoint map key/value %d/%d bytes", em.KeySize, em.ValueSize)
	}
	sm := cs.Maps[weftMapWeftStats]
	if int(sm.ValueSize) != binary.Size(weftStats{}) {
		t.Errorf("stats map value %d bytes", sm.ValueSize)
	}
}

func TestKeyEncoding(t *testing.T) {
	for _, s := range []string{"10.244.1.0/24", "0.0.0.0/0", "10.244.1.7/32", "fd00:244:1::/64", "::/0"} {
		p := netip.MustParsePrefix(s)
		k := encodeKey(p)
		if got := decodeKey(k); got != p.Masked() {
			t.Errorf("%s: round trip %s", s, got)
		}
	}
	k := encodeKey(netip.MustParsePrefix("10.244.1.0/24"))
	if k.Prefixlen != 120 || k.Addr[10] != 0xff || k.Addr[11] != 0xff || k.Addr[12] != 10 || k.Addr[13] != 244 {
		t.Errorf("ipv4 key not ipv4-mapped: %+v", k)
	}
	// Host bits are masked.
	if decodeKey(encodeKey(netip.MustParsePrefix("10.244.1.9/24"))) != netip.MustParsePrefix("10.244.1.0/24") {
		t.Error("host bits kept")
	}
}

func TestValueEncoding(t *testing.T) {
	v4 := spec.Tunnel{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Endpoint: netip.MustParseAddr("192.168.1.2"), VNI: 7, Flags: spec.FlagIPv6Endpoint}
	v := encodeValue(v4)
	if v.Flags&spec.FlagIPv6Endpoint != 0 || v.Vni != 7 || v.Endpoint[15] != 2 || v.Endpoint[10] != 0xff {
		t.Errorf("v4 endpoint value %+v", v)
	}
	if got := decodeValue(v4.Prefix, v); got.Endpoint != v4.Endpoint || got.Flags != 0 {
		t.Errorf("v4 decode %+v", got)
	}
	v6 := spec.Tunnel{Prefix: netip.MustParsePrefix("fd00::/64"), Endpoint: netip.MustParseAddr("2001:db8::1"), VNI: 1}
	v = encodeValue(v6)
	if v.Flags&spec.FlagIPv6Endpoint == 0 {
		t.Errorf("v6 endpoint lacks flag: %+v", v)
	}
	if got := decodeValue(v6.Prefix, v); got.Endpoint != v6.Endpoint || got.Flags != spec.FlagIPv6Endpoint {
		t.Errorf("v6 decode %+v", got)
	}
}

func tun(p, ep string, vni uint32) spec.Tunnel {
	return normTunnel(spec.Tunnel{Prefix: netip.MustParsePrefix(p), Endpoint: netip.MustParseAddr(ep), VNI: vni})
}

func TestDiffTunnels(t *testing.T) {
	have := []spec.Tunnel{tun("10.244.1.0/24", "192.168.0.1", 1), tun("10.244.2.0/24", "192.168.0.2", 1), tun("10.244.3.0/24", "192.168.0.3", 1)}
	want := []spec.Tunnel{tun("10.244.4.0/24", "192.168.0.4", 1), tun("10.244.1.0/24", "192.168.0.1", 1), tun("10.244.2.0/24", "192.168.0.9", 1)}
	d, next := diffTunnels(slices.Clone(have), want)
	if len(d.Add) != 1 || d.Add[0].Prefix.String() != "10.244.4.0/24" {
		t.Errorf("add %v", d.Add)
	}
	if len(d.Update) != 1 || d.Update[0].Endpoint.String() != "192.168.0.9" {
		t.Errorf("update %v", d.Update)
	}
	if len(d.Delete) != 1 || d.Delete[0].String() != "10.244.3.0/24" {
		t.Errorf("delete %v", d.Delete)
	}
	if again, _ := diffTunnels(next, want); !again.empty() {
		t.Errorf("diff after apply not empty: %+v", again)
	}
	// Fast path: same prefixes, one endpoint changed, updated in place.
	w2 := slices.Clone(next)
	w2[1].Endpoint = netip.MustParseAddr("192.168.0.77")
	d, next2 := diffTunnels(next, w2)
	if len(d.Update) != 1 || len(d.Add)+len(d.Delete) != 0 || !slices.Equal(next2, w2) {
		t.Errorf("fast path %+v -> %v", d, next2)
	}
	// Duplicates in want: the last one wins.
	dup := []spec.Tunnel{tun("10.244.1.0/24", "192.168.0.1", 1), tun("10.244.1.0/24", "192.168.0.5", 1)}
	d, next = diffTunnels(nil, dup)
	if len(d.Add) != 1 || d.Add[0].Endpoint.String() != "192.168.0.5" || len(next) != 1 {
		t.Errorf("duplicates %+v %v", d, next)
	}
	// Removing everything.
	if d, next := diffTunnels(have, nil); len(d.Delete) != 3 || len(next) != 0 {
		t.Errorf("remove all %+v", d)
	}
	// Flags given by the caller for the endpoint family do not cause churn.
	w3 := []spec.Tunnel{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Endpoint: netip.MustParseAddr("192.168.0.1"), VNI: 1, Flags: spec.FlagIPv6Endpoint}}
	if d, _ := diffTunnels([]spec.Tunnel{tun("10.244.1.0/24", "192.168.0.1", 1)}, w3); !d.empty() {
		t.Errorf("flag-only difference causes a write: %+v", d)
	}
}

// TestDiffTunnelsModel checks diffTunnels against a map-based model on
// random inputs.
func TestDiffTunnelsModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		gen := rapid.SliceOf(rapid.Custom(func(rt *rapid.T) spec.Tunnel {
			return tun(fmt.Sprintf("10.%d.0.0/16", rapid.IntRange(0, 20).Draw(rt, "p")),
				fmt.Sprintf("192.168.0.%d", rapid.IntRange(1, 3).Draw(rt, "e")), uint32(rapid.IntRange(1, 2).Draw(rt, "v")))
		}))
		m := map[netip.Prefix]spec.Tunnel{}
		for _, x := range gen.Draw(rt, "have") {
			m[x.Prefix] = x
		}
		have := sortedTunnels(m)
		want := gen.Draw(rt, "want")
		if rapid.Bool().Draw(rt, "sameprefixes") {
			want = slices.Clone(have)
			for i := range want {
				want[i].VNI = uint32(rapid.IntRange(1, 2).Draw(rt, "nv"))
			}
		}
		wm := map[netip.Prefix]spec.Tunnel{}
		for _, x := range want {
			wm[x.Prefix] = x
		}
		before := maps.Clone(m)
		d, next := diffTunnels(have, want)
		for _, x := range d.Add {
			if _, ok := before[x.Prefix]; ok {
				rt.Fatalf("add of present %v", x)
			}
			m[x.Prefix] = x
		}
		for _, x := range d.Update {
			if old, ok := before[x.Prefix]; !ok || old == x {
				rt.Fatalf("bad update %v", x)
			}
			m[x.Prefix] = x
		}
		for _, p := range d.Delete {
			delete(m, p)
		}
		if !maps.Equal(m, wm) {
			rt.Fatalf("applied %v, want %v", m, wm)
		}
		if !slices.Equal(next, sortedTunnels(wm)) {
			rt.Fatalf("next %v, want %v", next, sortedTunnels(wm))
		}
	})
}

func TestDesiredRoutesAndDiff(t *testing.T) {
	want := &spec.Desired{
		Mode:         spec.ModeHybrid,
		Overlay:      &spec.Overlay{Kind: spec.ModeVXLAN},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		Routes: []spec.Route{
			{Prefix: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("192.168.0.2")},
			{Prefix: netip.MustParsePrefix("10.244.9.0/24"), Via: netip.MustParseAddr("192.168.0.9"), Proto: spec.ProtoBGP},
		},
	}
	rs := desiredRoutes(want, 7)
	if len(rs) != 3 || rs[netip.MustParsePrefix("10.244.0.0/16")].Dev != 7 ||
		rs[netip.MustParsePrefix("10.244.9.0/24")].Proto != RouteProtocolBGP ||
		rs[netip.MustParsePrefix("10.244.2.0/24")].Proto != RouteProtocol {
		t.Fatalf("desired routes %v", rs)
	}
	if d := diffRoutes(rs, rs); !d.empty() {
		t.Errorf("self diff %+v", d)
	}
	native := *want
	native.Overlay = nil
	d := diffRoutes(rs, desiredRoutes(&native, 0))
	if len(d.Delete) != 1 || d.Delete[0].Dev != 7 || len(d.Add)+len(d.Update) != 0 {
		t.Errorf("vxlan->native diff %+v", d)
	}
}

func TestMasqRules(t *testing.T) {
	if masqRules(nil) != nil {
		t.Error("rules without masquerade")
	}
	m := &spec.Masquerade{
		PodCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")},
		NativeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/32")},
	}
	got := masqSignature(masqRules(m))
	want := []string{
		"weft: 10.244.1.0/24 -> 10.244.0.0/16 keep", "weft: 10.244.1.0/24 masquerade",
		"weft: fd00:244:1::/64 -> fd00:244::/32 keep", "weft: fd00:244:1::/64 masquerade",
	}
	if !slices.Equal(got, want) {
		t.Errorf("rules %q", got)
	}
}

func TestOverlayMTU(t *testing.T) {
	u := spec.Underlay{MTU: 1500, IP: netip.MustParseAddr("192.168.0.1")}
	if m := overlayMTU(spec.ModeVXLAN, u); m != 1450 {
		t.Errorf("v4 mtu %d", m)
	}
	u.IP = netip.MustParseAddr("2001:db8::1")
	if m := overlayMTU(spec.ModeVXLAN, u); m != 1430 {
		t.Errorf("v6 mtu %d", m)
	}
}

func TestMasqSkipsTunnels(t *testing.T) {
	w := &spec.Desired{Tunnels: []spec.Tunnel{tun("10.244.2.0/24", "192.168.0.2", 1)}}
	if !masqSkipsTunnels(w) {
		t.Error("no masquerade: fast path off")
	}
	w.Masquerade = &spec.Masquerade{NativeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	if !masqSkipsTunnels(w) {
		t.Error("tunnel inside native CIDR: fast path off")
	}
	w.Masquerade.NativeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}
	if masqSkipsTunnels(w) {
		t.Error("tunnel outside native CIDR: fast path on")
	}
}

func TestLocalEntries(t *testing.T) {
	w := &spec.Desired{LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}}
	if len(localEntries(w, 0)) != 0 {
		t.Error("entries without a bridge")
	}
	m := localEntries(w, 9)
	v4 := m[netip.MustParsePrefix("10.244.1.0/24")]
	if v4.BridgeIfindex != 9 || netip.AddrFrom16(v4.Gateway).Unmap().String() != "10.244.1.1" || netip.AddrFrom16(v4.Broadcast).Unmap().String() != "10.244.1.255" {
		t.Errorf("v4 %+v", v4)
	}
	v6 := m[netip.MustParsePrefix("fd00:244:1::/64")]
	if netip.AddrFrom16(v6.Gateway).String() != "fd00:244:1::1" || v6.Broadcast != [16]byte{} {
		t.Errorf("v6 %+v", v6)
	}
}
