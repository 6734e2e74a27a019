package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/controlplane/ipam"
	"github.com/weftnet/weft/controlplane/source"
	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/internal/backoff"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// inbox collects what the source reports between reconciles. The source's
// callbacks fill it; the leader loop drains it.
type inbox struct {
	mu      sync.Mutex
	synced  bool
	full    []source.Change // latest complete set, when a sync arrived
	syncs   int             // complete sets received
	changes []source.Change
	wake    chan struct{}
}

func (b *inbox) sync(all []source.Change) {
	b.mu.Lock()
	b.full, b.changes, b.synced = all, nil, true
	b.syncs++
	b.mu.Unlock()
	b.poke()
}

func (b *inbox) change(ch source.Change) {
	b.mu.Lock()
	b.changes = append(b.changes, ch)
	b.mu.Unlock()
	b.poke()
}

func (b *inbox) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *inbox) drain() (full []source.Change, changes []source.Change, synced bool, syncs int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	full, changes, synced, syncs = b.full, b.changes, b.synced, b.syncs
	b.full, b.changes = nil, nil
	return
}

// desired is one value of /weft/desired/config.
type desired struct {
	value []byte
	rev   int64
}

// leader is the state of one leadership term.
type leader struct {
	*Controller
	st       *store.Store
	alloc    *ipam.Allocator
	synced   bool
	syncs    int                             // complete sets taken from the source
	present  map[string]bool                 // in the source (valid or not)
	wanted   map[string]*weftv1.Registration // valid registrations
	invalid  map[string]string               // why a present entry is unusable
	goneNow  map[string]bool                 // Gone with Immediate
	goneWhy  map[string]string               // Gone with a reason (Err): recorded as the node's problem
	problems map[string]string               // recorded at /weft/problems/
	// keyProblems are the problem names of stored keys the store found
	// bad and could not repair (quarantined), with their reasons.
	keyProblems map[string]string
	// refused: nodes whose event etcd refused (too large, ...), with why;
	// they stay refused until their registration changes.
	refused map[string]string
	dirty   map[string]bool
	// pending are the desired configs not answered yet, oldest first.
	pending []desired
	// contact tracks whether etcd answers; lost records when each
	// projected node left the source (see removal.go).
	contact *contact
	lost    map[string]time.Time
	retryAt time.Time // reconcile again then (after an error, a removal put off)
	// busyUntil: the source's changes were last served then plus Batch;
	// a change arriving before it waits for the batch window.
	busyUntil time.Time
	// reload: the store must be read again before the next reconcile.
	reload bool
	// swept: the problem entries nobody explains were cleared this term.
	swept bool
	// hold is the per-node update hold-off (holdoff.go); holdC fires at
	// holdAt, when the earliest hold ends.
	hold   *holdoff
	holdAt time.Time
	holdC  <-chan time.Time
	// judged: the registration each projected node was last found to
	// agree with, or had its event appended from. An update of a node
	// whose registration is still that one is the controller's own (a
	// family added to the config, a subnet freed) and takes no token of
	// the hold-off.
	judged map[string]*weftv1.Registration
}

