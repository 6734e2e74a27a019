package route

import (
	"net/netip"
	"testing"

	"github.com/weftnet/weft/bpf/spec"
)

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
	rs := Desired(want, 7)
	if len(rs) != 3 || rs[netip.MustParsePrefix("10.244.0.0/16")].Dev != 7 ||
		rs[netip.MustParsePrefix("10.244.9.0/24")].Proto != ProtocolBGP ||
		rs[netip.MustParsePrefix("10.244.2.0/24")].Proto != Protocol {
		t.Fatalf("desired routes %v", rs)
	}
	if d := Compare(rs, rs); !d.Empty() {
		t.Errorf("self diff %+v", d)
	}
	native := *want
	native.Overlay = nil
	d := Compare(rs, Desired(&native, 0))
	if len(d.Delete) != 1 || d.Delete[0].Dev != 7 || len(d.Add)+len(d.Update) != 0 {
		t.Errorf("vxlan->native diff %+v", d)
	}
}
