// Package garbage writes bad values under a weft prefix by hand, the way a
// careless operator with etcdctl or an attacker with write access would:
// one or more for every key kind of the layout (docs/DESIGN.md). Tests use
// it to prove that every component keeps serving everything else and
// names the key; a chaos command can call Inject the same way.
//
// Inject never needs a running weft component: it reads what it corrupts
// (the head, a node's value) straight from etcd and returns an Injected
// that can put the old value back.
package garbage

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Kind is a key kind of the layout.
type Kind string

// The key kinds, one per row of the layout table in docs/DESIGN.md.
const (
	Config        Kind = "config"
	DesiredConfig Kind = "desired-config"
	Events        Kind = "events"
	Head          Kind = "head"
	Nodes         Kind = "nodes"
	Subnets       Kind = "subnets"
	Registrations Kind = "registrations"
	Status        Kind = "status"
	Problems      Kind = "problems"
	Election      Kind = "election"
)

// Variant is the kind of damage.
type Variant string

// The variants. Not every variant applies to every kind (see Cases).
const (
	// NotJSON: a value that is not JSON at all.
	NotJSON Variant = "not-json"
	// WrongTypes: JSON whose fields have the wrong types.
	WrongTypes Variant = "wrong-types"
	// Huge: a 1 MiB value that decodes (a huge string field).
	Huge Variant = "huge"
	// OutOfRange: a value that decodes but a field is out of range (an
	// invalid CIDR, a VNI above 2^24).
	OutOfRange Variant = "out-of-range"
	// Gap: an event written well past the head.
	Gap Variant = "gap"
	// Overlap: a value claiming a pod CIDR another node holds.
	Overlap Variant = "overlap"
	// NoLease: a registration put without a lease.
	NoLease Variant = "no-lease"
	// DupUnderlay: a registration claiming another node's underlay IP.
	DupUnderlay Variant = "duplicate-underlay"
)

// Case is one kind of garbage.
type Case struct {
	Kind    Kind
	Variant Variant
}

func (c Case) String() string { return string(c.Kind) + "/" + string(c.Variant) }

// Cases lists every garbage Inject knows, by kind in layout order.
func Cases() []Case {
	return []Case{
		{Config, NotJSON}, {Config, WrongTypes}, {Config, Huge}, {Config, OutOfRange},
		{DesiredConfig, NotJSON}, {DesiredConfig, WrongTypes}, {DesiredConfig, Huge}, {DesiredConfig, OutOfRange},
		{Events, NotJSON}, {Events, WrongTypes}, {Events, Huge}, {Events, Gap}, {Events, Overlap},
		{Head, NotJSON}, {Head, WrongTypes}, {Head, Huge},
		{Nodes, NotJSON}, {Nodes, WrongTypes}, {Nodes, Huge}, {Nodes, OutOfRange}, {Nodes, Overlap},
		{Subnets, NotJSON}, {Subnets, WrongTypes}, {Subnets, Huge},
		{Registrations, NotJSON}, {Registrations, WrongTypes}, {Registrations, Huge}, {Registrations, OutOfRange},
		{Registrations, Overlap}, {Registrations, NoLease}, {Registrations, DupUnderlay},
		{Status, NotJSON}, {Status, WrongTypes}, {Status, Huge},
		{Problems, NotJSON}, {Problems, WrongTypes}, {Problems, Huge},
		{Election, NotJSON}, {Election, Huge},
	}
}

// HugeSize is the size of a Huge value: 1 MiB, under etcd's default
// request limit of 1.5 MiB so etcd takes it, over everything weft accepts.
const HugeSize = 1 << 20

// Target says what Inject works on.
type Target struct {
	// Node is an existing node whose value Inject corrupts (nodes, status)
	// or whose pod CIDR or underlay IP the garbage claims (overlap,
	// duplicate underlay). Required for those.
	Node string
	// Name names new keys (a registration, a problem, a status, an
	// election candidate); default "garbage".
	Name string
	// LeaseTTL is the TTL in seconds of the lease a registration is put
	// on (not for NoLease); default 60.
	LeaseTTL int64
}

// Injected is what Inject wrote.
type Injected struct {
	Case Case
	// Key is the key written.
	Key string
	// Size is the length of the value written.
	Size int
	// Lease is the lease the value was put on, 0 if none.
	Lease clientv3.LeaseID
	// old is the value before (nil: the key did not exist).
	old []byte
	// rev is the revision of the put: Undo touches the key only while it
	// still holds the garbage.
	rev int64
}

// ErrNotApplicable: the case needs something the store does not hold (a
// node to corrupt, an event to follow).
var ErrNotApplicable = errors.New("garbage: case not applicable")

