package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/follow"
	"github.com/weftnet/weft/nodeagent/internal/fakedp"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
	"github.com/weftnet/weft/testenv/poll"
	"github.com/weftnet/weft/testenv/syncbuf"
)

func TestMain(m *testing.M) {
	logtest.MaybeRunEtcdChild()
	goleak.VerifyTestMain(m)
}

func testUnderlay() spec.Underlay {
	return spec.Underlay{
		Interface: "eth0",
		IP:        netip.MustParseAddr("192.168.1.1"),
		MTU:       1500,
		Networks:  []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")},
	}
}

type harness struct {
	t      testing.TB
	c      *clientv3.Client // direct client, for the test's own writes
	log    *logtest.Log
	dp     *fakedp.Datapath
	a      *Agent
	logs   *syncbuf.Buffer
	subnet string
	stop   func()
	// timeout is the agent's etcd request timeout (300 ms unless a test
	// sets it before newAgent), ttl its lease TTL (2 s unless set).
	timeout, ttl time.Duration
}

func newHarness(t testing.TB, agentClient *clientv3.Client, c *clientv3.Client) *harness {
	ctx := context.Background()
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, c: c, log: l, dp: fakedp.New(testUnderlay()), logs: &syncbuf.Buffer{},
		subnet: filepath.Join(t.TempDir(), "run", "subnet.env"), timeout: 300 * time.Millisecond, ttl: 2 * time.Second}
	h.dp.Pins = "/sys/fs/bpf/weft-test"
	h.a = h.newAgent(agentClient)
	return h
}

