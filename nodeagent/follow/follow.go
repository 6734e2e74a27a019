// Package follow follows weft's event log in etcd the way etcd's
// mirror.Syncer does: read a base (config, head and every node) at one
// revision R, hand it to a Sink, then watch the events from R+1 and hand
// them over in seq order. A gap, a trimmed seq, ErrCompacted or a watch
// that ends makes it list again; an unreachable etcd is retried with
// backoff, never given up on.
package follow

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/backoff"
	"github.com/weftnet/weft/nodeagent/model"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Sink receives the log. Calls are made from the follower's goroutine,
// one at a time, in order: a Reset, then the events after its head, each
// seq exactly once and one past the previous (the follower skips
// duplicates and re-lists on a gap itself), so a sink may pass them on to
// another goroutine and return at once.
type Sink interface {
	// Reset replaces the sink's state with a base read at one revision.
	Reset(snap model.Snapshot)
	// Apply hands over one event. An error wrapping model.ErrGap makes the
	// follower re-list; any other error is logged and the event skipped
	// (the sink records refusals itself).
	Apply(seq uint64, value []byte) error
}

// Re-list reasons, as passed to Options.OnRelist and used as metric labels.
const (
	ReasonStart      = "start"
	ReasonGap        = "gap"
	ReasonTrimmed    = "trimmed"
	ReasonCompacted  = "compacted"
	ReasonWatchEnded = "watch_ended"
	// ReasonRewritten: an event the follower had already handed over was
	// written again (by hand, or by the controller over a value it did not
	// write); the log below the head changed, so the projection is read.
	ReasonRewritten = "rewritten"
	// ReasonChanged: a projection value the sink could not use changed
	// (Options.Quarantined), e.g. the controller repaired it.
	ReasonChanged = "changed"
)

// Options tune a Follower. Every field is optional.
type Options struct {
	Logger hclog.Logger
	// OnRelist is called after each successful list with its reason.
	OnRelist func(reason string)
	// OnHealth is called with nil once a list succeeded and the watch is
	// set up, and with the error each time etcd could not be read.
	OnHealth func(err error)
	// OnHead is called with each head seq the follower learns: the head
	// of each list and the seq of each watched event.
	OnHead func(seq uint64)
	// RequestTimeout bounds each read (default 5 s).
	RequestTimeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay while etcd is
	// unreachable (defaults 100 ms and 5 s).
	MinBackoff, MaxBackoff time.Duration
	// PageSize is the number of nodes read per request (default
	// DefaultPageSize).
	PageSize int64
	// Quarantined, when set, names the projection keys the sink could not
	// use at the last list. The follower reads them every RecheckInterval
	// (default 2 s) while there are any, and lists again as soon as one
	// changed, so a repaired value is used within seconds.
	Quarantined     func() []string
	RecheckInterval time.Duration
}

// DefaultPageSize is how many nodes a list reads per request. etcd's
// Range counts every key left in the range for its reply's count (etcd
// 3.7's treeIndex.Revisions with withTotalCount), so a list of N nodes in
// pages of P walks about N²/2P keys of etcd's index besides the N it
// returns: 5,000 nodes in pages of 1,000 walk 15,000, in one page 5,000
// (follow's list of 5,000 nodes against etcd in another process:
// 24.5–25.1 ms in pages of 1,000, 18.2–19.3 ms in one page with the
// client's larger flow-control window, etcdconn.Window). A page of 5,000
// nodes is about 1 MB.
const DefaultPageSize = 5000

// Follower follows one cluster's log. Create it with New and call Run once.
type Follower struct {
	c    *clientv3.Client
	k    keys.Layout
	opts Options
	log  hclog.Logger
}

// New returns a follower of the log under layout k.
func New(c *clientv3.Client, k keys.Layout, opts Options) *Follower {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.OnRelist == nil {
		opts.OnRelist = func(string) {}
	}
	if opts.OnHealth == nil {
		opts.OnHealth = func(error) {}
	}
	if opts.OnHead == nil {
		opts.OnHead = func(uint64) {}
	}
	if opts.Quarantined == nil {
		opts.Quarantined = func() []string { return nil }
	}
	if opts.RecheckInterval <= 0 {
		opts.RecheckInterval = 2 * time.Second
	}
	return &Follower{c: c, k: k, opts: opts, log: opts.Logger}
}

// errRelist carries the reason a watch session ended.
type errRelist struct{ reason string }

func (e errRelist) Error() string { return "re-list: " + e.reason }

