package controller_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/controlplane/ctl"
	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

func TestJoinLeaveRejoinWithinGrace(t *testing.T) {
	_, c := etcdtest.New(t)
	cfg := baseConfig()
	cfg.NodeGraceSeconds = 100 // 1s: room for a loaded machine
	start(t, c, cfg, "c1")
	la, lb := grant(t, c), grant(t, c)
	register(t, c, la, reg("a", 1))
	register(t, c, lb, reg("b", 2))
	var nodes map[string]*weftv1.Node
	eventually(t, "two nodes", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return len(nodes) == 2 })
	bCIDR := nodes["b"].PodCidrs
	// b's lease expires; it comes back (new lease) within the grace of
	// 100 units = 1s and keeps its subnet, with no NodeRemoved.
	if _, err := c.Revoke(context.Background(), lb); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	register(t, c, grant(t, c), reg("b", 2))
	time.Sleep(1200 * time.Millisecond)
	_, nodes, _ = load(t, c)
	if nodes["b"] == nil || nodes["b"].PodCidrs[0] != bCIDR[0] {
		t.Fatalf("b after re-join within grace: %v, had %v", nodes["b"], bCIDR)
	}
	for _, e := range events(t, c) {
		if e.GetNodeRemoved() != nil {
			t.Fatalf("NodeRemoved written for a node back within grace: %v", e)
		}
	}
	// a goes away for good: NodeRemoved after the grace, subnet freed.
	if _, err := c.Revoke(context.Background(), la); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a removed", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return nodes["a"] == nil })
	evs := events(t, c)
	last := evs[len(evs)-1].GetNodeRemoved()
	if last == nil || last.Name != "a" || !strings.Contains(last.Reason, "grace") {
		t.Fatalf("last event %v", evs[len(evs)-1])
	}
	// A changed underlay IP is a NodeUpdated keeping the subnet.
	moved := reg("b", 77)
	register(t, c, grant(t, c), moved)
	eventually(t, "b updated", 10*time.Second, func() bool {
		_, nodes, _ = load(t, c)
		return nodes["b"].UnderlayIp == moved.UnderlayIp
	})
	if nodes["b"].PodCidrs[0] != bCIDR[0] {
		t.Fatalf("update changed b's subnet to %v", nodes["b"].PodCidrs)
	}
	mustCheck(t, c)
}

// TestRejoinWithPreviousCIDR: a node removed after its grace period that
// registers again asking for its previous pod CIDR (its agent's subnet
// file) gets it back, although the allocator's scan has moved on; a node
// asking for a CIDR another node holds gets a free one instead, and
// neither is refused.
func TestRejoinWithPreviousCIDR(t *testing.T) {
	_, c := etcdtest.New(t)
	cfg := baseConfig()
	cfg.NodeGraceSeconds = 10 // 0.1s
	start(t, c, cfg, "c1")
	la := grant(t, c)
	register(t, c, la, reg("a", 1))
	var nodes map[string]*weftv1.Node
	eventually(t, "a added", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return nodes["a"] != nil })
	aCIDR := nodes["a"].PodCidrs
	if _, err := c.Revoke(context.Background(), la); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a removed", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return nodes["a"] == nil })
	register(t, c, 0, reg("b", 2))
	eventually(t, "b added", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return nodes["b"] != nil })
	if nodes["b"].PodCidrs[0] == aCIDR[0] {
		t.Fatalf("b got a's old %v straight away: the scan would give a it too, the test shows nothing", aCIDR)
	}
	back := reg("a", 1)
	back.PreviousPodCidrs = aCIDR
	register(t, c, 0, back)
	eventually(t, "a back", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return nodes["a"] != nil })
	if got := nodes["a"].PodCidrs; len(got) != len(aCIDR) || got[0] != aCIDR[0] {
		t.Fatalf("a back with previous %v got %v", aCIDR, got)
	}
	greedy := reg("c", 3)
	greedy.PreviousPodCidrs = nodes["b"].PodCidrs
	register(t, c, 0, greedy)
	eventually(t, "c added", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return nodes["c"] != nil })
	if got := nodes["c"].PodCidrs[0]; got == nodes["b"].PodCidrs[0] || got == aCIDR[0] {
		t.Fatalf("c asking for b's %v got %v", nodes["b"].PodCidrs, got)
	}
	mustCheck(t, c)
}

