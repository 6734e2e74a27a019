package fold

import (
	"errors"
	"testing"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func add(seq uint64, name, cidr string) *weftv1.Event {
	return &weftv1.Event{Seq: seq, Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{Node: &weftv1.Node{Name: name, UnderlayIp: "192.168.0.1", PodCidrs: []string{cidr}}}}}
}

func TestApplyIsStrict(t *testing.T) {
	s := New()
	cfg := &weftv1.Event{Seq: 1, Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{Config: &weftv1.ClusterConfig{ClusterCidr: "10.0.0.0/8"}}}}
	for _, e := range []*weftv1.Event{cfg, add(2, "a", "10.0.1.0/24"), add(3, "b", "10.0.2.0/24")} {
		if err := s.Apply(e); err != nil {
			t.Fatal(err)
		}
	}
	if s.Nodes["b"].Seq != 3 {
		t.Fatalf("node seq %d, want the event's", s.Nodes["b"].Seq)
	}
	before := s.Clone()
	for name, e := range map[string]*weftv1.Event{
		"gap":           add(5, "c", "10.0.3.0/24"),
		"replay":        add(3, "c", "10.0.3.0/24"),
		"second add":    add(4, "a", "10.0.3.0/24"),
		"update absent": {Seq: 4, Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{Node: &weftv1.Node{Name: "zz"}}}},
		"remove absent": {Seq: 4, Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: "zz"}}},
		"no kind":       {Seq: 4},
		"no config":     {Seq: 4, Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{}}},
	} {
		if err := s.Apply(e); !errors.Is(err, ErrFold) {
			t.Errorf("%s: %v, want ErrFold", name, err)
		}
		if d := Diff(before, s); d != nil {
			t.Fatalf("%s: failed Apply changed the state: %v", name, d)
		}
	}
	if err := s.Apply(&weftv1.Event{Seq: 4, Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: "a"}}}); err != nil {
		t.Fatal(err)
	}
	if d := Diff(before, s); len(d) != 2 { // head and node a
		t.Fatalf("diff after removal: %v", d)
	}
	s.Nodes["x"] = &weftv1.Node{Name: "x", PodCidrs: []string{"10.0.2.0/24"}}
	if _, dup := s.Subnets(); len(dup) != 1 {
		t.Fatalf("duplicate subnet not reported: %v", dup)
	}
}
