package nft

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/weftnet/weft/bpf/spec"
)

func TestMasqRules(t *testing.T) {
	if Rules(nil) != nil {
		t.Error("rules without masquerade")
	}
	m := &spec.Masquerade{
		PodCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")},
		NativeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/32")},
	}
	got := Signature(Rules(m))
	want := []string{
		"weft: 10.244.1.0/24 -> 10.244.0.0/16 keep", "weft: 10.244.1.0/24 masquerade",
		"weft: fd00:244:1::/64 -> fd00:244::/32 keep", "weft: fd00:244:1::/64 masquerade",
	}
	if !slices.Equal(got, want) {
		t.Errorf("rules %q", got)
	}
}
