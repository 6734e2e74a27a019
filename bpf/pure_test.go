package bpf

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/spec"
)

func tun(p, ep string, vni uint32) spec.Tunnel {
	return object.NormTunnel(spec.Tunnel{Prefix: netip.MustParsePrefix(p), Endpoint: netip.MustParseAddr(ep), VNI: vni})
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

// sortedTunnels turns a map into the sorted slice diffTunnels works on.
func sortedTunnels(m map[netip.Prefix]spec.Tunnel) []spec.Tunnel {
	out := make([]spec.Tunnel, 0, len(m))
	for _, t := range m {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b spec.Tunnel) int { return cmpPrefix(a.Prefix, b.Prefix) })
	return out
}

func TestInProgramRx(t *testing.T) {
	on := func() *spec.Desired {
		return &spec.Desired{Mode: spec.ModeVXLAN, Overlay: &spec.Overlay{Kind: spec.ModeVXLAN, Port: 8472, InProgram: true}}
	}
	if !inProgramRx(on()) {
		t.Errorf("vxlan with InProgram: off")
	}
	for name, w := range map[string]func(*spec.Desired){
		"switch off":    func(d *spec.Desired) { d.Overlay.InProgram = false },
		"geneve":        func(d *spec.Desired) { d.Mode, d.Overlay.Kind = spec.ModeGeneve, spec.ModeGeneve },
		"stack routing": func(d *spec.Desired) { d.StackRouting = true },
		"no overlay":    func(d *spec.Desired) { d.Mode, d.Overlay = spec.ModeNative, nil },
	} {
		d := on()
		w(d)
		if inProgramRx(d) {
			t.Errorf("%s: in-program receive on", name)
		}
	}
}