func TestInvalidRegistrationSkipped(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	start(t, c, baseConfig(), "c1")
	register(t, c, 0, reg("good", 1))
	bad := map[string]string{
		"garbage":  `{"name": "garbage", "underlay_ip": `,
		"bad-ip":   `{"name":"bad-ip","underlay_ip":"300.1.2.3"}`,
		"inside":   `{"name":"inside","underlay_ip":"10.244.3.3"}`,
		"mismatch": `{"name":"other","underlay_ip":"192.168.7.7"}`,
		"bad-pin":  `{"name":"bad-pin","underlay_ip":"192.168.7.8","pinned_pod_cidrs":["10.99.0.0/24"]}`,
	}
	lease := grant(t, c)
	for name, v := range bad {
		if _, err := c.Put(ctx, k.Registration(name), v, clientv3.WithLease(lease)); err != nil {
			t.Fatal(err)
		}
	}
	register(t, c, 0, reg("good2", 2))
	eventually(t, "problems recorded and good nodes served", 10*time.Second, func() bool {
		if _, nodes, _ := load(t, c); len(nodes) != 2 {
			return false
		}
		for name := range bad {
			if problem(t, c, name) == "" {
				return false
			}
		}
		return true
	})
	for name, want := range map[string]string{"garbage": "decode registration", "bad-ip": "underlay_ip", "inside": "underlay_ip", "mismatch": "name", "bad-pin": "10.99.0.0/24"} {
		if p := problem(t, c, name); !strings.Contains(p, want) {
			t.Errorf("problem of %s = %q, want it to name %q", name, p, want)
		}
	}
	_, nodes, _ := load(t, c)
	if len(nodes) != 2 || nodes["good"] == nil || nodes["good2"] == nil {
		t.Fatalf("nodes %v", nodes)
	}
	// The operator fixes one: it joins and its problem goes.
	register(t, c, 0, reg("bad-ip", 9))
	eventually(t, "fixed node joins", 10*time.Second, func() bool {
		_, nodes, _ = load(t, c)
		return nodes["bad-ip"] != nil && problem(t, c, "bad-ip") == ""
	})
	// weftctl check names the registrations that do not decode or
	// validate; without them the store checks out.
	rep, err := store.Check(ctx, c, k)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{k.Registration("garbage"), k.Registration("mismatch")} {
		if !strings.Contains(strings.Join(rep.Problems, "\n"), key) {
			t.Errorf("check does not name %s: %v", key, rep.Problems)
		}
	}
	for name := range bad {
		c.Delete(ctx, k.Registration(name))
	}
	mustCheck(t, c)
}

func TestExhaustedCIDR(t *testing.T) {
	_, c := etcdtest.New(t)
	cfg := &weftv1.ClusterConfig{ClusterCidr: "10.1.0.0/29", NodeMaskSize: 30, NodeGraceSeconds: 10}
	start(t, c, cfg, "c1")
	l := grant(t, c)
	register(t, c, l, reg("a", 1))
	register(t, c, 0, reg("b", 2))
	eventually(t, "a and b", 10*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == 2 })
	register(t, c, 0, reg("c", 3))
	eventually(t, "c's problem", 10*time.Second, func() bool { return problem(t, c, "c") != "" })
	if p := problem(t, c, "c"); !strings.Contains(p, "10.1.0.0/29") || !strings.Contains(p, "exhausted") {
		t.Fatalf("problem %q does not name the exhausted CIDR", p)
	}
	register(t, c, 0, reg("d", 4))
	eventually(t, "d's problem", 10*time.Second, func() bool { return problem(t, c, "d") != "" })
	_, nodes, _ := load(t, c)
	if len(nodes) != 2 {
		t.Fatalf("nodes %v", nodes)
	}
	// a leaves; after its grace its subnet goes to a waiting node.
	if _, err := c.Revoke(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	eventually(t, "c gets a's subnet and its problem goes", 10*time.Second, func() bool {
		_, nodes, _ = load(t, c)
		return nodes["c"] != nil && problem(t, c, "c") == ""
	})
	mustCheck(t, c)
}

