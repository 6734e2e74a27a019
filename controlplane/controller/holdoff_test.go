package controller_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// fakeClock is a controller.Clock that moves only when the test says:
// a hold ends exactly when the test advances past it, however slow the
// machine.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	c  chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := make(chan time.Time, 1)
	if d <= 0 {
		c <- f.now
		return c
	}
	f.waiters = append(f.waiters, fakeWaiter{f.now.Add(d), c})
	return c
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if f.now.Before(w.at) {
			kept = append(kept, w)
			continue
		}
		w.c <- f.now
	}
	f.waiters = kept
}

// updatesOf returns the nodes of name's NodeUpdated events, in order.
func updatesOf(t testing.TB, c *clientv3.Client, name string) []*weftv1.Node {
	t.Helper()
	var out []*weftv1.Node
	for _, e := range events(t, c) {
		if n := e.GetNodeUpdated().GetNode(); n.GetName() == name {
			out = append(out, n)
		}
	}
	return out
}

// projected waits until name's projection has r's underlay IP.
func projected(t testing.TB, c *clientv3.Client, r *weftv1.Registration) {
	t.Helper()
	eventually(t, r.Name+" at "+r.UnderlayIp, 10*time.Second, func() bool {
		_, nodes, _ := load(t, c)
		return nodes[r.Name].GetUnderlayIp() == r.UnderlayIp
	})
}

// heldSetup starts a controller on a frozen clock with nodes a (on the
// returned lease) and b, and spends a's burst: UpdateBurst address
// changes, each in the log before the next is written.
func heldSetup(t *testing.T) (*clientv3.Client, *fakeClock, clientv3.LeaseID, func(string, ...string) float64) {
	_, c := etcdtest.New(t)
	clk := newFakeClock()
	m, value := newMetrics(t)
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), Metrics: m, Clock: clk})
	la := grant(t, c)
	register(t, c, la, reg("a", 1))
	register(t, c, 0, reg("b", 2))
	eventually(t, "a and b added", 10*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == 2 })
	for i := range controller.UpdateBurst {
		r := reg("a", 10+i)
		register(t, c, la, r)
		projected(t, c, r) // the clock is frozen: a held update would never come
	}
	return c, clk, la, value
}

// TestHoldOffLegitimateChange: a node's change reaches the log at once,
// with the hold-off's clock frozen, and nothing is reported held.
func TestHoldOffLegitimateChange(t *testing.T) {
	_, c := etcdtest.New(t)
	clk := newFakeClock()
	m, value := newMetrics(t)
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), Metrics: m, Clock: clk})
	la := grant(t, c)
	register(t, c, la, reg("a", 1))
	eventually(t, "a added", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] != nil })
	moved := reg("a", 50)
	moved.VtepMac = "02:00:00:00:00:32"
	register(t, c, la, moved)
	projected(t, c, moved)
	ups := updatesOf(t, c, "a")
	if len(ups) != 1 || ups[0].UnderlayIp != moved.UnderlayIp || ups[0].VtepMac != moved.VtepMac {
		t.Fatalf("NodeUpdated of a: %v, want one with %s %s", ups, moved.UnderlayIp, moved.VtepMac)
	}
	if p := problem(t, c, "a"); p != "" {
		t.Fatalf("problem of a after one change: %q", p)
	}
	if v := value("weft_controller_node_updates_held_total"); v != 0 {
		t.Fatalf("updates held: %v", v)
	}
	mustCheck(t, c)
}

