package controller_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// startWith runs a controller with opt (Client, Layout, ID and the
// test's timings filled in) until the test ends or stop.
//
// The election TTL stays the controller's default (10 s) unless opt sets
// one: these tests claim that data never ends a term, and with the 1 s
// TTL etcd's lease is what they measured instead. On a loaded machine
// (load 25-40 on 2 cores) the process holding the embedded etcd was
// starved so long that no renewal was answered within a second (a
// one-key transaction took up to 1.4 s); etcd revoked the lease, and the
// controller rightly stepped down, in 21 of 90 runs of
// TestEtcdRefusedBatch. Stopping a controller revokes its lease, so no
// test waits for the TTL (TestStopRevokesElectionLease).
func startWith(t testing.TB, opt controller.Options) *running {
	t.Helper()
	opt.Layout, opt.Logger = k, logger(t)
	if opt.GraceUnit == 0 {
		opt.GraceUnit = graceUnit
	}
	if opt.Batch == 0 {
		opt.Batch = 5 * time.Millisecond
	}
	if opt.TrimInterval == 0 {
		opt.TrimInterval = 50 * time.Millisecond
	}
	ctl := controller.New(opt)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: ctl, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := ctl.Run(ctx); err != nil {
			t.Errorf("controller %s: %v", opt.ID, err)
		}
	}()
	var once sync.Once
	t.Cleanup(func() { once.Do(r.stop) })
	return r
}

// newMetrics returns metrics registered with a registry of their own and
// a function summing every series of a metric family.
func newMetrics(t testing.TB) (*controller.Metrics, func(name string, labels ...string) float64) {
	reg := prometheus.NewRegistry()
	m := controller.NewMetrics(reg)
	return m, func(name string, labels ...string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		sum := 0.0
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		series:
			for _, m := range mf.GetMetric() {
				for i := 0; i+1 < len(labels); i += 2 {
					for _, lp := range m.GetLabel() {
						if lp.GetName() == labels[i] && lp.GetValue() != labels[i+1] {
							continue series
						}
					}
				}
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
		return sum
	}
}

// TestBadValuesDoNotStopTheLeader: a new leader finds the config, the
// head and a node's value broken by hand. It takes leadership once,
// repairs all three from the log (counted), keeps appending for every
// other node, and repairs a value broken while it leads.
func TestBadValuesDoNotStopTheLeader(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	first := start(t, c, baseConfig(), "c1")
	register(t, c, 0, reg("a", 1))
	register(t, c, 0, reg("b", 2))
	eventually(t, "two nodes", 10*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == 2 })
	first.stop()

	c.Put(ctx, k.Config(), "not json {")
	c.Put(ctx, k.Head(), "not a seq")
	c.Put(ctx, k.Node("a"), `{"name": 7}`)
	m, value := newMetrics(t)
	r := startWith(t, controller.Options{Client: c, ID: "c2", Metrics: m, VerifyInterval: 100 * time.Millisecond})
	register(t, c, 0, reg("c", 3))
	eventually(t, "c joins and the store checks out", 10*time.Second, func() bool {
		p, err := store.Read(ctx, c, k)
		if err != nil || len(p.Bad) > 0 || p.State.Nodes["c"] == nil {
			return false
		}
		rep, err := store.Check(ctx, c, k)
		return err == nil && rep.OK()
	})
	for _, kind := range []string{"config", "head", "nodes"} {
		if n := value("weft_controller_projection_repairs_total", "kind", kind); n < 1 {
			t.Errorf("repairs of %s counted %v", kind, n)
		}
	}
	// Broken while it leads: repaired by the periodic verify.
	c.Put(ctx, k.Node("b"), "{")
	eventually(t, "b repaired", 10*time.Second, func() bool {
		rep, err := store.Check(ctx, c, k)
		return err == nil && rep.OK()
	})
	if n := value("weft_controller_terms_ended_total"); n != 0 || !r.c.IsLeader() {
		t.Fatalf("leadership ended %v times because of bad values", n)
	}
}

