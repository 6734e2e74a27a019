// Package controller is weft's controller: it campaigns for leadership
// and, while leader, turns what the node source reports and what operators
// ask for at /weft/desired/config into events in the log.
//
// Reconciling is level-triggered: the controller keeps the registrations
// the source reports, compares them with the projection and appends
// NodeAdded, NodeUpdated and NodeRemoved; registrations that arrive
// together are appended together in few transactions.
package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/controlplane/ipam"
	"github.com/weftnet/weft/controlplane/regsource"
	"github.com/weftnet/weft/controlplane/source"
	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Options configure a Controller. Client is required.
type Options struct {
	Client *clientv3.Client
	Layout keys.Layout
	// Source reports nodes; default the registration source.
	Source source.Source
	// Initial is the config written as the first event when the log is
	// empty. It must have passed validate.Config after WithDefaults.
	// When nil, the controller waits for a desired config.
	Initial *weftv1.ClusterConfig
	// ElectionTTL is the election session's TTL; default 10s.
	ElectionTTL time.Duration
	// ID is this candidate's value in the election; default hostname+pid.
	ID      string
	Logger  hclog.Logger
	Metrics *Metrics
	// GraceUnit is the length of one node_grace_seconds unit; default a
	// second. Tests shorten it.
	GraceUnit time.Duration
	// Batch is how long the controller lets changes gather before it
	// reconciles them; default 20ms.
	Batch time.Duration
	// TrimInterval is how often the log is trimmed to event_retention;
	// default 30s.
	TrimInterval time.Duration
	// MaxOps bounds an append transaction (see store.Options).
	MaxOps int
}

// Controller is one candidate leader. Run it with Run.
type Controller struct {
	opt    Options
	log    hclog.Logger
	m      *Metrics
	leader atomic.Bool
}

// New returns a controller.
func New(opt Options) *Controller {
	if opt.Logger == nil {
		opt.Logger = hclog.NewNullLogger()
	}
	if opt.Layout.Prefix == "" {
		opt.Layout = keys.New("")
	}
	if opt.Source == nil {
		opt.Source = regsource.New(opt.Client, opt.Layout, opt.Logger)
	}
	if opt.ElectionTTL <= 0 {
		opt.ElectionTTL = 10 * time.Second
	}
	if opt.ID == "" {
		h, _ := os.Hostname()
		opt.ID = fmt.Sprintf("%s/%d", h, os.Getpid())
	}
	if opt.GraceUnit <= 0 {
		opt.GraceUnit = time.Second
	}
	if opt.Batch <= 0 {
		opt.Batch = 20 * time.Millisecond
	}
	if opt.TrimInterval <= 0 {
		opt.TrimInterval = 30 * time.Second
	}
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(nil)
	}
	return &Controller{opt: opt, log: opt.Logger.Named("controller"), m: opt.Metrics}
}

// IsLeader reports whether the controller leads now.
func (c *Controller) IsLeader() bool { return c.leader.Load() }