// Inject writes the garbage of case c under layout k and returns what it
// wrote.
func Inject(ctx context.Context, cli *clientv3.Client, k keys.Layout, c Case, t Target) (*Injected, error) {
	if t.Name == "" {
		t.Name = "garbage"
	}
	if t.LeaseTTL <= 0 {
		t.LeaseTTL = 60
	}
	key, value, lease, err := build(ctx, cli, k, c, t)
	if err != nil {
		return nil, fmt.Errorf("inject %s: %w", c, err)
	}
	in := &Injected{Case: c, Key: key, Size: len(value)}
	r, err := cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("inject %s: read %s: %w", c, key, err)
	}
	if len(r.Kvs) > 0 {
		in.old = r.Kvs[0].Value
	}
	var opts []clientv3.OpOption
	if lease {
		g, err := cli.Grant(ctx, t.LeaseTTL)
		if err != nil {
			return nil, fmt.Errorf("inject %s: grant lease: %w", c, err)
		}
		in.Lease = g.ID
		opts = append(opts, clientv3.WithLease(g.ID))
	}
	p, err := cli.Put(ctx, key, value, opts...)
	if err != nil {
		return nil, fmt.Errorf("inject %s: put %s: %w", c, key, err)
	}
	in.rev = p.Header.Revision
	return in, nil
}

// Undo puts the old value back (or deletes the key when there was none)
// and revokes the lease Inject granted. A key that was written since
// Inject (a controller repaired it, or appended the event of that seq)
// keeps what was written: putting the old value back would undo the
// repair, deleting it would cut the log.
func (in *Injected) Undo(ctx context.Context, cli *clientv3.Client) error {
	op := clientv3.OpDelete(in.Key)
	if in.old != nil {
		op = clientv3.OpPut(in.Key, string(in.old))
	}
	unchanged := clientv3.Compare(clientv3.ModRevision(in.Key), "=", in.rev)
	if _, err := cli.Txn(ctx).If(unchanged).Then(op).Commit(); err != nil {
		return fmt.Errorf("undo %s: %w", in.Case, err)
	}
	if in.Lease != 0 {
		if _, err := cli.Revoke(ctx, in.Lease); err != nil {
			return fmt.Errorf("undo %s: revoke lease: %w", in.Case, err)
		}
	}
	return nil
}

// hugeString is n bytes of 'x'.
func hugeString(n int) string { return strings.Repeat("x", n) }

