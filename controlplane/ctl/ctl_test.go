package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/controlplane/ctl"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

var k = keys.New("/weft")

type env struct {
	t     *testing.T
	ep    string
	c     *clientv3.Client
	lease clientv3.LeaseID // the registrations' lease
}

func (e *env) run(stdin string, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := ctl.Main(ctx, append([]string{"--etcd-endpoints", e.ep}, args...), strings.NewReader(stdin), &out, &errOut, func(string) string { return "" })
	return code, out.String(), errOut.String()
}

func setup(t *testing.T) *env {
	srv, c := etcdtest.New(t)
	ctlr := controller.New(controller.Options{Client: c, Layout: k, ElectionTTL: time.Second,
		Initial: &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"}, Batch: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ctlr.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	g, err := c.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		r := &weftv1.Registration{Name: fmt.Sprintf("node%d", i), UnderlayIp: fmt.Sprintf("192.168.1.%d", i+1)}
		if _, err := c.Put(ctx, k.Registration(r.Name), keys.EncodeString(r), clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
	}
	c.Put(ctx, k.Registration("broken"), `{"name":"broken","underlay_ip":"nope"}`, clientv3.WithLease(g.ID))
	e := &env{t: t, ep: srv.Endpoints[0], c: c, lease: g.ID}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, out, _ := e.run("", "nodes"); strings.Count(out, "node") == 3 {
			break
		}
		if time.Now().After(end) {
			t.Fatal("nodes did not appear")
		}
	}
	return e
}

// waitNode blocks until the controller has projected node name (its
// NodeAdded is in the log: the event and /weft/nodes/<name> are written in
// one transaction) and returns the projection's value. It watches the key
// from the revision it read, so it misses no put and polls nothing.
func (e *env) waitNode(name string) *weftv1.Node {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := e.c.Get(ctx, k.Node(name))
	if err != nil {
		e.t.Fatalf("get node %s: %v", name, err)
	}
	val := func() []byte {
		if len(r.Kvs) > 0 {
			return r.Kvs[0].Value
		}
		for wr := range e.c.Watch(ctx, k.Node(name), clientv3.WithRev(r.Header.Revision+1)) {
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					return ev.Kv.Value
				}
			}
		}
		return nil
	}()
	if val == nil {
		e.t.Fatalf("node %s was not added: %v", name, ctx.Err())
	}
	n, err := keys.DecodeNode(val)
	if err != nil {
		e.t.Fatalf("decode node %s: %v", name, err)
	}
	return n
}

