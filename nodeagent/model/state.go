// Package model is the agent's desired-state model: the fold of the event
// log (cluster config, nodes, applied seq) and the function that turns it
// into the plain-data datapath spec of one node. It touches no kernel and
// no network, so everything here is tested without root.
//
// The fold is the shared transition of package proto/fold, the same one
// the controller appends with and weftctl check recomputes; the model adds
// the agent's refusal policy (decode, validate, no overlapping pod CIDRs,
// keep the last good state) and an index for Desired.
//
// A State is not safe for concurrent use; the agent's converge loop owns
// it.
package model

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/fold"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// ErrGap is returned (wrapped) by Apply when an event arrives whose seq is
// more than one past the applied seq. The caller must re-list.
var ErrGap = errors.New("model: gap in the event log")

var errNoConfig = fmt.Errorf("%w: no cluster config in force yet", validate.ErrInvalid)

// maxRefused bounds the refusals a State remembers for status reports.
const maxRefused = 32

// Snapshot is the projection read at one etcd revision: the config in
// force, the head seq and every node value, undecoded.
type Snapshot struct {
	// Revision is the etcd revision the snapshot was read at.
	Revision int64
	// Head is the seq of the last event folded into the projection.
	Head uint64
	// Config is the value of /weft/config; nil when the key is absent.
	Config []byte
	// Nodes maps node name (the last element of its key) to its value.
	Nodes map[string][]byte
	// Decoded maps node name to its value decoded by DecodeNode, for a
	// lister that decodes each page of nodes while it reads the next
	// and keeps no bytes (the follower): Reset and Suspects then decode
	// nothing again. A name is in Nodes or in Decoded, not in both.
	Decoded map[string]NodeValue
	// FromLog holds, for projection values the model cannot use
	// (Suspects), what the retained log says instead: the node of the
	// last event touching each such node (a nil value: that event
	// removed it), read at the same revision. LogConfig is the config of
	// the last ConfigChanged retained, when the config value is suspect.
	// Empty when the follower found nothing suspect.
	FromLog   map[string]LogValue
	LogConfig []byte
	// checked is the config value Suspects validated the values of
	// Decoded against (NodeValue.valid); Reset trusts those marks only
	// while Config is still that value.
	checked []byte
}

// NodeValue is a stored node value decoded once: the node, or why the
// value does not decode (its size or its syntax). Validation is not
// part of it: Reset validates against the config in force, which need
// not be the snapshot's.
type NodeValue struct {
	Node *weftv1.Node
	Err  error
	// valid is set by Suspects only, on a node it found good against the
	// snapshot's config: Reset, when it puts that config in force, does
	// not validate the node a second time.
	valid bool
}

// DecodeNode decodes the stored value of a node.
func DecodeNode(v []byte) NodeValue {
	if err := validate.Size("node", len(v), validate.MaxNodeBytes); err != nil {
		return NodeValue{Err: err}
	}
	n, err := keys.DecodeNode(v)
	return NodeValue{Node: n, Err: err}
}

// nodes yields every node of the snapshot, decoding the values of Nodes
// on the way.
func (snap *Snapshot) nodes(yield func(string, NodeValue) bool) {
	for name, v := range snap.Nodes {
		if !yield(name, DecodeNode(v)) {
			return
		}
	}
	for name, nv := range snap.Decoded {
		if !yield(name, nv) {
			return
		}
	}
}

// Len is the number of nodes in the snapshot.
func (snap *Snapshot) Len() int { return len(snap.Nodes) + len(snap.Decoded) }

// LogValue is a node as the last retained event touching it says: Node
// is its encoded value (nil when that event removed it), Seq the event's.
type LogValue struct {
	Node []byte
	Seq  uint64
}

// Quarantine is a projection value the model cannot use, and what it
// holds instead.
type Quarantine struct {
	// Node is the node whose value is bad; "" for the config.
	Node string
	// Reason says what is wrong, naming the field.
	Reason string
	// Kept says what the model holds instead: "its last good value",
	// "the log's event N", "nothing".
	Kept string
}

