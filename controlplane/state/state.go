// Package state is the fold of weft's event log: the cluster config and the
// nodes that applying events in seq order produces. The store keeps its
// projection equal to this fold, weftctl check recomputes it from the log,
// and tests compare the two.
package state

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// ErrFold is wrapped by every error Apply returns: the event does not fit
// the state (a gap, an unknown node, a second NodeAdded).
var ErrFold = errors.New("state: event does not apply")

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

// Apply folds e into s. e.Seq must be s.Head+1. On error s is unchanged.
func (s *State) Apply(e *weftv1.Event) error {
	if e.GetSeq() != s.Head+1 {
		return fmt.Errorf("%w: seq %d after head %d", ErrFold, e.GetSeq(), s.Head)
	}
	switch k := e.Kind.(type) {
	case *weftv1.Event_ConfigChanged:
		if k.ConfigChanged.GetConfig() == nil {
			return fmt.Errorf("%w: seq %d: config_changed without config", ErrFold, e.Seq)
		}
		s.Config = proto.Clone(k.ConfigChanged.Config).(*weftv1.ClusterConfig)
	case *weftv1.Event_NodeAdded:
		n := k.NodeAdded.GetNode()
		if n == nil || n.Name == "" {
			return fmt.Errorf("%w: seq %d: node_added without node", ErrFold, e.Seq)
		}
		if _, ok := s.Nodes[n.Name]; ok {
			return fmt.Errorf("%w: seq %d: node_added for existing node %q", ErrFold, e.Seq, n.Name)
		}
		s.Nodes[n.Name] = nodeAt(n, e.Seq)
	case *weftv1.Event_NodeUpdated:
		n := k.NodeUpdated.GetNode()
		if n == nil || n.Name == "" {
			return fmt.Errorf("%w: seq %d: node_updated without node", ErrFold, e.Seq)
		}
		if _, ok := s.Nodes[n.Name]; !ok {
			return fmt.Errorf("%w: seq %d: node_updated for unknown node %q", ErrFold, e.Seq, n.Name)
		}
		s.Nodes[n.Name] = nodeAt(n, e.Seq)
	case *weftv1.Event_NodeRemoved:
		name := k.NodeRemoved.GetName()
		if _, ok := s.Nodes[name]; !ok {
			return fmt.Errorf("%w: seq %d: node_removed for unknown node %q", ErrFold, e.Seq, name)
		}
		delete(s.Nodes, name)
	default:
		return fmt.Errorf("%w: seq %d has no kind", ErrFold, e.GetSeq())
	}
	s.Head = e.Seq
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
