// Package fold is the transition function of weft's event log: what one
// event does to the cluster state (config, nodes, head). Everything that
// folds the log uses it: the controller's store as it appends, weftctl
// check when it recomputes the projection from the log, and the agent's
// model, which layers its own refusal policy on top.
//
// The rules are strict. An event applies only after the one before it
// (seq = head+1) and only when it fits: ConfigChanged carries a config,
// NodeAdded names a node that does not exist yet, NodeUpdated and
// NodeRemoved name one that does. A second NodeAdded for a node is an
// error, not a replacement: the controller never writes one, so a log
// that holds one was written by something else.
package fold

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// ErrFold is wrapped by every error Next and Apply return: the event does
// not fit the state (a gap, an unknown node, a second NodeAdded, no kind).
var ErrFold = errors.New("fold: event does not apply")

// State is the cluster as the log describes it after event Head.
type State struct {
	Config *weftv1.ClusterConfig
	Nodes  map[string]*weftv1.Node
	Head   uint64
}

// New returns the empty state (before event 1).
func New() *State { return &State{Nodes: map[string]*weftv1.Node{}} }

// Clone returns a deep copy of s.
func (s *State) Clone() *State {
	c := &State{Head: s.Head, Nodes: make(map[string]*weftv1.Node, len(s.Nodes))}
	if s.Config != nil {
		c.Config = proto.Clone(s.Config).(*weftv1.ClusterConfig)
	}
	for k, n := range s.Nodes {
		c.Nodes[k] = proto.Clone(n).(*weftv1.Node)
	}
	return c
}

// Node returns the node called name, or nil.
func (s *State) Node(name string) *weftv1.Node { return s.Nodes[name] }

// Change is what one event does to a state: set the config, or put or
// remove one node.
type Change struct {
	// Seq is the event's seq, the state's head after the change.
	Seq uint64
	// Config is the new config (a copy) of a ConfigChanged, else nil.
	Config *weftv1.ClusterConfig
	// Name is the node a NodeAdded, NodeUpdated or NodeRemoved is about.
	Name string
	// Node is the node after a NodeAdded or NodeUpdated: a copy of the
	// event's node whose Seq is the event's (the projection of a node
	// names the event that last changed it). Nil for a NodeRemoved.
	Node *weftv1.Node
	// Old is the node before the event; nil for a NodeAdded.
	Old *weftv1.Node
}

// Next returns the change e makes to a state whose last event is head
// and whose nodes node looks up (nil: no such node). It changes nothing;
// an event that does not fit returns an error wrapping ErrFold.
func Next(head uint64, node func(name string) *weftv1.Node, e *weftv1.Event) (Change, error) {
	seq := e.GetSeq()
	if seq != head+1 {
		return Change{}, fmt.Errorf("%w: seq %d after head %d", ErrFold, seq, head)
	}
	c := Change{Seq: seq}
	switch k := e.Kind.(type) {
	case *weftv1.Event_ConfigChanged:
		if k.ConfigChanged.GetConfig() == nil {
			return Change{}, fmt.Errorf("%w: seq %d: config_changed without config", ErrFold, seq)
		}
		c.Config = proto.Clone(k.ConfigChanged.Config).(*weftv1.ClusterConfig)
	case *weftv1.Event_NodeAdded:
		n := k.NodeAdded.GetNode()
		if n == nil || n.Name == "" {
			return Change{}, fmt.Errorf("%w: seq %d: node_added without node", ErrFold, seq)
		}
		if node(n.Name) != nil {
			return Change{}, fmt.Errorf("%w: seq %d: node_added for existing node %q", ErrFold, seq, n.Name)
		}
		c.Name, c.Node = n.Name, nodeAt(n, seq)
	case *weftv1.Event_NodeUpdated:
		n := k.NodeUpdated.GetNode()
		if n == nil || n.Name == "" {
			return Change{}, fmt.Errorf("%w: seq %d: node_updated without node", ErrFold, seq)
		}
		if c.Old = node(n.Name); c.Old == nil {
			return Change{}, fmt.Errorf("%w: seq %d: node_updated for unknown node %q", ErrFold, seq, n.Name)
		}
		c.Name, c.Node = n.Name, nodeAt(n, seq)
	case *weftv1.Event_NodeRemoved:
		name := k.NodeRemoved.GetName()
		if c.Old = node(name); c.Old == nil {
			return Change{}, fmt.Errorf("%w: seq %d: node_removed for unknown node %q", ErrFold, seq, name)
		}
		c.Name = name
	default:
		return Change{}, fmt.Errorf("%w: seq %d has no kind", ErrFold, seq)
	}
	return c, nil
}

// Commit makes the change c (from Next on s's head and nodes) in s.
func (s *State) Commit(c Change) {
	switch {
	case c.Config != nil:
		s.Config = c.Config
	case c.Node != nil:
		s.Nodes[c.Name] = c.Node
	case c.Name != "":
		delete(s.Nodes, c.Name)
	}
	s.Head = c.Seq
}

// Apply folds e into s: Next, then Commit. On error s is unchanged.
func (s *State) Apply(e *weftv1.Event) error {
	c, err := Next(s.Head, s.Node, e)
	if err != nil {
		return err
	}
	s.Commit(c)
	return nil
}

// nodeAt is the projection of a node carried by the event with seq: the
// node as the event says, with Seq naming that event.
func nodeAt(n *weftv1.Node, seq uint64) *weftv1.Node {
	c := proto.Clone(n).(*weftv1.Node)
	c.Seq = seq
	return c
}

// Subnets returns every pod CIDR of every node with its owner. A CIDR held
// by two nodes is reported in dup.
func (s *State) Subnets() (owners map[netip.Prefix]string, dup []string) {
	owners = map[netip.Prefix]string{}
	for _, name := range slices.Sorted(maps.Keys(s.Nodes)) {
		for _, c := range s.Nodes[name].PodCidrs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				dup = append(dup, fmt.Sprintf("node %q: pod CIDR %q does not parse", name, c))
				continue
			}
			p = p.Masked()
			if o, ok := owners[p]; ok {
				dup = append(dup, fmt.Sprintf("pod CIDR %s held by %q and %q", p, o, name))
				continue
			}
			owners[p] = name
		}
	}
	return owners, dup
}

// Diff lists every difference between want and got (config, nodes,
// head), in a stable order; nil means equal.
func Diff(want, got *State) []string {
	var d []string
	if want.Head != got.Head {
		d = append(d, fmt.Sprintf("head: %d != %d", want.Head, got.Head))
	}
	if !proto.Equal(want.Config, got.Config) {
		d = append(d, "config differs")
	}
	names := slices.Sorted(maps.Keys(want.Nodes))
	for _, n := range names {
		g, ok := got.Nodes[n]
		switch {
		case !ok:
			d = append(d, fmt.Sprintf("node %q missing", n))
		case !proto.Equal(want.Nodes[n], g):
			d = append(d, fmt.Sprintf("node %q differs", n))
		}
	}
	for _, n := range slices.Sorted(maps.Keys(got.Nodes)) {
		if _, ok := want.Nodes[n]; !ok {
			d = append(d, fmt.Sprintf("node %q unexpected", n))
		}
	}
	return d
}
