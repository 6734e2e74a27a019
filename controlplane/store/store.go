// Package store is weft's event store on etcd: the append-only log under
// /weft/events/, the head, and the projection (config, nodes, subnet
// guards) that the log folds to.
//
// Every append is one etcd transaction per batch of contiguous events that
// compares the head with the seq before the batch and, when the store is
// fenced, the create revision of the leader's election key; then it puts
// the events, the new head and every projection key they change. So the
// log has no gap and no duplicate, the projection always equals the fold
// of the log, and a deposed leader writes nothing even if it does not know
// it was deposed.
package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/fold"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

var (
	// ErrNotLeader: the fence (the leader's election key) no longer holds.
	ErrNotLeader = errors.New("store: not leader")
	// ErrConflict: the head or a subnet guard was not what the store
	// expected (another writer, or a hand edit). The store has re-read
	// its state; the caller decides again and retries.
	ErrConflict = errors.New("store: conflict")
)

// Fence names the leader's election key and its create revision. Writes of
// a fenced store succeed only while that key exists with that revision.
type Fence struct {
	Key string
	Rev int64
}

// Options tune a Store; the zero value is usable.
type Options struct {
	Logger hclog.Logger
	// Fence, when set, guards every write.
	Fence *Fence
	// MaxOps bounds the operations (and the compares) of one transaction;
	// default 128, etcd's default --max-txn-ops.
	MaxOps int
	// MaxBytes bounds the keys and values of one transaction; default
	// 1 MiB, under etcd's default 1.5 MiB request limit.
	MaxBytes int
	// Now stamps events; default time.Now.
	Now func() time.Time
	// Observe, when set, is called after each committed transaction with
	// the number of events it held and how long it took.
	Observe func(events int, took time.Duration)
	// Repaired, when set, is called for each key a fenced store repaired
	// (Reload, Verify), after the repair committed.
	Repaired func(Finding)
	// Absent, when set, names keys that must not exist for an event to be
	// appended: they go into its transaction as compares, and a key that
	// exists fails the append with ErrConflict. The controller requires a
	// removed node's registration to be absent.
	Absent func(*weftv1.Event) []string
}

// Store appends to one cluster's log. It keeps the folded state in memory
// and is not safe for concurrent use.
type Store struct {
	c    *clientv3.Client
	k    keys.Layout
	opt  Options
	log  hclog.Logger
	st   *fold.State
	rev  int64
	cmps []clientv3.Cmp
	// findings are what the last Reload or Verify found wrong;
	// quarantined the nodes left out of st, with their key's mod
	// revision then.
	findings    []Finding
	quarantined map[string]int64
}

// Open loads the state of the cluster under layout from its log and
// projection (see Reload) and returns a store that appends to it.
func Open(ctx context.Context, c *clientv3.Client, layout keys.Layout, opt Options) (*Store, error) {
	if opt.Logger == nil {
		opt.Logger = hclog.NewNullLogger()
	}
	if opt.MaxOps <= 0 {
		opt.MaxOps = 128
	}
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = 1 << 20
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	s := &Store{c: c, k: layout, opt: opt, log: opt.Logger.Named("store")}
	if f := opt.Fence; f != nil {
		s.cmps = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev)}
	}
	if err := s.Reload(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Projection is the projection read at one revision, decoded as far as
// each value allows.
type Projection struct {
	// State holds the config, head and nodes whose values decode and
	// validate.
	State    *fold.State
	Revision int64
	// Bad names every projection key whose value does not, with why.
	Bad []Finding
}

// Read reads config, head and nodes of the cluster at one revision and
// returns what decodes; it fails only when etcd does. Options such as
// clientv3.WithRev apply to every read.
func Read(ctx context.Context, c clientv3.KV, k keys.Layout, opts ...clientv3.OpOption) (*Projection, error) {
	r, err := c.Txn(ctx).Then(
		clientv3.OpGet(k.Config(), opts...),
		clientv3.OpGet(k.Head(), opts...),
		clientv3.OpGet(k.Nodes(), append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("load projection: %w", err)
	}
	snap := &Snapshot{Revision: r.Header.Revision, Nodes: r.Responses[2].GetResponseRange().Kvs}
	if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		snap.Config = kvs[0]
	}
	if kvs := r.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		snap.Head = kvs[0]
	}
	p := decodeProjection(k, snap)
	out := &Projection{State: fold.New(), Revision: snap.Revision}
	out.State.Config, out.State.Head = p.config, p.head
	if p.configErr != nil {
		out.Bad = append(out.Bad, Finding{Key: k.Config(), Problem: p.configErr.Error()})
	}
	if p.headErr != nil {
		out.Bad = append(out.Bad, Finding{Key: k.Head(), Problem: p.headErr.Error()})
	}
	for _, key := range p.badKeys {
		out.Bad = append(out.Bad, Finding{Key: key, Problem: "names no node"})
	}
	for _, name := range slices.Sorted(maps.Keys(p.nodeKeys)) {
		if err := p.nodeErr[name]; err != nil {
			out.Bad = append(out.Bad, Finding{Key: k.Node(name), Problem: err.Error()})
			continue
		}
		out.State.Nodes[name] = p.nodes[name]
	}
	return out, nil
}