// TestQuarantinedValueNamedAndLeftAlone: on a trimmed log, a node value
// nothing retained explains is quarantined: a problem names the key and
// the field, the value stays, the others are served.
func TestQuarantinedValueNamedAndLeftAlone(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	cfg := baseConfig()
	cfg.EventRetention = 3
	first := start(t, c, cfg, "c1")
	for i := range 6 {
		register(t, c, 0, reg(fmt.Sprintf("n%d", i), i))
	}
	eventually(t, "trimmed log with 6 nodes", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return len(n) == 6 && len(events(t, c)) == 3
	})
	first.stop()
	c.Put(ctx, k.Node("n0"), `{"name":"n0","underlay_ip":"nope"}`)
	startWith(t, controller.Options{Client: c, ID: "c2"})
	register(t, c, 0, reg("late", 9))
	eventually(t, "late joins, n0 quarantined", 10*time.Second, func() bool {
		p, err := store.Read(ctx, c, k)
		return err == nil && p.State.Nodes["late"] != nil && problem(t, c, "key:nodes:n0") != ""
	})
	if p := problem(t, c, "key:nodes:n0"); !strings.Contains(p, k.Node("n0")) || !strings.Contains(p, "underlay_ip") {
		t.Fatalf("problem %q does not name key and field", p)
	}
	if r, _ := c.Get(ctx, k.Node("n0")); !strings.Contains(string(r.Kvs[0].Value), "nope") {
		t.Fatal("quarantined value rewritten")
	}
}

// TestRegistrationsRefused: a 1 MiB registration, one without a lease and
// one claiming a registered node's underlay address each get a problem
// naming the field; every other node joins, nobody steps down.
func TestRegistrationsRefused(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	m, value := newMetrics(t)
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), Metrics: m})
	register(t, c, 0, reg("a", 1))
	eventually(t, "a", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] != nil })
	huge := reg("huge", 5)
	huge.Capabilities = []string{strings.Repeat("x", 1<<20)}
	register(t, c, 0, huge)
	c.Put(ctx, k.Registration("ghost"), keys.EncodeString(reg("ghost", 6)))
	dup := reg("dup", 7)
	dup.UnderlayIp = reg("a", 1).UnderlayIp
	register(t, c, 0, dup)
	register(t, c, 0, reg("b", 2))
	eventually(t, "problems and b", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return n["b"] != nil && problem(t, c, "huge") != "" && problem(t, c, "ghost") != "" && problem(t, c, "dup") != ""
	})
	for name, want := range map[string]string{"huge": "value: 1048", "ghost": "lease", "dup": `node "a"`} {
		if p := problem(t, c, name); !strings.Contains(p, want) {
			t.Errorf("problem of %s = %.200q, want it to name %q", name, p, want)
		}
	}
	_, n, _ := load(t, c)
	if len(n) != 2 {
		t.Fatalf("nodes %v", n)
	}
	// a's registration goes: its address is free for dup.
	c.Delete(ctx, k.Registration("a"))
	c.Put(ctx, k.Registration("dup"), keys.EncodeString(dup), clientv3.WithLease(grant(t, c)))
	eventually(t, "dup joins once a is gone", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["dup"] != nil })
	if v := value("weft_controller_terms_ended_total"); v != 0 {
		t.Fatalf("leadership ended %v times", v)
	}
}

// TestEtcdRefusedBatch: a batch etcd refuses as a whole (more operations
// than its --max-txn-ops, as an oversized batch would be) is appended
// event by event; every node joins and nobody steps down.
func TestEtcdRefusedBatch(t *testing.T) {
	_, c := etcdtest.New(t)
	m, value := newMetrics(t)
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), Metrics: m, MaxOps: 100000, Batch: 200 * time.Millisecond})
	eventually(t, "config", 10*time.Second, func() bool { cfg, _, _ := load(t, c); return cfg != nil })
	lease := grant(t, c)
	var ops []clientv3.Op
	for i := range 100 {
		r := reg(fmt.Sprintf("n%d", i), i)
		ops = append(ops, clientv3.OpPut(k.Registration(r.Name), keys.EncodeString(r), clientv3.WithLease(lease)))
	}
	if _, err := c.Txn(context.Background()).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "100 nodes", 20*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == 100 })
	mustCheck(t, c)
	if v := value("weft_controller_terms_ended_total"); v != 0 {
		t.Fatalf("leadership ended %v times", v)
	}
}

