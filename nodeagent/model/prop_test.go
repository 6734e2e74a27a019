package model

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"

	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// controllerLog is the log as the controller writes it: events and the
// projection (config, nodes) it keeps beside them, computed independently
// of the model (plain map puts and deletes).
type controllerLog struct {
	events  [][]byte // events[i] has seq i+1
	garbage map[uint64]bool
	config  *weftv1.ClusterConfig
	nodes   map[string]*weftv1.Node
	free    []int // free third octets for pod CIDRs
}

func newControllerLog() *controllerLog {
	l := &controllerLog{nodes: map[string]*weftv1.Node{}, garbage: map[uint64]bool{}}
	for i := 1; i <= 12; i++ {
		l.free = append(l.free, i)
	}
	return l
}

func (l *controllerLog) head() uint64 { return uint64(len(l.events)) }

func (l *controllerLog) append(e *weftv1.Event) {
	e.Seq = l.head() + 1
	l.events = append(l.events, keys.Encode(e))
	switch k := e.Kind.(type) {
	case *weftv1.Event_ConfigChanged:
		l.config = validate.WithDefaults(k.ConfigChanged.Config)
	case *weftv1.Event_NodeAdded:
		n := proto.Clone(k.NodeAdded.Node).(*weftv1.Node)
		n.Seq = e.Seq
		l.nodes[n.Name] = n
	case *weftv1.Event_NodeUpdated:
		n := proto.Clone(k.NodeUpdated.Node).(*weftv1.Node)
		n.Seq = e.Seq
		l.nodes[n.Name] = n
	case *weftv1.Event_NodeRemoved:
		delete(l.nodes, k.NodeRemoved.Name)
	}
}

func (l *controllerLog) snapshot() Snapshot {
	s := Snapshot{Head: l.head(), Nodes: map[string][]byte{}}
	if l.config != nil {
		s.Config = keys.Encode(l.config)
	}
	for name, n := range l.nodes {
		s.Nodes[name] = keys.Encode(n)
	}
	return s
}

func (l *controllerLog) cidrOf(n *weftv1.Node) int {
	var o int
	fmt.Sscanf(n.PodCidrs[0], "10.244.%d.0/24", &o)
	return o
}

// appendGarbage appends an event a broken writer could leave: it does not
// decode, fails validation, or does not fit the log's state (the shared
// transition refuses it). The projection does not change.
func (l *controllerLog) appendGarbage(t *rapid.T) {
	seq := l.head() + 1
	var v []byte
	switch rapid.IntRange(0, 6).Draw(t, "garbage") {
	case 0:
		v = []byte("{not an event")
	case 1: // outside the cluster CIDR
		v = keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{
			Node: &weftv1.Node{Name: "bad", UnderlayIp: "192.168.1.1", PodCidrs: []string{"10.99.0.0/24"}}}}})
	case 2: // another node's subnet
		v = keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{
			Node: &weftv1.Node{Name: "thief", UnderlayIp: "192.168.1.1", PodCidrs: []string{"10.244.0.0/20"}}}}})
	case 3: // an invalid config
		v = keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{
			Config: &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", Backend: "carrier-pigeon"}}}})
	case 4: // a removal of a node nobody holds
		v = keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: "ghost"}}})
	case 5: // an update of a node nobody holds
		v = keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{
			Node: &weftv1.Node{Name: "ghost", UnderlayIp: "192.168.1.1", PodCidrs: []string{"10.244.200.0/24"}}}}})
	default: // a second NodeAdded of a node that exists, keeping its subnet
		v = []byte("{}")
		if names := slices.Sorted(maps.Keys(l.nodes)); len(names) > 0 {
			n := l.nodes[rapid.SampledFrom(names).Draw(t, "again")]
			v = keys.Encode(&weftv1.Event{Seq: seq, Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{
				Node: &weftv1.Node{Name: n.Name, UnderlayIp: "192.168.2.99", PodCidrs: n.PodCidrs}}}})
		}
	}
	// A thief only steals when there is something to steal; otherwise it
	// would be a valid claim, which this generator does not make.
	if strings.Contains(string(v), "thief") && len(l.nodes) == 0 {
		v = []byte("{}")
	}
	l.events = append(l.events, v)
	l.garbage[seq] = true
}

