package object

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/weftnet/weft/bpf/spec"
)

// TestStructSizes checks that every struct shared with the C programs has
// the same size in Go and in the compiled object's BTF.
func TestStructSizes(t *testing.T) {
	cs, err := LoadWeft()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		goSz int
		want int
	}{
		{"tunnel_key", binary.Size(WeftTunnelKey{}), 20},
		{"tunnel_value", binary.Size(WeftTunnelValue{}), 24},
		{"stats", binary.Size(WeftStats{}), 64},
		{"config", binary.Size(WeftConfig{}), 32},
		{"local_value", binary.Size(WeftLocalValue{}), 56},
		{"endpoint_key", binary.Size(WeftEndpointKey{}), 16},
		{"endpoint_value", binary.Size(WeftEndpointValue{}), 16},
		{"pod_value", binary.Size(WeftPodValue{}), 48},
		{"guard", binary.Size(WeftGuard{}), 164},
		{"decap_stats", binary.Size(WeftDecapStats{}), 32},
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
	tm := cs.Maps[WeftMapWeftTunnels]
	if int(tm.KeySize) != binary.Size(WeftTunnelKey{}) || int(tm.ValueSize) != binary.Size(WeftTunnelValue{}) {
		t.Errorf("tunnel map key/value %d/%d bytes", tm.KeySize, tm.ValueSize)
	}
	if cm := cs.Maps[WeftMapWeftConfig]; int(cm.ValueSize) != binary.Size(WeftConfig{}) {
		t.Errorf("config map value %d bytes", cm.ValueSize)
	}
	if lm := cs.Maps[WeftMapWeftLocal]; int(lm.KeySize) != binary.Size(WeftTunnelKey{}) || int(lm.ValueSize) != binary.Size(WeftLocalValue{}) {
		t.Errorf("local map key/value %d/%d bytes", lm.KeySize, lm.ValueSize)
	}
	if em := cs.Maps[WeftMapWeftEndpoints]; int(em.KeySize) != binary.Size(WeftEndpointKey{}) || int(em.ValueSize) != binary.Size(WeftEndpointValue{}) {
		t.Errorf("endpoint map key/value %d/%d bytes", em.KeySize, em.ValueSize)
	}
	if pm := cs.Maps[WeftMapWeftPods]; pm.KeySize != 4 || int(pm.ValueSize) != binary.Size(WeftPodValue{}) {
		t.Errorf("pod map key/value %d/%d bytes, want 4 (ifindex)/%d", pm.KeySize, pm.ValueSize, binary.Size(WeftPodValue{}))
	}
	if gm := cs.Maps[WeftMapWeftGuard]; int(gm.ValueSize) != binary.Size(WeftGuard{}) {
		t.Errorf("guard map value %d bytes", gm.ValueSize)
	}
	sm := cs.Maps[WeftMapWeftStats]
	if int(sm.ValueSize) != binary.Size(WeftStats{}) {
		t.Errorf("stats map value %d bytes", sm.ValueSize)
	}
	if dm := cs.Maps[WeftMapWeftDrops]; dm.KeySize != 4 || dm.ValueSize != 8 {
		t.Errorf("drop map key/value %d/%d bytes, want 4/8 (u32 reason, u64 count)", dm.KeySize, dm.ValueSize)
	}
}

func TestKeyEncoding(t *testing.T) {
	for _, s := range []string{"10.244.1.0/24", "0.0.0.0/0", "10.244.1.7/32", "fd00:244:1::/64", "::/0"} {
		p := netip.MustParsePrefix(s)
		k := TunnelKey(p)
		if got := Prefix(k); got != p.Masked() {
			t.Errorf("%s: round trip %s", s, got)
		}
	}
	k := TunnelKey(netip.MustParsePrefix("10.244.1.0/24"))
	if k.Prefixlen != 120 || k.Addr[10] != 0xff || k.Addr[11] != 0xff || k.Addr[12] != 10 || k.Addr[13] != 244 {
		t.Errorf("ipv4 key not ipv4-mapped: %+v", k)
	}
	// Host bits are masked.
	if Prefix(TunnelKey(netip.MustParsePrefix("10.244.1.9/24"))) != netip.MustParsePrefix("10.244.1.0/24") {
		t.Error("host bits kept")
	}
}

