package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"

	"github.com/weftnet/weft/proto/fold"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// controllerPath is what the controller does with an event: the store
// folds it with the shared transition (proto/fold) and refuses a pod CIDR
// whose subnet guard another node holds. An event it refuses leaves its
// state as it was; the log still holds it, as if a broken writer had put
// it there, and the head moves past it.
func controllerPath(s *fold.State, e *weftv1.Event) error {
	c, err := fold.Next(s.Head, s.Node, e)
	if err == nil && c.Node != nil {
		owners, _ := s.Subnets()
		for _, p := range c.Node.PodCidrs {
			if o, ok := owners[netip.MustParsePrefix(p)]; ok && o != c.Name {
				err = fmt.Errorf("subnet guard %s held by %q", p, o)
			}
		}
	}
	if err != nil {
		s.Head = e.Seq
		return err
	}
	s.Commit(c)
	return nil
}

// projection is the controller's projection of s as an agent lists it.
func projection(s *fold.State) Snapshot {
	snap := Snapshot{Head: s.Head, Nodes: map[string][]byte{}}
	if s.Config != nil {
		snap.Config = keys.Encode(s.Config)
	}
	for name, n := range s.Nodes {
		snap.Nodes[name] = keys.Encode(n)
	}
	return snap
}

// randomEvent draws any event over a few names and pod CIDRs, fitting the
// state or not: a second NodeAdded, an update or removal of a node that
// does not exist, a pod CIDR another node holds. Every value is valid on
// its own (names, addresses, CIDRs inside the cluster CIDR, configs), so
// what decides is the transition and the subnet rules.
func randomEvent(t *rapid.T, seq uint64) *weftv1.Event {
	name := fmt.Sprintf("n%d", rapid.IntRange(0, 3).Draw(t, "name"))
	node := func() *weftv1.Node {
		return &weftv1.Node{
			Name:       name,
			UnderlayIp: fmt.Sprintf("192.168.1.%d", rapid.IntRange(1, 9).Draw(t, "ip")),
			PodCidrs:   []string{fmt.Sprintf("10.244.%d.0/24", rapid.IntRange(1, 4).Draw(t, "cidr"))},
		}
	}
	e := &weftv1.Event{Seq: seq}
	switch rapid.IntRange(0, 6).Draw(t, "kind") {
	case 0:
		e.Kind = &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{Config: &weftv1.ClusterConfig{
			ClusterCidr: "10.244.0.0/16",
			Backend:     rapid.SampledFrom(validate.Backends[:5]).Draw(t, "backend"),
			Vni:         uint32(rapid.IntRange(1, 3).Draw(t, "vni")),
		}}}
	case 1, 2:
		e.Kind = &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{Node: node()}}
	case 3, 4:
		e.Kind = &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{Node: node()}}
	default:
		e.Kind = &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: name, Reason: "left"}}
	}
	return e
}

// TestPropertyControllerAndAgentFoldAgree runs the same random event
// streams through the controller's path (the shared fold with the
// store's subnet guard) and the agent's path (Apply with its refusal
// policy, and re-lists or restarts from the controller's projection at
// any point) and requires, after every step, the same config, nodes and
// head, and that the agent refused exactly the events the controller
// refused.
func TestPropertyControllerAndAgentFoldAgree(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ctrl := fold.New()
		agent := New()
		var seq uint64
		var refusedByCtrl []string
		// The controller writes the config before any node.
		first := &weftv1.Event{Seq: 1, Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{
			Config: &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"}}}}
		for step := range rapid.IntRange(1, 80).Draw(t, "steps") {
			switch op := rapid.IntRange(0, 9).Draw(t, "op"); {
			case op == 0 && step > 0:
				agent.Reset(projection(ctrl)) // watch broke or compacted
			case op == 1 && step > 0:
				agent = New() // restart
				agent.Reset(projection(ctrl))
			default:
				seq++
				e := first
				if seq > 1 {
					e = randomEvent(t, seq)
				}
				cerr := controllerPath(ctrl, e)
				if cerr != nil {
					refusedByCtrl = append(refusedByCtrl, fmt.Sprintf("event %d", seq))
				}
				refused, err := agent.Apply(seq, keys.Encode(e))
				if err != nil {
					t.Fatalf("apply %d: %v", seq, err)
				}
				if (cerr == nil) != (refused == nil) {
					t.Fatalf("event %d %v: controller says %v, agent says %v", seq, e, cerr, refused)
				}
			}
			if d := fold.Diff(ctrl, agent.Fold()); d != nil {
				t.Fatalf("after step %d the agent's fold differs from the controller's: %v\nctrl  %v\nagent %s", step, d, ctrl, agent)
			}
			if got, want := agent.Config(), validate.WithDefaults(ctrl.Config); ctrl.Config != nil && !proto.Equal(got, want) {
				t.Fatalf("config in force %v, want %v", got, want)
			}
		}
		// Refusals of events stay listed until they age out (32).
		var got []string
		for _, r := range agent.Refused() {
			if strings.HasPrefix(r.What, "event ") {
				got = append(got, r.What)
			}
		}
		if want := refusedByCtrl[max(0, len(refusedByCtrl)-maxRefused):]; !slices.Equal(got, want) && !restarted(got, want) {
			t.Fatalf("agent refused %v, controller %v", got, want)
		}
	})
}

// restarted tells whether got is what an agent that restarted (and so
// forgot older refusals) lists of want: a suffix of it.
func restarted(got, want []string) bool {
	return len(got) <= len(want) && slices.Equal(got, want[len(want)-len(got):])
}