// Refusal is an input the model did not accept, with the reason.
type Refusal struct {
	// What names the input: "event 7" or "node web-1".
	What   string
	Reason string
}

func (r Refusal) String() string { return r.What + ": " + r.Reason }

// State is the fold of the event log as one agent sees it. The zero value
// is not usable; call New.
type State struct {
	// log is the shared fold of what the agent accepted: config as the
	// log says it, nodes, and as head the applied seq (a refused event
	// moves it on without changing anything else).
	log     *fold.State
	config  *weftv1.ClusterConfig // log.Config with defaults applied; nil until known
	sorted  []parsedNode          // nodes' addresses, parsed once, sorted by name
	bulk    bool                  // Reset appends to sorted and sorts once at the end
	claims  claims
	refused []Refusal
	// quarantined are the projection values the last Reset refused and no
	// event has replaced since, by node name ("" for the config).
	quarantined map[string]Quarantine
}

// New returns the empty state (no config, no nodes, applied seq 0).
func New() *State {
	return &State{log: fold.New(), claims: claims{}, quarantined: map[string]Quarantine{}}
}

// Applied is the seq of the last event folded into the state.
func (s *State) Applied() uint64 { return s.log.Head }

// Config is the cluster config in force with defaults applied, or nil
// before the first config. Callers must not modify it.
func (s *State) Config() *weftv1.ClusterConfig { return s.config }

// Node returns the node called name, or nil. Callers must not modify it.
func (s *State) Node(name string) *weftv1.Node { return s.log.Nodes[name] }

// Len is the number of nodes.
func (s *State) Len() int { return len(s.log.Nodes) }

// Fold returns the state as the shared fold (proto/fold) holds it: the
// config as the log wrote it (no defaults), the nodes, and the applied
// seq as head. Callers must not modify it.
func (s *State) Fold() *fold.State { return s.log }

// Names returns the node names, sorted.
func (s *State) Names() []string {
	out := make([]string, len(s.sorted))
	for i, p := range s.sorted {
		out[i] = p.name
	}
	return out
}

// EachNode calls fn for every node in name order with its parsed underlay
// IP, its underlay_ip_v6 (invalid when unset) and pod CIDRs. fn must not
// keep or modify podCIDRs.
func (s *State) EachNode(fn func(name string, underlay, underlay6 netip.Addr, podCIDRs []netip.Prefix)) {
	for _, p := range s.sorted {
		fn(p.name, p.ip, p.ip6, p.prefixes)
	}
}

// parsedNode is a node's underlay IP and pod CIDRs, parsed when the node
// was accepted, so Desired does not parse thousands of strings per event.
type parsedNode struct {
	name     string
	ip       netip.Addr
	ip6      netip.Addr // underlay_ip_v6; invalid when unset
	prefixes []netip.Prefix
}

// Quarantined returns the projection values the model refused at its
// last list and that no event has replaced since, config first, then by
// node name. While any is listed the agent is degraded.
func (s *State) Quarantined() []Quarantine {
	out := make([]Quarantine, 0, len(s.quarantined))
	for _, name := range slices.Sorted(maps.Keys(s.quarantined)) {
		out = append(out, s.quarantined[name])
	}
	return out
}

// addr is the node's underlay address of one family, invalid when it has
// none.
func (pn *parsedNode) addr(v6 bool) netip.Addr {
	switch {
	case pn.ip.Is6() == v6:
		return pn.ip
	case v6:
		return pn.ip6
	}
	return netip.Addr{}
}

// Refused returns the most recent refusals, oldest first.
func (s *State) Refused() []Refusal { return slices.Clone(s.refused) }

// Equal reports whether s and o hold the same config, nodes and applied
// seq. Refusals are history, not state, and are not compared.
func (s *State) Equal(o *State) bool {
	if s.Applied() != o.Applied() || !proto.Equal(s.config, o.config) || len(s.log.Nodes) != len(o.log.Nodes) {
		return false
	}
	for name, n := range s.log.Nodes {
		if !proto.Equal(n, o.log.Nodes[name]) {
			return false
		}
	}
	return true
}