// TestRetention: with event_retention 10 the controller trims the log as
// it grows; the trimmed store still checks out and the projection is whole.
func TestRetention(t *testing.T) {
	_, c := etcdtest.New(t)
	cfg := baseConfig()
	cfg.EventRetention = 10
	start(t, c, cfg, "c1")
	for i := range 40 {
		register(t, c, 0, reg(fmt.Sprintf("n%d", i), i))
		time.Sleep(3 * time.Millisecond)
	}
	eventually(t, "trimmed log with 40 nodes", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return len(n) == 40 && len(events(t, c)) == 10
	})
	rep := mustCheck(t, c)
	if !rep.Trimmed || rep.First != 32 || rep.Head != 41 || rep.Nodes != 40 {
		t.Fatalf("report %+v", rep)
	}
}

// TestStrayGuard: a hand-written subnet guard makes the first append that
// allocates that subnet fail; the controller re-reads, keeps the subnet
// out of use and serves the node with another.
func TestStrayGuard(t *testing.T) {
	_, c := etcdtest.New(t)
	start(t, c, baseConfig(), "c1")
	eventually(t, "config", 10*time.Second, func() bool { cfg, _, _ := load(t, c); return cfg != nil })
	if _, err := c.Put(context.Background(), k.Subnet(netip.MustParsePrefix("10.244.0.0/24")), "ghost"); err != nil {
		t.Fatal(err)
	}
	register(t, c, 0, reg("a", 1))
	var nodes map[string]*weftv1.Node
	eventually(t, "a served", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return nodes["a"] != nil })
	if nodes["a"].PodCidrs[0] == "10.244.0.0/24" {
		t.Fatal("node got the guarded subnet")
	}
	rep, _ := store.Check(context.Background(), c, k)
	if rep.OK() {
		t.Fatal("check does not report the stray guard")
	}
}

func TestPinnedSubnet(t *testing.T) {
	_, c := etcdtest.New(t)
	cfg := baseConfig()
	cfg.ClusterCidrV6 = "fd00:10::/56"
	start(t, c, cfg, "c1")
	r := reg("pinned", 1)
	r.PinnedPodCidrs = []string{"10.244.200.0/24"}
	register(t, c, 0, r)
	taker := reg("taker", 2)
	taker.PinnedPodCidrs = []string{"10.244.200.0/24"}
	var nodes map[string]*weftv1.Node
	eventually(t, "pinned node", 10*time.Second, func() bool { _, nodes, _ = load(t, c); return nodes["pinned"] != nil })
	if got := nodes["pinned"].PodCidrs; len(got) != 2 || got[0] != "10.244.200.0/24" || !strings.HasPrefix(got[1], "fd00:10:") {
		t.Fatalf("pinned node got %v", got)
	}
	register(t, c, 0, taker)
	eventually(t, "taker refused", 10*time.Second, func() bool { return strings.Contains(problem(t, c, "taker"), "held by node \"pinned\"") })
	mustCheck(t, c)
}

func desiredStatus(t testing.TB, c *clientv3.Client, rev int64) *weftv1.ConfigStatus {
	t.Helper()
	r, err := c.Get(context.Background(), k.DesiredStatus())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) == 0 {
		return nil
	}
	s, err := keys.DecodeConfigStatus(r.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if s.DesiredRevision != rev {
		return nil
	}
	return s
}

func askConfig(t testing.TB, c *clientv3.Client, v string) *weftv1.ConfigStatus {
	t.Helper()
	r, err := c.Put(context.Background(), k.DesiredConfig(), v)
	if err != nil {
		t.Fatal(err)
	}
	var s *weftv1.ConfigStatus
	eventually(t, "status of desired config", 10*time.Second, func() bool { s = desiredStatus(t, c, r.Header.Revision); return s != nil })
	return s
}