// Run campaigns and leads until ctx ends; losing leadership starts a new
// campaign. It resigns when ctx ends and returns nil then; other errors
// are etcd failures it could not get past.
func (c *Controller) Run(ctx context.Context) error {
	for {
		err := c.term(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.log.Warn("leadership ended; campaigning again", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Controller) term(ctx context.Context) error {
	ttl := max(1, int(c.opt.ElectionTTL.Seconds()))
	sess, err := concurrency.NewSession(c.opt.Client, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election session: %w", err)
	}
	defer sess.Close() // revokes the lease: the next leader need not wait the TTL
	el := concurrency.NewElection(sess, c.opt.Layout.Election())
	if err := el.Campaign(ctx, fmt.Sprintf(`{"controller":%q}`, c.opt.ID)); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	c.log.Info("leading", "id", c.opt.ID, "key", el.Key(), "rev", el.Rev())
	c.leader.Store(true)
	c.m.Leader.Set(1)
	defer func() {
		c.leader.Store(false)
		c.m.Leader.Set(0)
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = el.Resign(rctx)
	}()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	err = c.lead(lctx, &store.Fence{Key: el.Key(), Rev: el.Rev()})
	if errors.Is(err, store.ErrNotLeader) {
		c.log.Warn("deposed: the election key is no longer ours")
	}
	return err
}

// inbox collects what the source reports between reconciles. The source's
// callbacks fill it; the leader loop drains it.
type inbox struct {
	mu      sync.Mutex
	synced  bool
	full    []source.Change // latest complete set, when a sync arrived
	changes []source.Change
	wake    chan struct{}
}

func (b *inbox) sync(all []source.Change) {
	b.mu.Lock()
	b.full, b.changes, b.synced = all, nil, true
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

func (b *inbox) drain() (full []source.Change, changes []source.Change, synced bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	full, changes, synced = b.full, b.changes, b.synced
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
	present  map[string]bool                 // in the source (valid or not)
	wanted   map[string]*weftv1.Registration // valid registrations
	invalid  map[string]string               // why a present entry is unusable
	goneNow  map[string]bool                 // Gone with Immediate
	goneWhy  map[string]string               // Gone with a reason (Err): recorded as the node's problem
	problems map[string]string               // recorded at /weft/problems/
	dirty    map[string]bool
	retryAt  time.Time // reconcile again then (after a conflict)
}

func (c *Controller) lead(ctx context.Context, fence *store.Fence) error {
	k := c.opt.Layout
	st, err := store.Open(ctx, c.opt.Client, k, store.Options{
		Logger: c.opt.Logger, Fence: fence, MaxOps: c.opt.MaxOps, Observe: c.m.observe,
	})
	if err != nil {
		return err
	}
	l := &leader{
		Controller: c, st: st,
		present: map[string]bool{}, wanted: map[string]*weftv1.Registration{},
		invalid: map[string]string{}, goneNow: map[string]bool{}, goneWhy: map[string]string{},
		problems: map[string]string{}, dirty: map[string]bool{},
	}
	if err := l.loadProblems(ctx); err != nil {
		return err
	}
	if st.State().Config == nil && c.opt.Initial != nil {
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
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := c.opt.Source.Run(sctx, in.sync, in.change); err != nil && sctx.Err() == nil {
			c.log.Error("node source stopped", "error", err)
		}
	}()
	go func() {
		defer wg.Done()
		c.watchDesired(sctx, dc)
	}()

	trim := time.NewTicker(c.opt.TrimInterval)
	defer trim.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		timer.Reset(l.untilDeadline())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case d := <-dc:
			if err = l.configRequest(ctx, d); err == nil {
				// A first or changed config may let waiting nodes in.
				err = l.reconcile(ctx)
			}
		case <-in.wake:
			// Let simultaneous registrations gather into one batch.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(c.opt.Batch):
			}
			l.take(in)
			err = l.reconcile(ctx)
		case <-timer.C:
			err = l.reconcile(ctx)
		case <-trim.C:
			if cfg := l.st.State().Config; cfg != nil {
				_, err = l.st.Trim(ctx, uint64(cfg.EventRetention))
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, store.ErrConflict):
			// Someone else wrote (or a guard was hand-edited): the store
			// re-read itself; decide everything again.
			c.log.Warn("append conflict; re-reading", "error", err)
			if err := l.rebuild(ctx); err != nil {
				return err
			}
			l.retryAt = time.Now().Add(50 * time.Millisecond)
		default:
			return err
		}
		l.metrics()
	}
}

func (l *leader) metrics() {
	l.m.Head.Set(float64(l.st.Head()))
	l.m.Nodes.Set(float64(len(l.st.State().Nodes)))
	l.m.Problems.Set(float64(len(l.problems)))
}

// rebuild makes the allocator again from the projection and marks every
// node for reconciling.
func (l *leader) rebuild(ctx context.Context) error {
	l.alloc = nil
	st := l.st.State()
	if st.Config == nil {
		return nil
	}
	a, err := ipam.New(st.Config)
	if err != nil {
		return fmt.Errorf("allocator from config in force: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(st.Nodes)) {
		if err := a.Restore(name, st.Nodes[name].PodCidrs); err != nil {
			l.log.Error("projection holds a subnet the allocator refuses", "node", name, "error", err)
		}
	}
	// A guard no projected node explains (a hand edit) would make every
	// append that allocates its subnet fail: keep that subnet out of use
	// until an operator removes the guard (weftctl check names it).
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
			l.log.Warn("subnet guard without its node; subnet kept out of use", "subnet", p, "owner", string(kv.Value))
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
	full, changes, synced := in.drain()
	if full != nil {
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
		if ch.Immediate {
			l.goneNow[ch.Name] = true
		}
		delete(l.goneWhy, ch.Name)
		if ch.Err != nil {
			l.goneWhy[ch.Name] = fmt.Sprintf("not in the network: %v", ch.Err)
		}
	}
}

func (l *leader) grace() time.Duration {
	return time.Duration(l.st.State().Config.GetNodeGraceSeconds()) * l.opt.GraceUnit
}

func (l *leader) untilDeadline() time.Duration {
	wait := time.Hour
	if !l.retryAt.IsZero() {
		wait = time.Until(l.retryAt)
	}
	if l.alloc != nil {
		if d, ok := l.alloc.NextDeadline(); ok {
			wait = min(wait, time.Until(d))
		}
	}
	return max(wait, time.Millisecond)
}

// reconcile compares the dirty nodes with the projection, appends the
// events that make them agree, and removes nodes whose grace ended.
func (l *leader) reconcile(ctx context.Context) error {
	l.retryAt = time.Time{}
	if l.alloc == nil || !l.synced {
		return nil
	}
	cfg := l.st.State().Config
	nodes := l.st.State().Nodes
	now := time.Now()
	var events []*weftv1.Event
	var removed []string
	problems := map[string]string{} // changes to l.problems: "" clears
	for _, name := range slices.Sorted(maps.Keys(l.dirty)) {
		proj := nodes[name]
		if reason, ok := l.invalid[name]; ok {
			problems[name] = reason
			continue
		}
		reg, ok := l.wanted[name]
		if !ok {
			// A source that says why a node is gone (outside the
			// Kubernetes node selector) has the reason recorded.
			problems[name] = l.goneWhy[name]
			switch {
			case proj == nil:
			case l.goneNow[name]:
				reason := "deleted from the node source"
				if why := l.goneWhy[name]; why != "" {
					reason = why
				}
				events = append(events, removedEvent(name, reason))
				removed = append(removed, name)
			default:
				l.alloc.Leave(name, now.Add(l.grace()))
			}
			continue
		}
		if err := overlap(cfg, reg); err != nil {
			problems[name] = fmt.Sprintf("registration skipped: %v", err)
			continue
		}
		var pins []netip.Prefix
		for _, s := range reg.PinnedPodCidrs {
			pins = append(pins, netip.MustParsePrefix(s)) // validated by the source
		}
		cidrs, err := l.alloc.Allocate(name, pins)
		if err != nil {
			problems[name] = fmt.Sprintf("no pod CIDR: %v", err)
			continue
		}
		n := nodeFrom(reg, cidrs)
		switch {
		case proj == nil:
			events = append(events, &weftv1.Event{Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{Node: n}}})
		case !sameNode(proj, n):
			events = append(events, &weftv1.Event{Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{Node: n}}})
		}
		problems[name] = ""
	}
	clear(l.dirty)
	for _, name := range l.alloc.Expired(now) {
		if l.present[name] || nodes[name] == nil {
			continue
		}
		events = append(events, removedEvent(name, fmt.Sprintf("registration expired and stayed away for the grace period of %s", l.grace())))
		removed = append(removed, name)
	}
	if len(events) > 0 {
		start := l.st.Head()
		n, err := l.st.Append(ctx, events...)
		if err != nil {
			l.log.Warn("append failed", "committed", n, "of", len(events), "error", err)
			// The allocator handed out subnets for events that were not
			// written: rebuild it from the projection.
			if rerr := l.rebuild(ctx); rerr != nil {
				return rerr
			}
			return err
		}
		l.log.Debug("appended", "events", n, "from", start+1, "head", l.st.Head())
		for _, e := range events {
			l.logEvent(e)
		}
		for _, name := range removed {
			l.alloc.Release(name)
			delete(l.goneNow, name)
		}
	}
	if err := l.writeProblems(ctx, problems); err != nil {
		return err
	}
	if len(removed) > 0 {
		// Freed subnets: try again the nodes that are waiting for one.
		retry := false
		for name := range l.problems {
			if l.wanted[name] != nil {
				l.dirty[name], retry = true, true
			}
		}
		if retry {
			return l.reconcile(ctx)
		}
	}
	return nil
}

