package store

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/fold"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Finding is a stored key the store found wrong: repaired from the log's
// fold, or quarantined (left as it is and out of the store's state,
// because nothing says what it should hold).
type Finding struct {
	Key string
	// Problem says what is wrong with the key's value, naming the field.
	Problem string
	// Repaired: the store rewrote or deleted the key.
	Repaired bool
}

func (f Finding) String() string {
	if f.Repaired {
		return fmt.Sprintf("%s: %s (repaired from the log)", f.Key, f.Problem)
	}
	return fmt.Sprintf("%s: %s (quarantined)", f.Key, f.Problem)
}

// Snapshot is what the store reads at one revision to know its state:
// the projection keys, the subnet guards and the retained log (only the
// events past the head when Events is a tail read).
type Snapshot struct {
	Revision int64
	Config   *mvccpb.KeyValue // nil when absent
	Head     *mvccpb.KeyValue // nil when absent
	Nodes    []*mvccpb.KeyValue
	Events   []*mvccpb.KeyValue
	Guards   []*mvccpb.KeyValue
}

// readSnapshot reads the projection, the guards and the events from
// eventsFrom on (an event key; the whole log when it is the prefix) at
// one revision.
func readSnapshot(ctx context.Context, c clientv3.KV, k keys.Layout, eventsFrom string) (*Snapshot, error) {
	r, err := c.Txn(ctx).Then(
		clientv3.OpGet(k.Config()),
		clientv3.OpGet(k.Head()),
		clientv3.OpGet(k.Nodes(), clientv3.WithPrefix()),
		clientv3.OpGet(eventsFrom, clientv3.WithRange(clientv3.GetPrefixRangeEnd(k.Events()))),
		clientv3.OpGet(k.Subnets(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read projection and log: %w", err)
	}
	one := func(i int) *mvccpb.KeyValue {
		if kvs := r.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
			return kvs[0]
		}
		return nil
	}
	return &Snapshot{
		Revision: r.Header.Revision,
		Config:   one(0),
		Head:     one(1),
		Nodes:    r.Responses[2].GetResponseRange().Kvs,
		Events:   r.Responses[3].GetResponseRange().Kvs,
		Guards:   r.Responses[4].GetResponseRange().Kvs,
	}, nil
}

// Repair is what Recover or Verify decided: the state, the writes that
// make the stored keys agree with it, and what was wrong.
type Repair struct {
	State *fold.State
	// Puts and Deletes are the writes, by key.
	Puts    map[string]string
	Deletes []string
	// Findings lists every key found wrong, sorted by key.
	Findings []Finding
	// Quarantined names the nodes whose projection key is bad and that
	// nothing retained explains: they are not in State, and their key
	// and subnet guards stay as they are.
	Quarantined map[string]bool
}

func (r *Repair) find(key string, repaired bool, format string, args ...any) {
	r.Findings = append(r.Findings, Finding{Key: key, Problem: fmt.Sprintf(format, args...), Repaired: repaired})
}

// projected is the projection as decoded: good values, and why each bad
// one is bad.
type projected struct {
	config    *weftv1.ClusterConfig
	configErr error
	head      uint64
	headErr   error
	nodes     map[string]*weftv1.Node
	nodeErr   map[string]error
	nodeKeys  map[string]*mvccpb.KeyValue
	badKeys   []string // node keys that name no node
}

func decodeProjection(k keys.Layout, snap *Snapshot) *projected {
	p := &projected{nodes: map[string]*weftv1.Node{}, nodeErr: map[string]error{}, nodeKeys: map[string]*mvccpb.KeyValue{}}
	if kv := snap.Config; kv != nil {
		if p.configErr = validate.Size("cluster config", len(kv.Value), validate.MaxConfigBytes); p.configErr == nil {
			if p.config, p.configErr = keys.DecodeConfig(kv.Value); p.configErr == nil {
				p.configErr = validate.Config(validate.WithDefaults(p.config))
			}
		}
		if p.configErr != nil {
			p.config = nil
		}
	}
	if kv := snap.Head; kv != nil {
		if len(kv.Value) > 20 {
			p.headErr = fmt.Errorf("%w: value: %d characters is not a seq", validate.ErrInvalid, len(kv.Value))
		} else {
			p.head, p.headErr = keys.ParseHead(kv.Value)
		}
	}
	for _, kv := range snap.Nodes {
		name, err := keys.NameOf(k.Nodes(), string(kv.Key))
		if err != nil {
			p.badKeys = append(p.badKeys, string(kv.Key))
			continue
		}
		p.nodeKeys[name] = kv
		n, err := decodeNode(name, kv.Value)
		if err != nil {
			p.nodeErr[name] = err
			continue
		}
		p.nodes[name] = n
	}
	return p
}

// decodeNode decodes and checks a projected node stored under name; the
// pod CIDRs are checked against the config later.
func decodeNode(name string, value []byte) (*weftv1.Node, error) {
	if err := validate.Size("node", len(value), validate.MaxNodeBytes); err != nil {
		return nil, err
	}
	n, err := keys.DecodeNode(value)
	if err != nil {
		return nil, err
	}
	if n.Name != name {
		return nil, fmt.Errorf("%w: name: %q does not match its key %q", validate.ErrInvalid, n.Name, name)
	}
	if err := validate.Node(nil, n); err != nil {
		return nil, err
	}
	return n, nil
}

// Recover decides the cluster's state from the log and the projection
// read in snap (the whole retained log), and what must be rewritten so
// the stored keys agree with it. The log is the truth as far as it is
// readable:
//   - the head is the highest seq a leader appended: a leader appends
//     contiguously and writes its last event and the head in one
//     transaction, so the run of events right after the head's value
//     that are older than the head key's last write counts (a head moved
//     back by hand), and every event past it was appended by no leader
//     and is deleted;
//   - an untrimmed, contiguous, fully readable log that folds is the
//     state (proto/fold);
//   - otherwise the config and each node is what the last readable event
//     touching it says, unless a damaged event comes after that one
//     (then the projection, when readable, wins); a projected node that
//     no retained event explains is kept when its seq is older than the
//     retained log, deleted when it is not (a node nobody added);
//   - a bad projection value nothing retained explains is quarantined:
//     left as it is, out of the state, its subnet kept out of use;
//   - subnet guards follow the state: missing or wrong ones are written;
//     a guard whose owner the log removed is deleted; other guards the
//     state does not explain are left (and their subnets kept out of use
//     by the controller).
//
// A damaged event (undecodable, a seq not matching its key, or refused by
// the fold) cannot be repaired: it is reported and the log is read around
// it.
func Recover(k keys.Layout, snap *Snapshot) *Repair {
	p := decodeProjection(k, snap)
	rep := &Repair{State: fold.New(), Puts: map[string]string{}, Quarantined: map[string]bool{}}

	// The log.
	type entry struct {
		seq uint64
		e   *weftv1.Event
		kv  *mvccpb.KeyValue
	}
	var good []entry
	damaged := map[uint64]string{}
	for _, kv := range snap.Events {
		seq, err := k.EventSeq(string(kv.Key))
		if err != nil {
			rep.Deletes = append(rep.Deletes, string(kv.Key))
			rep.find(string(kv.Key), true, "%v", err)
			continue
		}
		e, err := decodeEvent(seq, kv.Value)
		if err != nil {
			damaged[seq] = err.Error()
			good = append(good, entry{seq: seq, kv: kv})
			continue
		}
		good = append(good, entry{seq, e, kv})
	}
	// The head. A leader appends contiguously and writes its last event
	// and the head in one transaction. So the events right after the
	// head's value that are older than the head key's last write were
	// appended by a leader (someone moved the head back by hand), and
	// any event past that run was appended by none.
	bySeq := map[uint64]entry{}
	for _, en := range good {
		bySeq[en.seq] = en
	}
	// A head past the last retained event was written by no leader
	// either: trimming keeps the newest events, so the event the head
	// names is always retained. The log's head is then its contiguous run.
	headPastLog := len(good) > 0 && p.headErr == nil && p.head > good[len(good)-1].seq
	var head uint64
	switch {
	case snap.Head != nil && p.headErr == nil && !headPastLog:
		head = p.head
		for {
			en, ok := bySeq[head+1]
			if !ok || en.kv.ModRevision > snap.Head.ModRevision {
				break
			}
			head++
		}
	case len(good) > 0:
		// No head to go by: the contiguous run from the first event.
		head = good[0].seq - 1
		for {
			if _, ok := bySeq[head+1]; !ok {
				break
			}
			head++
		}
	default:
		for _, n := range p.nodes {
			head = max(head, n.Seq)
		}
	}
	switch {
	case p.headErr != nil:
		rep.Puts[k.Head()] = keys.FormatHead(head)
		rep.find(k.Head(), true, "%v; the log's head is %d", p.headErr, head)
	case snap.Head == nil && head > 0:
		rep.Puts[k.Head()] = keys.FormatHead(head)
		rep.find(k.Head(), true, "missing; the log's head is %d", head)
	case p.head != head:
		rep.Puts[k.Head()] = keys.FormatHead(head)
		rep.find(k.Head(), true, "is %d, the log's head is %d", p.head, head)
	}
	var events []entry // seq ≤ head, in order
	for _, en := range good {
		if en.seq > head {
			rep.Deletes = append(rep.Deletes, string(en.kv.Key))
			rep.find(string(en.kv.Key), true, "event seq %d past the head %d: no leader appended it", en.seq, head)
			delete(damaged, en.seq)
			continue
		}
		events = append(events, en)
	}
	for seq, why := range damaged {
		rep.find(k.Event(seq), false, "damaged event: %s", why)
	}
	var first uint64
	if len(events) > 0 {
		first = events[0].seq
	}
	complete := len(damaged) == 0 && (len(events) == 0 && head == 0 || first == 1 && events[len(events)-1].seq == head && len(events) == int(head))
	st := rep.State
	if complete {
		for _, en := range events {
			if err := st.Apply(en.e); err != nil {
				damaged[en.seq] = err.Error()
				rep.find(k.Event(en.seq), false, "damaged event: %v", err)
				complete = false
				break
			}
		}
	}
	if !complete {
		st = fold.New()
		rep.State = st
		st.Head = head
		lastDamaged := uint64(0)
		for seq := range damaged {
			lastDamaged = max(lastDamaged, seq)
		}
		var lastCfg *weftv1.Event
		last := map[string]*weftv1.Event{}
		for _, en := range events {
			if en.e == nil {
				continue
			}
			switch kd := en.e.Kind.(type) {
			case *weftv1.Event_ConfigChanged:
				lastCfg = en.e
			case *weftv1.Event_NodeAdded:
				last[kd.NodeAdded.GetNode().GetName()] = en.e
			case *weftv1.Event_NodeUpdated:
				last[kd.NodeUpdated.GetNode().GetName()] = en.e
			case *weftv1.Event_NodeRemoved:
				last[kd.NodeRemoved.GetName()] = en.e
			}
		}
		switch {
		case lastCfg != nil && (lastDamaged < lastCfg.Seq || p.config == nil):
			st.Config = proto.Clone(lastCfg.GetConfigChanged().GetConfig()).(*weftv1.ClusterConfig)
		case p.config != nil:
			st.Config = p.config
		}
		names := map[string]bool{}
		for n := range p.nodeKeys {
			names[n] = true
		}
		for n := range last {
			names[n] = true
		}
		for _, name := range slices.Sorted(maps.Keys(names)) {
			e, pn := last[name], p.nodes[name]
			switch {
			case e != nil && (lastDamaged < e.Seq || pn == nil):
				if n := eventNode(e); n != nil {
					st.Nodes[name] = nodeWithSeq(n, e.Seq)
				}
			case pn != nil && e == nil && pn.Seq >= first && first > 0 && damaged[pn.Seq] == "" || pn != nil && pn.Seq > head:
				// Changed within the retained log, yet no retained event
				// touches it: a node nobody appended.
			case pn != nil:
				st.Nodes[name] = pn
			default:
				rep.Quarantined[name] = true
			}
		}
	}
	diffProjection(k, p, snap, rep)
	sort.Slice(rep.Findings, func(i, j int) bool { return rep.Findings[i].Key < rep.Findings[j].Key })
	slices.Sort(rep.Deletes)
	return rep
}

// diffProjection adds to rep the writes that make the projection keys and
// guards of snap (decoded in p) equal rep.State, and the findings.
func diffProjection(k keys.Layout, p *projected, snap *Snapshot, rep *Repair) {
	st := rep.State
	// Nodes whose pod CIDRs the config in force does not admit stay what
	// they are (the log said so), but are named.
	switch {
	case st.Config != nil && (p.config == nil || !proto.Equal(p.config, st.Config)):
		why := "differs from the log"
		if snap.Config == nil {
			why = "missing"
		} else if p.configErr != nil {
			why = p.configErr.Error()
		}
		rep.Puts[k.Config()] = keys.EncodeString(st.Config)
		rep.find(k.Config(), true, "%s", why)
	case st.Config == nil && p.configErr != nil:
		rep.find(k.Config(), false, "%v; no retained event says what the config is: write %s", p.configErr, k.DesiredConfig())
	}
	for _, key := range p.badKeys {
		rep.find(key, false, "%v", fmt.Errorf("%w: key: names no node", keys.ErrBadKey))
	}
	for _, name := range slices.Sorted(maps.Keys(p.nodeKeys)) {
		key := k.Node(name)
		want, pn := st.Nodes[name], p.nodes[name]
		switch {
		case rep.Quarantined[name]:
			rep.find(key, false, "%v; no retained event says what this node is; its subnets stay out of use", p.nodeErr[name])
		case want == nil:
			rep.Deletes = append(rep.Deletes, key)
			why := "no event added this node"
			if err := p.nodeErr[name]; err != nil {
				why = err.Error() + "; the log removed this node or never added it"
			}
			rep.find(key, true, "%s", why)
		case pn == nil:
			rep.Puts[key] = keys.EncodeString(want)
			rep.find(key, true, "%v", p.nodeErr[name])
		case !proto.Equal(pn, want):
			rep.Puts[key] = keys.EncodeString(want)
			rep.find(key, true, "differs from the log's event %d", want.Seq)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(st.Nodes)) {
		if _, ok := p.nodeKeys[name]; !ok {
			rep.Puts[k.Node(name)] = keys.EncodeString(st.Nodes[name])
			rep.find(k.Node(name), true, "missing; the log's event %d says it exists", st.Nodes[name].Seq)
		}
	}

	owners, _ := st.Subnets()
	guarded := map[netip.Prefix]bool{}
	for _, kv := range snap.Guards {
		key := string(kv.Key)
		name, err := keys.NameOf(k.Subnets(), key)
		var pfx netip.Prefix
		if err == nil {
			pfx, err = keys.ParseSubnetName(name)
		}
		if err != nil {
			rep.find(key, false, "%v", err)
			continue
		}
		guarded[pfx] = true
		owner := string(kv.Value)
		want, ok := owners[pfx]
		switch {
		case ok && want == owner:
		case ok:
			rep.Puts[key] = want
			rep.find(key, true, "names %.64q, the log gives %s to %q", owner, pfx, want)
		case rep.Quarantined[owner]:
			// Named with its node, whose subnets stay out of use.
		case p.nodeKeys[owner] != nil && st.Nodes[owner] == nil:
			// Its owner is gone by the log: the subnet is free.
			rep.Deletes = append(rep.Deletes, key)
			rep.find(key, true, "owner %q is not in the log", owner)
		default:
			rep.find(key, false, "owner %.64q holds no %s in the log; the subnet stays out of use", owner, pfx)
		}
	}
	for pfx, owner := range owners {
		if !guarded[pfx] {
			rep.Puts[k.Subnet(pfx)] = owner
			rep.find(k.Subnet(pfx), true, "missing; node %q holds %s", owner, pfx)
		}
	}
}

func decodeEvent(seq uint64, value []byte) (*weftv1.Event, error) {
	if err := validate.Size("event", len(value), validate.MaxEventBytes); err != nil {
		return nil, err
	}
	e, err := keys.DecodeEvent(value)
	if err != nil {
		return nil, err
	}
	if e.Seq != seq {
		return nil, fmt.Errorf("%w: seq: %d does not match its key's seq %d", validate.ErrInvalid, e.Seq, seq)
	}
	if err := validate.Event(nil, e); err != nil {
		return nil, err
	}
	return e, nil
}

// eventNode is the node a NodeAdded or NodeUpdated carries; nil for a
// NodeRemoved (or anything else).
func eventNode(e *weftv1.Event) *weftv1.Node {
	switch kd := e.Kind.(type) {
	case *weftv1.Event_NodeAdded:
		return kd.NodeAdded.GetNode()
	case *weftv1.Event_NodeUpdated:
		return kd.NodeUpdated.GetNode()
	}
	return nil
}

// Verify compares the stored projection and guards, and the events past
// the head, with the state the store holds (the fold of what it read at
// its last Reload and appended since), and returns the writes that make
// them agree. Nodes quarantined at the last Reload are left alone unless
// their key changed, which Verify reports as changed = true: the caller
// reloads then.
func verify(k keys.Layout, snap *Snapshot, st *fold.State, quarantined map[string]int64) (rep *Repair, changed bool) {
	p := decodeProjection(k, snap)
	rep = &Repair{State: st, Puts: map[string]string{}, Quarantined: map[string]bool{}}
	for name, rev := range quarantined {
		kv := p.nodeKeys[name]
		if kv == nil || kv.ModRevision != rev {
			return rep, true
		}
		rep.Quarantined[name] = true
	}
	switch {
	case p.headErr != nil:
		rep.Puts[k.Head()] = keys.FormatHead(st.Head)
		rep.find(k.Head(), true, "%v; the log's head is %d", p.headErr, st.Head)
	case snap.Head == nil && st.Head > 0:
		rep.Puts[k.Head()] = keys.FormatHead(st.Head)
		rep.find(k.Head(), true, "missing; the log's head is %d", st.Head)
	case snap.Head != nil && p.head != st.Head:
		rep.Puts[k.Head()] = keys.FormatHead(st.Head)
		rep.find(k.Head(), true, "is %d, the log's head is %d", p.head, st.Head)
	}
	for _, kv := range snap.Events {
		seq, err := k.EventSeq(string(kv.Key))
		if err == nil && seq <= st.Head {
			continue
		}
		rep.Deletes = append(rep.Deletes, string(kv.Key))
		if err != nil {
			rep.find(string(kv.Key), true, "%v", err)
		} else {
			rep.find(string(kv.Key), true, "event seq %d past the head %d: no leader appended it", seq, st.Head)
		}
	}
	diffProjection(k, p, snap, rep)
	sort.Slice(rep.Findings, func(i, j int) bool { return rep.Findings[i].Key < rep.Findings[j].Key })
	slices.Sort(rep.Deletes)
	return rep, false
}
