package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

var k = keys.New("/weft")

func cfgEvent() *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_ConfigChanged{ConfigChanged: &weftv1.ConfigChanged{Config: &weftv1.ClusterConfig{
		ClusterCidr: "10.0.0.0/8", NodeMaskSize: 24, Backend: "vxlan", Vni: 1, UdpPort: 8472, DefaultsApplied: true,
	}}}}
}

func added(name string, i int) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{Node: &weftv1.Node{
		Name: name, UnderlayIp: fmt.Sprintf("192.168.%d.%d", i/250, i%250+1), PodCidrs: []string{fmt.Sprintf("10.244.%d.0/24", i)},
	}}}}
}

func updated(name string, i, cidr int) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{Node: &weftv1.Node{
		Name: name, UnderlayIp: fmt.Sprintf("192.168.9.%d", i+1), PodCidrs: []string{fmt.Sprintf("10.244.%d.0/24", cidr)},
	}}}}
}

func removed(name string) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: name, Reason: "test"}}}
}

func mustCheck(t *testing.T, c *clientv3.Client) *store.Report {
	t.Helper()
	rep, err := store.Check(context.Background(), c, k)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("check: %v", rep.Problems)
	}
	return rep
}

func TestAppendFoldsAndChecks(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	s, err := store.Open(ctx, c, k, store.Options{MaxOps: 10})
	if err != nil {
		t.Fatal(err)
	}
	evs := []*weftv1.Event{cfgEvent()}
	for i := range 20 {
		evs = append(evs, added(fmt.Sprintf("n%d", i), i))
	}
	// n3 is removed and its subnet reused by a new node in the same batch:
	// the same guard key twice forces a transaction split.
	evs = append(evs, removed("n3"), added("late", 3), updated("n4", 4, 40))
	n, err := s.Append(ctx, evs...)
	if err != nil || n != len(evs) {
		t.Fatalf("append: %d, %v", n, err)
	}
	if s.Head() != uint64(len(evs)) {
		t.Fatalf("head %d", s.Head())
	}
	rep := mustCheck(t, c)
	if rep.Nodes != 20 || rep.Subnets != 20 || rep.Head != 24 {
		t.Fatalf("report %+v", rep)
	}
	r, _ := c.Get(ctx, k.Subnet(mustPrefix("10.244.3.0/24")))
	if string(r.Kvs[0].Value) != "late" {
		t.Fatalf("guard of reused subnet: %q", r.Kvs[0].Value)
	}
	// The projection reloaded from etcd equals the fold in memory.
	st, _, err := store.Load(ctx, c, k)
	if err != nil {
		t.Fatal(err)
	}
	if st.Head != s.Head() || len(st.Nodes) != len(s.State().Nodes) {
		t.Fatalf("reloaded %d nodes head %d", len(st.Nodes), st.Head)
	}
	// An event that does not fit the state writes nothing.
	if _, err := s.Append(ctx, added("n1", 1)); err == nil {
		t.Fatal("second NodeAdded of n1 accepted")
	}
	if _, err := s.Append(ctx, removed("nobody")); err == nil {
		t.Fatal("NodeRemoved of unknown node accepted")
	}
	mustCheck(t, c)
}

func TestGuardConflict(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	s, err := store.Open(ctx, c, k, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, cfgEvent()); err != nil {
		t.Fatal(err)
	}
	// A hand-written guard makes the allocation fail instead of doubling
	// the subnet.
	if _, err := c.Put(ctx, k.Subnet(mustPrefix("10.244.7.0/24")), "someone"); err != nil {
		t.Fatal(err)
	}
	_, err = s.Append(ctx, added("a", 7))
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("append over a taken guard: %v", err)
	}
	if s.Head() != 1 {
		t.Fatalf("head moved to %d", s.Head())
	}
}