func (l *leader) logEvent(e *weftv1.Event) {
	switch k := e.Kind.(type) {
	case *weftv1.Event_NodeAdded:
		l.log.Info("node added", "seq", e.Seq, "node", k.NodeAdded.Node.Name, "pod_cidrs", k.NodeAdded.Node.PodCidrs)
	case *weftv1.Event_NodeUpdated:
		l.log.Info("node updated", "seq", e.Seq, "node", k.NodeUpdated.Node.Name, "underlay_ip", k.NodeUpdated.Node.UnderlayIp)
	case *weftv1.Event_NodeRemoved:
		l.log.Info("node removed", "seq", e.Seq, "node", k.NodeRemoved.Name, "reason", k.NodeRemoved.Reason)
	}
}

// overlap refuses a node whose underlay address lies inside a cluster
// CIDR: its tunnel packets would be routed into the overlay itself.
func overlap(cfg *weftv1.ClusterConfig, r *weftv1.Registration) error {
	a, err := netip.ParseAddr(r.UnderlayIp)
	if err != nil {
		return err
	}
	a = a.Unmap()
	for _, s := range []string{cfg.ClusterCidr, cfg.ClusterCidrV6} {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(a) {
			return fmt.Errorf("%w: underlay_ip: %s is inside the cluster CIDR %s", validate.ErrInvalid, a, p)
		}
	}
	return nil
}