// step appends one random event the way a correct controller would.
func (l *controllerLog) step(t *rapid.T) {
	name := fmt.Sprintf("n%d", rapid.IntRange(0, 5).Draw(t, "node"))
	ip := fmt.Sprintf("192.168.%d.%d", rapid.IntRange(1, 2).Draw(t, "net"), rapid.IntRange(1, 20).Draw(t, "host"))
	switch kind := rapid.IntRange(0, 9).Draw(t, "kind"); {
	case kind == 0 || l.config == nil:
		c := &weftv1.ClusterConfig{
			ClusterCidr:          "10.244.0.0/16",
			Backend:              rapid.SampledFrom(validate.Backends[:5]).Draw(t, "backend"),
			Vni:                  uint32(rapid.IntRange(1, 3).Draw(t, "vni")),
			Mtu:                  uint32(rapid.SampledFrom([]int{0, 1400, 9000}).Draw(t, "mtu")),
			AutoDirectNodeRoutes: rapid.Bool().Draw(t, "adnr"),
		}
		l.append(&weftv1.Event{Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{Config: c}}})
	case kind <= 5:
		old, exists := l.nodes[name]
		if !exists && len(l.free) == 0 {
			return
		}
		var octet int
		if exists && rapid.Bool().Draw(t, "keep-cidr") {
			octet = l.cidrOf(old)
		} else {
			if len(l.free) == 0 {
				return
			}
			i := rapid.IntRange(0, len(l.free)-1).Draw(t, "cidr")
			octet = l.free[i]
			l.free = append(l.free[:i:i], l.free[i+1:]...)
			if exists {
				l.free = append(l.free, l.cidrOf(old))
			}
		}
		n := &weftv1.Node{Name: name, UnderlayIp: ip, PodCidrs: []string{fmt.Sprintf("10.244.%d.0/24", octet)}}
		if exists {
			l.append(&weftv1.Event{Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{Node: n}}})
		} else {
			l.append(&weftv1.Event{Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{Node: n}}})
		}
	default:
		// The controller removes only nodes it holds (proto/fold).
		old, ok := l.nodes[name]
		if !ok {
			return
		}
		l.free = append(l.free, l.cidrOf(old))
		l.append(&weftv1.Event{Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: name, Reason: "left"}}})
	}
}

// agentSim delivers the log to a State the way the follower does, with
// faults: duplicated and replayed deliveries, deliveries out of order (a
// gap, which forces a re-list), agent restarts and re-lists at any time.
type agentSim struct {
	s       *State
	relists int
}

func (a *agentSim) relist(l *controllerLog) {
	a.s.Reset(l.snapshot())
	a.relists++
}

func (a *agentSim) deliver(t *rapid.T, l *controllerLog, seq uint64) {
	refused, err := a.s.Apply(seq, l.events[seq-1])
	if refused != nil && !l.garbage[seq] {
		t.Fatalf("valid event %d refused: %v", seq, refused)
	}
	if errors.Is(err, ErrGap) {
		a.relist(l)
	} else if err != nil {
		t.Fatalf("apply %d: %v", seq, err)
	}
}

func TestPropertyAnyDeliveryConvergesToFold(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		l := newControllerLog()
		a := &agentSim{s: New()}
		steps := rapid.IntRange(1, 60).Draw(t, "steps")
		for range steps {
			switch op := rapid.IntRange(0, 9).Draw(t, "op"); {
			case op <= 2:
				l.step(t)
			case op == 3:
				if rapid.IntRange(0, 3).Draw(t, "garbage?") == 0 {
					l.appendGarbage(t)
				} else {
					l.step(t)
				}
			case op <= 5 && a.s.Applied() < l.head():
				a.deliver(t, l, a.s.Applied()+1)
			case op == 6 && l.head() > 0:
				// A duplicate or replayed delivery of any seq up to head;
				// past applied+1 it is a gap.
				a.deliver(t, l, uint64(rapid.IntRange(1, int(l.head())).Draw(t, "seq")))
			case op == 7:
				a.s = New() // agent restart: lists again from nothing
				a.relist(l)
			case op == 8:
				a.relist(l) // watch broke or compacted
			}
		}
		// The follower catches up to head.
		for a.s.Applied() < l.head() {
			a.deliver(t, l, a.s.Applied()+1)
		}

		fold := New()
		for i, v := range l.events {
			refused, err := fold.Apply(uint64(i+1), v)
			if err != nil || (refused != nil) != l.garbage[uint64(i+1)] {
				t.Fatalf("fold %d (garbage %v): refused=%v err=%v", i+1, l.garbage[uint64(i+1)], refused, err)
			}
		}
		if !a.s.Equal(fold) {
			t.Fatalf("agent state differs from the fold of the log:\nagent %s\nfold  %s", a.s, fold)
		}
		proj := New()
		proj.Reset(l.snapshot())
		if !proj.Equal(fold) {
			t.Fatalf("projection differs from the fold:\nproj %s\nfold %s", proj, fold)
		}
		for _, r := range a.s.Refused() {
			var seq uint64
			if _, err := fmt.Sscanf(r.What, "event %d", &seq); err != nil || !l.garbage[seq] {
				t.Fatalf("refused a valid input: %v", r)
			}
		}
		u := underlay()
		for _, self := range []string{"n0", "n3"} {
			got, want := Desired(a.s, self, u, Options{}), Desired(fold, self, u, Options{})
			if !reflect.DeepEqual(got.Desired, want.Desired) || !reflect.DeepEqual(got.Problems, want.Problems) {
				t.Fatalf("desired of %s differs:\n%v\n%v", self, got.Desired, want.Desired)
			}
		}
	})
}