// Run lists and follows until ctx ends, then returns ctx.Err(). It never
// returns because etcd is unreachable.
func (f *Follower) Run(ctx context.Context, sink Sink) error {
	reason := ReasonStart
	bo := backoff.New(f.opts.MinBackoff, f.opts.MaxBackoff)
	for {
		// The watch lives as long as this round: list opens it as soon
		// as the revision is fixed, so events after the base arrive while
		// the nodes are still being read.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		snap, wch, err := f.list(ctx, wctx)
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			f.opts.OnHealth(err)
			d := bo.Next()
			f.log.Warn("etcd unreachable, datapath left as it is; retrying", "error", err, "in", d)
			if !backoff.Sleep(ctx, d) {
				return ctx.Err()
			}
			continue
		}
		bo.Reset()
		sink.Reset(snap)
		f.opts.OnHead(snap.Head)
		f.opts.OnRelist(reason)
		f.log.Debug("listed", "reason", reason, "revision", snap.Revision, "head", snap.Head, "nodes", snap.Len())
		f.opts.OnHealth(nil)

		// The watch needs the snapshot's revision and head only: passing
		// those, not snap, lets its decoded nodes (a map of thousands,
		// now the sink's) go as soon as the sink is done with them.
		err = f.watch(ctx, sink, snap.Revision, snap.Head, wch)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var r errRelist
		if errors.As(err, &r) {
			reason = r.reason
		} else {
			reason = ReasonWatchEnded
		}
		f.log.Info("re-listing", "reason", reason, "error", err)
	}
}

// list reads config, head and every node at one revision R, and opens
// the watch of the events from R+1 on wctx as soon as R is known: with
// thousands of nodes the pages take the longest, and an event written
// meanwhile (this node's own NodeAdded, at a cold start) is then already
// waiting when the base is in.
func (f *Follower) list(ctx, wctx context.Context) (model.Snapshot, clientv3.WatchChan, error) {
	rctx, cancel := context.WithTimeout(ctx, f.opts.RequestTimeout)
	defer cancel()
	tr, err := f.c.Txn(rctx).Then(clientv3.OpGet(f.k.Head()), clientv3.OpGet(f.k.Config())).Commit()
	if err != nil {
		return model.Snapshot{}, nil, fmt.Errorf("read head and config: %w", err)
	}
	snap := model.Snapshot{Revision: tr.Header.Revision, Decoded: map[string]model.NodeValue{}}
	wch := f.c.Watch(wctx, f.k.Events(), clientv3.WithPrefix(), clientv3.WithRev(snap.Revision+1))
	if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		if snap.Head, err = keys.ParseHead(kvs[0].Value); err != nil {
			// A broken head is no reason to stop serving; the events
			// themselves carry the seqs the model checks.
			f.log.Error("ignoring unreadable head", "error", err)
		}
	}
	if kvs := tr.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		snap.Config = kvs[0].Value
	}

	if err := f.listNodes(rctx, &snap); err != nil {
		return model.Snapshot{}, nil, err
	}
	if config, names := model.Suspects(&snap); config || len(names) > 0 {
		if err := f.fromLog(rctx, &snap, config, names); err != nil {
			return model.Snapshot{}, nil, err
		}
	}
	return snap, wch, nil
}

// listNodes reads every node at the snapshot's revision into
// snap.Decoded, a page at a time: each page is decoded while the next is
// read, and no page's bytes are kept.
func (f *Follower) listNodes(ctx context.Context, snap *model.Snapshot) error {
	prefix := f.k.Nodes()
	end := clientv3.GetPrefixRangeEnd(prefix)
	type page struct {
		r   *clientv3.GetResponse
		err error
	}
	read := func(from string) <-chan page {
		c := make(chan page, 1)
		go func() {
			r, err := f.c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(snap.Revision),
				clientv3.WithLimit(f.opts.PageSize), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
			c <- page{r, err}
		}()
		return c
	}
	next := read(prefix)
	for next != nil {
		p := <-next
		if p.err != nil {
			return fmt.Errorf("read nodes at revision %d: %w", snap.Revision, p.err)
		}
		kvs := p.r.Kvs
		next = nil
		if p.r.More && len(kvs) > 0 {
			next = read(string(kvs[len(kvs)-1].Key) + "\x00")
		}
		for _, kv := range kvs {
			name, err := keys.NameOf(prefix, string(kv.Key))
			if err != nil {
				f.log.Warn("ignoring key under nodes", "error", err)
				continue
			}
			snap.Decoded[name] = model.DecodeNode(kv.Value)
		}
	}
	return nil
}