// TestBackendNeedsCapability: a backend some node cannot run is refused
// naming the nodes that lack it; under such a backend a node that lacks
// it gets a problem instead of a datapath that fails.
func TestBackendNeedsCapability(t *testing.T) {
	_, c := etcdtest.New(t)
	start(t, c, baseConfig(), "c1")
	a, b, k8s := reg("a", 1), reg("b", 2), reg("k8s", 3)
	a.Capabilities = []string{"vxlan", "geneve", "tcx"}
	b.Capabilities = []string{"vxlan", "tcx"}
	for _, r := range []*weftv1.Registration{a, b, k8s} {
		register(t, c, 0, r)
	}
	eventually(t, "three nodes", 10*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == 3 })
	cfg, _, _ := load(t, c)
	geneve := strings.Replace(keys.EncodeString(cfg), `"vxlan"`, `"geneve"`, 1)
	s := askConfig(t, c, geneve)
	if s.Accepted || !strings.Contains(s.Reason, "backend") || !strings.Contains(s.Reason, "b") || strings.Contains(s.Reason, "k8s") {
		t.Fatalf("geneve with a node lacking it: %v", s)
	}

	_, c2 := etcdtest.New(t)
	gcfg := baseConfig()
	gcfg.Backend = "geneve"
	start(t, c2, gcfg, "c1")
	register(t, c2, 0, a)
	register(t, c2, 0, b)
	eventually(t, "b refused", 10*time.Second, func() bool { return problem(t, c2, "b") != "" })
	if p := problem(t, c2, "b"); !strings.Contains(p, "capabilities") || !strings.Contains(p, "geneve") {
		t.Fatalf("problem of b: %q", p)
	}
	_, n, _ := load(t, c2)
	if n["a"] == nil || n["b"] != nil {
		t.Fatalf("nodes %v", n)
	}
}

// TestDesiredAnsweredAfterConflict: a desired config whose append meets a
// conflict (the head moved by hand) is still answered, once the leader
// has read the store again (and repaired the head).
func TestDesiredAnsweredAfterConflict(t *testing.T) {
	_, c := etcdtest.New(t)
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), VerifyInterval: time.Hour})
	register(t, c, 0, reg("a", 1))
	eventually(t, "a", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] != nil })
	cfg, _, head := load(t, c)
	c.Put(context.Background(), k.Head(), "99")
	cfg.Mtu = 1400
	s := askConfig(t, c, keys.EncodeString(cfg))
	if !s.Accepted || s.Seq != head+1 {
		t.Fatalf("answer %v, want accepted as seq %d", s, head+1)
	}
	mustCheck(t, c)
}

// TestElectionGarbage: a key under the election prefix that no
// controller wrote (no lease) would hold the election forever; the
// campaigning controller deletes it and leads.
func TestElectionGarbage(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	c.Put(ctx, k.Election()+"/0garbage", "not json {")
	m, value := newMetrics(t)
	r := startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), Metrics: m})
	eventually(t, "leadership", 15*time.Second, r.c.IsLeader)
	if g, _ := c.Get(ctx, k.Election()+"/0garbage"); len(g.Kvs) != 0 {
		t.Fatal("garbage still there")
	}
	if v := value("weft_controller_election_garbage_removed_total"); v != 1 {
		t.Fatalf("election garbage counted %v", v)
	}
}

