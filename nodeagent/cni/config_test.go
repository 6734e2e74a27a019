package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.SubnetFile != DefaultSubnetFile || c.DataDir != DefaultDataDir {
		t.Fatalf("defaults not applied: %+v", c)
	}
	// Runtime-injected keys are accepted.
	_, err = ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","cni.dev/valid-attachments":[],"cni.dev/attachments":[],"runtimeConfig":{}}`))
	if err != nil {
		t.Fatal(err)
	}
}

// BadConfigs are netconfs the plugin must refuse, with the field the error
// must name; shared with the libcni test.
var BadConfigs = []struct {
	name, conf, field string
	code              uint
}{
	{"unknown field", `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","subnetfile":"/x"}`, "subnetfile", types.ErrInvalidNetworkConfig},
	{"subnetFile wrong type", `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","subnetFile":5}`, "subnetFile", types.ErrInvalidNetworkConfig},
	{"subnetFile relative", `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","subnetFile":"run/subnet.env"}`, "subnetFile", types.ErrInvalidNetworkConfig},
	{"subnetFile empty", `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","subnetFile":""}`, "subnetFile", types.ErrInvalidNetworkConfig},
	{"dataDir relative", `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","dataDir":"var/lib"}`, "dataDir", types.ErrInvalidNetworkConfig},
	{"dataDir wrong type", `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","dataDir":["/a"]}`, "dataDir", types.ErrInvalidNetworkConfig},
	{"ipam section", `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","ipam":{"type":"host-local"}}`, "ipam", types.ErrInvalidNetworkConfig},
	{"name wrong type", `{"cniVersion":"1.1.0","name":7,"type":"weft-cni"}`, "name", types.ErrInvalidNetworkConfig},
}

func TestParseConfigBad(t *testing.T) {
	for _, tc := range append(BadConfigs[:len(BadConfigs):len(BadConfigs)],
		struct {
			name, conf, field string
			code              uint
		}{"missing name", `{"cniVersion":"1.1.0","type":"weft-cni"}`, "name", types.ErrInvalidNetworkConfig},
		struct {
			name, conf, field string
			code              uint
		}{"missing cniVersion", `{"name":"weft","type":"weft-cni"}`, "cniVersion", types.ErrInvalidNetworkConfig},
		struct {
			name, conf, field string
			code              uint
		}{"not json", `{"name":`, "decode", types.ErrDecodingFailure},
	) {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.conf))
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("got %v, want a *types.Error", err)
			}
			if te.Code != tc.code || !strings.Contains(te.Msg, tc.field) {
				t.Fatalf("got code %d %q, want code %d naming %q", te.Code, te.Msg, tc.code, tc.field)
			}
		})
	}
}

