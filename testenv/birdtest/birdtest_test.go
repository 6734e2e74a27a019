package birdtest

import (
	"net/netip"
	"strings"
	"testing"
)

// TestConfigString pins what testenv's router and TestBIRD's router get.
func TestConfigString(t *testing.T) {
	c := Config{Log: "/run/bird.log", RouterID: netip.MustParseAddr("10.99.0.254"), ASN: 65000, Kernel: true, Peers: []Peer{
		{Name: "seg0", Local: netip.MustParseAddr("10.99.0.254"), Range: netip.MustParsePrefix("10.99.0.0/24"), DynamicName: "s0n"},
		{Name: "n1", Neighbor: netip.MustParseAddr("10.78.1.1"), NeighborASN: 65001, Password: "secret"},
	}}
	want := `log "/run/bird.log" all;
router id 10.99.0.254;
protocol device { scan time 2; }
protocol kernel kernel_ipv4 { ipv4 { export where source = RTS_BGP; }; }
protocol bgp seg0 {
	local 10.99.0.254 as 65000;
	neighbor range 10.99.0.0/24 external;
	dynamic name "s0n";
	hold time 3;
	keepalive time 1;
	connect delay time 1;
	connect retry time 2;
	error wait time 1, 2;
	graceful restart on;
	ipv4 { import all; export all; };
}
protocol bgp n1 {
	local as 65000;
	neighbor 10.78.1.1 as 65001;
	password "secret";
	hold time 3;
	keepalive time 1;
	connect delay time 1;
	connect retry time 2;
	error wait time 1, 2;
	graceful restart on;
	ipv4 { import all; export all; };
}
`
	if got := c.String(); got != want {
		t.Errorf("bird.conf:\n%s\nwant:\n%s", got, want)
	}
	// Dual-stack: a kernel protocol and a channel per family on every
	// session.
	c.Channels = []string{"ipv4", "ipv6"}
	got := c.String()
	for _, w := range []string{
		"protocol kernel kernel_ipv4 { ipv4 { export where source = RTS_BGP; }; }\nprotocol kernel kernel_ipv6 { ipv6 { export where source = RTS_BGP; }; }\n",
		"\tipv4 { import all; export all; };\n\tipv6 { import all; export all; };\n}\nprotocol bgp n1",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("dual-stack bird.conf lacks %q:\n%s", w, got)
		}
	}
}

func TestParseShow(t *testing.T) {
	routes := Routes(`BIRD 2.0.12 ready.
Table master4:
10.244.1.0/24        unicast [s0n1 12:00:00.000] * (100) [AS65001i]
	via 10.99.0.1 on eth0
                     unicast [s0n2 12:00:01.000] (100) [AS65002i]
	via 10.99.0.2 on eth0
10.244.2.0/24        unicast [s1n1 12:00:00.000] * (100) [AS65003i]
	via 10.99.1.3 on eth1
`)
	if len(routes) != 2 || routes[netip.MustParsePrefix("10.244.1.0/24")] != netip.MustParseAddr("10.99.0.1") ||
		routes[netip.MustParsePrefix("10.244.2.0/24")] != netip.MustParseAddr("10.99.1.3") {
		t.Errorf("routes %v", routes)
	}
	show := `Name       Proto      Table      State  Since         Info
n1         BGP        ---        up     12:00:00.000  Established
n2         BGP        ---        start  12:00:00.000  Active        Socket: Connection refused
`
	if !Established(show, "n1") || Established(show, "n2") || Established(show, "n3") {
		t.Errorf("established: n1 %v n2 %v n3 %v", Established(show, "n1"), Established(show, "n2"), Established(show, "n3"))
	}
}