// Load reads config, head and nodes of the cluster at one revision.
// Unlike Read it is strict: a value that does not decode or validate is
// an error naming its key.
func Load(ctx context.Context, c clientv3.KV, k keys.Layout, opts ...clientv3.OpOption) (*fold.State, int64, error) {
	p, err := Read(ctx, c, k, opts...)
	if err != nil {
		return nil, 0, err
	}
	if len(p.Bad) > 0 {
		return nil, 0, fmt.Errorf("load projection: %s: %s", p.Bad[0].Key, p.Bad[0].Problem)
	}
	return p.State, p.Revision, nil
}

// Reload decides the state again from the whole retained log and the
// projection (Recover): a bad or wrong projection key, head or guard is
// repaired from the log, a bad value nothing explains is quarantined. A
// fenced store (the leader's) writes the repairs, in fenced transactions
// that also compare each key's mod revision, so a key changed meanwhile
// is left for the next try (ErrConflict); an unfenced one only computes
// its state. Findings returns what it found.
func (s *Store) Reload(ctx context.Context) error {
	snap, err := readSnapshot(ctx, s.c, s.k, s.k.Events())
	if err != nil {
		return err
	}
	rep := Recover(s.k, snap)
	if err := s.repair(ctx, snap, rep); err != nil {
		return err
	}
	s.st, s.rev = rep.State, snap.Revision
	s.findings = rep.Findings
	s.quarantined = map[string]int64{}
	for _, kv := range snap.Nodes {
		if name, err := keys.NameOf(s.k.Nodes(), string(kv.Key)); err == nil && rep.Quarantined[name] {
			s.quarantined[name] = kv.ModRevision
		}
	}
	return nil
}

// Verify compares the projection, the subnet guards and the keys past the
// head with the store's state (the log's fold as the store appended it)
// and, for a fenced store, repairs what differs, like Reload but without
// reading the log. A quarantined key that changed makes it Reload. It
// returns what it found wrong (also in Findings); ErrConflict when a key
// changed between reading and repairing.
func (s *Store) Verify(ctx context.Context) ([]Finding, error) {
	snap, err := readSnapshot(ctx, s.c, s.k, s.k.Event(s.st.Head+1))
	if err != nil {
		return nil, err
	}
	rep, changed := verify(s.k, snap, s.st, s.quarantined)
	if changed {
		if err := s.Reload(ctx); err != nil {
			return nil, err
		}
		return s.findings, nil
	}
	// Damaged events found by the last Reload are still damaged: Verify
	// does not read the log below the head.
	for _, f := range s.findings {
		if strings.HasPrefix(f.Key, s.k.Events()) && !f.Repaired {
			rep.Findings = append(rep.Findings, f)
		}
	}
	if err := s.repair(ctx, snap, rep); err != nil {
		return nil, err
	}
	s.findings = rep.Findings
	return rep.Findings, nil
}

// Quarantined reports whether node name's projection value is
// quarantined: bad, and explained by nothing retained, so it is not in
// State and its key and guards are left as they are.
func (s *Store) Quarantined(name string) bool {
	_, ok := s.quarantined[name]
	return ok
}

// Findings returns what the last Reload or Verify found wrong.
func (s *Store) Findings() []Finding { return slices.Clone(s.findings) }