// String summarises s for test failures.
func (s *State) String() string {
	return fmt.Sprintf("applied=%d config=%v nodes=%v", s.Applied(), s.config, s.log.Nodes)
}

func (s *State) refuse(what string, err error) {
	// Replace an older refusal of the same input so a value that stays bad
	// across re-lists is listed once.
	s.refused = slices.DeleteFunc(s.refused, func(r Refusal) bool { return r.What == what })
	s.refused = append(s.refused, Refusal{What: what, Reason: err.Error()})
	if len(s.refused) > maxRefused {
		s.refused = slices.Delete(s.refused, 0, len(s.refused)-maxRefused)
	}
}

func (s *State) forget(what string) {
	s.refused = slices.DeleteFunc(s.refused, func(r Refusal) bool { return r.What == what })
}

// Apply folds the event with the given seq, stored as value, into s.
//
// An event whose seq is at or below the applied seq is a duplicate or a
// replay and is ignored (nil). An event more than one past the applied
// seq returns an error wrapping ErrGap and changes nothing; the caller
// re-lists. An event that is refused is recorded (see Refused), the
// applied seq moves past it, the rest of the state is kept, and the
// reason comes back as refused (err stays nil) so the caller can log it.
// The reasons, checked in this order: it does not decode, fails
// validation, comes before any config, claims a pod CIDR that overlaps
// another node's (the earlier claim wins), or does not fit the state
// under the shared transition (fold.ErrFold: a second NodeAdded, an
// update or removal of a node the agent does not hold).
func (s *State) Apply(seq uint64, value []byte) (refused error, err error) {
	switch applied := s.Applied(); {
	case seq <= applied:
		return nil, nil
	case seq > applied+1:
		return nil, fmt.Errorf("apply event %d after %d: %w", seq, applied, ErrGap)
	}
	derr := validate.Size("event", len(value), validate.MaxEventBytes)
	var e *weftv1.Event
	if derr == nil {
		e, derr = keys.DecodeEvent(value)
	}
	if derr == nil {
		derr = s.applyEvent(seq, e)
	}
	if derr != nil {
		s.log.Head = seq // consumed, not retried forever
		s.refuse(fmt.Sprintf("event %d", seq), derr)
		return derr, nil
	}
	return nil, nil
}

func (s *State) applyEvent(seq uint64, e *weftv1.Event) error {
	if e.Seq != seq {
		return fmt.Errorf("%w: seq: %d does not match its key's seq %d", validate.ErrInvalid, e.Seq, seq)
	}
	if err := validate.Event(s.config, e); err != nil {
		return err
	}
	if cc, ok := e.Kind.(*weftv1.Event_ConfigChanged); ok {
		if err := s.configFits(cc.ConfigChanged.Config); err != nil {
			return err
		}
	}
	if _, isConfig := e.Kind.(*weftv1.Event_ConfigChanged); !isConfig && s.config == nil {
		// Without a cluster CIDR a node's pod CIDRs cannot be checked; the
		// controller always writes the config first.
		return errNoConfig
	}
	var pn parsedNode
	if n := eventNode(e); n != nil {
		var err error
		if pn, err = s.admit(n); err != nil {
			return err
		}
	}
	c, err := fold.Next(s.log.Head, s.log.Node, e)
	if err != nil {
		return err
	}
	s.commit(c, pn)
	return nil
}

// eventNode is the node a NodeAdded or NodeUpdated carries, else nil.
func eventNode(e *weftv1.Event) *weftv1.Node {
	switch k := e.Kind.(type) {
	case *weftv1.Event_NodeAdded:
		return k.NodeAdded.Node
	case *weftv1.Event_NodeUpdated:
		return k.NodeUpdated.Node
	}
	return nil
}