func TestDesiredConfig(t *testing.T) {
	_, c := etcdtest.New(t)
	start(t, c, baseConfig(), "c1")
	register(t, c, 0, reg("a", 1))
	eventually(t, "node a", 10*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == 1 })
	inForce, _, head := load(t, c)
	good := keys.EncodeString(inForce)
	for _, tc := range []struct{ name, value, field string }{
		{"malformed cidr", strings.Replace(good, "10.244.0.0/16", "10.244.0.0/33", 1), "cluster_cidr"},
		{"host bits", strings.Replace(good, "10.244.0.0/16", "10.244.0.1/16", 1), "cluster_cidr"},
		{"overlaps underlay", strings.Replace(good, "10.244.0.0/16", "192.168.0.0/16", 1), "cluster_cidr"},
		{"one subnet", strings.Replace(good, `"node_mask_size":24`, `"node_mask_size":16`, 1), "node_mask_size"},
		{"vni too big", strings.Replace(good, `"vni":1`, `"vni":16777216`, 1), "vni"},
		{"udp port 0", strings.Replace(good, `"udp_port":8472`, `"udp_port":0`, 1), "udp_port"},
		{"udp port too big", strings.Replace(good, `"udp_port":8472`, `"udp_port":70000`, 1), "udp_port"},
		{"vni 0", strings.Replace(good, `"vni":1`, `"vni":0`, 1), "vni"},
		{"unknown backend", strings.Replace(good, `"vxlan"`, `"wireguard"`, 1), "backend"},
		{"small mtu", strings.Replace(good, `"backend"`, `"mtu":1279,"backend"`, 1), "mtu"},
		{"cidr change with nodes", strings.Replace(good, "10.244.0.0/16", "10.245.0.0/16", 1), "cluster_cidr"},
		{"not json", `{"cluster_cidr":`, "decode"},
		// A misspelt field would otherwise be dropped and the config
		// accepted without the change asked for.
		{"unknown field", strings.Replace(good, `"backend"`, `"mut":1400,"backend"`, 1), `unknown field "mut"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := askConfig(t, c, tc.value)
			if s.Accepted || !strings.Contains(s.Reason, tc.field) {
				t.Fatalf("status %v, want refusal naming %s", s, tc.field)
			}
			cfg, _, h := load(t, c)
			if h != head || !protoEqual(cfg, inForce) {
				t.Fatalf("refused config changed the store: head %d->%d", head, h)
			}
		})
	}
	s := askConfig(t, c, strings.Replace(good, `"backend"`, `"mtu":1400,"backend"`, 1))
	if !s.Accepted || s.Seq != head+1 {
		t.Fatalf("good config: %v", s)
	}
	cfg, _, _ := load(t, c)
	if cfg.Mtu != 1400 {
		t.Fatalf("config in force has mtu %d", cfg.Mtu)
	}
	mustCheck(t, c)
}

func protoEqual(a, b *weftv1.ClusterConfig) bool { return keys.EncodeString(a) == keys.EncodeString(b) }

// TestTwoControllers: two controllers run at once while nodes register;
// the leader is stopped mid-stream and the other takes over. The log has
// no gap and no duplicate, and only one controller wrote at a time.
func TestTwoControllers(t *testing.T) {
	srv, c := etcdtest.New(t)
	c2, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	a := start(t, c, baseConfig(), "a")
	b := start(t, c2, baseConfig(), "b")
	eventually(t, "a leader", 10*time.Second, func() bool { return a.c.IsLeader() || b.c.IsLeader() })
	first, second := a, b
	if b.c.IsLeader() {
		first, second = b, a
	}
	if second.c.IsLeader() {
		t.Fatal("two leaders")
	}
	for i := range 60 {
		register(t, c, 0, reg(fmt.Sprintf("n%d", i), i))
		if i == 30 {
			first.stop()
		}
		time.Sleep(2 * time.Millisecond)
	}
	eventually(t, "60 nodes", 20*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == 60 })
	if !second.c.IsLeader() {
		t.Fatal("second controller did not take over")
	}
	rep := mustCheck(t, c)
	if rep.Head != 61 {
		t.Fatalf("head %d, want 61 (config + 60 joins, nothing twice)", rep.Head)
	}
}

// TestKilledAtRandom: a controller is killed (its context cancelled or its
// etcd client closed) at a random moment while registrations stream in,
// several times; after the last restart every node is in the log once and
// the store checks out.
func TestKilledAtRandom(t *testing.T) {
	srv, c := etcdtest.New(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	big := &weftv1.ClusterConfig{ClusterCidr: "10.0.0.0/12", NodeMaskSize: 26, NodeGraceSeconds: 30}
	lease := grant(t, c)
	next := 0
	for round := range 5 {
		cc, err := srv.Client()
		if err != nil {
			t.Fatal(err)
		}
		r := start(t, cc, big, fmt.Sprintf("r%d", round))
		// Kill it while it leads: a killed predecessor that closed its
		// client left its election lease to expire (the 1s TTL).
		eventually(t, "leadership", 10*time.Second, r.c.IsLeader)
		stopAt := time.Duration(rng.IntN(150)) * time.Millisecond
		timer := time.After(stopAt)
		closeClient := rng.IntN(2) == 0
	stream:
		for {
			select {
			case <-timer:
				break stream
			default:
			}
			// Bursts of registrations, some in one etcd txn.
			ops := []clientv3.Op{}
			for range 1 + rng.IntN(20) {
				rr := reg(fmt.Sprintf("n%d", next), next)
				ops = append(ops, clientv3.OpPut(k.Registration(rr.Name), keys.EncodeString(rr), clientv3.WithLease(lease)))
				next++
			}
			if _, err := c.Txn(context.Background()).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
		}
		if closeClient {
			cc.Close() // the controller sees etcd vanish mid-append
		}
		r.stop()
		cc.Close()
		if rep, err := c.Get(context.Background(), k.Head()); err == nil && len(rep.Kvs) > 0 {
			t.Logf("round %d: killed after %v (close client %v) at head %s, %d registered", round, stopAt, closeClient, rep.Kvs[0].Value, next)
		}
	}
	start(t, c, big, "final")
	eventually(t, "every node", 30*time.Second, func() bool { _, n, _ := load(t, c); return len(n) == next })
	rep := mustCheck(t, c)
	if rep.Head != uint64(next)+1 {
		t.Fatalf("head %d for %d nodes: a node was added twice or an event lost", rep.Head, next)
	}
	// And literally: weftctl check exits 0.
	var out, errOut strings.Builder
	if code := ctl.Main(context.Background(), []string{"--etcd-endpoints", srv.Endpoints[0], "check"}, nil, &out, &errOut, func(string) string { return "" }); code != 0 {
		t.Fatalf("weftctl check: exit %d: %s%s", code, out.String(), errOut.String())
	}
}

// TestDeposedBehindItsBack: while nodes register, the leader's election
// lease is revoked again and again behind its back (as when it stalls past
// its TTL). Leadership moves between two controllers; fenced writes of a
// deposed leader fail, so the log ends with every node once, no gap, no
// duplicate.
func TestDeposedBehindItsBack(t *testing.T) {
	srv, c := etcdtest.New(t)
	c2, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	a := start(t, c, baseConfig(), "a")
	b := start(t, c2, baseConfig(), "b")
	ctx := context.Background()
	revoked := 0
	const n = 200
	for i := range n {
		register(t, c, 0, reg(fmt.Sprintf("n%d", i), i))
		if i%25 == 10 {
			// The leader holds the election key with the lowest create
			// revision.
			r, err := c.Get(ctx, k.Election()+"/", clientv3.WithFirstCreate()...)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Kvs) > 0 {
				if _, err := c.Revoke(ctx, clientv3.LeaseID(r.Kvs[0].Lease)); err == nil {
					revoked++
				}
			}
		}
		time.Sleep(time.Millisecond)
	}
	eventually(t, "every node", 30*time.Second, func() bool { _, nodes, _ := load(t, c); return len(nodes) == n })
	rep := mustCheck(t, c)
	if rep.Head != n+1 {
		t.Fatalf("head %d for %d nodes", rep.Head, n)
	}
	if revoked < 4 {
		t.Fatalf("only %d leaders deposed", revoked)
	}
	eventually(t, "a leader again", 10*time.Second, func() bool { return a.c.IsLeader() || b.c.IsLeader() })
}