// proxied returns a client of srv that reaches it through a TCP proxy the
// test can cut.
func proxied(t *testing.T, srv *etcdtest.Server) (*clientv3.Client, *etcdtest.Proxy) {
	t.Helper()
	u, err := url.Parse(srv.Endpoints[0])
	if err != nil {
		t.Fatal(err)
	}
	p, err := etcdtest.NewProxy(u.Host, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.Endpoint()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli, p
}

// TestRemovalWaitsForContact reproduces issue 12's failure: a node's
// registration expired; then etcd became unreachable (for the agent and
// the controller alike) for longer than the grace period; when etcd
// answers again the agent needs a moment to register again. The grace
// period ran out during the outage, but the controller must not count
// time it could not see: no NodeRemoved, because the grace counts from
// when it regained contact. A node that then stays away is removed.
func TestRemovalWaitsForContact(t *testing.T) {
	srv, c := etcdtest.New(t)
	ctx := context.Background()
	ctlCli, ctlProxy := proxied(t, srv)
	agentCli, agentProxy := proxied(t, srv)
	cfg := baseConfig()
	cfg.NodeGraceSeconds = 150 // 1.5 s
	const grace = 1500 * time.Millisecond
	startWith(t, controller.Options{Client: ctlCli, ID: "c1", Initial: cfg, ElectionTTL: 10 * time.Second,
		ContactInterval: 100 * time.Millisecond})

	// The agent keeps its registration on a 1 s lease.
	sess, err := concurrency.NewSession(agentCli, concurrency.WithTTL(1))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Orphan()
	if _, err := agentCli.Put(ctx, k.Registration("n1"), keys.EncodeString(reg("n1", 1)), clientv3.WithLease(sess.Lease())); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n1 added", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["n1"] != nil })

	// The agent loses etcd; its lease expires and the controller sees
	// the registration go.
	agentProxy.SetDown(true)
	eventually(t, "registration expired", 10*time.Second, func() bool {
		r, err := c.Get(ctx, k.Registration("n1"))
		return err == nil && len(r.Kvs) == 0
	})
	time.Sleep(200 * time.Millisecond)
	// Then the controller loses etcd too, for twice the grace.
	ctlProxy.SetDown(true)
	time.Sleep(2 * grace)
	ctlProxy.SetDown(false)
	// The agent is slower: it registers again a third of a grace after
	// the controller reaches etcd again.
	eventually(t, "the controller's client reaches etcd", 30*time.Second, func() bool {
		rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err := ctlCli.Get(rctx, k.Head())
		return err == nil
	})
	time.Sleep(grace / 3)
	agentProxy.SetDown(false)
	register(t, c, 0, reg("n1", 1))
	time.Sleep(2 * grace)
	for _, e := range events(t, c) {
		if r := e.GetNodeRemoved(); r != nil {
			t.Fatalf("n1 removed although etcd was away for the whole grace: seq %d %q", e.Seq, r.Reason)
		}
	}
	// Evidence: the registration goes while etcd and the controller both
	// work. Removed after the grace.
	c.Delete(ctx, k.Registration("n1"))
	gone := time.Now()
	eventually(t, "n1 removed", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["n1"] == nil })
	if d := time.Since(gone); d < grace {
		t.Fatalf("removed %v after its registration went, before the grace of %v", d, grace)
	}
}

// TestConfigChangeKeepsGraceClock: a config change while a node is in
// its grace period does not restart the period (seen: a node removed
// after 95 s instead of 40 s).
func TestConfigChangeKeepsGraceClock(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	cfg := baseConfig()
	cfg.NodeGraceSeconds = 300 // 3 s
	const grace = 3 * time.Second
	start(t, c, cfg, "c1")
	l := grant(t, c)
	register(t, c, l, reg("a", 1))
	eventually(t, "a", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] != nil })
	if _, err := c.Revoke(ctx, l); err != nil {
		t.Fatal(err)
	}
	gone := time.Now()
	time.Sleep(2 * grace / 3)
	inForce, _, _ := load(t, c)
	inForce.Mtu = 1400
	changed := time.Now() // the change is appended after this
	if s := askConfig(t, c, keys.EncodeString(inForce)); !s.Accepted {
		t.Fatalf("config change refused: %v", s)
	}
	eventually(t, "a removed", 20*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] == nil })
	// A restarted clock could not remove a before changed+grace; the kept
	// one removes it about gone+grace, a whole third of a grace earlier.
	var at time.Time
	for _, e := range events(t, c) {
		if e.GetNodeRemoved().GetName() == "a" {
			at, _ = time.Parse(time.RFC3339Nano, e.Time)
		}
	}
	if !at.Before(changed.Add(grace)) {
		t.Fatalf("a removed at %v, %v after it went: the config change at +%v restarted its grace", at.Format(time.StampMilli), at.Sub(gone), changed.Sub(gone))
	}
}