func (h *harness) newAgent(c *clientv3.Client) *Agent {
	a, err := New(Config{
		Client:            c,
		NodeName:          "n1",
		Datapath:          h.dp,
		SubnetFile:        h.subnet,
		LeaseTTL:          h.ttl,
		ReconcileInterval: 100 * time.Millisecond,
		StatusInterval:    200 * time.Millisecond,
		StatusMinInterval: 10 * time.Millisecond,
		Capabilities:      []string{"tcx"},
		Follow:            follow.Options{RequestTimeout: h.timeout, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
		Logger:            hclog.New(&hclog.LoggerOptions{Output: io.MultiWriter(h.logs), Level: hclog.Debug}),
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return a
}

// registrationLease is the lease of node's registration as c reads it,
// NoLease when there is none (or c cannot read it within a second).
func registrationLease(c *clientv3.Client, node string) clientv3.LeaseID {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := c.Get(ctx, keys.New("").Registration(node))
	if err != nil || len(r.Kvs) == 0 {
		return clientv3.NoLease
	}
	return clientv3.LeaseID(r.Kvs[0].Lease)
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.a.Run(ctx); close(done) }()
	h.stop = func() { cancel(); <-done }
	h.t.Cleanup(func() { h.stop() })
}

// startWithPeer logs the config, this node (n1) and a peer (n2), starts
// the agent and waits until it has applied all three and has the peer's
// tunnel.
func (h *harness) startWithPeer() {
	h.t.Helper()
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.start()
	h.waitStatus("converged", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 3 && st.TunnelEntries == 1 })
}

func (h *harness) append(e *weftv1.Event) uint64 {
	h.t.Helper()
	seq, err := h.log.Append(context.Background(), e)
	if err != nil {
		h.t.Fatal(err)
	}
	return seq
}

func eventually(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	poll.Eventually(t, 10*time.Second, 10*time.Millisecond, what, cond)
}

func (h *harness) status() *weftv1.AgentStatus {
	r, err := h.c.Get(context.Background(), keys.New("").Status("n1"))
	if err != nil || len(r.Kvs) == 0 {
		return nil
	}
	st, err := keys.DecodeStatus(r.Kvs[0].Value)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

func (h *harness) waitStatus(what string, cond func(st *weftv1.AgentStatus) bool) *weftv1.AgentStatus {
	h.t.Helper()
	var st *weftv1.AgentStatus
	eventually(h.t, what, func() (bool, string) {
		st = h.status()
		return st != nil && cond(st), st.String()
	})
	return st
}

// waitRegistration waits for n1's registration on a lease and returns it.
func (h *harness) waitRegistration() *weftv1.Registration {
	h.t.Helper()
	var reg *weftv1.Registration
	eventually(h.t, "registration", func() (bool, string) {
		r, err := h.c.Get(context.Background(), keys.New("").Registration("n1"))
		if err != nil || len(r.Kvs) == 0 {
			return false, "absent"
		}
		if r.Kvs[0].Lease == 0 {
			return false, "not on a lease"
		}
		reg, err = keys.DecodeRegistration(r.Kvs[0].Value)
		return err == nil, string(r.Kvs[0].Value)
	})
	return reg
}

func (h *harness) healthz() (int, string) {
	rec := httptest.NewRecorder()
	h.a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	return rec.Code, rec.Body.String()
}

func cfg() *weftv1.ClusterConfig { return &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"} }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestAgentRegistersWaitsConvergesAndReports(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.start()

	// Registration on a lease, with the underlay IP from the datapath.
	reg := h.waitRegistration()
	if reg.UnderlayIp != "192.168.1.1" || reg.Capabilities[0] != "tcx" {
		t.Fatalf("registration = %v", reg)
	}
	// Without this node's NodeAdded nothing is synced.
	h.waitStatus("status while waiting", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 2 })
	if n := h.dp.Syncs(); n != 0 {
		t.Fatalf("synced %d times before NodeAdded", n)
	}

	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	st := h.waitStatus("converged", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 3 && st.Mode == "vxlan" })
	if st.TunnelEntries != 1 || st.RouteEntries != 1 || st.Mtu != 1450 || st.PodCidrs[0] != "10.244.1.0/24" || st.Degraded || st.HeadSeq != 3 {
		t.Fatalf("status = %v", st)
	}
	k := h.dp.Kernel()
	if len(k.Tunnels) != 1 || k.Tunnels[0].Prefix != pfx("10.244.2.0/24") || k.Overlay.MTU != 1450 {
		t.Fatalf("kernel = %s", k)
	}
	want := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\nWEFT_BACKEND=vxlan\nWEFT_BPFFS_DIR=/sys/fs/bpf/weft-test\n"
	eventually(t, "subnet.env", func() (bool, string) {
		b, err := os.ReadFile(h.subnet)
		return err == nil && string(b) == want, string(b)
	})
	if code, body := h.healthz(); code != 200 || body != "ok\n" {
		t.Fatalf("healthz = %d %q", code, body)
	}
	rec := httptest.NewRecorder()
	h.a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, m := range []string{"weft_agent_applied_seq 3", "weft_agent_lag_events 0", `weft_agent_relists_total{reason="start"} 1`,
		"weft_agent_sync_duration_seconds_count{op=\"sync\"}", "weft_datapath_tx_packets_total 7", `weft_datapath_drops_total{reason="spoofed"} 1`,
		`weft_datapath_drop_reasons_total{reason="wrong_endpoint"} 1`, `weft_datapath_drop_reasons_total{reason="no_tunnel"} 0`,
		`weft_datapath_direct_packets_total{direction="rx"} 5`, `weft_datapath_direct_packets_total{direction="tx"} 4`, "weft_datapath_encap_packets_total 6",
		`weft_datapath_big_packets_total{direction="tx"} 8`, `weft_datapath_big_packets_total{direction="rx"} 9`,
		`weft_datapath_big_packets_total{direction="rx_stack"} 1`,
		`weft_datapath_routed_packets_total{direction="rx"} 3`, `weft_datapath_routed_packets_total{direction="tx"} 2`,
		"weft_agent_tunnel_entries 1", "weft_agent_degraded 0",
		// The standard collectors: the agent's RSS must be watchable.
		"process_resident_memory_bytes ", "go_goroutines ", "go_memstats_heap_alloc_bytes "} {
		if !strings.Contains(rec.Body.String(), m) {
			t.Errorf("metrics lack %q", m)
		}
	}

	// Config changes take effect live and leave nothing of the old value.
	c2 := cfg()
	c2.Mtu, c2.UdpPort, c2.Vni = 1400, 4789, 42
	h.append(logtest.Config(c2))
	eventually(t, "new overlay", func() (bool, string) {
		k := h.dp.Kernel()
		return k.Overlay.MTU == 1350 && k.Overlay.Port == 4789 && k.Tunnels[0].VNI == 42, k.String()
	})
	eventually(t, "subnet.env MTU", func() (bool, string) {
		b, _ := os.ReadFile(h.subnet)
		return strings.Contains(string(b), "FLANNEL_MTU=1350\n"), string(b)
	})
	c3 := cfg()
	c3.Backend, c3.AutoDirectNodeRoutes = "native", true
	h.append(logtest.Config(c3))
	h.append(logtest.Added("n3", "192.168.9.3", "10.244.3.0/24"))
	st = h.waitStatus("native", func(st *weftv1.AgentStatus) bool {
		return st.Mode == "native" && st.AppliedSeq == 6 && len(st.PeerProblems) == 1
	})
	k = h.dp.Kernel()
	if k.Overlay != nil || len(k.Tunnels) != 0 || len(k.Routes) != 1 || k.Routes[0].Via != netip.MustParseAddr("192.168.1.2") {
		t.Fatalf("native kernel = %s %+v", k, k.Routes)
	}
	if st.PeerProblems[0].Node != "n3" || !strings.Contains(st.PeerProblems[0].Reason, "not on a directly connected network") {
		t.Fatalf("peer problems = %v", st.PeerProblems)
	}
}

