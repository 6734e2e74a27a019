package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/nodeagent/internal/fakedp"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/nodeagent/reach"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// gatewayDP is the fake datapath with a PodGateway that records calls.
type gatewayDP struct {
	*fakedp.Datapath
	ensure func([]netip.Prefix, int) error
}

func (d gatewayDP) EnsurePodGateway(p []netip.Prefix, mtu int) error { return d.ensure(p, mtu) }

// fakeNet stands in for the network at the prober's socket: an echo to an
// address that is "routed" is answered, anything else is lost. (The real
// sockets are tested in package reach and end to end in testenv/e2e.)
type fakeNet struct {
	mu     sync.Mutex
	routed map[netip.Addr]bool
}

func (n *fakeNet) route(a string) {
	n.mu.Lock()
	n.routed[netip.MustParseAddr(a)] = true
	n.mu.Unlock()
}

func (n *fakeNet) unroute(a string) {
	n.mu.Lock()
	delete(n.routed, netip.MustParseAddr(a))
	n.mu.Unlock()
}

type fakeConn struct {
	n       *fakeNet
	replies chan reach.Reply
	done    chan struct{}
	once    sync.Once
}

func (n *fakeNet) open(bool) (reach.Conn, error) {
	return &fakeConn{n: n, replies: make(chan reach.Reply, 64), done: make(chan struct{})}, nil
}

func (c *fakeConn) Send(dst netip.Addr, seq uint16) error {
	c.n.mu.Lock()
	ok := c.n.routed[dst]
	c.n.mu.Unlock()
	if ok {
		select {
		case c.replies <- reach.Reply{Seq: seq, From: dst}:
		default:
		}
	}
	return nil
}