func TestParseSubnet(t *testing.T) {
	s, err := ParseSubnet([]byte("# weft\nFLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nWEFT_BACKEND=vxlan\nWEFT_BPFFS_DIR=/sys/fs/bpf/weft\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.BPFFSDir != "/sys/fs/bpf/weft" {
		t.Fatalf("WEFT_BPFFS_DIR parsed as %q", s.BPFFSDir)
	}
	if s.GSOIPv4MaxSize != 0 || s.GSOIPv6MaxSize != 0 {
		t.Fatalf("no BIG TCP asked, parsed %d/%d", s.GSOIPv4MaxSize, s.GSOIPv6MaxSize)
	}
	if s.V4 != netip.MustParsePrefix("10.244.1.0/24") || s.Gateway4 != netip.MustParseAddr("10.244.1.1") || s.MTU != 1450 {
		t.Fatalf("v4 parsed wrong: %+v", s)
	}
	if s.V6 != netip.MustParsePrefix("fd00:10:244:1::/64") || s.Gateway6 != netip.MustParseAddr("fd00:10:244:1::1") {
		t.Fatalf("v6 parsed wrong: %+v", s)
	}
	s, err = ParseSubnet([]byte("FLANNEL_SUBNET=10.244.2.0/24\nFLANNEL_MTU=1400\n"))
	if err != nil || s.Gateway4 != netip.MustParseAddr("10.244.2.1") || s.BPFFSDir != "" {
		t.Fatalf("network address form: %+v %v", s, err)
	}
	// An IPv6-only node: FLANNEL_IPV6_SUBNET alone.
	s, err = ParseSubnet([]byte("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1430\n"))
	if err != nil || s.V4.IsValid() || s.V6 != netip.MustParsePrefix("fd00:10:244:3::/64") || s.Gateway6 != netip.MustParseAddr("fd00:10:244:3::1") {
		t.Fatalf("IPv6-only subnet file: %+v %v", s, err)
	}
	if ps := pools(s); len(ps) != 1 || ps[0].Prefix != s.V6 {
		t.Fatalf("IPv6-only pools: %+v", ps)
	}
	s, err = ParseSubnet([]byte("FLANNEL_SUBNET=10.244.2.0/24\nFLANNEL_MTU=1500\nWEFT_GSO_IPV4_MAX_SIZE=196608\nWEFT_GSO_IPV6_MAX_SIZE=131072\n"))
	if err != nil || s.GSOIPv4MaxSize != 196608 || s.GSOIPv6MaxSize != 131072 {
		t.Fatalf("BIG TCP sizes: %+v %v", s, err)
	}
	for in, field := range map[string]string{
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nWEFT_GSO_IPV4_MAX_SIZE=big\n":   "WEFT_GSO_IPV4_MAX_SIZE",
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nWEFT_GSO_IPV6_MAX_SIZE=1000\n":  "WEFT_GSO_IPV6_MAX_SIZE",
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nWEFT_GSO_IPV4_MAX_SIZE=1<<30\n": "WEFT_GSO_IPV4_MAX_SIZE",
		"FLANNEL_MTU=1450\n": "FLANNEL_SUBNET",
		"FLANNEL_IPV6_SUBNET=10.0.0.1/8\nFLANNEL_MTU=1450\n":                               "FLANNEL_IPV6_SUBNET",
		"FLANNEL_SUBNET=10.244.1.1/24\n":                                                   "FLANNEL_MTU",
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=x\n":                                    "FLANNEL_MTU",
		"FLANNEL_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\n":                                    "FLANNEL_SUBNET",
		"FLANNEL_SUBNET=10.244.1.1\nFLANNEL_MTU=1450\n":                                    "FLANNEL_SUBNET",
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\ngarbage\n":                        "garbage",
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPV6_SUBNET=10.0.0.1/8\n": "FLANNEL_IPV6_SUBNET",
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nWEFT_BPFFS_DIR=sys/fs/bpf\n":      "WEFT_BPFFS_DIR",
		// A key twice: which one counts would be a guess.
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_MTU=9000\n":             "FLANNEL_MTU: set twice",
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_SUBNET=10.244.2.1/24\n": "FLANNEL_SUBNET: set twice",
		// Pools weft never hands out: no room for gateway and pod (the
		// /32's gateway was outside it), the whole address space on
		// weft0, special ranges, the broadcast address as the gateway,
		// IPv6 below its least MTU.
		"FLANNEL_SUBNET=10.244.1.0/32\nFLANNEL_MTU=1450\n":                                "FLANNEL_SUBNET: 10.244.1.0/32 is longer than /30",
		"FLANNEL_SUBNET=10.244.1.0/31\nFLANNEL_MTU=1450\n":                                "FLANNEL_SUBNET: 10.244.1.0/31 is longer than /30",
		"FLANNEL_IPV6_SUBNET=fd00::/127\nFLANNEL_MTU=1450\n":                              "FLANNEL_IPV6_SUBNET: fd00::/127 is longer than /126",
		"FLANNEL_SUBNET=0.0.0.0/0\nFLANNEL_MTU=1450\n":                                    "FLANNEL_SUBNET: 0.0.0.0/0 cannot be a pod CIDR",
		"FLANNEL_SUBNET=127.0.0.1/24\nFLANNEL_MTU=1450\n":                                 "FLANNEL_SUBNET: 127.0.0.0/24 cannot be a pod CIDR",
		"FLANNEL_SUBNET=224.0.0.1/24\nFLANNEL_MTU=1450\n":                                 "FLANNEL_SUBNET: 224.0.0.0/24 cannot be a pod CIDR",
		"FLANNEL_SUBNET=169.254.1.1/24\nFLANNEL_MTU=1450\n":                               "FLANNEL_SUBNET: 169.254.1.0/24 cannot be a pod CIDR",
		"FLANNEL_IPV6_SUBNET=::/0\nFLANNEL_MTU=1450\n":                                    "FLANNEL_IPV6_SUBNET: ::/0 cannot be a pod CIDR",
		"FLANNEL_IPV6_SUBNET=fe80::1/64\nFLANNEL_MTU=1450\n":                              "FLANNEL_IPV6_SUBNET: fe80::/64 cannot be a pod CIDR",
		"FLANNEL_SUBNET=10.244.1.255/24\nFLANNEL_MTU=1450\n":                              "FLANNEL_SUBNET: gateway 10.244.1.255 is the broadcast address",
		"FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1279\n":                     "FLANNEL_MTU: 1279 is below 1280",
		"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=600\n": "FLANNEL_MTU: 600 is below 1280",
	} {
		if _, err := ParseSubnet([]byte(in)); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("ParseSubnet(%q) = %v, want an error naming %s", in, err, field)
		}
	}
}

// TestParseSubnetEdges: the smallest pools weft hands out and the MTU
// floor of each family are accepted.
func TestParseSubnetEdges(t *testing.T) {
	for in, want := range map[string]string{
		"FLANNEL_SUBNET=10.244.1.0/30\nFLANNEL_MTU=576\n":        "10.244.1.0/30 10.244.1.1",
		"FLANNEL_SUBNET=10.244.1.2/30\nFLANNEL_MTU=1450\n":       "10.244.1.0/30 10.244.1.2",
		"FLANNEL_IPV6_SUBNET=fd00::/126\nFLANNEL_MTU=1280\n":     "fd00::/126 fd00::1",
		"FLANNEL_IPV6_SUBNET=fd00::ffff/112\nFLANNEL_MTU=1280\n": "fd00::/112 fd00::ffff",
		"FLANNEL_SUBNET=10.0.0.1/8\nFLANNEL_MTU=9000\n":          "10.0.0.0/8 10.0.0.1",
	} {
		s, err := ParseSubnet([]byte(in))
		if err != nil {
			t.Errorf("ParseSubnet(%q): %v", in, err)
			continue
		}
		got := fmt.Sprint(s.V4, " ", s.Gateway4)
		if s.V6.IsValid() {
			got = fmt.Sprint(s.V6, " ", s.Gateway6)
		}
		if got != want {
			t.Errorf("ParseSubnet(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestReadSubnetFileMissing(t *testing.T) {
	_, err := ReadSubnetFile(t.TempDir() + "/subnet.env")
	if !errors.Is(err, ErrNoSubnetFile) {
		t.Fatalf("got %v, want ErrNoSubnetFile", err)
	}
}

func TestHostVethName(t *testing.T) {
	a, b := HostVethName("c1", "eth0"), HostVethName("c2", "eth0")
	if a == b || len(a) > 15 || !strings.HasPrefix(a, "weft") || a != HostVethName("c1", "eth0") {
		t.Fatalf("bad host veth names %q %q", a, b)
	}
}
