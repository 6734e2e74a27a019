package validate

import (
	"errors"
	"strings"
	"testing"

	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func good() *weftv1.ClusterConfig {
	return WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"})
}

func TestDefaults(t *testing.T) {
	c := good()
	if c.Backend != "vxlan" || c.Vni != 1 || c.UdpPort != 8472 || c.NodeMaskSize != 24 ||
		!c.Masquerade || c.NativeRoutingCidr != "10.244.0.0/16" || !c.DefaultsApplied || c.HostRouting != "bpf" || c.TunnelDatapath != "device" {
		t.Fatalf("defaults = %v", c)
	}
	if err := Config(c); err != nil {
		t.Fatalf("default config refused: %v", err)
	}
	// A defaulted config with masquerade turned off stays off.
	c.Masquerade = false
	if WithDefaults(c).Masquerade {
		t.Error("WithDefaults turned masquerade back on")
	}
}

func TestConfigRejections(t *testing.T) {
	cases := []struct {
		field string
		edit  func(c *weftv1.ClusterConfig)
	}{
		{"cluster_cidr", func(c *weftv1.ClusterConfig) { c.ClusterCidr = "" }},
		{"cluster_cidr", func(c *weftv1.ClusterConfig) { c.ClusterCidr = "10.244.0.0/33" }},
		{"cluster_cidr", func(c *weftv1.ClusterConfig) { c.ClusterCidr = "not-a-cidr" }},
		{"cluster_cidr", func(c *weftv1.ClusterConfig) { c.ClusterCidr = "10.244.1.0/16" }},
		{"cluster_cidr", func(c *weftv1.ClusterConfig) { c.ClusterCidr = "fd00::/48" }},
		{"cluster_cidr", func(c *weftv1.ClusterConfig) { c.ClusterCidr = "0.0.0.0/0" }},
		{"cluster_cidr", func(c *weftv1.ClusterConfig) { c.ClusterCidr = "127.0.0.0/16" }},
		{"cluster_cidr", func(c *weftv1.ClusterConfig) { c.ClusterCidr = "169.254.0.0/16" }},
		{"cluster_cidr", func(c *weftv1.ClusterConfig) { c.ClusterCidr = "224.0.0.0/16" }},
		{"cluster_cidr_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "10.0.0.0/8"; c.NodeMaskSizeV6 = 64 }},
		{"node_mask_size", func(c *weftv1.ClusterConfig) { c.NodeMaskSize = 16 }},
		{"node_mask_size", func(c *weftv1.ClusterConfig) { c.NodeMaskSize = 8 }},
		{"node_mask_size", func(c *weftv1.ClusterConfig) { c.NodeMaskSize = 31 }},
		{"node_mask_size", func(c *weftv1.ClusterConfig) { c.NodeMaskSize = 40 }},
		{"node_mask_size_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "fd00::/64"; c.NodeMaskSizeV6 = 64 }},
		{"node_mask_size_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "fd00::/48"; c.NodeMaskSizeV6 = 127 }},
		{"node_mask_size_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "fd00::/64"; c.NodeMaskSizeV6 = 48 }},
		{"cluster_cidr_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "::ffff:10.0.0.0/104"; c.NodeMaskSizeV6 = 112 }},
		{"cluster_cidr_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "::/64"; c.NodeMaskSizeV6 = 80 }},
		{"cluster_cidr_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "::/8"; c.NodeMaskSizeV6 = 64 }},
		{"cluster_cidr_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "fe80::/56"; c.NodeMaskSizeV6 = 64 }},
		{"cluster_cidr_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "ff02::/56"; c.NodeMaskSizeV6 = 64 }},
		{"cluster_cidr_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6 = "fd00::1/56"; c.NodeMaskSizeV6 = 64 }},
		{"native_routing_cidr_v6", func(c *weftv1.ClusterConfig) {
			c.ClusterCidrV6, c.NodeMaskSizeV6, c.NativeRoutingCidrV6 = "fd00:10:244::/56", 64, "fd00:10:245::/56"
		}},
		{"native_routing_cidr_v6", func(c *weftv1.ClusterConfig) { c.NativeRoutingCidrV6 = "fd00::/8" }},
		{"native_routing_cidr_v6", func(c *weftv1.ClusterConfig) {
			c.ClusterCidrV6, c.NodeMaskSizeV6, c.NativeRoutingCidrV6 = "fd00:10:244::/56", 64, "10.0.0.0/8"
		}},
		{"native_routing_cidr", func(c *weftv1.ClusterConfig) {
			c.ClusterCidr, c.ClusterCidrV6, c.NodeMaskSizeV6 = "", "fd00:10:244::/56", 64
		}},
		{"vni", func(c *weftv1.ClusterConfig) { c.Vni = 1 << 24 }},
		{"udp_port", func(c *weftv1.ClusterConfig) { c.UdpPort = 70000 }},
		{"backend", func(c *weftv1.ClusterConfig) { c.Backend = "ipip" }},
		{"mtu", func(c *weftv1.ClusterConfig) { c.Mtu = 1279 }},
		{"host_routing", func(c *weftv1.ClusterConfig) { c.HostRouting = "legacy" }},
		{"tunnel_datapath", func(c *weftv1.ClusterConfig) { c.TunnelDatapath = "xdp" }},
		{"tunnel_datapath", func(c *weftv1.ClusterConfig) { c.TunnelDatapath = "BPF" }},
		{"native_routing_cidr", func(c *weftv1.ClusterConfig) { c.NativeRoutingCidr = "10.245.0.0/16" }},
		{"big_tcp", func(c *weftv1.ClusterConfig) { c.BigTcp = true }}, // over vxlan
		{"big_tcp", func(c *weftv1.ClusterConfig) { c.Backend, c.BigTcp = "hybrid", true }},
		{"big_tcp_v6", func(c *weftv1.ClusterConfig) { c.Backend, c.BigTcpV6 = "geneve", true }},
		// The programs encapsulate VXLAN only: Geneve stays with the device.
		{"big_tcp", func(c *weftv1.ClusterConfig) { c.Backend, c.TunnelDatapath, c.BigTcp = "geneve", "bpf", true }},
		// Routing through the stack turns the in-program VXLAN off.
		{"big_tcp", func(c *weftv1.ClusterConfig) { c.TunnelDatapath, c.HostRouting, c.BigTcp = "bpf", "stack", true }},
		{"big_tcp", func(c *weftv1.ClusterConfig) { c.TunnelDatapath, c.BigTcp = "device", true }},
		// IPv6 inside the tunnel: broken by software segmentation.
		{"big_tcp_v6", func(c *weftv1.ClusterConfig) {
			c.ClusterCidrV6, c.NodeMaskSizeV6, c.TunnelDatapath, c.BigTcpV6 = "fd00:10:244::/56", 64, "bpf", true
		}},
		{"big_tcp_v6", func(c *weftv1.ClusterConfig) { c.Backend, c.BigTcpV6 = "native", true }}, // no IPv6 pod network
		{"bgp", func(c *weftv1.ClusterConfig) { c.Backend = "bgp" }},
		{"bgp.asn", func(c *weftv1.ClusterConfig) { c.Backend = "bgp"; c.Bgp = &weftv1.BGPConfig{FullMesh: true} }},
		{"bgp.peers", func(c *weftv1.ClusterConfig) { c.Backend = "bgp"; c.Bgp = &weftv1.BGPConfig{Asn: 65000} }},
		{"bgp.peers[0].address", func(c *weftv1.ClusterConfig) {
			c.Backend = "bgp"
			c.Bgp = &weftv1.BGPConfig{Asn: 65000, Peers: []*weftv1.BGPPeer{{Address: "x", Asn: 65001}}}
		}},
	}
	for _, tc := range cases {
		c := good()
		tc.edit(c)
		err := Config(c)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Config(%v) = %v, want ErrInvalid", tc.field, c, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("error %q does not name field %s", err, tc.field)
		}
	}
	// Port 0 and VNI 0 are filled by the defaults, so they are only refused
	// when a config that skips defaulting carries them (an event written by
	// hand).
	c := good()
	c.UdpPort = 0
	if err := Config(c); err == nil || !strings.Contains(err.Error(), "udp_port") {
		t.Errorf("udp_port 0: %v", err)
	}
	c = good()
	c.Vni = 0
	if err := Config(c); err == nil || !strings.Contains(err.Error(), "vni") {
		t.Errorf("vni 0: %v", err)
	}
}

func TestBigTCPAccepted(t *testing.T) {
	for _, backend := range []string{"native", "gateway", "bgp"} {
		c := WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", ClusterCidrV6: "fd00:10:244::/56",
			Backend: backend, BigTcp: true, BigTcpV6: true, Bgp: &weftv1.BGPConfig{Asn: 65000, FullMesh: true}})
		if err := Config(c); err != nil {
			t.Errorf("%s: %v", backend, err)
		}
	}
	// VXLAN encapsulated in the programs sends IPv4 BIG packets whole
	// (docs/datapath.md, "BIG TCP").
	for _, backend := range []string{"vxlan", "hybrid"} {
		c := WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", ClusterCidrV6: "fd00:10:244::/56",
			Backend: backend, TunnelDatapath: TunnelDatapathBPF, BigTcp: true})
		if err := Config(c); err != nil {
			t.Errorf("%s with tunnel_datapath bpf: %v", backend, err)
		}
	}
}

func TestDualStackAccepted(t *testing.T) {
	c := WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", ClusterCidrV6: "fd00:10:244::/56"})
	if err := Config(c); err != nil {
		t.Fatal(err)
	}
	if c.NodeMaskSizeV6 != 64 {
		t.Errorf("v6 node mask default = %d", c.NodeMaskSizeV6)
	}
	got, err := PodCIDRs(c, []string{"10.244.3.0/24", "fd00:10:244:3::/64"})
	if err != nil || len(got) != 2 {
		t.Fatalf("PodCIDRs = %v, %v", got, err)
	}
}

func TestIPv6OnlyAccepted(t *testing.T) {
	c := WithDefaults(&weftv1.ClusterConfig{ClusterCidrV6: "fd00:10:244::/56"})
	if err := Config(c); err != nil {
		t.Fatal(err)
	}
	if c.NodeMaskSizeV6 != 64 || c.NodeMaskSize != 0 || c.NativeRoutingCidr != "" || c.NativeRoutingCidrV6 != "fd00:10:244::/56" {
		t.Errorf("IPv6-only defaults = %v", c)
	}
	if _, err := PodCIDRs(c, []string{"fd00:10:244:3::/64"}); err != nil {
		t.Error(err)
	}
	// An IPv4 pod CIDR has no cluster CIDR to live in, and the error
	// says so.
	if _, err := PodCIDRs(c, []string{"10.244.3.0/24"}); err == nil || !strings.Contains(err.Error(), "pod_cidrs[0]: 10.244.3.0/24: the cluster has no IPv4 CIDR") {
		t.Errorf("IPv4 pod CIDR in an IPv6-only cluster: %v", err)
	}
}

func TestUnderlayV6(t *testing.T) {
	for _, tc := range []struct {
		ip, ip6, err string
	}{
		{"10.0.0.1", "", ""},
		{"10.0.0.1", "fd99::1", ""},
		{"fd99::1", "", ""},
		{"fd99::1", "fd99::2", "underlay_ip_v6: set beside the IPv6 underlay_ip"},
		{"10.0.0.1", "10.0.0.2", "underlay_ip_v6: 10.0.0.2 is not IPv6"},
		{"10.0.0.1", "::ffff:10.0.0.2", "underlay_ip_v6: 10.0.0.2 is not IPv6"},
		{"10.0.0.1", "ff02::1", "underlay_ip_v6: ff02::1 cannot be a node address"},
		{"10.0.0.1", "nope", "underlay_ip_v6: \"nope\" is not an IP address"},
		{"10.0.0.1", "fe80::1%" + strings.Repeat("x", 5000), "underlay_ip_v6: fe80::1 has a zone"},
		{"fe80::1%eth0", "", "underlay_ip: fe80::1 has a zone"},
	} {
		n := &weftv1.Node{Name: "n1", UnderlayIp: tc.ip, UnderlayIpV6: tc.ip6}
		r := &weftv1.Registration{Name: "n1", UnderlayIp: tc.ip, UnderlayIpV6: tc.ip6}
		for what, err := range map[string]error{"node": Node(nil, n), "registration": Registration(r)} {
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("%s %s/%s: %v", what, tc.ip, tc.ip6, err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("%s %s/%s: %v, want %q", what, tc.ip, tc.ip6, err, tc.err)
			}
		}
	}
	c := WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", ClusterCidrV6: "fd00:10:244::/56"})
	nodes := []*weftv1.Node{{Name: "n1", UnderlayIp: "10.0.0.1", UnderlayIpV6: "fd00:10:244:7::1"}}
	if err := ConfigAgainstNodes(c, nodes); err == nil || !strings.Contains(err.Error(), "cluster_cidr_v6: fd00:10:244::/56 overlaps node n1's underlay address fd00:10:244:7::1") {
		t.Errorf("IPv6 cluster CIDR over a node's second underlay address: %v", err)
	}
}

func TestPodCIDRs(t *testing.T) {
	c := good()
	for _, bad := range [][]string{
		{"10.245.0.0/24"},                  // outside
		{"10.244.0.1/24"},                  // host bits
		{"10.0.0.0/8"},                     // wider than the cluster
		{"10.244.1.0/24", "10.244.2.0/24"}, // two of one family
		{"fd00::/64"},                      // no v6 cluster
		{"garbage"},
	} {
		if _, err := PodCIDRs(c, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("PodCIDRs(%v) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestNodeAndRegistration(t *testing.T) {
	c := good()
	ok := &weftv1.Node{Name: "n1", UnderlayIp: "192.0.2.1", PodCidrs: []string{"10.244.1.0/24"}}
	if err := Node(c, ok); err != nil {
		t.Fatal(err)
	}
	for field, n := range map[string]*weftv1.Node{
		"name":         {Name: "a/b", UnderlayIp: "192.0.2.1"},
		"underlay_ip":  {Name: "n1", UnderlayIp: "0.0.0.0"},
		"pod_cidrs[0]": {Name: "n1", UnderlayIp: "192.0.2.1", PodCidrs: []string{"1.2.3.0/24"}},
	} {
		if err := Node(c, n); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Node(%v) = %v, want error naming %s", n, err, field)
		}
	}
	if err := Registration(&weftv1.Registration{Name: "n1", UnderlayIp: "999.1.1.1"}); err == nil || !strings.Contains(err.Error(), "underlay_ip") {
		t.Errorf("bad registration IP: %v", err)
	}
	if err := Registration(&weftv1.Registration{Name: "n1", UnderlayIp: "192.0.2.1", PinnedPodCidrs: []string{"x"}}); err == nil || !strings.Contains(err.Error(), "pinned_pod_cidrs[0]") {
		t.Errorf("bad pin: %v", err)
	}
	if err := Registration(&weftv1.Registration{Name: "n1", UnderlayIp: "192.0.2.1", PreviousPodCidrs: []string{"10.0.0.0/24", "10.0.1.0"}}); err == nil || !strings.Contains(err.Error(), "previous_pod_cidrs[1]") {
		t.Errorf("bad previous CIDR: %v", err)
	}
}

// TestASN: the AS numbers no BGP speaker can use are refused in a
// registration (where 0 means the cluster's bgp.asn and is accepted), in
// bgp.asn and in every peer's asn, each naming its field; the numbers next
// to them are accepted.
func TestASN(t *testing.T) {
	bgp := func(asn, peer uint32) *weftv1.ClusterConfig {
		c := good()
		c.Backend = "bgp"
		c.Bgp = &weftv1.BGPConfig{Asn: asn, FullMesh: true, Peers: []*weftv1.BGPPeer{{Address: "192.0.2.9", Asn: peer}}}
		return c
	}
	for _, asn := range []uint32{0, 23456, 65535, 4294967295} {
		if asn != 0 {
			r := &weftv1.Registration{Name: "n1", UnderlayIp: "192.0.2.1", Asn: asn}
			if err := Registration(r); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "asn: ") {
				t.Errorf("registration asn %d: %v, want a refusal naming asn", asn, err)
			}
		}
		if err := Config(bgp(asn, 65001)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "bgp.asn: ") {
			t.Errorf("bgp.asn %d: %v, want a refusal naming bgp.asn", asn, err)
		}
		if err := Config(bgp(65000, asn)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "bgp.peers[0].asn: ") {
			t.Errorf("peer asn %d: %v, want a refusal naming bgp.peers[0].asn", asn, err)
		}
	}
	for _, asn := range []uint32{1, 23455, 23457, 64512, 65534, 65536, 4294967294} {
		if err := Registration(&weftv1.Registration{Name: "n1", UnderlayIp: "192.0.2.1", Asn: asn}); err != nil {
			t.Errorf("registration asn %d: %v", asn, err)
		}
		if err := Config(bgp(asn, asn)); err != nil {
			t.Errorf("bgp asn %d: %v", asn, err)
		}
	}
	if err := Registration(&weftv1.Registration{Name: "n1", UnderlayIp: "192.0.2.1"}); err != nil {
		t.Errorf("registration asn 0 (the cluster's): %v", err)
	}
}

func TestEvent(t *testing.T) {
	c := good()
	if err := Event(c, &weftv1.Event{Seq: 1}); err == nil || !strings.Contains(err.Error(), "kind") {
		t.Errorf("event without kind: %v", err)
	}
	if err := Event(c, &weftv1.Event{Seq: 0, Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: "n"}}}); err == nil {
		t.Error("seq 0 accepted")
	}
	if err := Event(c, &weftv1.Event{Seq: 2, Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{Config: &weftv1.ClusterConfig{ClusterCidr: "10.0.0.0/8", Mtu: 100}}}}); err == nil || !strings.Contains(err.Error(), "mtu") {
		t.Errorf("bad config event: %v", err)
	}
}

func TestConfigAgainstNodes(t *testing.T) {
	c := good()
	nodes := []*weftv1.Node{{Name: "n1", UnderlayIp: "192.0.2.1"}, {Name: "n2", UnderlayIp: "10.244.7.9"}}
	err := ConfigAgainstNodes(c, nodes)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cluster_cidr") || !strings.Contains(err.Error(), "n2") {
		t.Fatalf("overlap with n2's underlay: %v", err)
	}
	if err := ConfigAgainstNodes(c, nodes[:1]); err != nil {
		t.Fatal(err)
	}
}

// TestFieldLimits: every bounded field of a registration (and so of the
// node the controller makes of it) is refused past its bound, naming the
// field.
func TestFieldLimits(t *testing.T) {
	long := strings.Repeat("a", MaxCapabilityLen+1)
	many := make([]string, MaxCapabilities+1)
	for i := range many {
		many[i] = "c"
	}
	for field, r := range map[string]*weftv1.Registration{
		"capabilities[0]":    {Capabilities: []string{long}},
		"capabilities":       {Capabilities: many},
		"capabilities[1]":    {Capabilities: []string{"tcx", "Bad Cap"}},
		"vtep_mac":           {VtepMac: "not a mac"},
		"pinned_pod_cidrs":   {PinnedPodCidrs: []string{"10.0.0.0/24", "10.0.1.0/24", "fd00::/64"}},
		"previous_pod_cidrs": {PreviousPodCidrs: []string{"10.0.0.0/24", "10.0.1.0/24", "fd00::/64"}},
	} {
		r.Name, r.UnderlayIp = "n1", "192.0.2.1"
		if err := Registration(r); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), field+":") {
			t.Errorf("%s: %v", field, err)
		}
		n := &weftv1.Node{Name: "n1", UnderlayIp: "192.0.2.1", Capabilities: r.Capabilities, VtepMac: r.VtepMac}
		if field != "pinned_pod_cidrs" && field != "previous_pod_cidrs" {
			if err := Node(nil, n); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), field+":") {
				t.Errorf("node %s: %v", field, err)
			}
		}
	}
	ok := &weftv1.Registration{Name: "n1", UnderlayIp: "192.0.2.1", VtepMac: "02:00:00:00:00:01", Capabilities: many[:MaxCapabilities]}
	if err := Registration(ok); err != nil {
		t.Errorf("registration at the limits refused: %v", err)
	}
	if err := Size("registration", MaxRegistrationBytes+1, MaxRegistrationBytes); err == nil || !strings.Contains(err.Error(), "value:") {
		t.Errorf("size: %v", err)
	}
}

