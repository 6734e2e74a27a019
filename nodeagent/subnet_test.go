package nodeagent

import (
	"net/netip"
	"testing"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/model"
)

// TestSubnetEnvFamilies: flannel's field names for each family the node
// has a pod CIDR of; an IPv6-only node has no IPv4 fields.
func TestSubnetEnvFamilies(t *testing.T) {
	plan := func(cidrs ...string) model.Plan {
		d := &spec.Desired{}
		for _, c := range cidrs {
			d.LocalPodCIDRs = append(d.LocalPodCIDRs, netip.MustParsePrefix(c))
		}
		return model.Plan{Desired: d, PodMTU: 1430}
	}
	for _, tc := range []struct {
		name, v4, v6 string
		cidrs        []string
		want         string
	}{
		{"dual", "10.244.0.0/16", "fd00:10:244::/56", []string{"10.244.1.0/24", "fd00:10:244:1::/64"},
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\nWEFT_BACKEND=vxlan\n"},
		{"ipv6", "", "fd00:10:244::/56", []string{"fd00:10:244:1::/64"},
			"FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\nWEFT_BACKEND=vxlan\n"},
		// The IPv6 CIDR was added to the config, the node's NodeUpdated
		// not applied yet: no IPv6 fields until the node has a subnet.
		{"ipv6 added, node not yet", "10.244.0.0/16", "fd00:10:244::/56", []string{"10.244.1.0/24"},
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\nWEFT_BACKEND=vxlan\n"},
	} {
		if got := subnetEnv(plan(tc.cidrs...), "vxlan", tc.v4, tc.v6, true, ""); got != tc.want {
			t.Errorf("%s:\n%s\nwant:\n%s", tc.name, got, tc.want)
		}
	}
}