func TestVerbs(t *testing.T) {
	e := setup(t)
	code, out, _ := e.run("", "nodes")
	if code != 0 || !strings.Contains(out, "node1") || !strings.Contains(out, "192.168.1.2") || !strings.Contains(out, "10.244.") {
		t.Fatalf("nodes: %d %q", code, out)
	}
	code, out, _ = e.run("", "-o", "json", "nodes")
	var nodes []map[string]any
	if err := json.Unmarshal([]byte(out), &nodes); code != 0 || err != nil || len(nodes) != 3 || nodes[0]["name"] != "node0" {
		t.Fatalf("nodes json: %d %v %q", code, err, out)
	}
	code, out, _ = e.run("", "events", "--since", "2")
	if code != 0 || strings.Contains(out, "ConfigChanged") || strings.Count(out, "NodeAdded") != 3 {
		t.Fatalf("events --since 2: %d %q", code, out)
	}
	code, out, _ = e.run("", "-o", "json", "events")
	if code != 0 || strings.Count(out, "\n") != 4 || !strings.Contains(out, `"config_changed"`) {
		t.Fatalf("events json: %d %q", code, out)
	}

	// status: one node reports it applied the head, one lags, one is silent.
	st := &weftv1.AgentStatus{Name: "node0", AppliedSeq: 4, HeadSeq: 4}
	e.c.Put(context.Background(), k.Status("node0"), keys.EncodeString(st))
	st = &weftv1.AgentStatus{Name: "node1", AppliedSeq: 2, HeadSeq: 4}
	e.c.Put(context.Background(), k.Status("node1"), keys.EncodeString(st))
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, out, _ = e.run("", "status")
		if strings.Contains(out, "broken") || time.Now().After(end) {
			break
		}
	}
	for _, want := range []string{"head 4", "node0  4        0       -          converged", "node1  2        2       -          behind", "node2  -        4       -          no status", "broken: registration skipped", "underlay_ip"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = e.run("", "-o", "json", "status")
	var rep ctl.StatusReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || rep.Head != 4 || !rep.Nodes[0].Converged || rep.Nodes[1].Behind != 2 {
		t.Fatalf("status json: %v %+v", err, rep)
	}

	code, out, _ = e.run("", "config", "get")
	if code != 0 || !strings.Contains(out, `"cluster_cidr": "10.244.0.0/16"`) {
		t.Fatalf("config get: %d %q", code, out)
	}
	code, out, _ = e.run("", "config", "set", "--mtu", "1400")
	if code != 0 || !strings.Contains(out, "accepted as seq 5") {
		t.Fatalf("config set --mtu: %d %q", code, out)
	}
	code, out, _ = e.run("", "config", "set", "--vni", "16777216")
	if code != 1 || !strings.Contains(out, "refused") || !strings.Contains(out, "vni") {
		t.Fatalf("config set bad vni: %d %q", code, out)
	}
	code, out, _ = e.run("", "config", "set", "--udp-port", "0")
	if code != 1 || !strings.Contains(out, "refused") || !strings.Contains(out, "udp_port") {
		t.Fatalf("config set --udp-port 0: %d %q", code, out)
	}
	code, out, _ = e.run("", "config", "set", "--tunnel-datapath", "xdp")
	if code != 1 || !strings.Contains(out, "refused") || !strings.Contains(out, "tunnel_datapath:") {
		t.Fatalf("config set --tunnel-datapath xdp: %d %q", code, out)
	}
	code, out, _ = e.run("", "config", "set", "--big-tcp")
	if code != 1 || !strings.Contains(out, "refused") || !strings.Contains(out, "big_tcp:") {
		t.Fatalf("config set --big-tcp over vxlan: %d %q", code, out)
	}
	code, out, _ = e.run("cluster_cidr: 10.244.0.0/16\nbackend: carrier-pigeon\n", "config", "set", "-")
	if code != 1 || !strings.Contains(out, "backend") {
		t.Fatalf("config set - bad backend: %d %q", code, out)
	}
	code, out, _ = e.run("", "-o", "json", "config", "get")
	if code != 0 || !strings.Contains(out, `"mtu": 1400`) || strings.Contains(out, `"accepted"`) || !strings.Contains(out, `unknown backend`) {
		t.Fatalf("config get json after refusal: %d %q", code, out)
	}

	// check names the registration that does not validate; without it
	// the store checks out.
	code, out, _ = e.run("", "check")
	if code != 1 || !strings.Contains(out, k.Registration("broken")) || !strings.Contains(out, "underlay_ip") {
		t.Fatalf("check with a broken registration: %d %q", code, out)
	}
	e.c.Delete(context.Background(), k.Registration("broken"))
	code, out, _ = e.run("", "check")
	if code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("check: %d %q", code, out)
	}
	e.c.Delete(context.Background(), k.Subnets(), clientv3.WithPrefix())
	code, out, _ = e.run("", "-o", "json", "check")
	if code != 1 || !strings.Contains(out, "without a subnet guard") {
		t.Fatalf("check of damaged store: %d %q", code, out)
	}
}