// TestHoldOffFlood: the audit's flood. Once a node's burst is spent, four
// writers flipping its registration between two addresses, hundreds of
// times, add no NodeUpdated while the clock stands still; another node's
// update and a new node's join during the flood go through at once. When
// the hold ends, exactly one more NodeUpdated carries the last value
// written.
func TestHoldOffFlood(t *testing.T) {
	c, clk, la, value := heldSetup(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 100 {
				r := reg("a", 20+(w+i)%2)
				if _, err := c.Put(ctx, k.Registration("a"), keys.EncodeString(r), clientv3.WithLease(la)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	bMoved := reg("b", 60)
	register(t, c, 0, bMoved)
	register(t, c, 0, reg("c", 3))
	wg.Wait()
	last := reg("a", 99)
	register(t, c, la, last)
	// The source reports changes in revision order and the loop takes
	// them in that order: once d is in the log, a's last write was judged.
	register(t, c, 0, reg("d", 4))
	eventually(t, "b moved, c and d added while a is held", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return n["b"].GetUnderlayIp() == bMoved.UnderlayIp && n["c"] != nil && n["d"] != nil
	})
	if ups := updatesOf(t, c, "a"); len(ups) != controller.UpdateBurst {
		t.Fatalf("%d NodeUpdated of a during the flood, want the burst of %d", len(ups), controller.UpdateBurst)
	}
	if v := value("weft_controller_node_updates_held_total"); v < 1 {
		t.Fatalf("updates held: %v", v)
	}

	clk.Advance(controller.UpdateEvery)
	projected(t, c, last)
	ups := updatesOf(t, c, "a")
	if len(ups) != controller.UpdateBurst+1 || ups[len(ups)-1].UnderlayIp != last.UnderlayIp {
		t.Fatalf("NodeUpdated of a after the hold: %d, last %v; want %d, the last at %s", len(ups), ups[len(ups)-1], controller.UpdateBurst+1, last.UnderlayIp)
	}
	eventually(t, "a's problem cleared", 10*time.Second, func() bool { return problem(t, c, "a") == "" })
	mustCheck(t, c)
}

// TestHoldOffReported: a held node is named in its problem with when its
// last value will be applied, and counted; both clear when it is.
func TestHoldOffReported(t *testing.T) {
	c, clk, la, value := heldSetup(t)
	start := clk.Now()
	held := reg("a", 30)
	register(t, c, la, held)
	// The burst was spent at start; one token comes back UpdateEvery later.
	want := fmt.Sprintf("registration of a changing too often: updates held, last value applied at %s",
		start.Add(controller.UpdateEvery).UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	eventually(t, "a's problem says it is held", 10*time.Second, func() bool { return strings.HasPrefix(problem(t, c, "a"), want) })
	eventually(t, "a counted as held", 10*time.Second, func() bool { return value("weft_controller_nodes_held") == 1 })
	if v := value("weft_controller_node_updates_held_total"); v < 1 {
		t.Fatalf("updates held: %v", v)
	}
	clk.Advance(controller.UpdateEvery)
	projected(t, c, held)
	eventually(t, "a no longer held", 10*time.Second, func() bool {
		return problem(t, c, "a") == "" && value("weft_controller_nodes_held") == 0
	})
}

// TestHoldOffKeepsRemovals: a held node whose registration goes is
// removed after its grace period though the hold-off's clock never moves.
func TestHoldOffKeepsRemovals(t *testing.T) {
	c, _, la, _ := heldSetup(t)
	register(t, c, la, reg("a", 40))
	eventually(t, "a held", 10*time.Second, func() bool { return strings.Contains(problem(t, c, "a"), "changing too often") })
	if _, err := c.Revoke(context.Background(), la); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a removed", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] == nil })
	evs := events(t, c)
	if r := evs[len(evs)-1].GetNodeRemoved(); r.GetName() != "a" {
		t.Fatalf("last event %v, want a's NodeRemoved", evs[len(evs)-1])
	}
	mustCheck(t, c)
}

// TestHoldOffRefundsUnwritten: an update whose append fails (the head
// moved by hand: a conflict) takes no token; the retry after the leader
// read the store again is appended with the clock frozen although it is
// the burst's last.
func TestHoldOffRefundsUnwritten(t *testing.T) {
	_, c := etcdtest.New(t)
	clk := newFakeClock()
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), Clock: clk, VerifyInterval: time.Hour})
	la := grant(t, c)
	register(t, c, la, reg("a", 1))
	eventually(t, "a added", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] != nil })
	for i := range controller.UpdateBurst - 1 {
		r := reg("a", 10+i)
		register(t, c, la, r)
		projected(t, c, r)
	}
	if _, err := c.Put(context.Background(), k.Head(), "99"); err != nil {
		t.Fatal(err)
	}
	r := reg("a", 70)
	register(t, c, la, r)
	projected(t, c, r)
	if ups := updatesOf(t, c, "a"); len(ups) != controller.UpdateBurst {
		t.Fatalf("%d NodeUpdated of a, want %d", len(ups), controller.UpdateBurst)
	}
	mustCheck(t, c)
}

// TestHoldOffSparesControllerUpdates: a node whose burst is spent gets
// the IPv6 pod CIDR of a family the operator adds at once, with the
// hold-off's clock frozen, since its registration did not change; the
// update takes no token, so its next registration change is still held
// exactly until the one token the frozen clock owes it.
func TestHoldOffSparesControllerUpdates(t *testing.T) {
	c, clk, la, value := heldSetup(t)
	start := clk.Now()
	inForce, _, _ := load(t, c)
	v6 := strings.Replace(keys.EncodeString(inForce), `"cluster_cidr":"10.244.0.0/16"`,
		`"cluster_cidr":"10.244.0.0/16","cluster_cidr_v6":"fd00:10:244::/56"`, 1)
	if s := askConfig(t, c, v6); !s.Accepted {
		t.Fatalf("adding cluster_cidr_v6: %v", s)
	}
	eventually(t, "a and b get IPv6 pod CIDRs", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return len(n["a"].GetPodCidrs()) == 2 && len(n["b"].GetPodCidrs()) == 2
	})
	if ups := updatesOf(t, c, "a"); len(ups) != controller.UpdateBurst+1 {
		t.Fatalf("%d NodeUpdated of a, want the burst of %d and the IPv6 one", len(ups), controller.UpdateBurst)
	}
	if p := problem(t, c, "a"); p != "" {
		t.Fatalf("problem of a after the controller's update: %q", p)
	}
	if v := value("weft_controller_node_updates_held_total"); v != 0 {
		t.Fatalf("updates held: %v", v)
	}
	held := reg("a", 30)
	register(t, c, la, held)
	want := fmt.Sprintf("registration of a changing too often: updates held, last value applied at %s",
		start.Add(controller.UpdateEvery).UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	eventually(t, "a's own change held", 10*time.Second, func() bool { return strings.HasPrefix(problem(t, c, "a"), want) })
	clk.Advance(controller.UpdateEvery)
	projected(t, c, held)
	if _, n, _ := load(t, c); len(n["a"].PodCidrs) != 2 {
		t.Fatalf("a after its held change: %v", n["a"])
	}
	mustCheck(t, c)
}