func TestAgentConvergedIsCalledOnceAfterTheFirstSync(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	var calls, syncsAtCall atomic.Int64
	h.a.cfg.Converged = func() {
		syncsAtCall.Store(int64(h.dp.Syncs()))
		calls.Add(1)
	}
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.start()
	h.waitStatus("status while waiting", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 2 })
	if n := calls.Load(); n != 0 {
		t.Fatalf("Converged called %d times before the node's NodeAdded", n)
	}
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.waitStatus("converged", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 3 && st.TunnelEntries == 1 })
	if n, at := calls.Load(), syncsAtCall.Load(); n != 1 || at != 1 {
		t.Fatalf("Converged called %d times, the first after %d syncs; want once, after the first", n, at)
	}
	// Later syncs do not call it again.
	h.append(logtest.Added("n3", "192.168.1.3", "10.244.3.0/24"))
	h.waitStatus("second peer", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 4 && st.TunnelEntries == 2 })
	if n := calls.Load(); n != 1 {
		t.Fatalf("Converged called %d times after a second sync, want once", n)
	}
}

func TestAgentRefusesBadInputAndKeepsServing(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.startWithPeer()

	// An undecodable event, a prefix outside the cluster CIDR, a bad
	// endpoint, and another node claiming this node's subnet.
	if err := h.log.AppendRaw(ctx, 4, []byte("\x00garbage")); err != nil {
		t.Fatal(err)
	}
	h.append(logtest.Added("n3", "192.168.1.3", "10.99.0.0/24"))
	h.append(logtest.Added("n4", "999.1.1.1", "10.244.4.0/24"))
	h.append(logtest.Added("evil", "192.168.1.5", "10.244.1.0/24"))
	// Other nodes keep being served.
	h.append(logtest.Added("n6", "192.168.1.6", "10.244.6.0/24"))
	st := h.waitStatus("refusals", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 8 && st.TunnelEntries == 2 })
	got := strings.Join(st.Refused, "\n")
	for _, w := range []string{"event 4: decode event", "event 5:", "outside the cluster CIDR", "event 6:", "underlay_ip", `event 7:`, `overlaps node "n1"`} {
		if !strings.Contains(got, w) {
			t.Errorf("refused lacks %q:\n%s", w, got)
		}
	}
	k := h.dp.Kernel()
	if len(k.Tunnels) != 2 || k.Tunnels[1].Prefix != pfx("10.244.6.0/24") || k.LocalPodCIDRs[0] != pfx("10.244.1.0/24") {
		t.Fatalf("kernel = %+v", k.Tunnels)
	}

	// A garbage node value in the projection, seen at a re-list (forced by
	// a gap): refused, the node's last good value kept, and the agent
	// degraded naming the key (as for the refused nodes the projection
	// holds: n3, n4 and evil).
	if err := h.log.AppendRaw(ctx, 10, keys.Encode(&weftv1.Event{Seq: 10, Kind: logtest.Removed("nobody").Kind}),
		clientv3.OpPut(keys.New("").Node("n2"), "{broken")); err != nil {
		t.Fatal(err)
	}
	st = h.waitStatus("garbage node", func(st *weftv1.AgentStatus) bool {
		return st.AppliedSeq == 10 && strings.Contains(strings.Join(st.Refused, "\n"), "node n2: decode node")
	})
	if st.TunnelEntries != 2 || !st.Degraded {
		t.Fatalf("status = %v", st)
	}
	_, reasons := h.a.Health()
	if r := strings.Join(reasons, "\n"); !strings.Contains(r, "bad value at /weft/nodes/n2: decode node") || !strings.Contains(r, "holding its last good value") {
		t.Fatalf("health does not name /weft/nodes/n2 and what is held: %s", r)
	}
	if k := h.dp.Kernel(); len(k.Tunnels) != 2 || k.Tunnels[0].Endpoint != netip.MustParseAddr("192.168.1.2") {
		t.Fatalf("kernel after the garbage list = %+v", k.Tunnels)
	}
	if !strings.Contains(h.logs.String(), "event refused; keeping the last good state") {
		t.Fatalf("no refusal log line")
	}
}