func TestFollowAndUsage(t *testing.T) {
	e := setup(t)
	var out bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		done <- ctl.Main(ctx, []string{"--etcd-endpoints", e.ep, "events", "--follow", "--since", "4"}, nil, &syncWriter{b: &out}, &bytes.Buffer{}, func(string) string { return "" })
	}()
	r := &weftv1.Registration{Name: "late", UnderlayIp: "192.168.1.99"}
	e.c.Put(ctx, k.Registration("late"), keys.EncodeString(r), clientv3.WithLease(e.lease))
	for end := time.Now().Add(10 * time.Second); !strings.Contains(syncString(&out), "late"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("follow did not print the new event: %q", syncString(&out))
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("follow exit %d", code)
	}
	for _, args := range [][]string{{}, {"frobnicate"}, {"config"}, {"config", "set"}, {"-o", "yaml", "nodes"}, {"events", "--bogus"}, {"nodes", "extra"},
		{"--etcd-endpoints", "ftp://127.0.0.1:1", "nodes"}, {"--etcd-endpoints", "127.0.0.1", "nodes"}, {"--prefix", "/", "nodes"}} {
		if code, _, _ := e.run("", args...); code != 2 {
			t.Errorf("weftctl %v: exit %d, want 2", args, code)
		}
	}
	// events says what is wrong with its arguments, not only the usage.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"events", "--since", "abc"}, `events: invalid value "abc" for flag -since`},
		{[]string{"events", "extra"}, `events: unexpected argument "extra"`},
	} {
		if code, _, errOut := e.run("", tc.args...); code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("weftctl %v: exit %d, %q, want %q", tc.args, code, errOut, tc.want)
		}
	}
	// config set with a timeout that cannot wait for the answer is
	// refused before it writes: the controller would otherwise apply a
	// config weftctl reported as unanswered.
	for _, d := range []string{"0s", "-1s"} {
		code, _, errOut := e.run("", "config", "set", "--mtu", "1400", "--timeout", d)
		if code != 2 || !strings.Contains(errOut, "config set --timeout "+d+": want a positive duration") {
			t.Errorf("config set --timeout %s: exit %d, %q", d, code, errOut)
		}
	}
	if r, err := e.c.Get(context.Background(), k.DesiredConfig()); err != nil || len(r.Kvs) != 0 {
		t.Errorf("config set with a bad --timeout wrote %s (%v)", k.DesiredConfig(), err)
	}
}

