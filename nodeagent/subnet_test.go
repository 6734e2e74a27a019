package nodeagent

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// TestPreviousCIDRs: the subnet file the agent writes reads back as its
// pod CIDRs; no file is none; a file that names a subnet badly, twice or
// is too large is an error naming the field or the size, and none.
func TestPreviousCIDRs(t *testing.T) {
	dir := t.TempDir()
	write := func(content string) string {
		p := filepath.Join(dir, "subnet.env")
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	d := &spec.Desired{LocalPodCIDRs: []netip.Prefix{pfx("10.244.7.0/24"), pfx("fd00:10:244:7::/64")}}
	env := subnetEnv(model.Plan{Desired: d, PodMTU: 1450}, "vxlan", "10.244.0.0/16", "fd00:10:244::/56", true, "/sys/fs/bpf/weft")
	got, err := previousCIDRs(write(env))
	if err != nil || !slices.Equal(got, d.LocalPodCIDRs) {
		t.Fatalf("the agent's own file: %v, %v; want %v", got, err, d.LocalPodCIDRs)
	}
	if got, err := previousCIDRs(filepath.Join(dir, "absent")); got != nil || err != nil {
		t.Fatalf("no file: %v, %v", got, err)
	}
	for content, want := range map[string]string{
		"FLANNEL_SUBNET=10.244.7.1\n":                              "FLANNEL_SUBNET",
		"FLANNEL_SUBNET=fd00::1/64\n":                              "FLANNEL_SUBNET",
		"FLANNEL_IPV6_SUBNET=10.244.7.1/24\n":                      "FLANNEL_IPV6_SUBNET",
		"FLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_SUBNET=10.1.1.1/24": "set twice",
		strings.Repeat("#", maxSubnetFileBytes+1):                  "bytes",
	} {
		got, err := previousCIDRs(write(content))
		if got != nil || err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40q: %v, %v; want an error naming %s", content, got, err, want)
		}
	}
}

// TestSubnetEnvBigTCP: the sizes BIG TCP gives the pods' veths reach
// weft-cni through the subnet file, per family, and only when set.
func TestSubnetEnvBigTCP(t *testing.T) {
	d := &spec.Desired{LocalPodCIDRs: []netip.Prefix{pfx("10.244.7.0/24")}, BigTCP: spec.BigTCP{IPv4: 196608}}
	env := subnetEnv(model.Plan{Desired: d, PodMTU: 1500}, "native", "10.244.0.0/16", "", true, "")
	if !strings.Contains(env, "\nWEFT_GSO_IPV4_MAX_SIZE=196608\n") || strings.Contains(env, "WEFT_GSO_IPV6") {
		t.Fatalf("IPv4 only:\n%s", env)
	}
	d.BigTCP = spec.BigTCP{IPv6: 131072}
	env = subnetEnv(model.Plan{Desired: d, PodMTU: 1500}, "native", "10.244.0.0/16", "", true, "")
	if !strings.Contains(env, "\nWEFT_GSO_IPV6_MAX_SIZE=131072\n") || strings.Contains(env, "WEFT_GSO_IPV4") {
		t.Fatalf("IPv6 only:\n%s", env)
	}
	d.BigTCP = spec.BigTCP{}
	if env = subnetEnv(model.Plan{Desired: d, PodMTU: 1500}, "native", "10.244.0.0/16", "", true, ""); strings.Contains(env, "WEFT_GSO") {
		t.Fatalf("off:\n%s", env)
	}
}