func TestAgentHeadlessAndUnreachableAtStart(t *testing.T) {
	p, c := etcdBehindProxy(t, true) // etcd unreachable from the start
	ac, err := clientv3.New(clientv3.Config{Endpoints: []string{p.Endpoint()}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	h := newHarness(t, ac, c)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.start()
	eventually(t, "degraded at start", func() (bool, string) {
		code, body := h.healthz()
		return code == 503 && strings.Contains(body, "etcd unreachable"), body
	})
	if h.dp.Syncs() != 0 {
		t.Fatal("synced without a log")
	}

	p.SetDown(false)
	h.waitStatus("converged", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 3 && st.TunnelEntries == 1 && !st.Degraded })
	eventually(t, "healthy", func() (bool, string) { code, body := h.healthz(); return code == 200, body })

	// etcd goes away: the datapath stays as it is, health says so.
	before := h.dp.Kernel()
	syncs := h.dp.Syncs()
	p.SetDown(true)
	eventually(t, "degraded", func() (bool, string) { code, body := h.healthz(); return code == 503, body })
	h.append(logtest.Added("n3", "192.168.1.3", "10.244.3.0/24"))
	time.Sleep(300 * time.Millisecond)
	if h.dp.Syncs() != syncs || !equalDesired(before, h.dp.Kernel()) {
		t.Fatalf("datapath changed while headless: %s", h.dp.Kernel())
	}
	// etcd is back: converge to what happened meanwhile.
	p.SetDown(false)
	h.waitStatus("converged again", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 4 && st.TunnelEntries == 2 && !st.Degraded })
	eventually(t, "healthy again", func() (bool, string) { code, body := h.healthz(); return code == 200, body })
}