// TestRegistrationASN: a registration with an AS number no BGP speaker
// can use (0 is the cluster's, RFC 7607; AS_TRANS; the reserved last of
// each space) is refused with a problem naming the field, while the other
// nodes join; a node that rewrites its registration with one keeps the
// node the log has, and its fixed registration reaches the log.
func TestRegistrationASN(t *testing.T) {
	_, c := etcdtest.New(t)
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig()})
	withASN := func(r *weftv1.Registration, asn uint32) *weftv1.Registration { r.Asn = asn; return r }
	la := grant(t, c)
	register(t, c, la, withASN(reg("a", 1), 64512))
	register(t, c, 0, reg("zero", 2))
	bad := map[string]uint32{"trans": 23456, "max16": 65535, "max32": 4294967295}
	i := 10
	for name, asn := range bad {
		register(t, c, 0, withASN(reg(name, i), asn))
		i++
	}
	register(t, c, 0, withASN(reg("b", 3), 65536))
	eventually(t, "a, zero and b joined, the others refused", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		for name := range bad {
			if problem(t, c, name) == "" {
				return false
			}
		}
		return n["a"] != nil && n["zero"] != nil && n["b"] != nil
	})
	_, n, _ := load(t, c)
	if len(n) != 3 || n["a"].Asn != 64512 || n["zero"].Asn != 0 || n["b"].Asn != 65536 {
		t.Fatalf("nodes %v", n)
	}
	for name, asn := range bad {
		want := fmt.Sprintf("asn: %d is not a usable AS number", asn)
		if p := problem(t, c, name); !strings.Contains(p, want) {
			t.Errorf("problem of %s = %q, want %q", name, p, want)
		}
	}

	head := func() uint64 { _, _, h := load(t, c); return h }
	before := head()
	register(t, c, la, withASN(reg("a", 20), 65535))
	eventually(t, "a's bad rewrite refused", 10*time.Second, func() bool {
		return strings.Contains(problem(t, c, "a"), "asn: 65535 is not a usable AS number")
	})
	if _, n, h := load(t, c); h != before || n["a"].Asn != 64512 || n["a"].UnderlayIp != reg("a", 1).UnderlayIp {
		t.Fatalf("after a's bad rewrite: head %d (was %d), a %v", h, before, n["a"])
	}
	fixed := withASN(reg("a", 20), 64513)
	register(t, c, la, fixed)
	projected(t, c, fixed)
	eventually(t, "a's problem cleared", 10*time.Second, func() bool { return problem(t, c, "a") == "" })
	if _, n, _ := load(t, c); n["a"].Asn != 64513 {
		t.Fatalf("a after the fix: %v", n["a"])
	}
	// weftctl check names the refused registrations too.
	rep, err := store.Check(context.Background(), c, k)
	if err != nil {
		t.Fatal(err)
	}
	for name := range bad {
		if !strings.Contains(strings.Join(rep.Problems, "\n"), k.Registration(name)+": invalid: asn: ") {
			t.Errorf("check does not name %s: %v", k.Registration(name), rep.Problems)
		}
		c.Delete(context.Background(), k.Registration(name))
	}
	mustCheck(t, c)
}

// TestStopRevokesElectionLease: a controller stopped normally revokes its
// election lease, so a waiting controller leads at once. The TTL is an
// hour: within the test's deadlines the lease could only go by a revoke,
// and a successor that leads could only do so because it went.
func TestStopRevokesElectionLease(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	first := startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), ElectionTTL: time.Hour})
	eventually(t, "c1 leads", 10*time.Second, first.c.IsLeader)
	candidacies := func() []*mvccpb.KeyValue {
		r, err := c.Get(ctx, k.Election()+"/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
		if err != nil {
			t.Fatal(err)
		}
		return r.Kvs
	}
	lease := clientv3.LeaseID(candidacies()[0].Lease)
	second := startWith(t, controller.Options{Client: c, ID: "c2", ElectionTTL: time.Hour})
	eventually(t, "c2 campaigns", 10*time.Second, func() bool { return len(candidacies()) == 2 })
	if ttl, err := c.TimeToLive(ctx, lease); err != nil || ttl.TTL <= 0 {
		t.Fatalf("c1's election lease before the stop: %v, %v", ttl, err)
	}

	first.stop()
	ttl, err := c.TimeToLive(ctx, lease)
	if err != nil {
		t.Fatal(err)
	}
	if ttl.TTL != -1 {
		t.Fatalf("c1's election lease %x after a normal stop: %d s left of %d, want it revoked", int64(lease), ttl.TTL, ttl.GrantedTTL)
	}
	eventually(t, "c2 leads", 10*time.Second, second.c.IsLeader)
	if kvs := candidacies(); len(kvs) != 1 || !strings.Contains(string(kvs[0].Value), `"c2"`) {
		t.Fatalf("election keys after the stop: %v", kvs)
	}
}