// TestFencedRace: two stores append concurrently, each under its own
// election; the one deposed without knowing it writes nothing, and the log
// has no gap and no duplicate.
func TestFencedRace(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	fence := func() (*concurrency.Session, *store.Fence) {
		sess, err := concurrency.NewSession(c, concurrency.WithTTL(5))
		if err != nil {
			t.Fatal(err)
		}
		e := concurrency.NewElection(sess, k.Election())
		if err := e.Campaign(ctx, `{"controller":"x"}`); err != nil {
			t.Fatal(err)
		}
		return sess, &store.Fence{Key: e.Key(), Rev: e.Rev()}
	}
	sessA, fa := fence()
	a, err := store.Open(ctx, c, k, store.Options{Fence: fa})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Append(ctx, cfgEvent(), added("a0", 0)); err != nil {
		t.Fatal(err)
	}
	// Depose A behind its back: its lease is revoked, as when it stalls
	// past the TTL. A keeps running with its old fence.
	if _, err := c.Revoke(ctx, sessA.Lease()); err != nil {
		t.Fatal(err)
	}
	sessA.Orphan()
	sessB, fb := fence()
	defer sessB.Close()
	b, err := store.Open(ctx, c, k, store.Options{Fence: fb})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var aWrote, bWrote int
	var aErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 1; i < 40; i++ {
			n, err := a.Append(ctx, added(fmt.Sprintf("a%d", i), i))
			aWrote += n
			if err != nil {
				aErr = err
				if errors.Is(err, store.ErrNotLeader) {
					continue
				}
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 100; i < 140; i++ {
			n, err := b.Append(ctx, added(fmt.Sprintf("b%d", i), i))
			bWrote += n
			if err != nil {
				t.Errorf("leader append: %v", err)
				return
			}
		}
	}()
	wg.Wait()
	if aWrote != 0 || !errors.Is(aErr, store.ErrNotLeader) {
		t.Fatalf("deposed store wrote %d events, last error %v", aWrote, aErr)
	}
	rep := mustCheck(t, c)
	if rep.Head != 2+uint64(bWrote) || bWrote != 40 {
		t.Fatalf("head %d after %d leader writes", rep.Head, bWrote)
	}
}

// TestUnfencedRace: two writers without fences race on the head compare;
// every write either lands at the next seq or fails with ErrConflict.
func TestUnfencedRace(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	s0, _ := store.Open(ctx, c, k, store.Options{})
	if _, err := s0.Append(ctx, cfgEvent()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	total := make([]int, 2)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := store.Open(ctx, c, k, store.Options{})
			if err != nil {
				t.Error(err)
				return
			}
			for i := range 30 {
				name := fmt.Sprintf("w%d-%d", w, i)
				for {
					n, err := s.Append(ctx, added(name, w*100+i))
					total[w] += n
					if err == nil {
						break
					}
					if !errors.Is(err, store.ErrConflict) {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	rep := mustCheck(t, c)
	if rep.Head != 61 || total[0]+total[1] != 60 {
		t.Fatalf("head %d, wrote %v", rep.Head, total)
	}
}

func TestTrim(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	s, _ := store.Open(ctx, c, k, store.Options{})
	evs := []*weftv1.Event{cfgEvent()}
	for i := range 200 {
		evs = append(evs, added(fmt.Sprintf("n%d", i), i))
	}
	// Then 2,300 updates flipping each node between two CIDRs of its
	// own, so old events describe states the projection no longer has.
	for i := 200; i < 2500; i++ {
		j := i % 200
		e := updated(fmt.Sprintf("n%d", j), i%250, j)
		if (i/200)%2 == 1 {
			e.GetNodeUpdated().Node.PodCidrs = []string{fmt.Sprintf("10.245.%d.0/24", j)}
		}
		evs = append(evs, e)
	}
	if _, err := s.Append(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, c)
	n, err := s.Trim(ctx, 300)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2501-300 {
		t.Fatalf("trimmed %d", n)
	}
	rep := mustCheck(t, c)
	if !rep.Trimmed || rep.First != 2202 || rep.Events != 300 || rep.Nodes != 200 {
		t.Fatalf("report after trim %+v", rep)
	}
	// The check of a trimmed log is not blind: corrupt a node the suffix
	// describes and it is found.
	if _, err := c.Put(ctx, k.Node("n199"), keys.EncodeString(&weftv1.Node{Name: "n199", UnderlayIp: "192.168.1.1", PodCidrs: []string{"10.244.199.0/24"}, Seq: rep.Head})); err != nil {
		t.Fatal(err)
	}
	rep, _ = store.Check(ctx, c, k)
	if rep.OK() {
		t.Fatal("check passed a corrupted node")
	}
}

func TestCheckFindsDamage(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	s, _ := store.Open(ctx, c, k, store.Options{})
	if _, err := s.Append(ctx, cfgEvent(), added("a", 1), added("b", 2)); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, c)
	for name, damage := range map[string]func() error{
		"gap": func() error { _, err := c.Delete(ctx, k.Event(2)); return err },
		"orphan guard": func() error {
			_, err := c.Put(ctx, k.Subnet(mustPrefix("10.244.99.0/24")), "ghost")
			return err
		},
		"unguarded":  func() error { _, err := c.Delete(ctx, k.Subnet(mustPrefix("10.244.1.0/24"))); return err },
		"projection": func() error { _, err := c.Delete(ctx, k.Node("b")); return err },
		"head":       func() error { _, err := c.Put(ctx, k.Head(), "7"); return err },
		"outside the layout": func() error {
			_, err := c.Put(ctx, k.Root()+"zzz", "x")
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			snap, _ := c.Get(ctx, k.Root(), clientv3.WithPrefix())
			if err := damage(); err != nil {
				t.Fatal(err)
			}
			rep, err := store.Check(ctx, c, k)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() {
				t.Fatalf("check passed after %s damage", name)
			}
			// A stray key leaves the log and projection whole: the
			// summary still counts them.
			if name == "outside the layout" && (rep.Head != 3 || rep.Events != 3 || rep.First != 1 || rep.Nodes != 2 || rep.Subnets != 2) {
				t.Fatalf("report %+v, want head 3, 3 events from seq 1, 2 nodes, 2 subnets", rep)
			}
			// Restore for the next case.
			if _, err := c.Delete(ctx, k.Root(), clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
			for _, kv := range snap.Kvs {
				if _, err := c.Put(ctx, string(kv.Key), string(kv.Value)); err != nil {
					t.Fatal(err)
				}
			}
			mustCheck(t, c)
		})
	}
}

// TestSplitsToLimits: a batch larger than the op or byte limit goes in
// several transactions, each within the limits, and the log is whole.
func TestSplitsToLimits(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		opt     store.Options
		maxEvts int // per transaction
	}{
		// A join is 3 ops (event, node, guard); one op is the head.
		{"ops", store.Options{MaxOps: 16}, 5},
		// A join is well over 200 bytes of keys and values.
		{"bytes", store.Options{MaxBytes: 4096}, 4096 / 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.Delete(ctx, k.Root(), clientv3.WithPrefix())
			txns, most := 0, 0
			tc.opt.Observe = func(n int, _ time.Duration) { txns, most = txns+1, max(most, n) }
			s, err := store.Open(ctx, c, k, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			evs := []*weftv1.Event{cfgEvent()}
			for i := range 100 {
				evs = append(evs, added(fmt.Sprintf("n%d", i), i))
			}
			if n, err := s.Append(ctx, evs...); err != nil || n != 101 {
				t.Fatalf("append %d: %v", n, err)
			}
			if most > tc.maxEvts || txns < 101/tc.maxEvts {
				t.Fatalf("%d transactions of up to %d events, want at most %d each", txns, most, tc.maxEvts)
			}
			t.Logf("%d transactions of up to %d events", txns, most)
			mustCheck(t, c)
		})
	}
}