// admit is the agent's policy for a node value it is about to hold: its
// pod CIDRs overlap no other node's (the earlier claim wins) and its
// underlay IP parses. It returns the parsed addresses for the index.
func (s *State) admit(n *weftv1.Node) (parsedNode, error) {
	prefixes, err := parseCIDRs(n.PodCidrs)
	if err != nil {
		return parsedNode{}, err
	}
	for _, p := range prefixes {
		if owner := s.claims.overlap(p, n.Name); owner != "" {
			return parsedNode{}, fmt.Errorf("%w: pod_cidrs: %s overlaps node %q's pod CIDR", validate.ErrInvalid, p, owner)
		}
	}
	ip, err := netip.ParseAddr(n.UnderlayIp)
	if err != nil {
		return parsedNode{}, fmt.Errorf("%w: underlay_ip: %q is not an IP address", validate.ErrInvalid, n.UnderlayIp)
	}
	pn := parsedNode{name: n.Name, ip: ip.Unmap(), prefixes: prefixes}
	if n.UnderlayIpV6 != "" {
		ip6, err := netip.ParseAddr(n.UnderlayIpV6)
		if err != nil {
			return parsedNode{}, fmt.Errorf("%w: underlay_ip_v6: %q is not an IP address", validate.ErrInvalid, n.UnderlayIpV6)
		}
		pn.ip6 = ip6
	}
	return pn, nil
}

// commit makes a change of the shared fold in s and keeps the index (pn,
// from admit, for a node put) in step.
func (s *State) commit(c fold.Change, pn parsedNode) {
	// An event says what the value is now: a quarantined projection
	// value it touches is superseded.
	switch {
	case c.Config != nil:
		delete(s.quarantined, "")
	case c.Name != "":
		delete(s.quarantined, c.Name)
	}
	switch {
	case c.Config != nil:
		s.config = validate.WithDefaults(c.Config)
	case c.Node != nil:
		s.delNode(c.Name)
		s.index(pn)
	case c.Name != "":
		s.delNode(c.Name)
	}
	s.log.Commit(c)
}

// index adds an admitted node's addresses to sorted and claims.
func (s *State) index(pn parsedNode) {
	if s.bulk {
		s.sorted = append(s.sorted, pn)
	} else {
		// The caller removed any previous entry of this name.
		i, _ := slices.BinarySearchFunc(s.sorted, pn.name, byName)
		s.sorted = slices.Insert(s.sorted, i, pn)
	}
	for _, p := range pn.prefixes {
		s.claims.add(p, pn.name)
	}
}

// delNode removes name from the index (sorted and claims).
func (s *State) delNode(name string) {
	i, found := slices.BinarySearchFunc(s.sorted, name, byName)
	if !found {
		return
	}
	for _, p := range s.sorted[i].prefixes {
		s.claims.del(p, name)
	}
	s.sorted = slices.Delete(s.sorted, i, i+1)
}