// repair writes rep's puts and deletes when the store is fenced, each
// transaction comparing the fence and the mod revision every key had in
// snap.
func (s *Store) repair(ctx context.Context, snap *Snapshot, rep *Repair) error {
	if s.opt.Fence == nil || len(rep.Puts)+len(rep.Deletes) == 0 {
		return nil
	}
	modRev := map[string]int64{}
	for _, kvs := range [][]*mvccpb.KeyValue{snap.Nodes, snap.Events, snap.Guards, {snap.Config, snap.Head}} {
		for _, kv := range kvs {
			if kv != nil {
				modRev[string(kv.Key)] = kv.ModRevision
			}
		}
	}
	var ops []clientv3.Op
	var cmps []clientv3.Cmp
	for _, key := range slices.Sorted(maps.Keys(rep.Puts)) {
		ops = append(ops, clientv3.OpPut(key, rep.Puts[key]))
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", modRev[key]))
	}
	for _, key := range rep.Deletes {
		ops = append(ops, clientv3.OpDelete(key))
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", modRev[key]))
	}
	step := max(1, s.opt.MaxOps-1)
	for len(ops) > 0 {
		n := min(step, len(ops))
		r, err := s.c.Txn(ctx).If(append(slices.Clone(s.cmps), cmps[:n]...)...).Then(ops[:n]...).Else(s.diagnose()...).Commit()
		if err != nil {
			return fmt.Errorf("repair projection: %w", err)
		}
		if !r.Succeeded {
			if cause := s.cause(r, 0); errors.Is(cause, ErrNotLeader) {
				return fmt.Errorf("repair projection: %w", ErrNotLeader)
			}
			return fmt.Errorf("repair projection: %w: a key changed while it was repaired", ErrConflict)
		}
		ops, cmps = ops[n:], cmps[n:]
	}
	for _, f := range rep.Findings {
		if f.Repaired {
			s.log.Warn("repaired from the log", "key", f.Key, "problem", f.Problem)
			if s.opt.Repaired != nil {
				s.opt.Repaired(f)
			}
		}
	}
	return nil
}

// State is the fold of the log as the store knows it. The caller must not
// modify it; it changes with every Append.
func (s *Store) State() *fold.State { return s.st }

// Head is the seq of the last event.
func (s *Store) Head() uint64 { return s.st.Head }

// txn is one planned transaction.
type txn struct {
	events []*weftv1.Event
	cmps   []clientv3.Cmp
	ops    []clientv3.Op
	keys   map[string]bool
	bytes  int
}

// Append writes events (their Seq is assigned, their Time stamped when
// empty) after the head, in as few transactions as etcd's limits allow,
// and folds them into State. It returns how many events it committed; on
// an error the rest were not written. ErrNotLeader and ErrConflict come
// back wrapped after the store re-read its state; other errors are etcd's
// or an event that does not fit the state (nothing written).
func (s *Store) Append(ctx context.Context, events ...*weftv1.Event) (int, error) {
	txns, err := s.plan(events)
	if err != nil {
		return 0, err
	}
	done := 0
	for _, t := range txns {
		if err := s.commit(ctx, t); err != nil {
			return done, err
		}
		done += len(t.events)
	}
	return done, nil
}