func TestValueEncoding(t *testing.T) {
	v4 := spec.Tunnel{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Endpoint: netip.MustParseAddr("192.168.1.2"), VNI: 7, Flags: spec.FlagIPv6Endpoint}
	v := TunnelValue(v4)
	if v.Flags&spec.FlagIPv6Endpoint != 0 || v.Vni != 7 || v.Endpoint[15] != 2 || v.Endpoint[10] != 0xff {
		t.Errorf("v4 endpoint value %+v", v)
	}
	if got := Tunnel(v4.Prefix, v); got.Endpoint != v4.Endpoint || got.Flags != 0 {
		t.Errorf("v4 decode %+v", got)
	}
	v6 := spec.Tunnel{Prefix: netip.MustParsePrefix("fd00::/64"), Endpoint: netip.MustParseAddr("2001:db8::1"), VNI: 1}
	v = TunnelValue(v6)
	if v.Flags&spec.FlagIPv6Endpoint == 0 {
		t.Errorf("v6 endpoint lacks flag: %+v", v)
	}
	if got := Tunnel(v6.Prefix, v); got.Endpoint != v6.Endpoint || got.Flags != spec.FlagIPv6Endpoint {
		t.Errorf("v6 decode %+v", got)
	}
}

// TestDropReasonNames checks that every reason of the C enum drop_reason
// has exactly one name in DropReasons, that the names are unique, and that
// every reason fits in the drop map.
func TestDropReasonNames(t *testing.T) {
	cs, err := LoadWeft()
	if err != nil {
		t.Fatal(err)
	}
	var enum *btf.Enum
	if err := cs.Types.TypeByName("drop_reason", &enum); err != nil {
		t.Fatalf("btf drop_reason: %v", err)
	}
	slots := cs.Maps[WeftMapWeftDrops].MaxEntries
	byKey := map[WeftDropReason]string{}
	names := map[string]bool{}
	for _, r := range DropReasons {
		if _, dup := byKey[r.Key]; dup {
			t.Errorf("reason %d named twice", r.Key)
		}
		if names[r.Name] || r.Name == "" || strings.ToLower(r.Name) != r.Name {
			t.Errorf("reason %d: name %q empty, not lower case or used twice", r.Key, r.Name)
		}
		byKey[r.Key], names[r.Name] = r.Name, true
	}
	for _, v := range enum.Values {
		if v.Value == 0 || v.Value >= uint64(slots) {
			t.Errorf("%s = %d: outside 1..%d (the drop map's slots)", v.Name, v.Value, slots-1)
		}
		if _, ok := byKey[WeftDropReason(v.Value)]; !ok {
			t.Errorf("%s = %d has no name in DropReasons", v.Name, v.Value)
		}
		delete(byKey, WeftDropReason(v.Value))
	}
	for k, n := range byKey {
		t.Errorf("DropReasons names %q for %d, which the C enum does not have", n, k)
	}
}

func TestPodEncoding(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	// The kernel's EUI-64 address for this MAC (ip -6 addr on such a link).
	if got := LinkLocal(mac); got != netip.MustParseAddr("fe80::5054:ff:fe12:3456") {
		t.Errorf("link-local of %s = %s", mac, got)
	}
	v, err := PodValue(mac, netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("fd00:244:1::2"))
	if err != nil {
		t.Fatal(err)
	}
	if v.Flags != PodIPv4|PodIPv6 || v.Ipv4 != [4]byte{10, 244, 1, 2} || netip.AddrFrom16(v.Ipv6) != netip.MustParseAddr("fd00:244:1::2") ||
		net.HardwareAddr(v.Mac[:]).String() != mac.String() || netip.AddrFrom16(v.Ipv6Ll) != LinkLocal(mac) {
		t.Errorf("pod value %+v", v)
	}
	if v, _ := PodValue(mac, netip.Addr{}, netip.Addr{}); v.Flags != 0 {
		t.Errorf("no addresses, flags %#x", v.Flags)
	}
	for _, bad := range []struct {
		mac    net.HardwareAddr
		v4, v6 string
	}{{mac[:5], "10.0.0.1", ""}, {mac, "fd00::1", ""}, {mac, "", "10.0.0.1"}, {mac, "", "::ffff:10.0.0.1"}} {
		var v4, v6 netip.Addr
		if bad.v4 != "" {
			v4 = netip.MustParseAddr(bad.v4)
		}
		if bad.v6 != "" {
			v6 = netip.MustParseAddr(bad.v6)
		}
		if _, err := PodValue(bad.mac, v4, v6); err == nil {
			t.Errorf("PodValue(%s, %s, %s) accepted", bad.mac, bad.v4, bad.v6)
		}
	}
}

