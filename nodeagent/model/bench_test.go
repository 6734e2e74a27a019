package model

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func benchState(b *testing.B, n int) *State {
	return benchStateOf(b, n, &weftv1.ClusterConfig{ClusterCidr: "10.0.0.0/8", DefaultsApplied: true, Backend: "vxlan", Vni: 1, UdpPort: 8472, NodeMaskSize: 24})
}

func benchStateOf(b *testing.B, n int, cfg *weftv1.ClusterConfig) *State {
	s := New()
	snap := Snapshot{Head: 1, Config: keys.Encode(cfg), Nodes: map[string][]byte{}}
	for i := range n {
		name := fmt.Sprintf("node-%05d", i)
		snap.Nodes[name] = keys.Encode(&weftv1.Node{Name: name, UnderlayIp: fmt.Sprintf("192.168.%d.%d", i/250, i%250+1), PodCidrs: []string{fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)}, Seq: 1})
	}
	s.Reset(snap)
	if s.Len() != n {
		b.Fatalf("%d nodes", s.Len())
	}
	return s
}

// BenchmarkDesired1000 is the per-event cost of recomputing one node's
// spec in a 1,000-node cluster.
func BenchmarkDesired1000(b *testing.B) {
	s := benchState(b, 1000)
	u := underlay()
	b.ReportAllocs()
	for b.Loop() {
		Desired(s, "node-00000", u, Options{})
	}
}

// BenchmarkDesiredBGP1000 is BenchmarkDesired1000 in bgp mode (full
// mesh), with every other node's route learned and checked against the
// log (filterLearned), 999 routes.
func BenchmarkDesiredBGP1000(b *testing.B) {
	s := benchStateOf(b, 1000, &weftv1.ClusterConfig{ClusterCidr: "10.0.0.0/8", DefaultsApplied: true, Backend: "bgp", NodeMaskSize: 24,
		Bgp: &weftv1.BGPConfig{Asn: 64512, FullMesh: true}})
	var learned []spec.Route
	for i := 1; i < 1000; i++ {
		learned = append(learned, spec.Route{Prefix: netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)),
			Via: netip.MustParseAddr(fmt.Sprintf("192.168.%d.%d", i/250, i%250+1)), Proto: spec.ProtoBGP})
	}
	u := underlay()
	u.IP = netip.MustParseAddr("192.168.0.1") // node-00000's
	if p := Desired(s, "node-00000", u, Options{ExtraRoutes: learned}); len(p.Desired.Routes) != 999 || len(p.RefusedRoutes) != 0 {
		b.Fatalf("%d routes, refused %v", len(p.Desired.Routes), p.RefusedRoutes)
	}
	b.ReportAllocs()
	for b.Loop() {
		Desired(s, "node-00000", u, Options{ExtraRoutes: learned})
	}
}

// BenchmarkReset5000 is the cost of folding a 5,000-node projection.
func BenchmarkReset5000(b *testing.B) {
	s := benchState(b, 5000)
	snap := Snapshot{Head: 2, Config: keys.Encode(s.Fold().Config), Nodes: map[string][]byte{}}
	for _, name := range s.Names() {
		snap.Nodes[name] = keys.Encode(s.Node(name))
	}
	b.ReportAllocs()
	for b.Loop() {
		r := New()
		r.Reset(snap)
		if r.Len() != 5000 {
			b.Fatalf("%d nodes after Reset; refused %v", r.Len(), r.Refused())
		}
	}
}

// BenchmarkList5000 is what the agent does with a list of 5,000 decoded
// nodes: Suspects, then Reset of a fresh state.
func BenchmarkList5000(b *testing.B) {
	s := benchState(b, 5000)
	cfg := keys.Encode(s.Fold().Config)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		snap := Snapshot{Head: 2, Config: cfg, Decoded: map[string]NodeValue{}}
		for _, name := range s.Names() {
			snap.Decoded[name] = NodeValue{Node: s.Node(name)}
		}
		b.StartTimer()
		if config, names := Suspects(&snap); config || len(names) > 0 {
			b.Fatalf("suspects %v %v", config, names)
		}
		r := New()
		r.Reset(snap)
		if r.Len() != 5000 {
			b.Fatalf("%d nodes after Reset; refused %v", r.Len(), r.Refused())
		}
	}
}