// plan assigns seqs and splits events into transactions. It checks every
// event against the state without changing it.
func (s *Store) plan(events []*weftv1.Event) ([]*txn, error) {
	// pending: nodes as the events so far leave them (nil: removed).
	pending := map[string]*weftv1.Node{}
	node := func(name string) *weftv1.Node {
		if n, ok := pending[name]; ok {
			return n
		}
		return s.st.Nodes[name]
	}
	now := s.opt.Now().UTC().Format(time.RFC3339Nano)
	var txns []*txn
	var cur *txn
	seq := s.st.Head
	for _, e := range events {
		seq++
		e.Seq = seq
		if e.Time == "" {
			e.Time = now
		}
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		put := func(k, v string) { ops = append(ops, clientv3.OpPut(k, v)) }
		guard := func(name string, cidrs []string) error {
			for _, c := range cidrs {
				p, err := netip.ParsePrefix(c)
				if err != nil {
					return fmt.Errorf("append seq %d: node %q: %w", seq, name, err)
				}
				g := s.k.Subnet(p)
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(g), "=", 0))
				put(g, name)
			}
			return nil
		}
		unguard := func(cidrs []string) {
			for _, c := range cidrs {
				if p, err := netip.ParsePrefix(c); err == nil {
					ops = append(ops, clientv3.OpDelete(s.k.Subnet(p)))
				}
			}
		}
		// The shared transition decides whether the event fits; the
		// store turns the change into projection keys and subnet guards.
		c, err := fold.Next(seq-1, node, e)
		if err != nil {
			return nil, fmt.Errorf("append: %w", err)
		}
		if s.opt.Absent != nil {
			for _, key := range s.opt.Absent(e) {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
			}
		}
		switch {
		case c.Config != nil:
			put(s.k.Config(), keys.EncodeString(c.Config))
		case c.Node != nil:
			setNodeSeq(e, seq) // the event's node names its event, as the projection's does
			put(s.k.Node(c.Name), keys.EncodeString(c.Node))
			var gone, added []string
			for _, p := range c.Old.GetPodCidrs() {
				if !slices.Contains(c.Node.PodCidrs, p) {
					gone = append(gone, p)
				}
			}
			for _, p := range c.Node.PodCidrs {
				if !slices.Contains(c.Old.GetPodCidrs(), p) {
					added = append(added, p)
				}
			}
			unguard(gone)
			if err := guard(c.Name, added); err != nil {
				return nil, err
			}
			pending[c.Name] = c.Node
		default:
			ops = append(ops, clientv3.OpDelete(s.k.Node(c.Name)))
			unguard(c.Old.PodCidrs)
			pending[c.Name] = nil
		}
		ops = append(ops, clientv3.OpPut(s.k.Event(seq), keys.EncodeString(e)))
		size := 0
		fits := cur != nil
		for _, op := range ops {
			size += len(op.KeyBytes()) + len(op.ValueBytes()) + 32
			if cur != nil && cur.keys[string(op.KeyBytes())] {
				fits = false // etcd refuses a key twice in one txn
			}
		}
		// Reserve one op for the head, two compares for head and fence.
		if fits && (len(cur.ops)+len(ops)+1 > s.opt.MaxOps ||
			len(cur.cmps)+len(cmps)+2 > s.opt.MaxOps ||
			cur.bytes+size > s.opt.MaxBytes) {
			fits = false
		}
		if !fits {
			cur = &txn{keys: map[string]bool{}}
			txns = append(txns, cur)
		}
		cur.events = append(cur.events, e)
		cur.cmps = append(cur.cmps, cmps...)
		cur.ops = append(cur.ops, ops...)
		cur.bytes += size
		for _, op := range ops {
			cur.keys[string(op.KeyBytes())] = true
		}
	}
	return txns, nil
}

func (s *Store) commit(ctx context.Context, t *txn) error {
	start := time.Now()
	prev := s.st.Head
	last := t.events[len(t.events)-1].Seq
	cmps := append(slices.Clone(s.cmps), s.headCmp(prev))
	cmps = append(cmps, t.cmps...)
	ops := append(slices.Clone(t.ops), clientv3.OpPut(s.k.Head(), keys.FormatHead(last)))
	r, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Else(s.diagnose()...).Commit()
	if err != nil {
		return fmt.Errorf("append seqs %d..%d: %w", prev+1, last, err)
	}
	if !r.Succeeded {
		cause := s.cause(r, prev)
		if err := s.Reload(ctx); err != nil {
			return fmt.Errorf("append seqs %d..%d: %w (reload: %v)", prev+1, last, cause, err)
		}
		return fmt.Errorf("append seqs %d..%d: %w", prev+1, last, cause)
	}
	for _, e := range t.events {
		if err := s.st.Apply(e); err != nil {
			// plan checked every event against the state; this is a bug.
			return fmt.Errorf("append seq %d: fold after commit: %w", e.Seq, err)
		}
	}
	s.rev = r.Header.Revision
	if s.opt.Observe != nil {
		s.opt.Observe(len(t.events), time.Since(start))
	}
	return nil
}

func (s *Store) headCmp(prev uint64) clientv3.Cmp {
	if prev == 0 {
		return clientv3.Compare(clientv3.CreateRevision(s.k.Head()), "=", 0)
	}
	return clientv3.Compare(clientv3.Value(s.k.Head()), "=", keys.FormatHead(prev))
}