// TestStored: every key kind of the layout, one good and one bad value
// each; the bad one's error names the key's kind and the field.
func TestStored(t *testing.T) {
	k := keys.New("/weft")
	cfg := WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", ClusterCidrV6: "fd00:10:244::/56"})
	huge := strings.Repeat("x", 1<<20)
	for _, tc := range []struct {
		key, value string
		lease      int64
		kind, want string // want: "" for a good value
	}{
		{k.Config(), keys.EncodeString(cfg), 0, KindConfig, ""},
		{k.Config(), `{"cluster_cidr": 10}`, 0, KindConfig, "clusterCidr"},
		{k.Config(), `{"cluster_cidr":"10.244.0.0/16","backend":"` + huge + `"}`, 0, KindConfig, "value:"},
		{k.DesiredConfig(), `{"vni": 99999999, "cluster_cidr":"10.244.0.0/16"}`, 0, KindDesiredConfig, ""},
		{k.DesiredConfig(), `not json`, 0, KindDesiredConfig, "decode cluster config"},
		{k.DesiredStatus(), `{"accepted": true}`, 0, KindDesiredStatus, ""},
		{k.Head(), "12", 0, KindHead, ""},
		{k.Head(), "-1", 0, KindHead, "decode head"},
		{k.Event(3), `{"seq":"3","node_removed":{"name":"n1"}}`, 0, KindEvent, ""},
		{k.Event(3), `{"seq":"4","node_removed":{"name":"n1"}}`, 0, KindEvent, "seq:"},
		{k.Events() + "x", `{}`, 0, KindEvent, "not an event key"},
		{k.Node("n1"), `{"name":"n1","underlay_ip":"192.0.2.1","pod_cidrs":["10.244.1.0/24"]}`, 0, KindNode, ""},
		{k.Node("n1"), `{"name":"n1","underlay_ip":"192.0.2.1","pod_cidrs":["192.0.2.0/24"]}`, 0, KindNode, "pod_cidrs[0]"},
		{k.Node("n1"), `{"name":"n2","underlay_ip":"192.0.2.1"}`, 0, KindNode, "name:"},
		// The IPv6 fields of a dual-stack or IPv6-only cluster.
		{k.Node("n1"), `{"name":"n1","underlay_ip":"192.0.2.1","underlay_ip_v6":"fd99::1","pod_cidrs":["10.244.1.0/24","fd00:10:244:1::/64"]}`, 0, KindNode, ""},
		{k.Node("n1"), `{"name":"n1","underlay_ip":"fd99::2","underlay_ip_v6":"fd99::1"}`, 0, KindNode, "underlay_ip_v6:"},
		{k.Node("n1"), `{"name":"n1","underlay_ip":"192.0.2.1","pod_cidrs":["fd00:10:245:1::/64"]}`, 0, KindNode, "pod_cidrs[0]"},
		{k.Registration("n1"), `{"underlay_ip":"192.0.2.1","underlay_ip_v6":"fe80::1%` + huge + `"}`, 7, KindRegistration, "value:"},
		{k.Registration("n1"), `{"underlay_ip":"192.0.2.1","underlay_ip_v6":"fe80::1%eth0"}`, 7, KindRegistration, "underlay_ip_v6:"},
		{k.Event(3), `{"seq":"3","node_added":{"node":{"name":"n1","underlay_ip":"192.0.2.1","underlay_ip_v6":"10.0.0.1"}}}`, 0, KindEvent, "underlay_ip_v6:"},
		{k.Config(), `{"cluster_cidr":"10.244.0.0/16","cluster_cidr_v6":"fd00:10:244::/64","node_mask_size_v6":64}`, 0, KindConfig, "node_mask_size_v6:"},
		{k.Subnets() + "10.244.1.0-24", "n1", 0, KindSubnet, ""},
		{k.Subnets() + "10.244.1.0-24", `{"owner": 5}`, 0, KindSubnet, "value:"},
		{k.Subnets() + "nope", "n1", 0, KindSubnet, "subnet name"},
		{k.Registration("n1"), `{"underlay_ip":"192.0.2.1"}`, 7, KindRegistration, ""},
		{k.Registration("n1"), `{"underlay_ip":"192.0.2.1"}`, 0, KindRegistration, "lease:"},
		{k.Registration("n1"), `{"underlay_ip":"192.0.2.1","capabilities":["` + huge + `"]}`, 7, KindRegistration, "value:"},
		{k.Status("n1"), `{"applied_seq":"3"}`, 7, KindStatus, ""},
		{k.Status("n1"), `{"applied_seq":"all"}`, 7, KindStatus, "appliedSeq"},
		// A node writes its own status: it must be of that node, and
		// what it reports be names, CIDRs and addresses.
		{k.Status("n1"), `{"name":"n1","pod_cidrs":["10.244.1.0/24","fd00::/64"],"unreachable_peers":[{"node":"n2","address":"10.244.2.1","reason":"\u001b[2J"}]}`, 7, KindStatus, ""},
		{k.Status("n1"), `{"name":"n2","applied_seq":"3"}`, 7, KindStatus, "name:"},
		{k.Status("n1"), `{"pod_cidrs":["10.244.1.0/24\tconverged"]}`, 7, KindStatus, "pod_cidrs[0]:"},
		{k.Status("n1"), `{"pod_cidrs":["10.244.1.0/24","fd00::/64","10.244.2.0/24"]}`, 7, KindStatus, "pod_cidrs:"},
		{k.Status("n1"), `{"unreachable_peers":[{"node":"n2"},{"node":"n2\nn3"}]}`, 7, KindStatus, "unreachable_peers[1].node:"},
		{k.Status("n1"), `{"unreachable_peers":[{"node":"n2","address":"10.244.2.1 (ok)"}]}`, 7, KindStatus, "unreachable_peers[0].address:"},
		{k.Problem("n1"), `{"reason":"x"}`, 0, KindProblem, ""},
		{k.Problem("n1"), `{"reason":5}`, 0, KindProblem, "reason"},
		{k.Election() + "/694d", `{"controller":"host/1"}`, 7, KindElection, ""},
		{k.Election() + "/garbage", `{"controller":"host/1"}`, 0, KindElection, "lease:"},
		{k.Election() + "/694d", `not json`, 7, KindElection, "value:"},
		{k.Root() + "stray", `x`, 0, KindUnknown, "key:"},
	} {
		kind, err := Stored(k, tc.key, []byte(tc.value), tc.lease, cfg)
		switch {
		case kind != tc.kind:
			t.Errorf("%s: kind %q, want %q", tc.key, kind, tc.kind)
		case tc.want == "" && err != nil:
			t.Errorf("%s: good value refused: %v", tc.key, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.key)):
			t.Errorf("%s %.60s: %v, want an error naming the key and %q", tc.key, tc.value, err, tc.want)
		}
	}
}