func TestGuardEncoding(t *testing.T) {
	g, err := GuardValue([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/36")}, true)
	if err != nil {
		t.Fatal(err)
	}
	if g.Flags != GuardTunnelOnly || g.Nets != 2 {
		t.Fatalf("guard %+v", g)
	}
	// 10.244.0.0/16 IPv4-mapped: /112, 14 bytes of mask.
	want := [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if g.Net[0].Mask != want || netip.AddrFrom16(g.Net[0].Addr) != netip.MustParseAddr("::ffff:10.244.0.0") {
		t.Errorf("v4 net %+v", g.Net[0])
	}
	want = [16]byte{0xff, 0xff, 0xff, 0xff, 0xf0}
	if g.Net[1].Mask != want {
		t.Errorf("v6 mask %x", g.Net[1].Mask)
	}
	if g, _ := GuardValue(nil, true); g != (WeftGuard{}) {
		t.Errorf("no networks: %+v, want the zero value", g)
	}
	five := make([]netip.Prefix, 5)
	for i := range five {
		five[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)
	}
	if _, err := GuardValue(five, false); err == nil || !strings.Contains(err.Error(), "at most 4") {
		t.Errorf("five networks: %v", err)
	}

	// The in-program VXLAN receive: the node's underlay addresses and the
	// port, with GUARD_DECAP beside the other flags.
	v4, v6 := netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("fd00:50::2")
	d, err := WithDecap(g, v4, v6, 8472)
	if err != nil {
		t.Fatal(err)
	}
	if d.Flags != GuardTunnelOnly|GuardDecap || d.Port != 8472 || netip.AddrFrom4(d.Under4) != v4 ||
		netip.AddrFrom16(d.Under6) != v6 || d.Net != g.Net || d.Nets != g.Nets {
		t.Errorf("with decap: %+v", d)
	}
	if d, err := WithDecap(g, netip.AddrFrom16(v4.As16()), netip.Addr{}, 4789); err != nil || netip.AddrFrom4(d.Under4) != v4 ||
		d.Under6 != [16]byte{} || d.Port != 4789 {
		t.Errorf("IPv4-mapped underlay alone: %+v, %v", d, err)
	}
	if d, err := WithDecap(g, netip.Addr{}, v6, 8472); err != nil || d.Under4 != [4]byte{} || netip.AddrFrom16(d.Under6) != v6 {
		t.Errorf("IPv6 underlay alone: %+v, %v", d, err)
	}
	if d, err := WithDecap(WeftGuard{}, v4, v6, 8472); err != nil || d != (WeftGuard{}) {
		t.Errorf("no networks: %+v, %v; want the zero value (nothing attached)", d, err)
	}
	for _, bad := range []struct {
		v4, v6 netip.Addr
		port   uint16
	}{
		{v4, v6, 0},
		{netip.Addr{}, netip.Addr{}, 8472},
		{v6, netip.Addr{}, 8472},
		{netip.Addr{}, v4, 8472},
		{netip.Addr{}, netip.AddrFrom16(v4.As16()), 8472},
	} {
		if d, err := WithDecap(g, bad.v4, bad.v6, bad.port); err == nil {
			t.Errorf("WithDecap(%s, %s, %d) = %+v, want an error", bad.v4, bad.v6, bad.port, d)
		}
	}
}