// diagnose reads, when a compare fails, what the store needs to tell
// not-leader from a moved head.
func (s *Store) diagnose() []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpGet(s.k.Head())}
	if f := s.opt.Fence; f != nil {
		ops = append(ops, clientv3.OpGet(f.Key))
	}
	return ops
}

func (s *Store) cause(r *clientv3.TxnResponse, prev uint64) error {
	if f := s.opt.Fence; f != nil {
		kvs := r.Responses[1].GetResponseRange().Kvs
		if len(kvs) == 0 || kvs[0].CreateRevision != f.Rev {
			return ErrNotLeader
		}
	}
	var head uint64
	if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		head, _ = keys.ParseHead(kvs[0].Value)
	}
	if head != prev {
		return fmt.Errorf("%w: head is %d, expected %d", ErrConflict, head, prev)
	}
	return fmt.Errorf("%w: a subnet guard is already taken, or a key that must be absent exists", ErrConflict)
}

// Put writes a key outside the log (a problem, a config status) under the
// fence.
func (s *Store) Put(ctx context.Context, key, value string) error {
	return s.fenced(ctx, "put "+key, clientv3.OpPut(key, value))
}

// Delete removes a key outside the log under the fence.
func (s *Store) Delete(ctx context.Context, key string) error {
	return s.fenced(ctx, "delete "+key, clientv3.OpDelete(key))
}

// Write applies ops (puts and deletes of keys outside the log, each key
// once) under the fence, in transactions of at most MaxOps-1 operations.
func (s *Store) Write(ctx context.Context, ops []clientv3.Op) error {
	step := max(1, s.opt.MaxOps-1)
	for len(ops) > 0 {
		n := min(step, len(ops))
		if err := s.fenced(ctx, fmt.Sprintf("write %d keys", n), ops[:n]...); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

func (s *Store) fenced(ctx context.Context, what string, ops ...clientv3.Op) error {
	r, err := s.c.Txn(ctx).If(s.cmps...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("%s: %w", what, ErrNotLeader)
	}
	return nil
}

// TrimBatch is how many events one trimming transaction deletes at most.
const TrimBatch = 1000

// Trim deletes the oldest events so that at most keep remain, in
// transactions of at most TrimBatch events. The projection is the
// snapshot, so nothing else changes. It returns how many it deleted.
func (s *Store) Trim(ctx context.Context, keep uint64) (int, error) {
	head := s.st.Head
	if keep == 0 || head <= keep {
		return 0, nil
	}
	cut := head - keep // the last seq to delete
	r, err := s.c.Get(ctx, s.k.Events(), clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("trim events: %w", err)
	}
	if len(r.Kvs) == 0 {
		return 0, nil
	}
	first, err := s.k.EventSeq(string(r.Kvs[0].Key))
	if err != nil {
		return 0, fmt.Errorf("trim events: %w", err)
	}
	deleted := 0
	for first <= cut {
		to := min(cut, first+TrimBatch-1)
		r, err := s.c.Txn(ctx).If(s.cmps...).Then(
			clientv3.OpDelete(s.k.Event(first), clientv3.WithRange(s.k.Event(to+1))),
		).Commit()
		if err != nil {
			return deleted, fmt.Errorf("trim events %d..%d: %w", first, to, err)
		}
		if !r.Succeeded {
			return deleted, fmt.Errorf("trim events %d..%d: %w", first, to, ErrNotLeader)
		}
		deleted += int(r.Responses[0].GetResponseDeleteRange().Deleted)
		first = to + 1
	}
	if deleted > 0 {
		s.log.Debug("trimmed events", "deleted", deleted, "first", cut+1, "head", head)
	}
	return deleted, nil
}

// CloneNode is a helper for callers building events from projected nodes.
func CloneNode(n *weftv1.Node) *weftv1.Node { return proto.Clone(n).(*weftv1.Node) }

// setNodeSeq sets the seq of a NodeAdded's or NodeUpdated's node to the
// event's.
func setNodeSeq(e *weftv1.Event, seq uint64) {
	switch k := e.Kind.(type) {
	case *weftv1.Event_NodeAdded:
		k.NodeAdded.Node.Seq = seq
	case *weftv1.Event_NodeUpdated:
		k.NodeUpdated.Node.Seq = seq
	}
}
