package device

import (
	"net/netip"
	"testing"

	"github.com/weftnet/weft/bpf/spec"
)

func TestOverlayMTU(t *testing.T) {
	u := spec.Underlay{MTU: 1500, IP: netip.MustParseAddr("192.168.0.1")}
	if m := OverlayMTU(spec.ModeVXLAN, u); m != 1450 {
		t.Errorf("v4 mtu %d", m)
	}
	u.IP = netip.MustParseAddr("2001:db8::1")
	if m := OverlayMTU(spec.ModeVXLAN, u); m != 1430 {
		t.Errorf("v6 mtu %d", m)
	}
}