func (c *Controller) lead(ctx context.Context, fence *store.Fence) error {
	k := c.opt.Layout
	st, err := store.Open(ctx, c.opt.Client, k, store.Options{
		Logger: c.opt.Logger, Fence: fence, MaxOps: c.opt.MaxOps, Observe: c.m.observe,
		Repaired: func(f store.Finding) { c.m.Repairs.WithLabelValues(keyKind(k, f.Key)).Inc() },
		// A node is removed only while its entry in the source is
		// absent: one that came back while the removal was decided
		// fails it. Only a source kept in etcd (the registrations) can
		// be compared; with Kubernetes Nodes the registration an agent
		// keeps says nothing about the Node, and requiring its absence
		// would put off a deleted Node's removal for as long as its
		// agent runs.
		Absent: func(e *weftv1.Event) []string {
			ks, ok := c.opt.Source.(source.Keyed)
			if r := e.GetNodeRemoved(); r != nil && ok {
				return []string{ks.Key(r.Name)}
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	l := &leader{
		Controller: c, st: st,
		present: map[string]bool{}, wanted: map[string]*weftv1.Registration{},
		invalid: map[string]string{}, goneNow: map[string]bool{}, goneWhy: map[string]string{},
		problems: map[string]string{}, keyProblems: map[string]string{}, refused: map[string]string{},
		dirty: map[string]bool{}, lost: map[string]time.Time{},
		contact: newContact(time.Now()), hold: newHoldoff(), judged: map[string]*weftv1.Registration{},
	}
	if err := l.loadProblems(ctx); err != nil {
		return err
	}
	if err := l.recordFindings(ctx, st.Findings()); err != nil {
		return err
	}
	if st.State().Config == nil && st.Head() == 0 && c.opt.Initial != nil {
		cfg := validate.WithDefaults(c.opt.Initial)
		if err := validate.Config(cfg); err != nil {
			return fmt.Errorf("initial config: %w", err)
		}
		if _, err := st.Append(ctx, configEvent(cfg)); err != nil {
			return fmt.Errorf("write initial config: %w", err)
		}
		c.log.Info("wrote initial config", "seq", st.Head(), "cluster_cidr", cfg.ClusterCidr, "backend", cfg.Backend)
	}
	if err := l.rebuild(ctx); err != nil {
		return err
	}
	l.metrics()

	in := &inbox{wake: make(chan struct{}, 1)}
	dc := make(chan desired, 16)
	var wg sync.WaitGroup
	sctx, stop := context.WithCancel(ctx)
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() {
		if err := c.opt.Source.Run(sctx, in.sync, in.change); err != nil && sctx.Err() == nil {
			c.log.Error("node source stopped", "error", err)
		}
	})
	wg.Go(func() { c.watchDesired(sctx, dc) })
	wg.Go(func() { l.contact.run(sctx, c.opt.Client, fence.Key, c.opt.ContactInterval, c.log) })

	trim := time.NewTicker(c.opt.TrimInterval)
	defer trim.Stop()
	verify := time.NewTicker(c.opt.VerifyInterval)
	defer verify.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	bo := backoff.New(50*time.Millisecond, 5*time.Second)
	for {
		timer.Reset(l.untilDeadline())
		l.armHold()
		var err error
		select {
		case <-ctx.Done():
			return ctx.Err()
		case d := <-dc:
			l.pending = append(l.pending, d)
			err = l.step(ctx)
		case <-in.wake:
			// Idle: serve the change at once, a lone join waits for
			// nothing but its transaction. Under load (changes served
			// less than Batch ago) let what follows gather into one
			// batch; what arrives during an append is taken together
			// with it either way.
			if time.Now().Before(l.busyUntil) && !backoff.Sleep(ctx, c.opt.Batch) {
				return ctx.Err()
			}
			l.take(in)
			err = l.step(ctx)
			l.busyUntil = time.Now().Add(c.opt.Batch)
		case <-timer.C:
			err = l.step(ctx)
		case <-l.holdC:
			l.holdAt, l.holdC = time.Time{}, nil
			for _, name := range l.hold.due(l.opt.Clock.Now()) {
				l.hold.release(name)
				l.dirty[name] = true
			}
			err = l.step(ctx)
		case <-trim.C:
			if cfg := l.st.State().Config; cfg != nil {
				_, err = l.st.Trim(ctx, uint64(cfg.EventRetention))
			}
		case <-verify.C:
			err = l.verify(ctx)
		}
		switch {
		case err == nil:
			bo.Reset()
		case errors.Is(err, store.ErrNotLeader), ctx.Err() != nil:
			return err
		default:
			// Nothing in the store ends a term: a conflict, a repair that
			// raced a hand edit or an etcd that does not answer are
			// retried with backoff, after reading the store again.
			d := bo.Next()
			c.log.Warn("leader step failed; reading the store again", "error", err, "retry_in", d)
			l.reload = true
			l.retryAt = time.Now().Add(d)
		}
		l.metrics()
	}
}

// armHold sets holdC to fire when the earliest hold ends.
func (l *leader) armHold() {
	at := l.hold.next()
	if at.Equal(l.holdAt) {
		return
	}
	l.holdAt, l.holdC = at, nil
	if !at.IsZero() {
		l.holdC = l.opt.Clock.After(at.Sub(l.opt.Clock.Now()))
	}
}

// step reads the store again when it must, answers the pending desired
// configs and reconciles the nodes.
func (l *leader) step(ctx context.Context) error {
	l.retryAt = time.Time{}
	if l.reload {
		if err := l.st.Reload(ctx); err != nil {
			return err
		}
		if err := l.recordFindings(ctx, l.st.Findings()); err != nil {
			return err
		}
		if err := l.rebuild(ctx); err != nil {
			return err
		}
		l.reload = false
	}
	for len(l.pending) > 0 {
		if err := l.configRequest(ctx, l.pending[0]); err != nil {
			return err
		}
		l.pending = l.pending[1:]
	}
	return l.reconcile(ctx)
}

// verify compares the projection with the log's fold, repairs it, and
// records what stays bad.
func (l *leader) verify(ctx context.Context) error {
	findings, err := l.st.Verify(ctx)
	if err != nil {
		return err
	}
	if err := l.recordFindings(ctx, findings); err != nil {
		return err
	}
	if len(findings) > 0 {
		return l.rebuild(ctx)
	}
	return nil
}

func (l *leader) metrics() {
	l.m.Head.Set(float64(l.st.Head()))
	l.m.Nodes.Set(float64(len(l.st.State().Nodes)))
	l.m.Problems.Set(float64(len(l.problems)))
	l.m.Quarantined.Set(float64(len(l.keyProblems)))
	l.m.NodesHeld.Set(float64(l.hold.held()))
}

// keyKind is the first path element of key below the prefix: "config",
// "head", "nodes", "events", "subnets".
func keyKind(k keys.Layout, key string) string {
	kind, _, _ := strings.Cut(strings.TrimPrefix(key, k.Root()), "/")
	return kind
}

// keyProblem is the name under /weft/problems/ of a problem with a
// stored key: "key:" and the key's path below the prefix with ":" for
// "/". A node name cannot hold ":", so the two never collide.
func (l *leader) keyProblem(key string) string {
	return "key:" + strings.ReplaceAll(strings.TrimPrefix(key, l.opt.Layout.Root()), "/", ":")
}

// recordFindings puts a problem entry for every key the store left
// quarantined and clears the entries of keys that are fine again.
func (l *leader) recordFindings(ctx context.Context, findings []store.Finding) error {
	now := map[string]string{}
	for _, f := range findings {
		if f.Repaired {
			continue
		}
		name := l.keyProblem(f.Key)
		now[name] = fmt.Sprintf("%s: %s", f.Key, f.Problem)
		if l.keyProblems[name] != now[name] {
			l.log.Error("stored value quarantined", "key", f.Key, "problem", f.Problem)
		}
	}
	changes := map[string]string{}
	for name := range l.keyProblems {
		if _, ok := now[name]; !ok {
			changes[name] = ""
		}
	}
	maps.Copy(changes, now)
	if err := l.writeProblems(ctx, changes); err != nil {
		return err
	}
	l.keyProblems = now
	return nil
}

// rebuild makes the allocator again from the projection and marks every
// node for reconciling.
func (l *leader) rebuild(ctx context.Context) error {
	l.alloc = nil
	st := l.st.State()
	if st.Config == nil {
		return nil
	}
	a, err := ipam.New(validate.WithDefaults(st.Config))
	if err != nil {
		return fmt.Errorf("allocator from config in force: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(st.Nodes)) {
		if err := a.Restore(name, st.Nodes[name].PodCidrs); err != nil {
			l.log.Error("projection holds a subnet the allocator refuses", "node", name, "error", err)
		}
	}
	// A guard no projected node explains (a hand edit, or the guard of a
	// quarantined node) would make every append that allocates its
	// subnet fail: keep that subnet out of use until an operator removes
	// the guard (weftctl check names it).
	k := l.opt.Layout
	r, err := l.opt.Client.Get(ctx, k.Subnets(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read subnet guards: %w", err)
	}
	for _, kv := range r.Kvs {
		name, err := keys.NameOf(k.Subnets(), string(kv.Key))
		if err != nil {
			continue
		}
		p, err := keys.ParseSubnetName(name)
		if err != nil {
			continue
		}
		if o, ok := a.Owner(p); ok && o == string(kv.Value) {
			continue
		}
		if a.Restore("stray-guard/"+p.String(), []string{p.String()}) == nil {
			l.log.Warn("subnet guard without its node; subnet kept out of use", "key", string(kv.Key), "owner", fmt.Sprintf("%.64q", kv.Value))
		}
	}
	l.alloc = a
	for name := range st.Nodes {
		l.dirty[name] = true
	}
	for name := range l.present {
		l.dirty[name] = true
	}
	return nil
}

func (l *leader) take(in *inbox) {
	full, changes, synced, syncs := in.drain()
	if full != nil {
		if syncs > 1 && syncs != l.syncs {
			// The source listed again: its watch broke, so the
			// controller may have missed registrations coming back.
			// Removals count from now (removal.go).
			l.contact.regained(time.Now())
			l.log.Info("node source listed again; grace periods of departed nodes count from now")
		}
		l.syncs = syncs
		// A complete set: anything not in it is gone.
		for name := range l.present {
			l.dirty[name] = true
		}
		l.present = map[string]bool{}
		l.wanted = map[string]*weftv1.Registration{}
		l.invalid = map[string]string{}
		l.goneWhy = map[string]string{}
		for _, ch := range full {
			l.apply(ch)
		}
		for name := range l.st.State().Nodes {
			l.dirty[name] = true
		}
	}
	for _, ch := range changes {
		l.apply(ch)
	}
	l.synced = synced
}

func (l *leader) apply(ch source.Change) {
	l.dirty[ch.Name] = true
	switch ch.Kind {
	case source.Upsert:
		l.present[ch.Name] = true
		l.wanted[ch.Name] = ch.Registration
		delete(l.invalid, ch.Name)
		delete(l.goneNow, ch.Name)
		delete(l.goneWhy, ch.Name)
		delete(l.refused, ch.Name)
	case source.Invalid:
		l.present[ch.Name] = true
		delete(l.wanted, ch.Name)
		l.invalid[ch.Name] = fmt.Sprintf("registration skipped: %v", ch.Err)
		delete(l.goneNow, ch.Name)
		delete(l.goneWhy, ch.Name)
	case source.Gone:
		delete(l.present, ch.Name)
		delete(l.wanted, ch.Name)
		delete(l.invalid, ch.Name)
		delete(l.refused, ch.Name)
		if ch.Immediate {
			l.goneNow[ch.Name] = true
		}
		delete(l.goneWhy, ch.Name)
		if ch.Err != nil {
			l.goneWhy[ch.Name] = fmt.Sprintf("not in the network: %v", ch.Err)
		}
	}
}

func (l *leader) loadProblems(ctx context.Context) error {
	k := l.opt.Layout
	r, err := l.opt.Client.Get(ctx, k.Problems(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("load problems: %w", err)
	}
	for _, kv := range r.Kvs {
		name, err := keys.NameOf(k.Problems(), string(kv.Key))
		if err != nil {
			continue
		}
		p, err := keys.DecodeProblem(kv.Value)
		if err != nil {
			l.problems[name] = "?"
			continue
		}
		l.problems[name] = p.Reason
	}
	return nil
}

// sweepProblems clears the problem entries nobody explains any more: not
// a node the source reports or the projection holds, not a stored key
// that is still bad. Called once the first complete set is reconciled,
// it removes what a former leader left and entries written by hand.
func (l *leader) sweepProblems(ctx context.Context) error {
	changes := map[string]string{}
	for name := range l.problems {
		if l.present[name] || l.st.State().Nodes[name] != nil || l.goneWhy[name] != "" {
			// A source that says why a node is gone (outside the
			// Kubernetes node selector) explains its entry.
			continue
		}
		if _, ok := l.keyProblems[name]; ok {
			continue
		}
		l.log.Info("clearing a problem nobody explains", "key", l.opt.Layout.Problem(name))
		changes[name] = ""
	}
	return l.writeProblems(ctx, changes)
}

// maxReason bounds a problem's reason (a bad value's decode error may
// quote much of it).
const maxReason = 2048

// writeProblems records (reason != "") or clears (reason == "") the
// problem of each named node or key, writing only what changed, in few
// transactions.
func (l *leader) writeProblems(ctx context.Context, changes map[string]string) error {
	k := l.opt.Layout
	var ops []clientv3.Op
	next := maps.Clone(l.problems)
	for _, name := range slices.Sorted(maps.Keys(changes)) {
		reason := changes[name]
		old, had := l.problems[name]
		switch {
		case reason == "" && had:
			ops = append(ops, clientv3.OpDelete(k.Problem(name)))
			delete(next, name)
		case reason != "" && reason != old:
			if len(reason) > maxReason {
				reason = reason[:maxReason] + "..."
			}
			p := &weftv1.Problem{Subject: name, Reason: reason, Time: time.Now().UTC().Format(time.RFC3339)}
			ops = append(ops, clientv3.OpPut(k.Problem(name), keys.EncodeString(p)))
			next[name] = reason
			if !strings.HasPrefix(name, "key:") {
				l.log.Warn("node problem", "key", k.Registration(name), "reason", reason)
			}
		}
	}
	if err := l.st.Write(ctx, ops); err != nil {
		return err
	}
	l.problems = next
	return nil
}

func configEvent(cfg *weftv1.ClusterConfig) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{Config: cfg}}}
}