// build returns the key and value of case c, and whether the value goes on
// a lease.
func build(ctx context.Context, cli *clientv3.Client, k keys.Layout, c Case, t Target) (key, value string, lease bool, err error) {
	notJSON := "not json {"
	huge := hugeString(HugeSize)
	switch c.Kind {
	case Config, DesiredConfig:
		key = k.Config()
		if c.Kind == DesiredConfig {
			key = k.DesiredConfig()
		}
		switch c.Variant {
		case NotJSON:
			value = notJSON
		case WrongTypes:
			value = `{"cluster_cidr": 10, "vni": "one"}`
		case Huge:
			value = `{"cluster_cidr":"10.244.0.0/16","backend":"` + huge + `"}`
		case OutOfRange:
			value = `{"cluster_cidr":"10.244.0.0/16","vni":99999999}`
		}
	case Events:
		head, err := readHead(ctx, cli, k)
		if err != nil {
			return "", "", false, err
		}
		key = k.Event(head + 1)
		switch c.Variant {
		case NotJSON:
			value = notJSON
		case WrongTypes:
			value = `{"seq":"next","node_added":[1,2]}`
		case Huge:
			e := nodeEvent(head+1, &weftv1.Node{Name: t.Name, UnderlayIp: "10.99.0.250", Capabilities: []string{huge}})
			value = keys.EncodeString(e)
		case Gap:
			key = k.Event(head + 5)
			value = keys.EncodeString(nodeEvent(head+5, &weftv1.Node{Name: t.Name, UnderlayIp: "10.99.0.250"}))
		case Overlap:
			n, err := readNode(ctx, cli, k, t.Node)
			if err != nil {
				return "", "", false, err
			}
			value = keys.EncodeString(nodeEvent(head+1, &weftv1.Node{Name: t.Name, UnderlayIp: "10.99.0.250", PodCidrs: n.PodCidrs}))
		}
	case Head:
		key = k.Head()
		switch c.Variant {
		case NotJSON:
			value = "not a seq"
		case WrongTypes:
			value = "-1"
		case Huge:
			value = strings.Repeat("9", HugeSize)
		}
	case Nodes:
		if t.Node == "" {
			return "", "", false, fmt.Errorf("%w: no node to corrupt", ErrNotApplicable)
		}
		n, err := readNode(ctx, cli, k, t.Node)
		if err != nil {
			return "", "", false, err
		}
		key = k.Node(t.Node)
		switch c.Variant {
		case NotJSON:
			value = notJSON
		case WrongTypes:
			value = fmt.Sprintf(`{"name": %q, "pod_cidrs": "10.244.9.0/24", "seq": "x"}`, t.Node)
		case Huge:
			n.Capabilities = append(n.Capabilities, huge)
			value = keys.EncodeString(n)
		case OutOfRange:
			n.PodCidrs = []string{"192.0.2.0/24"}
			value = keys.EncodeString(n)
		case Overlap:
			// A node nobody added, holding t.Node's pod CIDR.
			key = k.Node(t.Name)
			value = keys.EncodeString(&weftv1.Node{Name: t.Name, UnderlayIp: "10.99.0.250", PodCidrs: n.PodCidrs, Seq: n.Seq})
		}
	case Subnets:
		switch c.Variant {
		case NotJSON:
			key, value = k.Subnets()+"not-a-cidr", notJSON
		case WrongTypes:
			// A guard for a free subnet naming a node that does not exist.
			key, value = k.Subnet(netip.MustParsePrefix("10.244.250.0/24")), `{"owner": 5}`
		case Huge:
			key, value = k.Subnet(netip.MustParsePrefix("10.244.251.0/24")), huge
		}
	case Registrations:
		key, lease = k.Registration(t.Name), true
		r := &weftv1.Registration{Name: t.Name, UnderlayIp: "10.99.0.250"}
		switch c.Variant {
		case NotJSON:
			value = notJSON
		case WrongTypes:
			value = fmt.Sprintf(`{"name": %q, "underlay_ip": 12, "capabilities": "all"}`, t.Name)
		case Huge:
			r.Capabilities = []string{huge}
			value = keys.EncodeString(r)
		case OutOfRange:
			r.UnderlayIp = "300.1.2.3"
			value = keys.EncodeString(r)
		case Overlap:
			n, err := readNode(ctx, cli, k, t.Node)
			if err != nil {
				return "", "", false, err
			}
			r.PinnedPodCidrs = n.PodCidrs
			value = keys.EncodeString(r)
		case NoLease:
			lease = false
			value = keys.EncodeString(r)
		case DupUnderlay:
			n, err := readNode(ctx, cli, k, t.Node)
			if err != nil {
				return "", "", false, err
			}
			r.UnderlayIp = n.UnderlayIp
			value = keys.EncodeString(r)
		}
	case Status:
		key = k.Status(t.Name)
		switch c.Variant {
		case NotJSON:
			value = notJSON
		case WrongTypes:
			value = `{"applied_seq": "all", "degraded": "no"}`
		case Huge:
			value = keys.EncodeString(&weftv1.AgentStatus{Name: t.Name, LastError: huge})
		}
	case Problems:
		key = k.Problem(t.Name)
		switch c.Variant {
		case NotJSON:
			value = notJSON
		case WrongTypes:
			value = `{"reason": 5}`
		case Huge:
			value = keys.EncodeString(&weftv1.Problem{Subject: t.Name, Reason: huge})
		}
	case Election:
		// Without a lease, as no controller writes it: a key like this
		// sorts before every later candidate and would hold the election.
		key = k.Election() + "/" + t.Name
		switch c.Variant {
		case NotJSON:
			value = notJSON
		case Huge:
			value = huge
		}
	}
	if key == "" || value == "" {
		return "", "", false, fmt.Errorf("%w: %s", ErrNotApplicable, c)
	}
	return key, value, lease, nil
}

func nodeEvent(seq uint64, n *weftv1.Node) *weftv1.Event {
	n.Seq = seq
	return &weftv1.Event{Seq: seq, Time: "2026-01-01T00:00:00Z", Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{Node: n}}}
}

func readHead(ctx context.Context, cli *clientv3.Client, k keys.Layout) (uint64, error) {
	r, err := cli.Get(ctx, k.Head())
	if err != nil {
		return 0, fmt.Errorf("read head: %w", err)
	}
	if len(r.Kvs) == 0 {
		return 0, nil
	}
	return keys.ParseHead(r.Kvs[0].Value)
}

func readNode(ctx context.Context, cli *clientv3.Client, k keys.Layout, name string) (*weftv1.Node, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: no node named", ErrNotApplicable)
	}
	r, err := cli.Get(ctx, k.Node(name))
	if err != nil {
		return nil, fmt.Errorf("read node %s: %w", name, err)
	}
	if len(r.Kvs) == 0 {
		return nil, fmt.Errorf("%w: node %s not in the projection", ErrNotApplicable, name)
	}
	return keys.DecodeNode(r.Kvs[0].Value)
}
