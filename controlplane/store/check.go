package store

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"

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
	rep.Head, rep.Nodes = proj.State.Head, len(proj.State.Nodes)
	if len(rep.Problems) > 0 {
		// The projection is not what the log says, or cannot be read:
		// the comparisons below would only repeat it. The counts are
		// still what the store holds, so the summary does not say the
		// log is empty when one key is bad.
		for _, kv := range r.Responses[0].GetResponseRange().Kvs {
			if seq, err := k.EventSeq(string(kv.Key)); err == nil {
				if rep.Events == 0 {
					rep.First = seq
				}
				rep.Events++
			}
		}
		rep.Subnets = len(r.Responses[1].GetResponseRange().Kvs)
		rep.Trimmed = rep.First > 1
		return rep, nil
	}
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
			rep.add("%s: holds seq %d", kv.Key, e.Seq)
			continue
		}
		if seq > st.Head {
			rep.add("%s: seq %d is past the head %d: no leader appended it", kv.Key, seq, st.Head)
			continue
		}
		if n := len(events); n > 0 && events[n-1].Seq+1 != seq {
			rep.add("%s: gap: seq %d follows %d", kv.Key, seq, events[n-1].Seq)
		}
		events = append(events, e)
	}
	rep.Events = len(events)
	if len(events) > 0 {
		rep.First = events[0].Seq
		if last := events[len(events)-1].Seq; last != st.Head {
			rep.add("%s: the head is %d but the last event is seq %d", k.Head(), st.Head, last)
		}
	} else if st.Head != 0 {
		rep.add("%s: the head is %d but the log is empty", k.Head(), st.Head)
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
			for _, d := range diffKeys(k, all, st) {
				rep.add("fold of the log != projection: %s", d)
			}
		}
	} else if rep.OK() {
		checkSuffix(rep, k, events, st)
	}

	// Subnet guards against the projection.
	owners, dups := st.Subnets()
	for _, d := range dups {
		rep.add("%s: %s", k.Nodes(), d)
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
			rep.add("%s: node %q holds %s without a subnet guard", k.Subnet(p), o, p)
		}
	}
	return rep, nil
}

// checkSuffix checks a trimmed log: the retained events say what the
// nodes and config they touch must be now.
func checkSuffix(rep *Report, k keys.Layout, events []*weftv1.Event, proj *fold.State) {
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
		rep.add("%s: differs from event %d", k.Config(), lastConfig.Seq)
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
			rep.add("%s: projected but event %d removed it", k.Node(name), e.Seq)
		case want != nil && got == nil:
			rep.add("%s: missing; event %d says it exists", k.Node(name), e.Seq)
		case want != nil && !proto.Equal(nodeWithSeq(want, e.Seq), got):
			rep.add("%s: differs from event %d", k.Node(name), e.Seq)
		}
	}
	first := events[0].Seq
	for name, n := range proj.Nodes {
		if n.Seq > proj.Head {
			rep.add("%s: seq %d after head %d", k.Node(name), n.Seq, proj.Head)
		} else if n.Seq >= first && lastNode[name] == nil {
			rep.add("%s: seq %d but no retained event touches it", k.Node(name), n.Seq)
		} else if n.Seq == 0 {
			rep.add("%s: no seq", k.Node(name))
		}
	}
}

func nodeWithSeq(n *weftv1.Node, seq uint64) *weftv1.Node {
	c := proto.Clone(n).(*weftv1.Node)
	c.Seq = seq
	return c
}

// diffKeys is fold.Diff naming keys: every difference between the fold
// of the log (want) and the projection (got).
func diffKeys(k keys.Layout, want, got *fold.State) []string {
	var d []string
	if want.Head != got.Head {
		d = append(d, fmt.Sprintf("%s: %d, the log's is %d", k.Head(), got.Head, want.Head))
	}
	if !proto.Equal(want.Config, got.Config) {
		d = append(d, k.Config()+": differs")
	}
	for _, n := range slices.Sorted(maps.Keys(want.Nodes)) {
		g, ok := got.Nodes[n]
		switch {
		case !ok:
			d = append(d, k.Node(n)+": missing")
		case !proto.Equal(want.Nodes[n], g):
			d = append(d, k.Node(n)+": differs")
		}
	}
	for _, n := range slices.Sorted(maps.Keys(got.Nodes)) {
		if _, ok := want.Nodes[n]; !ok {
			d = append(d, k.Node(n)+": no event added this node")
		}
	}
	return d
}