func TestStatusBGPSessions(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	_, out, _ := e.run("", "status")
	if strings.Contains(out, "SESSIONS") {
		t.Errorf("SESSIONS column without any BGP session:\n%s", out)
	}
	st := &weftv1.AgentStatus{Name: "node0", AppliedSeq: 4, HeadSeq: 4, BgpSessions: []*weftv1.BGPSession{
		{Peer: "10.99.0.254", State: "established", Advertised: 1, Received: 3},
		{Peer: "10.99.1.254", State: "skipped", Reason: "eBGP peer not on a directly connected network"},
	}}
	e.c.Put(ctx, k.Status("node0"), keys.EncodeString(st))
	st = &weftv1.AgentStatus{Name: "node1", AppliedSeq: 4, HeadSeq: 4, BgpSessions: []*weftv1.BGPSession{
		{Peer: "10.99.0.254", State: "established", Advertised: 1, Received: 3},
		{Peer: "10.99.0.9", State: "active", Reason: "sent notification: as number mismatch"},
	}}
	e.c.Put(ctx, k.Status("node1"), keys.EncodeString(st))
	code, out, _ := e.run("", "status")
	for _, want := range []string{"SESSIONS", "node0  4        0       -          1/1 up    converged", "node1  4        0       -          1/2 up    converged", "node2  -        4       -          -         no status"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	code, out, _ = e.run("", "-o", "json", "status")
	var rep ctl.StatusReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || len(rep.Nodes) != 3 {
		t.Fatalf("status json: %d %v %q", code, err, out)
	}
	got := rep.Nodes[1].BGPSessions
	if len(got) != 2 || got[1].Peer != "10.99.0.9" || got[1].State != "active" || got[1].Reason != "sent notification: as number mismatch" ||
		got[0].Received != 3 || got[0].Advertised != 1 {
		t.Errorf("node1 sessions in json: %+v", got)
	}
	if len(rep.Nodes[2].BGPSessions) != 0 || !strings.Contains(out, `"bgp_sessions"`) {
		t.Errorf("json: node2 has sessions or none are shown: %s", out)
	}

	// Learned routes the agent refused: counted in the SESSIONS cell,
	// the listed ones under "refused bgp routes:", the rest counted.
	st.BgpRefusedCount = 3
	st.BgpRefusedRoutes = []string{"0.0.0.0/0 via 10.99.0.2: outside the cluster's pod network 10.244.0.0/16",
		`10.244.2.128/25 via 10.99.0.3: next hop is node "node0"'s underlay address, but 10.244.2.0/24 is node "node2"'s`}
	e.c.Put(ctx, k.Status("node1"), keys.EncodeString(st))
	code, out, _ = e.run("", "status")
	for _, want := range []string{"1/2 up, 3 refused  converged", "\nrefused bgp routes:\n" +
		"  node1: 0.0.0.0/0 via 10.99.0.2: outside the cluster's pod network 10.244.0.0/16\n" +
		`  node1: 10.244.2.128/25 via 10.99.0.3: next hop is node "node0"'s underlay address, but 10.244.2.0/24 is node "node2"'s` + "\n" +
		"  node1: 1 more (its status lists the first 2)\n"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	if strings.Contains(out, "node0: ") {
		t.Errorf("node0 refuses nothing:\n%s", out)
	}
	_, out, _ = e.run("", "-o", "json", "status")
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Nodes[1].BGPRefusedCount != 3 || len(rep.Nodes[1].BGPRefusedRoutes) != 2 {
		t.Errorf("json refused routes: %v %s", err, out)
	}
}

func TestStatusUnreachablePeers(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	// Dual-stack: the agents applied a pod CIDR of each family, and node1
	// cannot reach node2 in either (one entry per family, one peer).
	e.c.Put(ctx, k.Status("node0"), keys.EncodeString(&weftv1.AgentStatus{Name: "node0", AppliedSeq: 4, HeadSeq: 4, ReachablePeers: 2,
		PodCidrs: []string{"10.244.0.0/24", "fd00::/64"}}))
	e.c.Put(ctx, k.Status("node1"), keys.EncodeString(&weftv1.AgentStatus{Name: "node1", AppliedSeq: 4, HeadSeq: 4, Degraded: true,
		PodCidrs:       []string{"10.244.1.0/24", "fd00:0:0:1::/64"},
		ReachablePeers: 1, UnreachablePeers: []*weftv1.UnreachablePeer{{Node: "node2", Address: "10.244.2.1", Since: "2026-01-02T03:04:05Z",
			Reason: "no reply from 10.244.2.1 within 1s: direct routes are off (auto_direct_node_routes=false), so the network must route 10.244.2.0/24"},
			{Node: "node2", Address: "fd00:0:0:2::1", Since: "2026-01-02T03:04:05Z",
				Reason: "no reply from fd00:0:0:2::1 within 1s: direct routes are off (auto_direct_node_routes=false), so the network must route fd00:0:0:2::/64"}}}))
	// node2 cannot reach 70 peers; its status lists the first only.
	e.c.Put(ctx, k.Status("node2"), keys.EncodeString(&weftv1.AgentStatus{Name: "node2", AppliedSeq: 4, HeadSeq: 4, Degraded: true,
		UnreachableCount: 70, UnreachablePeers: []*weftv1.UnreachablePeer{{Node: "node0", Address: "10.244.0.1", Since: "2026-01-02T03:04:05Z", Reason: "no reply"}}}))
	code, out, _ := e.run("", "status")
	for _, want := range []string{
		"degraded: 70 of 70 peers unreachable",
		"  node2 -> node0 (10.244.0.1) since 2026-01-02T03:04:05Z: no reply\n  node2 -> 69 more peers (its status lists the first by name; all on the agent's /unreachable)",
		"node0  4        0       10.244.0.0/24,fd00::/64        converged",
		"node1  4        0       10.244.1.0/24,fd00:0:0:1::/64  degraded: 1 of 2 peers unreachable",
		"unreachable peers:\n  node1 -> node2 (10.244.2.1) since 2026-01-02T03:04:05Z: no reply from 10.244.2.1 within 1s: direct routes are off",
		"  node1 -> node2 (fd00:0:0:2::1) since 2026-01-02T03:04:05Z: no reply from fd00:0:0:2::1 within 1s",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	code, out, _ = e.run("", "-o", "json", "status")
	var rep ctl.StatusReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || len(rep.Nodes) != 3 {
		t.Fatalf("status json: %d %v %q", code, err, out)
	}
	if n := rep.Nodes[1]; n.Converged || n.ReachablePeers != 1 || len(n.UnreachablePeers) != 2 || n.UnreachablePeers[0].Node != "node2" || len(n.PodCIDRs) != 2 {
		t.Errorf("node1 in json: %+v", n)
	}
	if n := rep.Nodes[2]; n.UnreachableCount != 70 || len(n.UnreachablePeers) != 1 {
		t.Errorf("node2 in json: %+v, want unreachable_count 70 and one listed", n)
	}
}

// TestDualStackVerbs: weftctl config set adds an IPv6 cluster CIDR to the
// running IPv4 cluster; nodes and events then show both families (and a
// node's IPv6 underlay address), and removing the IPv6 CIDR is refused
// while nodes hold IPv6 pod CIDRs.
func TestDualStackVerbs(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	r := &weftv1.Registration{Name: "node3", UnderlayIp: "192.168.1.4", UnderlayIpV6: "fd99::4"}
	// On a lease, as an agent registers.
	g, err := e.c.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Put(ctx, k.Registration(r.Name), keys.EncodeString(r), clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	// The controller serves registrations and desired configs from two
	// watches and promises no order between them: a node registered just
	// before the change may be added after it, with both families at once.
	// This test is about nodes that hold an IPv4 pod CIDR when the IPv6
	// CIDR arrives, so node3 must be one before the change.
	if n := e.waitNode(r.Name); len(n.PodCidrs) != 1 || !strings.HasPrefix(n.PodCidrs[0], "10.244.") {
		t.Fatalf("node3 before the IPv6 CIDR: pod CIDRs %v, want one IPv4", n.PodCidrs)
	}
	code, out, _ := e.run("", "config", "set", "--cluster-cidr-v6", "fd00:10:244::/56")
	if code != 0 || !strings.Contains(out, "accepted as seq") {
		t.Fatalf("config set --cluster-cidr-v6: %d %q", code, out)
	}
	code, out, _ = e.run("", "config", "get")
	if code != 0 || !strings.Contains(out, `"cluster_cidr_v6": "fd00:10:244::/56"`) || !strings.Contains(out, `"native_routing_cidr_v6": "fd00:10:244::/56"`) {
		t.Fatalf("config get: %d %q", code, out)
	}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, out, _ = e.run("", "nodes")
		if strings.Count(out, "fd00:10:244:") == 4 || time.Now().After(end) {
			break
		}
	}
	for _, want := range []string{"192.168.1.4,fd99::4", "10.244.0.0/24,fd00:10:244::/64", "fd00:10:244:3::/64"} {
		if !strings.Contains(out, want) {
			t.Errorf("nodes lacks %q:\n%s", want, out)
		}
	}
	_, out, _ = e.run("", "events")
	if !strings.Contains(out, "cluster_cidr=10.244.0.0/16 cluster_cidr_v6=fd00:10:244::/56") || strings.Count(out, "NodeUpdated") != 4 {
		t.Errorf("events do not show the IPv6 CIDR and a NodeUpdated per earlier node:\n%s", out)
	}
	code, out, _ = e.run("", "config", "set", "--cluster-cidr-v6", "")
	if code != 1 || !strings.Contains(out, "refused: invalid: cluster_cidr_v6: cannot remove fd00:10:244::/56 while 4 nodes hold IPv6 pod CIDRs") {
		t.Fatalf("config set --cluster-cidr-v6 '': %d %q", code, out)
	}
}

// TestStatusConverging: a node whose agent reports that its first
// convergence waits is not converged and says for what, though it applied
// the head and nothing is wrong: node0 (projected) waits for its BGP
// sessions, node9 for its NodeAdded (as an agent that registered while
// the controller was away: only its status is written here) and is listed
// although the log does not know it.
func TestStatusConverging(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	e.c.Put(ctx, k.Status("node0"), keys.EncodeString(&weftv1.AgentStatus{Name: "node0", AppliedSeq: 4, HeadSeq: 4,
		NotConverged: "first sync in bgp mode waits for the BGP sessions"}))
	e.c.Put(ctx, k.Status("node1"), keys.EncodeString(&weftv1.AgentStatus{Name: "node1", AppliedSeq: 4, HeadSeq: 4}))
	e.c.Put(ctx, k.Status("node9"), keys.EncodeString(&weftv1.AgentStatus{Name: "node9", AppliedSeq: 4, HeadSeq: 4,
		NotConverged: "no NodeAdded of node9 in the log (the controller has not given it pod CIDRs)"}))
	code, out, _ := e.run("", "status")
	for _, want := range []string{
		"node0  4        0       -          converging: first sync in bgp mode waits for the BGP sessions\n",
		"node1  4        0       -          converged\n",
		"node9  4        0       -          converging: no NodeAdded of node9 in the log (the controller has not given it pod CIDRs)\n",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	code, out, _ = e.run("", "-o", "json", "status")
	var rep ctl.StatusReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || len(rep.Nodes) != 4 {
		t.Fatalf("status json: %d %v %q", code, err, out)
	}
	for i, want := range map[int]string{0: "first sync in bgp mode waits for the BGP sessions", 1: "",
		3: "no NodeAdded of node9 in the log (the controller has not given it pod CIDRs)"} {
		if n := rep.Nodes[i]; n.NotConverged != want || n.Converged != (want == "") || !n.Reporting || n.Behind != 0 || n.Degraded {
			t.Errorf("node %d in json: %+v, want not_converged %q", i, n, want)
		}
	}
	if !strings.Contains(out, `"not_converged": "no NodeAdded of node9`) {
		t.Errorf("json lacks not_converged:\n%s", out)
	}
}

// TestStatusShowsNodeTextEscaped: a node writes its own status, so its
// text reaches the operator's terminal through weftctl status. Control
// characters in it (a terminal escape, a newline forging a line about
// another node, a bidirectional override) are printed as Go escapes: the
// table keeps one line per node and its columns, and nothing the node
// wrote drives the terminal.
func TestStatusShowsNodeTextEscaped(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	forged := "\nnode2  4        0       10.244.2.0/24  converged"
	e.c.Put(ctx, k.Status("node0"), keys.EncodeString(&weftv1.AgentStatus{Name: "node0", AppliedSeq: 4, HeadSeq: 4,
		LastError: "\x1b[2J\x1b[1;32mall good\x1b[0m" + forged}))
	e.c.Put(ctx, k.Status("node1"), keys.EncodeString(&weftv1.AgentStatus{Name: "node1", AppliedSeq: 4, HeadSeq: 4, Degraded: true,
		PodCidrs: []string{"10.244.1.0/24"}, ReachablePeers: 1,
		UnreachablePeers: []*weftv1.UnreachablePeer{{Node: "node2", Address: "10.244.2.1", Since: "\u202etoday\a", Reason: "no\treply\r\u009b2K"}}}))
	e.c.Put(ctx, k.Status("node2"), keys.EncodeString(&weftv1.AgentStatus{Name: "node2", AppliedSeq: 4, HeadSeq: 4,
		NotConverged: "waits\x1b]52;c;aGk=\x07"}))
	code, out, _ := e.run("", "status")
	if code != 0 {
		t.Fatalf("status exits %d:\n%s", code, out)
	}
	for _, want := range []string{
		`error: \x1b[2J\x1b[1;32mall good\x1b[0m\nnode2  4        0       10.244.2.0/24  converged` + "\n",
		"10.244.1.0/24  degraded: 1 of 2 peers unreachable\n",
		`  node1 -> node2 (10.244.2.1) since \u202etoday\a: no\treply\r\u009b2K` + "\n",
		`converging: waits\x1b]52;c;aGk=\a` + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	for _, raw := range []string{"\x1b", "\r", "\a", "\t", "\u202e", "\u009b"} {
		if strings.Contains(out, raw) {
			t.Errorf("status prints %q raw:\n%q", raw, out)
		}
	}
	// One header, one line per node, then the unreachable peers.
	if lines := strings.Split(strings.SplitN(out, "\n\n", 2)[0], "\n"); len(lines) != 5 {
		t.Errorf("the table has %d lines, want head, header and 3 nodes:\n%s", len(lines), out)
	}
}

// TestStatusNotBelievedWhenBad: a status that claims to be another
// node's, reports what is no CIDR, or says it applied events beyond the
// head is not believed: weftctl status shows the node as a bad status
// naming the key and field, not as converged, in the table and in JSON;
// weftctl check names the key of one that does not validate; a good
// status put back makes the node converged again.
func TestStatusNotBelievedWhenBad(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	e.c.Put(ctx, k.Status("node0"), keys.EncodeString(&weftv1.AgentStatus{Name: "node1", AppliedSeq: 4, HeadSeq: 4}))
	e.c.Put(ctx, k.Status("node1"), keys.EncodeString(&weftv1.AgentStatus{Name: "node1", AppliedSeq: 999, HeadSeq: 999}))
	e.c.Put(ctx, k.Status("node2"), keys.EncodeString(&weftv1.AgentStatus{Name: "node2", AppliedSeq: 4, HeadSeq: 4,
		PodCidrs: []string{"10.244.2.0/24  converged"}}))
	code, out, _ := e.run("", "status")
	for _, want := range []string{
		`node0  -        4       -          <bad status: /weft/status/node0: invalid: name: "node1" reported under key of "node0">`,
		`node1  -        4       -          <bad status: /weft/status/node1: applied_seq: 999 is beyond the head 4>`,
		`node2  -        4       -          <bad status: /weft/status/node2: invalid: pod_cidrs[0]: "10.244.2.0/24  converged" is not a CIDR>`,
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	if strings.Contains(out, "converged\n") {
		t.Errorf("a node with a bad status shown converged:\n%s", out)
	}
	code, out, _ = e.run("", "-o", "json", "status")
	var rep ctl.StatusReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || len(rep.Nodes) != 3 {
		t.Fatalf("status json: %d %v %q", code, err, out)
	}
	for _, n := range rep.Nodes {
		if n.Converged || n.Reporting || n.BadStatus == "" || n.AppliedSeq != 0 {
			t.Errorf("%s in json: %+v, want a bad status, not reporting or converged", n.Name, n)
		}
	}
	if code, out, _ := e.run("", "check"); code != 1 || !strings.Contains(out, "/weft/status/node0: invalid: name:") ||
		!strings.Contains(out, "/weft/status/node2: invalid: pod_cidrs[0]:") {
		t.Errorf("check exits %d, want it to name both invalid statuses:\n%s", code, out)
	}
	for i := range 3 {
		name := fmt.Sprintf("node%d", i)
		e.c.Put(ctx, k.Status(name), keys.EncodeString(&weftv1.AgentStatus{Name: name, AppliedSeq: 4, HeadSeq: 4}))
	}
	code, out, _ = e.run("", "status")
	if code != 0 || strings.Count(out, "converged\n") != 3 || strings.Contains(out, "bad status") {
		t.Errorf("good statuses put back, want 3 nodes converged (exit %d):\n%s", code, out)
	}
}

// TestConfigGetNamesBadValues: config get says which key holds a value
// that does not decode: an undecodable answer to the last desired config
// is shown as a bad value (table and JSON) beside the config in force,
// not dropped; an undecodable config in force fails naming its key.
func TestConfigGetNamesBadValues(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	if _, err := e.c.Put(ctx, k.DesiredStatus(), "garbage{"); err != nil {
		t.Fatal(err)
	}
	code, out, _ := e.run("", "config", "get")
	if code != 0 || !strings.Contains(out, `"cluster_cidr": "10.244.0.0/16"`) ||
		!strings.Contains(out, "last desired config: <bad value: /weft/desired/status: decode config status: ") {
		t.Errorf("config get with a bad desired status: exit %d:\n%s", code, out)
	}
	code, out, _ = e.run("", "-o", "json", "config", "get")
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil || got["config"] == nil ||
		!strings.HasPrefix(fmt.Sprint(got["bad_desired_status"]), "/weft/desired/status: decode config status: ") {
		t.Errorf("config get json with a bad desired status: exit %d %v:\n%s", code, err, out)
	}

	// No controller here to repair the config in force.
	srv, c := etcdtest.New(t)
	if _, err := c.Put(ctx, k.Config(), `{"vni":"many"}`); err != nil {
		t.Fatal(err)
	}
	var o, eo bytes.Buffer
	code = ctl.Main(ctx, []string{"--etcd-endpoints", srv.Endpoints[0], "config", "get"}, strings.NewReader(""), &o, &eo, func(string) string { return "" })
	if code != 1 || !strings.Contains(eo.String(), "weftctl: /weft/config: decode cluster config: ") {
		t.Errorf("config get with a bad config in force: exit %d, %q", code, eo.String())
	}
}

// TestConfigSetHelp: config set --help exits 0 and lists a flag for every
// plain field of ClusterConfig (a message such as bgp goes in a file;
// defaults_applied is the controller's), each of which config set takes.
func TestConfigSetHelp(t *testing.T) {
	e := setup(t)
	code, out, errOut := e.run("", "config", "set", "--help")
	if code != 0 || errOut != "" {
		t.Fatalf("config set --help: exit %d, %q", code, errOut)
	}
	fields := (&weftv1.ClusterConfig{}).ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.Message() != nil || f.Name() == "defaults_applied" {
			continue
		}
		flag := "--" + strings.ReplaceAll(string(f.Name()), "_", "-")
		if !strings.Contains(out, "    "+flag+"\n") {
			t.Errorf("config set --help does not list %s:\n%s", flag, out)
		}
	}
}