// TestAddressKeptThroughGrace: node b's registration is gone (an agent
// rebooting) and its grace period runs. Node a, whose credentials an
// attacker holds, rewrites its registration with b's underlay address,
// and a new node c registers with it: both are refused naming b, and a
// keeps its own address. When b comes back it gets its node as it was,
// with no problem; once b is removed after a later grace, its address is
// free for c.
func TestAddressKeptThroughGrace(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	cfg := baseConfig()
	cfg.NodeGraceSeconds = 100000 // 1000 s at the tests' graceUnit: b stays in its grace
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: cfg})
	la := grant(t, c)
	register(t, c, la, reg("a", 1))
	register(t, c, 0, reg("b", 2))
	eventually(t, "a and b", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] != nil && n["b"] != nil })
	if _, err := c.Delete(ctx, k.Registration("b")); err != nil {
		t.Fatal(err)
	}
	_, _, head := load(t, c)
	squat := reg("a", 2)
	register(t, c, la, squat)
	register(t, c, 0, reg("c", 2))
	want := fmt.Sprintf(`underlay_ip: %s is node "b"'s, which keeps it until it is removed`, squat.UnderlayIp)
	eventually(t, "a and c refused", 10*time.Second, func() bool {
		return strings.Contains(problem(t, c, "a"), want) && strings.Contains(problem(t, c, "c"), want)
	})
	if _, n, h := load(t, c); h != head || n["a"].UnderlayIp != reg("a", 1).UnderlayIp || n["c"] != nil {
		t.Fatalf("head %d (was %d), nodes %v", h, head, n)
	}
	register(t, c, 0, reg("b", 2))
	eventually(t, "b back without a problem", 10*time.Second, func() bool { return problem(t, c, "b") == "" })
	if _, n, h := load(t, c); h != head || n["b"].UnderlayIp != reg("b", 2).UnderlayIp {
		t.Fatalf("b back: head %d (was %d), b %v", h, head, n["b"])
	}

	// a gives up; once b is removed, its address is free: c joins with it.
	register(t, c, la, reg("a", 1))
	eventually(t, "a's problem cleared", 10*time.Second, func() bool { return problem(t, c, "a") == "" })
	shorter := strings.Replace(keys.EncodeString(cfgInForce(t, c)), `"node_grace_seconds":100000`, `"node_grace_seconds":1`, 1)
	if s := askConfig(t, c, shorter); !s.Accepted {
		t.Fatalf("shorter grace %s: %v", shorter, s)
	}
	if _, err := c.Delete(ctx, k.Registration("b")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b removed and c joined with its address", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return n["b"] == nil && n["c"].GetUnderlayIp() == reg("c", 2).UnderlayIp
	})
	mustCheck(t, c)
}

func cfgInForce(t testing.TB, c *clientv3.Client) *weftv1.ClusterConfig {
	t.Helper()
	cfg, _, _ := load(t, c)
	return cfg
}

// TestAddressFreedByMove: a node refused for an address another node
// holds is added as soon as that node moves to another address, without
// a change of its own (before, only a removal or its own next change
// tried it again).
func TestAddressFreedByMove(t *testing.T) {
	_, c := etcdtest.New(t)
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig()})
	la := grant(t, c)
	register(t, c, la, reg("a", 1))
	eventually(t, "a", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["a"] != nil })
	register(t, c, 0, reg("b", 1))
	want := fmt.Sprintf(`underlay_ip: %s is node "a"'s, which is registered`, reg("a", 1).UnderlayIp)
	eventually(t, "b refused", 10*time.Second, func() bool { return strings.Contains(problem(t, c, "b"), want) })
	register(t, c, la, reg("a", 2))
	eventually(t, "a moved and b added with a's old address", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return n["a"].GetUnderlayIp() == reg("a", 2).UnderlayIp && n["b"].GetUnderlayIp() == reg("b", 1).UnderlayIp
	})
	if p := problem(t, c, "b"); p != "" {
		t.Errorf("b added but its problem stays: %q", p)
	}
	mustCheck(t, c)
}