// TestAgentSeesItsLeaseEndWhileAWriteWaits: the path to etcd drops
// packets (the proxy holds every byte, no connection closes) for longer
// than the lease TTL while the agent writes its status every 200 ms with
// a request timeout of 30 s. The lease keeper must see its session end
// when the lease client gives up on the lease (about a TTL), not when the
// write waiting on etcd times out: in a cluster that is after the
// controller's grace period, and a node cut off for less than the grace
// was removed that way (weft-testenv chaos, seed 7, etcd-block under
// load). Once the path is back it registers again on a new lease.
func TestAgentSeesItsLeaseEndWhileAWriteWaits(t *testing.T) {
	p, c := etcdBehindProxy(t, false)
	ac, err := clientv3.New(clientv3.Config{Endpoints: []string{p.Endpoint()}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	h := newHarness(t, ac, c)
	h.timeout = 30 * time.Second
	h.a = h.newAgent(ac)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.start()
	h.waitStatus("converged", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 2 })
	lease := func() clientv3.LeaseID { return registrationLease(c, "n1") }
	old := lease()
	if old == clientv3.NoLease {
		t.Fatal("not registered")
	}

	p.SetStalled(true)
	eventually(t, "lease gone in etcd", func() (bool, string) { return lease() == clientv3.NoLease, "registration still there" })
	// eventually gives up after 10 s, a third of the write's timeout.
	eventually(t, "the keeper saw its session end", func() (bool, string) {
		return strings.Contains(h.logs.String(), "lease session ended"), h.logs.String()
	})
	p.SetStalled(false)
	eventually(t, "registered again", func() (bool, string) {
		id := lease()
		return id != clientv3.NoLease && id != old, fmt.Sprintf("lease %x", int64(id))
	})
}

func TestAgentLeaseLossRestartAndDriftRepair(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.startWithPeer()

	// Drift: the tunnel entry disappears; Reconcile puts it back and says so.
	h.dp.Mutate(func(d *spec.Desired) { d.Tunnels = nil })
	eventually(t, "drift repaired", func() (bool, string) {
		return len(h.dp.Kernel().Tunnels) == 1 && strings.Contains(h.logs.String(), "repaired: tunnel 10.244.2.0/24 via 192.168.1.2"), h.logs.String()
	})

	// Lease loss: someone revokes the lease; the agent registers again.
	r, err := c.Get(ctx, keys.New("").Registration("n1"))
	if err != nil || len(r.Kvs) == 0 {
		t.Fatal("no registration", err)
	}
	old := clientv3.LeaseID(r.Kvs[0].Lease)
	if _, err := c.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	eventually(t, "re-registered", func() (bool, string) {
		r, err := c.Get(ctx, keys.New("").Registration("n1"))
		if err != nil || len(r.Kvs) == 0 {
			return false, "absent"
		}
		return r.Kvs[0].Lease != 0 && clientv3.LeaseID(r.Kvs[0].Lease) != old, "same lease"
	})
	h.waitStatus("status back", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 3 })

	// Stop: the lease is not revoked, so the registration outlives the
	// agent; the datapath is left as it is.
	h.stop()
	h.stop = func() {}
	r, err = c.Get(ctx, keys.New("").Registration("n1"))
	if err != nil || len(r.Kvs) == 0 {
		t.Fatal("registration gone at stop", err)
	}
	held := h.dp.Kernel()
	syncs := h.dp.Syncs()

	// A restarted agent on the same datapath: an unchanged log means no
	// change to the datapath.
	h.append(logtest.Added("n9", "192.168.1.9", "10.244.9.0/24"))
	h.a = h.newAgent(c)
	h.start()
	h.waitStatus("restarted", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 4 && st.TunnelEntries == 2 })
	k := h.dp.Kernel()
	if h.dp.Syncs() != syncs+1 || len(k.Tunnels) != 2 || k.Tunnels[0] != held.Tunnels[0] {
		t.Fatalf("restart: syncs %d→%d, kernel %+v", syncs, h.dp.Syncs(), k.Tunnels)
	}
}

func TestAgentSyncFailureIsRetriedAndReported(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.dp.FailNextSync(errors.New("netlink: operation not permitted"))
	h.start()
	eventually(t, "retried", func() (bool, string) { return h.dp.Syncs() == 1, "" })
	if !strings.Contains(h.logs.String(), "converge failed; will retry") {
		t.Fatalf("no failure logged:\n%s", h.logs)
	}
	h.waitStatus("healthy", func(st *weftv1.AgentStatus) bool { return !st.Degraded && st.Mode == "vxlan" })
}

