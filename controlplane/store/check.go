package store

import (
	"context"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/fold"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Report is the result of Check.
type Report struct {
	Revision int64    `json:"revision"`
	Head     uint64   `json:"head"`
	First    uint64   `json:"first_seq"` // 0 when the log is empty
	Events   int      `json:"events"`
	Nodes    int      `json:"nodes"`
	Subnets  int      `json:"subnets"`
	Trimmed  bool     `json:"trimmed"`
	Problems []string `json:"problems"`
}

// OK reports whether Check found nothing wrong.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

func (r *Report) add(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// Check verifies the store of one cluster at one revision:
//   - every key under the prefix decodes and validates as its kind
//     (validate.Stored): each bad one is named with the field at fault;
//   - event keys and seqs agree, and seqs are contiguous up to the head;
//   - when the log is untrimmed (it starts at seq 1) the fold of every
//     event equals the projection (config, nodes, head) exactly;
//   - when it is trimmed, every node and the config that a retained event
//     touches equals what the last such event says, and every projected
//     node changed at or after the first retained seq is explained by one;
//   - every subnet guard is owned by exactly one projected node that lists
//     that CIDR, and every projected node's CIDR is guarded.
//
// It returns an error only when etcd cannot be read; what it finds wrong
// is in Report.Problems.
func Check(ctx context.Context, c *clientv3.Client, k keys.Layout) (*Report, error) {
	r, err := c.Txn(ctx).Then(
		clientv3.OpGet(k.Events(), clientv3.WithPrefix()),
		clientv3.OpGet(k.Subnets(), clientv3.WithPrefix()),
		clientv3.OpGet(k.Root(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("check store: %w", err)
	}
	rep := &Report{Revision: r.Header.Revision}
	proj, err := Read(ctx, c, k, clientv3.WithRev(r.Header.Revision))
	if err != nil {
		return nil, fmt.Errorf("check store: %w", err)
	}
	bad := map[string]bool{}
	for _, kv := range r.Responses[2].GetResponseRange().Kvs {
		if _, err := validate.Stored(k, string(kv.Key), kv.Value, kv.Lease, proj.State.Config); err != nil {
			rep.add("%.400s", err.Error())
			bad[string(kv.Key)] = true
		}
	}
	for _, f := range proj.Bad {
		if !bad[f.Key] {
			rep.add("%s: %.400s", f.Key, f.Problem)
		}
	}
	if len(rep.Problems) > 0 {
		// The projection is not what the log says, or cannot be read:
		// the comparisons below would only repeat it.
		return rep, nil
	}
	rep.Head, rep.Nodes = proj.State.Head, len(proj.State.Nodes)
	st := proj.State

	var events []*weftv1.Event
	for _, kv := range r.Responses[0].GetResponseRange().Kvs {
		seq, err := k.EventSeq(string(kv.Key))
		if err != nil {
			rep.add("%v", err)
			continue
		}
		e, err := keys.DecodeEvent(kv.Value)
		if err != nil {
			continue // named above
		}
		if e.Seq != seq {
			rep.add("event key %d holds seq %d", seq, e.Seq)
			continue
		}
		if n := len(events); n > 0 && events[n-1].Seq+1 != seq {
			rep.add("gap: seq %d follows %d", seq, events[n-1].Seq)
		}
		events = append(events, e)
	}
	rep.Events = len(events)
	if len(events) > 0 {
		rep.First = events[0].Seq
		if last := events[len(events)-1].Seq; last != st.Head {
			rep.add("last event is seq %d but head is %d", last, st.Head)
		}
	} else if st.Head != 0 {
		rep.add("head is %d but the log is empty", st.Head)
	}
	rep.Trimmed = rep.First > 1

	if rep.OK() && !rep.Trimmed {
		all := fold.New()
		for _, e := range events {
			if err := all.Apply(e); err != nil {
				rep.add("%v", err)
				break
			}
		}
		if rep.OK() {
			for _, d := range fold.Diff(all, st) {
				rep.add("fold of the log != projection: %s", d)
			}
		}
	} else if rep.OK() {
		checkSuffix(rep, events, st)
	}

	// Subnet guards against the projection.
	owners, dups := st.Subnets()
	for _, d := range dups {
		rep.add("%s", d)
	}
	guarded := map[netip.Prefix]bool{}
	for _, kv := range r.Responses[1].GetResponseRange().Kvs {
		rep.Subnets++
		name, err := keys.NameOf(k.Subnets(), string(kv.Key))
		if err != nil {
			rep.add("%v", err)
			continue
		}
		p, err := keys.ParseSubnetName(name)
		if err != nil {
			rep.add("%v", err)
			continue
		}
		guarded[p] = true
		switch o, ok := owners[p]; {
		case !ok:
			rep.add("subnet guard %s %s (owner %.64q) belongs to no projected node", kv.Key, p, kv.Value)
		case o != string(kv.Value):
			rep.add("subnet guard %s %s names %.64q but node %q holds it", kv.Key, p, kv.Value, o)
		}
	}
	for p, o := range owners {
		if !guarded[p] {
			rep.add("node %q holds %s without a subnet guard", o, p)
		}
	}
	return rep, nil
}

// checkSuffix checks a trimmed log: the retained events say what the
// nodes and config they touch must be now.
func checkSuffix(rep *Report, events []*weftv1.Event, proj *fold.State) {
	lastNode := map[string]*weftv1.Event{}
	var lastConfig *weftv1.Event
	for _, e := range events {
		switch k := e.Kind.(type) {
		case *weftv1.Event_ConfigChanged:
			lastConfig = e
		case *weftv1.Event_NodeAdded:
			lastNode[k.NodeAdded.GetNode().GetName()] = e
		case *weftv1.Event_NodeUpdated:
			lastNode[k.NodeUpdated.GetNode().GetName()] = e
		case *weftv1.Event_NodeRemoved:
			lastNode[k.NodeRemoved.GetName()] = e
		default:
			rep.add("event %d has no kind", e.Seq)
		}
	}
	if lastConfig != nil && !proto.Equal(lastConfig.GetConfigChanged().GetConfig(), proj.Config) {
		rep.add("config differs from event %d", lastConfig.Seq)
	}
	if proj.Config == nil {
		rep.add("trimmed log but no config in force")
	}
	for name, e := range lastNode {
		got := proj.Nodes[name]
		var want *weftv1.Node
		switch k := e.Kind.(type) {
		case *weftv1.Event_NodeAdded:
			want = k.NodeAdded.Node
		case *weftv1.Event_NodeUpdated:
			want = k.NodeUpdated.Node
		}
		switch {
		case want == nil && got != nil:
			rep.add("node %q is projected but event %d removed it", name, e.Seq)
		case want != nil && got == nil:
			rep.add("node %q is missing; event %d says it exists", name, e.Seq)
		case want != nil && !proto.Equal(nodeWithSeq(want, e.Seq), got):
			rep.add("node %q differs from event %d", name, e.Seq)
		}
	}
	first := events[0].Seq
	for name, n := range proj.Nodes {
		if n.Seq > proj.Head {
			rep.add("node %q has seq %d after head %d", name, n.Seq, proj.Head)
		} else if n.Seq >= first && lastNode[name] == nil {
			rep.add("node %q has seq %d but no retained event touches it", name, n.Seq)
		} else if n.Seq == 0 {
			rep.add("node %q has no seq", name)
		}
	}
}

func nodeWithSeq(n *weftv1.Node, seq uint64) *weftv1.Node {
	c := proto.Clone(n).(*weftv1.Node)
	c.Seq = seq
	return c
}