// Reset replaces the state with a snapshot of the projection (a re-list).
// Values that do not decode or fail validation are refused and
// quarantined (Quarantined); for those the model keeps, in this order,
// the last good value it held (the config, or that node's previous value
// when it still fits), else what the retained log says
// (Snapshot.FromLog, Snapshot.LogConfig), else nothing. Nodes are
// admitted in claim order (the seq of their last change, then name), so
// of two overlapping claims the earlier wins, as in Apply.
func (s *State) Reset(snap Snapshot) {
	s.quarantined = map[string]Quarantine{}
	checked := false
	if snap.Config != nil {
		raw, err := configValue(snap.Config)
		if err == nil {
			err = s.configFits(raw)
		}
		if err != nil {
			s.refuse("config", err)
			q := Quarantine{Reason: err.Error(), Kept: "nothing"}
			switch raw, lerr := configValue(snap.LogConfig); {
			case s.config != nil:
				q.Kept = "its last good value"
			case snap.LogConfig != nil && lerr == nil:
				s.log.Config, s.config = raw, validate.WithDefaults(raw)
				q.Kept = "the log's last config"
			}
			s.quarantined[""] = q
		} else {
			s.log.Config, s.config = raw, validate.WithDefaults(raw)
			s.forget("config")
			// In force now: the config Suspects checked the nodes
			// against, unless the value changed since.
			checked = snap.checked != nil && bytes.Equal(snap.checked, snap.Config)
		}
	}
	old := s.log.Nodes
	s.log.Nodes = make(map[string]*weftv1.Node, snap.Len())
	s.sorted = make([]parsedNode, 0, snap.Len())
	s.bulk = true
	defer func() {
		slices.SortFunc(s.sorted, func(a, b parsedNode) int { return cmp.Compare(a.name, b.name) })
		s.bulk = false
	}()
	s.claims = claims{}
	if s.config != nil {
		// Sized once: every pod CIDR of a family usually has the node
		// mask's length, and growing a map of thousands costs more than
		// the claims themselves.
		s.claims.reserve(int(s.config.NodeMaskSize), snap.Len())
		if s.config.ClusterCidrV6 != "" {
			s.claims.reserve(int(s.config.NodeMaskSizeV6), snap.Len())
		}
	}

	type cand struct {
		name string
		n    *weftv1.Node
	}
	cands := make([]cand, 0, snap.Len())
	for name, nv := range snap.nodes {
		n, err := s.checkNode(name, nv, checked)
		if err != nil {
			s.refuse("node "+name, err)
			q := Quarantine{Node: name, Reason: err.Error(), Kept: "nothing"}
			if prev, ok := old[name]; ok && validate.Node(s.config, prev) == nil {
				cands = append(cands, cand{name, prev})
				q.Kept = fmt.Sprintf("its last good value (seq %d)", prev.Seq)
			} else if lv, ok := snap.FromLog[name]; ok {
				if lv.Node == nil {
					q.Kept = fmt.Sprintf("nothing: the log's event %d removed it", lv.Seq)
				} else if ln, lerr := s.checkNode(name, DecodeNode(lv.Node), false); lerr == nil {
					ln.Seq = lv.Seq
					cands = append(cands, cand{name, ln})
					q.Kept = fmt.Sprintf("the log's event %d", lv.Seq)
				}
			}
			s.quarantined[name] = q
			continue
		}
		if len(s.refused) > 0 {
			s.forget("node " + name)
		}
		cands = append(cands, cand{name, n})
	}
	slices.SortFunc(cands, func(a, b cand) int {
		return cmp.Or(cmp.Compare(a.n.Seq, b.n.Seq), cmp.Compare(a.name, b.name))
	})
	for _, c := range cands {
		pn, err := s.admit(c.n)
		if err != nil {
			s.refuse("node "+c.name, err)
			if _, ok := s.quarantined[c.name]; !ok {
				s.quarantined[c.name] = Quarantine{Node: c.name, Reason: err.Error(), Kept: "nothing"}
			}
			continue
		}
		// Kept as decoded: keys.DecodeNode's fast path leaves no garbage
		// around a node that would pin heap spans (a copy cost 6 ms at
		// 5,000 nodes and saved nothing, ColdStart5000 heap-MB).
		s.log.Nodes[c.name] = c.n
		s.index(pn)
	}
	s.log.Head = snap.Head
}

// configFits refuses a config (valid by itself) whose cluster CIDRs
// contain the underlay address of a node the model holds: the agent
// would route that node's tunnel endpoint, or its own underlay, into
// the overlay. The controller refuses such a config; one that reaches
// the agent was written by hand, and the last good config stays.
func (s *State) configFits(raw *weftv1.ClusterConfig) error {
	cfg := validate.WithDefaults(raw)
	if s.config != nil && cfg.ClusterCidr == s.config.ClusterCidr && cfg.ClusterCidrV6 == s.config.ClusterCidrV6 {
		// The nodes held were admitted against these cluster CIDRs.
		return nil
	}
	nodes := make([]*weftv1.Node, 0, len(s.log.Nodes))
	for _, name := range slices.Sorted(maps.Keys(s.log.Nodes)) {
		nodes = append(nodes, s.log.Nodes[name])
	}
	return validate.ConfigAgainstNodes(cfg, nodes)
}