func TestAgentUnderlayErrorAndChange(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.dp.SetUnderlay(spec.Underlay{}, errors.New("link ul9 not found"))
	h.start()
	eventually(t, "degraded", func() (bool, string) {
		code, body := h.healthz()
		return code == 503 && strings.Contains(body, "read underlay: link ul9 not found"), body
	})
	if h.dp.Syncs() != 0 {
		t.Fatal("synced without an underlay")
	}
	h.dp.SetUnderlay(testUnderlay(), nil)
	h.waitStatus("converged", func(st *weftv1.AgentStatus) bool { return st.Mtu == 1450 && !st.Degraded })

	// The underlay MTU and address change: re-registered, re-converged.
	u := testUnderlay()
	u.MTU, u.IP = 9000, netip.MustParseAddr("192.168.1.10")
	h.dp.SetUnderlay(u, nil)
	h.waitStatus("new MTU", func(st *weftv1.AgentStatus) bool { return st.Mtu == 8950 })
	eventually(t, "registration updated", func() (bool, string) {
		r, err := c.Get(context.Background(), keys.New("").Registration("n1"))
		if err != nil || len(r.Kvs) == 0 {
			return false, "absent"
		}
		return strings.Contains(string(r.Kvs[0].Value), "192.168.1.10"), string(r.Kvs[0].Value)
	})
	// The underlay gains an IPv6 address (dual-stack): registered as
	// underlay_ip_v6 beside the IPv4 one.
	u.IPv6 = netip.MustParseAddr("fd99::10")
	h.dp.SetUnderlay(u, nil)
	eventually(t, "registration with underlay_ip_v6", func() (bool, string) {
		r, err := c.Get(context.Background(), keys.New("").Registration("n1"))
		if err != nil || len(r.Kvs) == 0 {
			return false, "absent"
		}
		reg, err := keys.DecodeRegistration(r.Kvs[0].Value)
		return err == nil && reg.UnderlayIp == "192.168.1.10" && reg.UnderlayIpV6 == "fd99::10", string(r.Kvs[0].Value)
	})
}

// etcdBehindProxy starts an embedded etcd with a proxy in front of it
// (down: refusing connections from the start) and returns the proxy, for
// the agent's client, and a direct client, for the test. Both end with tb.
func etcdBehindProxy(tb testing.TB, down bool) (*etcdtest.Proxy, *clientv3.Client) {
	srv, c := etcdtest.New(tb)
	u, _ := url.Parse(srv.Endpoints[0])
	p, err := etcdtest.NewProxy(u.Host, down)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p, c
}

// TestAgentAsksForItsPreviousCIDR: an agent that finds an earlier agent's
// subnet file registers asking for the pod CIDRs it names, so a node the
// controller removed comes back with the subnet its pods have addresses
// from; a subnet file it cannot read is logged naming the field, and the
// agent registers asking for nothing.
func TestAgentAsksForItsPreviousCIDR(t *testing.T) {
	for _, tc := range []struct {
		name, file, log string
		want            []string
	}{
		{"good", "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_MTU=1450\n", "", []string{"10.244.9.0/24"}},
		{"bad", "FLANNEL_SUBNET=10.244.9.1/240\n", "FLANNEL_SUBNET", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c := etcdtest.New(t)
			h := newHarness(t, c, c)
			if err := os.MkdirAll(filepath.Dir(h.subnet), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(h.subnet, []byte(tc.file), 0o644); err != nil {
				t.Fatal(err)
			}
			h.a = h.newAgent(c)
			h.append(logtest.Config(cfg()))
			h.start()
			reg := h.waitRegistration()
			if !slices.Equal(reg.PreviousPodCidrs, tc.want) {
				t.Fatalf("previous_pod_cidrs %v, want %v", reg.PreviousPodCidrs, tc.want)
			}
			if tc.log != "" && !strings.Contains(h.logs.String(), tc.log) {
				t.Fatalf("log does not name %s:\n%s", tc.log, h.logs.String())
			}
		})
	}
}