// fromLog reads the retained log at the snapshot's revision and records
// what it says about the suspect config and nodes: the value of the last
// event touching each (snap.FromLog, snap.LogConfig). Events that do not
// decode are skipped; the model validates what it takes.
func (f *Follower) fromLog(ctx context.Context, snap *model.Snapshot, config bool, names []string) error {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	snap.FromLog = map[string]model.LogValue{}
	prefix := f.k.Events()
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	for {
		r, err := f.c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(snap.Revision),
			clientv3.WithLimit(f.opts.PageSize), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return fmt.Errorf("read events at revision %d: %w", snap.Revision, err)
		}
		for _, kv := range r.Kvs {
			seq, err := f.k.EventSeq(string(kv.Key))
			if err != nil || seq > snap.Head {
				continue
			}
			e, err := keys.DecodeEvent(kv.Value)
			if err != nil || e.Seq != seq {
				continue
			}
			switch k := e.Kind.(type) {
			case *weftv1.Event_ConfigChanged:
				if config && k.ConfigChanged.GetConfig() != nil {
					snap.LogConfig = keys.Encode(k.ConfigChanged.Config)
				}
			case *weftv1.Event_NodeAdded:
				if n := k.NodeAdded.GetNode(); want[n.GetName()] {
					snap.FromLog[n.Name] = model.LogValue{Node: keys.Encode(n), Seq: seq}
				}
			case *weftv1.Event_NodeUpdated:
				if n := k.NodeUpdated.GetNode(); want[n.GetName()] {
					snap.FromLog[n.Name] = model.LogValue{Node: keys.Encode(n), Seq: seq}
				}
			case *weftv1.Event_NodeRemoved:
				if want[k.NodeRemoved.GetName()] {
					snap.FromLog[k.NodeRemoved.Name] = model.LogValue{Seq: seq}
				}
			}
		}
		if !r.More || len(r.Kvs) == 0 {
			break
		}
		from = string(r.Kvs[len(r.Kvs)-1].Key) + "\x00"
	}
	f.log.Warn("projection values the agent cannot use; read the log for them", "config", config, "nodes", names, "found", len(snap.FromLog))
	return nil
}

// changed reports whether any of keys was written (or deleted) after
// revision rev.
func (f *Follower) changed(ctx context.Context, keys []string, rev int64) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, f.opts.RequestTimeout)
	defer cancel()
	ops := make([]clientv3.Op, 0, len(keys))
	for _, k := range keys {
		ops = append(ops, clientv3.OpGet(k, clientv3.WithKeysOnly()))
	}
	r, err := f.c.Txn(rctx).Then(ops...).Commit()
	if err != nil {
		return false, err
	}
	for _, resp := range r.Responses {
		kvs := resp.GetResponseRange().Kvs
		if len(kvs) == 0 || kvs[0].ModRevision > rev {
			return true, nil
		}
	}
	return false, nil
}

// watch follows the events of wch (from the list's revision rev+1, the
// list's head seq head) until it must re-list.
func (f *Follower) watch(ctx context.Context, sink Sink, rev int64, head uint64, wch clientv3.WatchChan) error {
	applied := head
	recheck := time.NewTicker(f.opts.RecheckInterval)
	defer recheck.Stop()
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-recheck.C:
			if ks := f.opts.Quarantined(); len(ks) > 0 {
				if changed, err := f.changed(ctx, ks, rev); err == nil && changed {
					return errRelist{ReasonChanged}
				}
			}
			continue
		case resp, ok = <-wch:
		}
		if !ok {
			return errRelist{ReasonWatchEnded}
		}
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return errRelist{ReasonCompacted}
			}
			return fmt.Errorf("watch events: %w", err)
		}
		if resp.Canceled {
			return errRelist{ReasonWatchEnded}
		}
		for _, ev := range resp.Events {
			seq, err := f.k.EventSeq(string(ev.Kv.Key))
			if err != nil {
				f.log.Warn("ignoring key under events", "error", err)
				continue
			}
			if ev.Type == clientv3.EventTypeDelete {
				// Trimming removes old events; one we have not applied
				// yet is lost to us, so the projection is the only truth.
				if seq > applied {
					return errRelist{ReasonTrimmed}
				}
				continue
			}
			f.opts.OnHead(seq)
			if seq <= applied {
				// The watch starts after the list's revision, so this is
				// no replay: an event below the head was written again.
				f.log.Warn("an event already applied was written again", "seq", seq, "applied", applied)
				return errRelist{ReasonRewritten}
			}
			err = nil
			if seq == applied+1 {
				err = sink.Apply(seq, ev.Kv.Value)
			} else {
				err = model.ErrGap
			}
			switch {
			case errors.Is(err, model.ErrGap):
				f.log.Warn("gap in the event log", "seq", seq, "applied", applied)
				return errRelist{ReasonGap}
			case err != nil:
				f.log.Error("event not applied", "seq", seq, "error", err)
			}
			applied = seq
		}
	}
}