func nodeFrom(r *weftv1.Registration, cidrs []netip.Prefix) *weftv1.Node {
	n := &weftv1.Node{
		Name:         r.Name,
		UnderlayIp:   netip.MustParseAddr(r.UnderlayIp).Unmap().String(),
		VtepMac:      r.VtepMac,
		Capabilities: slices.Clone(r.Capabilities),
		Asn:          r.Asn,
	}
	for _, p := range cidrs {
		n.PodCidrs = append(n.PodCidrs, p.String())
	}
	return n
}

func sameNode(a, b *weftv1.Node) bool {
	a = proto.Clone(a).(*weftv1.Node)
	b = proto.Clone(b).(*weftv1.Node)
	a.Seq, b.Seq = 0, 0
	return proto.Equal(a, b)
}

func removedEvent(name, reason string) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: name, Reason: reason}}}
}

func configEvent(cfg *weftv1.ClusterConfig) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{Config: cfg}}}
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

// writeProblems records (reason != "") or clears (reason == "") the
// problem of each named node, writing only what changed, in few
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
			p := &weftv1.Problem{Subject: name, Reason: reason, Time: time.Now().UTC().Format(time.RFC3339)}
			ops = append(ops, clientv3.OpPut(k.Problem(name), keys.EncodeString(p)))
			next[name] = reason
			l.log.Warn("node problem", "node", name, "reason", reason)
		}
	}
	if err := l.st.Write(ctx, ops); err != nil {
		return err
	}
	l.problems = next
	return nil
}
