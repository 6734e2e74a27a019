package model

import (
	"strings"
	"testing"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// TestBigTCP: the sizes BIG TCP asks of the node's devices follow the
// config per family, are capped by what the underlay can segment, and a
// family left at 64 KiB says why.
func TestBigTCP(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backend  string
		v4, v6   bool
		tsoMax   int
		kernelV4 bool
		want     spec.BigTCP
		notes    []string // a substring of each note, in order
	}{
		{name: "off", backend: "native", tsoMax: 524280, kernelV4: true},
		{name: "both, veth underlay", backend: "native", v4: true, v6: true, tsoMax: 524280, kernelV4: true,
			want: spec.BigTCP{IPv4: BigTCPSize, IPv6: BigTCPSize}},
		{name: "ipv4 only", backend: "gateway", v4: true, tsoMax: 524280, kernelV4: true, want: spec.BigTCP{IPv4: BigTCPSize}},
		{name: "ipv6 only", backend: "bgp", v6: true, tsoMax: 524280, kernelV4: true, want: spec.BigTCP{IPv6: BigTCPSize}},
		// A NIC that segments up to 128 KiB gets no more than that.
		{name: "capped by the underlay", backend: "native", v4: true, v6: true, tsoMax: 131072, kernelV4: true,
			want: spec.BigTCP{IPv4: 131072, IPv6: 131072}},
		// A NIC without BIG TCP (tso_max_size 64 KiB) is never handed more.
		{name: "underlay without big tcp", backend: "native", v4: true, v6: true, tsoMax: 65536, kernelV4: true,
			notes: []string{"big_tcp: underlay eth0 segments at most 65536", "big_tcp_v6: underlay eth0 segments at most 65536"}},
		{name: "kernel before 6.3", backend: "native", v4: true, v6: true, tsoMax: 524280,
			want: spec.BigTCP{IPv6: BigTCPSize}, notes: []string{"big_tcp: this kernel has no IPv4 BIG TCP"}},
		{name: "kernel before 5.19", backend: "native", v4: true, v6: true,
			notes: []string{"big_tcp: this kernel has no IPv4 BIG TCP", "big_tcp_v6: this kernel does not report tso_max_size"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := baseConfig()
			c.Backend, c.BigTcp, c.BigTcpV6 = tc.backend, tc.v4, tc.v6
			c.ClusterCidrV6 = "fd00:10:244::/56"
			if tc.backend == "bgp" {
				c.Bgp = &weftv1.BGPConfig{Asn: 65000, FullMesh: true}
			}
			u := underlay()
			u.TSOMaxSize, u.BigTCPv4 = tc.tsoMax, tc.kernelV4
			p := Desired(stateWith(t, c), "self", u, Options{})
			if p.Desired.BigTCP != tc.want {
				t.Errorf("BigTCP = %+v, want %+v", p.Desired.BigTCP, tc.want)
			}
			if len(p.BigTCPNotes) != len(tc.notes) {
				t.Fatalf("notes = %q, want %d", p.BigTCPNotes, len(tc.notes))
			}
			for i, n := range tc.notes {
				if !strings.Contains(p.BigTCPNotes[i], n) {
					t.Errorf("note %d = %q, want it to say %q", i, p.BigTCPNotes[i], n)
				}
			}
		})
	}
}

// TestBigTCPInProgram: over VXLAN in the programs a node asks for BIG TCP
// and marks its tunnels to peers that registered spec.CapBigDecap
// (FlagBigDecap), and only those; a node encapsulating in the device
// (--tunnel-datapath=device) asks for none and marks none.
func TestBigTCPInProgram(t *testing.T) {
	c := baseConfig()
	c.Backend, c.TunnelDatapath, c.BigTcp = "vxlan", "bpf", true
	c.ClusterCidrV6 = "fd00:10:244::/56"
	s := stateWith(t, c)
	// "near" registered the capability, "far" did not.
	mustApply(t, s, 5, keys.Encode(&weftv1.Event{Seq: 5, Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{
		Node: &weftv1.Node{Name: "near", UnderlayIp: "192.168.1.2", PodCidrs: []string{"10.244.2.0/24"}, Capabilities: []string{"tcx", "vxlan", spec.CapBigDecap}}}}}))
	u := underlay()
	u.TSOMaxSize, u.BigTCPv4 = 524280, true
	flags := func(d *spec.Desired) map[string]uint32 {
		out := map[string]uint32{}
		for _, tn := range d.Tunnels {
			out[tn.Endpoint.String()] = tn.Flags
		}
		return out
	}
	p := Desired(s, "self", u, Options{})
	if got, want := p.Desired.BigTCP, (spec.BigTCP{IPv4: BigTCPSize}); got != want || len(p.BigTCPNotes) != 0 {
		t.Errorf("in program: BigTCP = %+v (notes %q), want %+v", got, p.BigTCPNotes, want)
	}
	if f := flags(p.Desired); f["192.168.1.2"] != spec.FlagBigDecap || f["192.168.7.2"] != 0 {
		t.Errorf("in program: tunnel flags %v, want FlagBigDecap for 192.168.1.2 only", f)
	}
	// A config that keeps the device, this node overriding it: its own
	// programs encapsulate, but the peers' follow the config and do not
	// decapsulate, so no BIG packet to them in the programs.
	cd := baseConfig()
	cd.Backend, cd.TunnelDatapath = "vxlan", "device"
	sd := stateWith(t, cd)
	mustApply(t, sd, 5, keys.Encode(&weftv1.Event{Seq: 5, Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{
		Node: &weftv1.Node{Name: "near", UnderlayIp: "192.168.1.2", PodCidrs: []string{"10.244.2.0/24"}, Capabilities: []string{"tcx", "vxlan", spec.CapBigDecap}}}}}))
	if p := Desired(sd, "self", u, Options{TunnelDatapath: "bpf"}); !p.Desired.Overlay.InProgram || flags(p.Desired)["192.168.1.2"] != 0 {
		t.Errorf("config device, this node bpf: in program %v, tunnel flags %v, want no FlagBigDecap", p.Desired.Overlay.InProgram, flags(p.Desired))
	}
	p = Desired(s, "self", u, Options{TunnelDatapath: "device"})
	if p.Desired.BigTCP != (spec.BigTCP{}) || len(p.BigTCPNotes) != 1 || !strings.Contains(p.BigTCPNotes[0], "keep 64 KiB") {
		t.Errorf("device: BigTCP = %+v, notes %q: want none, and a note", p.Desired.BigTCP, p.BigTCPNotes)
	}
	if f := flags(p.Desired); f["192.168.1.2"] != 0 || f["192.168.7.2"] != 0 {
		t.Errorf("device: tunnel flags %v, want none", f)
	}
}