// configValue decodes and checks a stored config value.
func configValue(v []byte) (*weftv1.ClusterConfig, error) {
	if v == nil {
		return nil, fmt.Errorf("%w: config: missing", validate.ErrInvalid)
	}
	if err := validate.Size("cluster config", len(v), validate.MaxConfigBytes); err != nil {
		return nil, err
	}
	raw, err := keys.DecodeConfig(v)
	if err != nil {
		return nil, err
	}
	if err := validate.Config(validate.WithDefaults(raw)); err != nil {
		return nil, err
	}
	return raw, nil
}

// checkNode checks the decoded value of node name against the config
// in force. With checked (the config in force is the one Suspects
// checked the snapshot's nodes against), a value Suspects found good is
// not validated again.
func (s *State) checkNode(name string, nv NodeValue, checked bool) (*weftv1.Node, error) {
	n, err := nv.Node, nv.Err
	if err == nil && s.config == nil {
		err = errNoConfig
	}
	if err == nil && !(checked && nv.valid) {
		err = validate.Node(s.config, n)
	}
	if err == nil && n.Name != name {
		err = fmt.Errorf("%w: name: %q does not match its key %q", validate.ErrInvalid, n.Name, name)
	}
	return n, err
}

// Suspects names what of snap a fresh model could not use by itself: the
// config (when its value is bad) and the nodes whose values do not
// decode or validate against the snapshot's config. The follower reads
// the retained log for them (Snapshot.FromLog), so an agent that starts
// while a value is bad still holds what the log says.
//
// Each value of snap.Decoded it found good is marked so: a Reset of snap
// that puts the snapshot's config in force takes it without validating
// it again, so a list validates each node once. Values in snap.Nodes
// (bytes) are decoded here and in Reset, and validated by both.
func Suspects(snap *Snapshot) (config bool, nodes []string) {
	probe := New()
	cfg, err := configValue(snap.Config)
	if snap.Config != nil && err != nil {
		config = true
	}
	if err == nil {
		probe.config = validate.WithDefaults(cfg)
		snap.checked = bytes.Clone(snap.Config)
	}
	for name, nv := range snap.Nodes {
		if _, err := probe.checkNode(name, DecodeNode(nv), false); err != nil && !errors.Is(err, errNoConfig) {
			nodes = append(nodes, name)
		}
	}
	for name, nv := range snap.Decoded {
		_, err := probe.checkNode(name, nv, false)
		switch {
		case err == nil:
			nv.valid = true
			snap.Decoded[name] = nv
		case !errors.Is(err, errNoConfig):
			nodes = append(nodes, name)
		}
	}
	slices.Sort(nodes)
	return config, nodes
}

func byName(p parsedNode, name string) int { return cmp.Compare(p.name, name) }

func parseCIDRs(cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for i, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("%w: pod_cidrs[%d]: %q is not a CIDR", validate.ErrInvalid, i, c)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// claims indexes pod CIDRs by prefix length for overlap checks that stay
// cheap with thousands of nodes (all nodes usually share one length).
type claims map[int]map[netip.Prefix]string

// reserve makes room for n claims of prefix length bits.
func (c claims) reserve(bits, n int) {
	if c[bits] == nil {
		c[bits] = make(map[netip.Prefix]string, n)
	}
}

func (c claims) add(p netip.Prefix, owner string) {
	m := c[p.Bits()]
	if m == nil {
		m = map[netip.Prefix]string{}
		c[p.Bits()] = m
	}
	m[p] = owner
}

func (c claims) del(p netip.Prefix, owner string) {
	if m := c[p.Bits()]; m != nil && m[p] == owner {
		delete(m, p)
		if len(m) == 0 {
			delete(c, p.Bits())
		}
	}
}

// overlap returns the owner of a claimed prefix overlapping p, other than
// except, or "".
func (c claims) overlap(p netip.Prefix, except string) string {
	for bits, m := range c {
		if bits <= p.Bits() {
			q, err := p.Addr().Prefix(bits)
			if err != nil {
				continue // other address family
			}
			if owner, ok := m[q]; ok && owner != except {
				return owner
			}
			continue
		}
		for q, owner := range m {
			if owner != except && p.Contains(q.Addr()) {
				return owner
			}
		}
	}
	return ""
}
