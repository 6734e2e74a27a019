// Package logtest writes weft's event log into a real etcd the way the
// controller does (event, head and projection in one transaction guarded
// by the head), so the agent's tests do not import controlplane. It also
// writes the faults a broken or hostile writer could leave: gaps, garbage
// values, trimmed events.
package logtest

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Log appends to the log under one prefix.
type Log struct {
	C    *clientv3.Client
	K    keys.Layout
	head uint64
}

// New returns a writer for prefix that continues after the current head.
func New(ctx context.Context, c *clientv3.Client, prefix string) (*Log, error) {
	l := &Log{C: c, K: keys.New(prefix)}
	r, err := c.Get(ctx, l.K.Head())
	if err != nil {
		return nil, fmt.Errorf("read head: %w", err)
	}
	if len(r.Kvs) > 0 {
		if l.head, err = keys.ParseHead(r.Kvs[0].Value); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Head is the seq of the last event written.
func (l *Log) Head() uint64 { return l.head }

// Append writes e as the next event with its projection changes, in one
// transaction that requires the head to be unchanged. It returns the
// event's seq.
func (l *Log) Append(ctx context.Context, e *weftv1.Event) (uint64, error) {
	e = proto.Clone(e).(*weftv1.Event)
	seq := l.head + 1
	e.Seq = seq
	if e.Time == "" {
		e.Time = time.Now().UTC().Format(time.RFC3339Nano)
	}
	ops := []clientv3.Op{
		clientv3.OpPut(l.K.Event(seq), keys.EncodeString(e)),
		clientv3.OpPut(l.K.Head(), keys.FormatHead(seq)),
	}
	switch k := e.Kind.(type) {
	case *weftv1.Event_ConfigChanged:
		ops = append(ops, clientv3.OpPut(l.K.Config(), keys.EncodeString(validate.WithDefaults(k.ConfigChanged.Config))))
	case *weftv1.Event_NodeAdded:
		ops = append(ops, l.putNode(seq, k.NodeAdded.Node))
	case *weftv1.Event_NodeUpdated:
		ops = append(ops, l.putNode(seq, k.NodeUpdated.Node))
	case *weftv1.Event_NodeRemoved:
		ops = append(ops, clientv3.OpDelete(l.K.Node(k.NodeRemoved.Name)))
	}
	return seq, l.commit(ctx, seq, ops)
}

func (l *Log) putNode(seq uint64, n *weftv1.Node) clientv3.Op {
	n = proto.Clone(n).(*weftv1.Node)
	n.Seq = seq
	return clientv3.OpPut(l.K.Node(n.Name), keys.EncodeString(n))
}

func (l *Log) headCmp() clientv3.Cmp {
	if l.head == 0 {
		return clientv3.Compare(clientv3.CreateRevision(l.K.Head()), "=", 0)
	}
	return clientv3.Compare(clientv3.Value(l.K.Head()), "=", keys.FormatHead(l.head))
}

func (l *Log) commit(ctx context.Context, seq uint64, ops []clientv3.Op) error {
	r, err := l.C.Txn(ctx).If(l.headCmp()).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("append event %d: %w", seq, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("append event %d: head is not %d", seq, l.head)
	}
	l.head = seq
	return nil
}

// AppendRaw writes value as event seq (which may leave a gap) and moves
// the head to seq, with extra projection ops, without checking anything.
func (l *Log) AppendRaw(ctx context.Context, seq uint64, value []byte, extra ...clientv3.Op) error {
	ops := append([]clientv3.Op{
		clientv3.OpPut(l.K.Event(seq), string(value)),
		clientv3.OpPut(l.K.Head(), keys.FormatHead(seq)),
	}, extra...)
	return l.commit(ctx, seq, ops)
}

// Trim deletes the events with seq up to and including upto, as the
// controller does past its retention bound.
func (l *Log) Trim(ctx context.Context, upto uint64) error {
	_, err := l.C.Delete(ctx, l.K.Events(), clientv3.WithRange(l.K.Event(upto+1)))
	if err != nil {
		return fmt.Errorf("trim events to %d: %w", upto, err)
	}
	return nil
}

// Seed writes a projection of cfg and nodes with the head at head and no
// events (as if every event had been trimmed), in batches. It is the fast
// way to set up thousands of nodes for benchmarks.
func (l *Log) Seed(ctx context.Context, head uint64, cfg *weftv1.ClusterConfig, nodes []*weftv1.Node) error {
	ops := []clientv3.Op{clientv3.OpPut(l.K.Config(), keys.EncodeString(validate.WithDefaults(cfg)))}
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		if _, err := l.C.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("seed projection: %w", err)
		}
		ops = ops[:0]
		return nil
	}
	for _, n := range nodes {
		n = proto.Clone(n).(*weftv1.Node)
		if n.Seq == 0 {
			n.Seq = head
		}
		ops = append(ops, clientv3.OpPut(l.K.Node(n.Name), keys.EncodeString(n)))
		if len(ops) == 100 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	ops = append(ops, clientv3.OpPut(l.K.Head(), keys.FormatHead(head)))
	if err := flush(); err != nil {
		return err
	}
	l.head = head
	return nil
}

// Config is a ConfigChanged event.
func Config(c *weftv1.ClusterConfig) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{Config: c}}}
}

// Added is a NodeAdded event.
func Added(name, ip string, cidrs ...string) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{Node: &weftv1.Node{Name: name, UnderlayIp: ip, PodCidrs: cidrs}}}}
}

// Updated is a NodeUpdated event.
func Updated(name, ip string, cidrs ...string) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{Node: &weftv1.Node{Name: name, UnderlayIp: ip, PodCidrs: cidrs}}}}
}

// Removed is a NodeRemoved event.
func Removed(name string) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: name, Reason: "test"}}}
}