func (c *fakeConn) Recv() (reach.Reply, error) {
	select {
	case r := <-c.replies:
		return r, nil
	case <-c.done:
		return reach.Reply{}, errors.New("closed")
	}
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

// TestUnreachablePeersMakeTheAgentDegraded: in native mode without direct
// routes nothing routes the peers' pod CIDRs; the agent converges, and
// after the grace its status, /healthz and metrics say which peers are
// unreachable and why, without touching the datapath. As routes appear
// the peers clear, and the agent is healthy again.
func TestUnreachablePeersMakeTheAgentDegraded(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	net := &fakeNet{routed: map[netip.Addr]bool{}}
	var gwMu sync.Mutex
	var gateways [][]netip.Prefix
	syncsAtFirst := -1
	h.a.dp = gatewayDP{h.dp, func(p []netip.Prefix, mtu int) error {
		gwMu.Lock()
		if syncsAtFirst < 0 {
			syncsAtFirst = h.dp.Syncs()
		}
		gateways = append(gateways, slices.Clone(p))
		gwMu.Unlock()
		return nil
	}}
	h.a.cfg.Probe = &reach.Config{Open: net.open, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond,
		Retry: 20 * time.Millisecond, Grace: 500 * time.Millisecond}
	h.a.newProber()

	native := cfg()
	native.Backend = "native"
	h.append(logtest.Config(native))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.append(logtest.Added("n3", "192.168.1.3", "10.244.3.0/24"))
	h.start()

	st := h.waitStatus("both peers unreachable", func(st *weftv1.AgentStatus) bool {
		return st.AppliedSeq == 4 && len(st.UnreachablePeers) == 2
	})
	if !st.Degraded || st.Mode != "native" || st.ReachablePeers != 0 {
		t.Errorf("status = %v, want degraded in native mode with no reachable peer", st)
	}
	for i, u := range st.UnreachablePeers {
		name, gw := []string{"n2", "n3"}[i], []string{"10.244.2.1", "10.244.3.1"}[i]
		if u.Node != name || u.Address != gw || u.Since == "" ||
			!strings.Contains(u.Reason, "direct routes are off (auto_direct_node_routes=false)") {
			t.Errorf("unreachable peer %d = %v, want %s at %s, the reason naming direct routes off", i, u, name, gw)
		}
	}
	if code, body := h.healthz(); code != 503 || !strings.Contains(body, "2 of 2 peers unreachable: n2: no reply from 10.244.2.1") {
		t.Errorf("healthz = %d %q", code, body)
	}
	metrics := func() string {
		rec := httptest.NewRecorder()
		h.a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	for _, m := range []string{"weft_agent_peers_unreachable 2", "weft_agent_peers_reachable 0", "weft_agent_degraded 1", `weft_agent_probes_total{result="failed"}`} {
		if !strings.Contains(metrics(), m) {
			t.Errorf("metrics lack %q", m)
		}
	}
	// Reporting only: the datapath holds what the mode says, nothing more
	// or less because of the unreachable peers.
	if k := h.dp.Kernel(); k.Mode != "native" || len(k.Routes) != 0 || len(k.Tunnels) != 0 {
		t.Errorf("kernel = %s, want native without routes", k)
	}
	// The pod gateway is made before the first Sync and checked again at
	// each reconcile.
	gwMu.Lock()
	if syncsAtFirst != 0 || len(gateways) < 2 {
		t.Errorf("pod gateway first made after %d Syncs, %d times in all; want before the first, then at each reconcile", syncsAtFirst, len(gateways))
	}
	for _, g := range gateways {
		if !slices.Equal(g, []netip.Prefix{pfx("10.244.1.0/24")}) {
			t.Errorf("pod gateway made for %v, want 10.244.1.0/24", g)
		}
	}
	gwMu.Unlock()

	// The network learns a route to n2: n2 clears, n3 stays.
	net.route("10.244.2.1")
	st = h.waitStatus("n2 reachable", func(st *weftv1.AgentStatus) bool {
		return len(st.UnreachablePeers) == 1 && st.ReachablePeers == 1
	})
	if st.UnreachablePeers[0].Node != "n3" || !st.Degraded {
		t.Errorf("status = %v, want n3 alone unreachable, still degraded", st)
	}
	net.route("10.244.3.1")
	st = h.waitStatus("all reachable", func(st *weftv1.AgentStatus) bool {
		return len(st.UnreachablePeers) == 0 && st.ReachablePeers == 2 && !st.Degraded
	})
	if code, body := h.healthz(); code != 200 {
		t.Errorf("healthz = %d %q after every peer answered", code, body)
	}
	if m := metrics(); !strings.Contains(m, "weft_agent_peers_unreachable 0") || !strings.Contains(m, "weft_agent_degraded 0") {
		t.Errorf("metrics still degraded:\n%s", m)
	}
}

// TestUnreachableWaveIsCoalesced: peers become unreachable one after
// another, as when a cluster's nodes go away in a cold-start benchmark.
// The status is written at most once per StatusMinInterval (plus the
// periodic writes), not once per peer; the health log says so a few
// times, not once per peer; the status lists a bounded number of peers
// with the whole count; and the last state is written exactly.
func TestUnreachableWaveIsCoalesced(t *testing.T) {
	const peers = 200
	const minInterval = 100 * time.Millisecond
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.a.cfg.StatusMinInterval = minInterval
	h.a.cfg.StatusInterval = time.Second
	net := &fakeNet{routed: map[netip.Addr]bool{}}
	h.a.cfg.Probe = &reach.Config{Open: net.open, Interval: 100 * time.Millisecond, Timeout: 30 * time.Millisecond,
		Retry: 10 * time.Millisecond, Grace: 50 * time.Millisecond, Rate: 100000}
	h.a.newProber()

	native := cfg()
	native.Backend = "native"
	h.append(logtest.Config(native))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	var gws []string
	for i := range peers {
		gw := fmt.Sprintf("10.244.%d.1", i+2)
		net.route(gw)
		gws = append(gws, gw)
		h.append(logtest.Added(fmt.Sprintf("p%03d", i), fmt.Sprintf("192.168.1.%d", i+2), fmt.Sprintf("10.244.%d.0/24", i+2)))
	}
	h.start()
	h.waitStatus("every peer reachable", func(st *weftv1.AgentStatus) bool {
		return st.ReachablePeers == peers && !st.Degraded
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := keys.New("").Status("n1")
	r, err := c.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		writes int
		last   *weftv1.AgentStatus
	)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for resp := range c.Watch(ctx, key, clientv3.WithRev(r.Header.Revision+1)) {
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				st, err := keys.DecodeStatus(ev.Kv.Value)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				writes, last = writes+1, st
				mu.Unlock()
			}
		}
	}()
	logsBefore := strings.Count(h.logs.String(), "degraded")

	// The wave: a peer every 5 ms, each found unreachable by its own probes.
	start := time.Now()
	for _, gw := range gws {
		net.unroute(gw)
		time.Sleep(5 * time.Millisecond)
	}
	final := h.waitStatus("every peer unreachable", func(st *weftv1.AgentStatus) bool {
		return st.UnreachableCount == peers && st.ReachablePeers == 0
	})
	elapsed := time.Since(start)
	// Whatever the writer still holds lands within a min interval (plus
	// jitter); nothing changes after, so nothing more is due but the
	// periodic writes.
	time.Sleep(3 * minInterval)
	elapsed += 3 * minInterval
	cancel()
	<-watchDone

	mu.Lock()
	defer mu.Unlock()
	maxWrites := int(elapsed/minInterval) + int(elapsed/time.Second) + 2
	if writes > maxWrites {
		t.Errorf("%d status writes in %v for %d peers going unreachable, want at most %d (one per %v and the periodic ones)",
			writes, elapsed, peers, maxWrites, minInterval)
	}
	lines := strings.Count(h.logs.String(), "degraded") - logsBefore
	if maxLines := int(elapsed/minInterval) + 2; lines > maxLines || lines == 0 {
		t.Errorf("%d health lines in %v, want 1 to %d (one per %v)", lines, elapsed, maxLines, minInterval)
	}
	if !strings.Contains(h.logs.String(), fmt.Sprintf("%d of %d peers unreachable: p000: ", peers, peers)) {
		t.Errorf("the health log never says all %d peers are unreachable", peers)
	}
	// The last value written is the final state, exactly: every peer
	// counted, the first statusUnreachable listed by name.
	for _, st := range []*weftv1.AgentStatus{final, last} {
		if st == nil || !st.Degraded || st.UnreachableCount != peers || st.ReachablePeers != 0 || len(st.UnreachablePeers) != statusUnreachable {
			t.Fatalf("status = unreachable_count %d, %d listed, reachable %d; want %d, %d, 0",
				st.GetUnreachableCount(), len(st.GetUnreachablePeers()), st.GetReachablePeers(), peers, statusUnreachable)
		}
		for i, u := range st.UnreachablePeers {
			if want := fmt.Sprintf("p%03d", i); u.Node != want || u.Address != gws[i] {
				t.Errorf("listed peer %d = %s at %s, want %s at %s", i, u.Node, u.Address, want, gws[i])
			}
		}
	}
	t.Logf("%d peers unreachable in %v: %d status writes, %d health lines", peers, elapsed, writes, lines)

	// The agent lists every one of them on its own endpoint.
	rec := httptest.NewRecorder()
	h.a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/unreachable", nil))
	if n := strings.Count(rec.Body.String(), "\n"); n != peers || !strings.HasPrefix(rec.Body.String(), "p000 10.244.2.1 since ") {
		t.Errorf("/unreachable lists %d lines, want %d from p000:\n%.300s", n, peers, rec.Body.String())
	}
}
