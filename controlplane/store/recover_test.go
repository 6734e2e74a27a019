package store_test

import (
	"context"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/proto/fold"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// fencedStore opens a store fenced by a fresh election key, as the
// leader's is: only a fenced store repairs. The fence of the store
// fencedStore returned before is given up first.
func fencedStore(t *testing.T, c *clientv3.Client) *store.Store {
	t.Helper()
	ctx := context.Background()
	if last != nil {
		last.Close()
	}
	sess, err := concurrency.NewSession(c, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	last = sess
	t.Cleanup(func() { sess.Close(); last = nil })
	e := concurrency.NewElection(sess, k.Election())
	if err := e.Campaign(ctx, `{"controller":"test"}`); err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(ctx, c, k, store.Options{Fence: &store.Fence{Key: e.Key(), Rev: e.Rev()}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var last *concurrency.Session

// TestReloadRepairsFromTheLog damages every projection key kind by hand
// and requires a fenced store's Reload to rewrite each from the log's
// fold (the store then checks out), name each, and leave alone what
// nothing retained explains.
func TestReloadRepairsFromTheLog(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		damage func(c *clientv3.Client)
		key    string // the finding's key
		want   string // in its problem
		ok     bool   // check passes afterwards
		repair bool
	}{
		{"config not json", func(c *clientv3.Client) { c.Put(ctx, k.Config(), "not json {") }, k.Config(), "decode cluster config", true, true},
		{"config differs", func(c *clientv3.Client) {
			c.Put(ctx, k.Config(), `{"cluster_cidr":"10.9.0.0/16","node_mask_size":24,"backend":"vxlan","vni":1,"udp_port":8472}`)
		}, k.Config(), "differs from the log", true, true},
		{"head not a seq", func(c *clientv3.Client) { c.Put(ctx, k.Head(), "not a seq") }, k.Head(), "decode head", true, true},
		{"head moved", func(c *clientv3.Client) { c.Put(ctx, k.Head(), "2") }, k.Head(), "the log's head is 5", true, true},
		{"node not json", func(c *clientv3.Client) { c.Put(ctx, k.Node("n1"), "{") }, k.Node("n1"), "decode node", true, true},
		{"node huge", func(c *clientv3.Client) {
			c.Put(ctx, k.Node("n1"), `{"name":"n1","vtep_mac":"`+strings.Repeat("x", 1<<20)+`"}`)
		},
			k.Node("n1"), "value: 1048", true, true},
		{"node changed", func(c *clientv3.Client) {
			c.Put(ctx, k.Node("n1"), keys.EncodeString(&weftv1.Node{Name: "n1", UnderlayIp: "192.168.0.99", PodCidrs: []string{"10.244.1.0/24"}, Seq: 3}))
		}, k.Node("n1"), "differs from the log's event", true, true},
		{"node deleted", func(c *clientv3.Client) { c.Delete(ctx, k.Node("n2")) }, k.Node("n2"), "missing", true, true},
		{"ghost node", func(c *clientv3.Client) {
			c.Put(ctx, k.Node("ghost"), keys.EncodeString(&weftv1.Node{Name: "ghost", UnderlayIp: "192.168.0.50", PodCidrs: []string{"10.244.50.0/24"}, Seq: 2}))
		}, k.Node("ghost"), "no event added this node", true, true},
		{"event past the head", func(c *clientv3.Client) { c.Put(ctx, k.Event(9), "not json {") }, k.Event(9), "past the head", true, true},
		// A stray written before the head's last write (a later append)
		// is still past the run a leader appended.
		{"event past the head, head written since", func(c *clientv3.Client) {
			c.Put(ctx, k.Event(8), keys.EncodeString(&weftv1.Event{Seq: 8, Kind: removed("n1").Kind}))
			c.Put(ctx, k.Head(), "5")
		}, k.Event(8), "past the head", true, true},
		{"guard deleted", func(c *clientv3.Client) { c.Delete(ctx, k.Subnet(mustPrefix("10.244.1.0/24"))) },
			k.Subnet(mustPrefix("10.244.1.0/24")), "missing", true, true},
		{"guard names another", func(c *clientv3.Client) { c.Put(ctx, k.Subnet(mustPrefix("10.244.1.0/24")), "n2") },
			k.Subnet(mustPrefix("10.244.1.0/24")), "the log gives", true, true},
		// An event below the head cannot be repaired: it is named, the
		// store reads around it and check keeps failing.
		{"damaged event", func(c *clientv3.Client) { c.Put(ctx, k.Event(2), "not json {") }, k.Event(2), "damaged event", false, false},
		// A stray guard nobody explains is left (its subnet out of use).
		{"stray guard", func(c *clientv3.Client) { c.Put(ctx, k.Subnet(mustPrefix("10.244.77.0/24")), "nobody") },
			k.Subnet(mustPrefix("10.244.77.0/24")), "stays out of use", false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, c := etcdtest.New(t)
			w := fencedStore(t, c)
			if _, err := w.Append(ctx, cfgEvent(), added("n1", 1), added("n2", 2), removed("n2")); err != nil {
				t.Fatal(err)
			}
			// n2 comes back so a node exists to delete in "node deleted".
			if _, err := w.Append(ctx, added("n2", 2)); err != nil {
				t.Fatal(err)
			}
			mustCheck(t, c)
			want := w.State().Clone()
			tc.damage(c)
			s := fencedStore(t, c)
			var f *store.Finding
			for _, x := range s.Findings() {
				if x.Key == tc.key {
					f = &x
				}
			}
			if f == nil || !strings.Contains(f.Problem, tc.want) || f.Repaired != tc.repair {
				t.Fatalf("finding for %s = %+v, want %q repaired=%v; all: %v", tc.key, f, tc.want, tc.repair, s.Findings())
			}
			if d := fold.Diff(want, s.State()); d != nil {
				t.Fatalf("state after reload differs from the log's: %v", d)
			}
			rep, err := store.Check(ctx, c, k)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() != tc.ok {
				t.Fatalf("check after reload ok=%v, want %v: %v", rep.OK(), tc.ok, rep.Problems)
			}
			if !tc.ok && !strings.Contains(strings.Join(rep.Problems, "\n"), tc.key) {
				t.Fatalf("check does not name %s: %v", tc.key, rep.Problems)
			}
		})
	}
}

// TestQuarantineWithoutLog: on a trimmed log a bad node value that no
// retained event explains is quarantined: not in the state, its key and
// guard left as they are; Verify leaves it until it changes.
func TestQuarantineWithoutLog(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.New(t)
	w := fencedStore(t, c)
	evs := []*weftv1.Event{cfgEvent(), added("old", 1)}
	for i := range 10 {
		evs = append(evs, added("n"+string(rune('a'+i)), 10+i))
	}
	if _, err := w.Append(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Trim(ctx, 5); err != nil {
		t.Fatal(err)
	}
	c.Put(ctx, k.Node("old"), "not json {")
	s := fencedStore(t, c)
	if s.State().Nodes["old"] != nil || len(s.State().Nodes) != 10 {
		t.Fatalf("state holds %d nodes, old=%v", len(s.State().Nodes), s.State().Nodes["old"])
	}
	fs := s.Findings()
	if len(fs) != 1 || fs[0].Key != k.Node("old") || fs[0].Repaired || !strings.Contains(fs[0].Problem, "no retained event") {
		t.Fatalf("findings %v", fs)
	}
	r, _ := c.Get(ctx, k.Node("old"))
	if string(r.Kvs[0].Value) != "not json {" {
		t.Fatalf("quarantined key rewritten: %q", r.Kvs[0].Value)
	}
	if fs, err := s.Verify(ctx); err != nil || len(fs) != 1 || fs[0].Repaired {
		t.Fatalf("verify: %v %v", fs, err)
	}
	// The operator writes a good value: the next Verify reloads and
	// takes it.
	c.Put(ctx, k.Node("old"), keys.EncodeString(&weftv1.Node{Name: "old", UnderlayIp: "192.168.0.2", PodCidrs: []string{"10.244.1.0/24"}, Seq: 2}))
	if fs, err := s.Verify(ctx); err != nil || len(fs) != 0 {
		t.Fatalf("verify after the fix: %v %v", fs, err)
	}
	if s.State().Nodes["old"] == nil {
		t.Fatal("fixed node not taken")
	}
}

// TestVerifyRepairsFromState: Verify rewrites what a hand edit changed
// since the last Reload, from the store's own state.
func TestVerifyRepairsFromState(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.New(t)
	s := fencedStore(t, c)
	if _, err := s.Append(ctx, cfgEvent(), added("n1", 1)); err != nil {
		t.Fatal(err)
	}
	c.Put(ctx, k.Node("n1"), "{")
	c.Put(ctx, k.Config(), "{")
	c.Put(ctx, k.Event(7), "junk")
	fs, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 3 {
		t.Fatalf("findings %v", fs)
	}
	for _, f := range fs {
		if !f.Repaired {
			t.Fatalf("not repaired: %v", f)
		}
	}
	mustCheck(t, c)
	// An unfenced store computes but writes nothing.
	c.Put(ctx, k.Node("n1"), "{")
	u, err := store.Open(ctx, c, k, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if u.State().Nodes["n1"] == nil {
		t.Fatal("unfenced store lost n1")
	}
	if r, _ := c.Get(ctx, k.Node("n1")); string(r.Kvs[0].Value) != "{" {
		t.Fatal("unfenced store wrote a repair")
	}
}
