package nodeagent

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// fakeSpeaker stands in for GoBGP at the Speaker boundary; the real
// speaker against BIRD and in a full mesh is covered by
// nodeagent/bgp/gobgp, the weft-bgp process behind proc.Client by
// nodeagent/bgp/proc, and both with real agents by testenv/e2e
// (TestBGPRouter, TestBGPFullMesh).
type fakeSpeaker struct {
	mu       sync.Mutex
	changed  chan struct{}
	applies  []bgpArgs
	applyErr error
	routes   []spec.Route
	sessions []*weftv1.BGPSession
	stops    []bool // withdraw flag of each Stop
	running  bool
}

func newFakeSpeaker() *fakeSpeaker { return &fakeSpeaker{changed: make(chan struct{}, 1)} }

func (f *fakeSpeaker) Apply(_ context.Context, cfg bgp.Config, adv []netip.Prefix, nh []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies = append(f.applies, bgpArgs{cfg: cfg, adv: adv, nexthops: nh})
	if f.applyErr != nil {
		return f.applyErr
	}
	f.running = true
	return nil
}

func (f *fakeSpeaker) Routes() []spec.Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running {
		return nil
	}
	return slices.Clone(f.routes)
}

func (f *fakeSpeaker) Changed() <-chan struct{} { return f.changed }

func (f *fakeSpeaker) Sessions() []*weftv1.BGPSession {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running {
		return nil
	}
	// Copies, as the real speaker returns: set changes the fake's own.
	out := make([]*weftv1.BGPSession, len(f.sessions))
	for i, s := range f.sessions {
		out[i] = proto.Clone(s).(*weftv1.BGPSession)
	}
	return out
}

func (f *fakeSpeaker) Stop(_ context.Context, withdraw bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops = append(f.stops, withdraw)
	f.running = false
	return nil
}

func (f *fakeSpeaker) set(fn func(f *fakeSpeaker)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

func (f *fakeSpeaker) last() (bgpArgs, int, []bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applies) == 0 {
		return bgpArgs{}, 0, slices.Clone(f.stops)
	}
	return f.applies[len(f.applies)-1], len(f.applies), slices.Clone(f.stops)
}

func bgpCfg() *weftv1.ClusterConfig {
	c := cfg()
	c.Backend = "bgp"
	c.Bgp = &weftv1.BGPConfig{Asn: 64512, Peers: []*weftv1.BGPPeer{
		{Address: "192.168.1.254", Asn: 65000},            // eBGP on the node's segment
		{Address: "10.9.9.9", Asn: 65000},                 // eBGP elsewhere, no multihop: skipped
		{Address: "10.8.8.8", Asn: 65000, MultihopTtl: 4}, // eBGP multihop elsewhere: kept
	}}
	return c
}

func hasProtoBGP(d *spec.Desired) bool {
	return d != nil && slices.ContainsFunc(d.Routes, func(r spec.Route) bool { return r.Proto == spec.ProtoBGP })
}

// TestAgentBGPMode drives the agent's BGP wiring: the speaker's config from
// the cluster (own ASN from the registration, unreachable eBGP peers
// skipped), the first sync held until the sessions are up, learned routes
// into the datapath as ProtoBGP (those the log does not allow refused,
// logged, counted and listed in the status), sessions in status and metrics, a speaker
// error kept in last_error while the rest goes on, leaving bgp mode
// withdrawing, and shutdown stopping without a withdraw.
func TestAgentBGPMode(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	// A subnet file from an earlier agent: this one is a restart, whose
	// first sync must keep the kernel's BGP routes until sessions are up.
	if err := writeAtomic(h.subnet, []byte("FLANNEL_SUBNET=10.244.1.1/24\n")); err != nil {
		t.Fatal(err)
	}
	h.a = h.newAgent(c)
	sp := newFakeSpeaker()
	h.a.speaker, h.a.cfg.BGP, h.a.cfg.ASN = sp, sp, 65101
	sp.sessions = []*weftv1.BGPSession{{Peer: "10.8.8.8", State: "active", Reason: "connect: i/o timeout"}, {Peer: "192.168.1.254", State: "connect"}}
	learned := spec.Route{Prefix: pfx("10.244.2.0/24"), Via: netip.MustParseAddr("192.168.1.2"), Proto: spec.ProtoBGP}
	sp.routes = []spec.Route{learned}
	h.append(logtest.Config(bgpCfg()))
	self := logtest.Added("n1", "192.168.1.1", "10.244.1.0/24")
	self.GetNodeAdded().Node.Asn = 65101 // what the controller copies from the registration
	h.append(self)
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.append(logtest.Added("n3", "192.168.1.3", "10.244.3.0/24"))
	h.start()

	eventually(t, "registration carries the ASN", func() (bool, string) {
		r, err := c.Get(context.Background(), keys.New("").Registration("n1"))
		if err != nil || len(r.Kvs) == 0 {
			return false, "absent"
		}
		reg, _ := keys.DecodeRegistration(r.Kvs[0].Value)
		return reg.GetAsn() == 65101, reg.String()
	})
	eventually(t, "speaker applied", func() (bool, string) {
		_, n, _ := sp.last()
		return n > 0, ""
	})
	a, _, _ := sp.last()
	var peers []string
	for _, p := range a.cfg.Peers {
		peers = append(peers, p.Address.String())
	}
	if a.cfg.ASN != 65101 || !slices.Equal(a.nexthops, []netip.Addr{netip.MustParseAddr("192.168.1.1")}) || !slices.Equal(a.adv, []netip.Prefix{pfx("10.244.1.0/24")}) ||
		!slices.Equal(peers, []string{"192.168.1.254", "10.8.8.8"}) {
		t.Fatalf("apply: asn %d nexthops %v advertise %v peers %v", a.cfg.ASN, a.nexthops, a.adv, peers)
	}

	// Sessions not up: the first sync waits (the kernel's BGP routes of a
	// previous agent stay).
	time.Sleep(400 * time.Millisecond)
	if n := h.dp.Syncs(); n != 0 {
		t.Fatalf("synced %d times before the sessions were up", n)
	}
	sp.set(func(f *fakeSpeaker) {
		for _, s := range f.sessions {
			s.State, s.Reason = "established", ""
		}
	})
	began := time.Now()
	eventually(t, "first sync with the learned route", func() (bool, string) {
		k := h.dp.Kernel()
		return k != nil && slices.Contains(k.Routes, learned), fmt.Sprint(k)
	})
	if d := time.Since(began); d < bgpSettle/2 {
		t.Errorf("first sync %v after the sessions came up, want about %v", d, bgpSettle)
	}
	st := h.waitStatus("sessions in status", func(st *weftv1.AgentStatus) bool { return st.Mode == "bgp" && len(st.BgpSessions) == 3 })
	if st.BgpSessions[2].Peer != "10.9.9.9" || st.BgpSessions[2].State != "skipped" || st.LastError != "" {
		t.Fatalf("status = %v", st)
	}
	rec := httptest.NewRecorder()
	h.a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, m := range []string{"weft_agent_bgp_sessions_up 2", "weft_agent_bgp_sessions 2"} {
		if !strings.Contains(rec.Body.String(), m) {
			t.Errorf("metrics lack %q", m)
		}
	}

	// A route learned later reaches the datapath through Changed.
	other := spec.Route{Prefix: pfx("10.244.3.0/24"), Via: netip.MustParseAddr("192.168.1.3"), Proto: spec.ProtoBGP}
	sp.set(func(f *fakeSpeaker) { f.routes = append(f.routes, other) })
	eventually(t, "new learned route", func() (bool, string) {
		k := h.dp.Kernel()
		return slices.Contains(k.Routes, other), k.String()
	})

	// Routes the log does not allow never reach the datapath; the others
	// of the same set do. Each is logged and counted once while it is
	// announced, and listed in the status.
	rogue := []spec.Route{
		{Prefix: pfx("0.0.0.0/0"), Via: netip.MustParseAddr("192.168.1.2"), Proto: spec.ProtoBGP},
		{Prefix: pfx("10.244.1.0/24"), Via: netip.MustParseAddr("192.168.1.2"), Proto: spec.ProtoBGP},
		{Prefix: pfx("10.244.2.128/25"), Via: netip.MustParseAddr("192.168.1.3"), Proto: spec.ProtoBGP},
	}
	honest := []spec.Route{learned, other}
	sp.set(func(f *fakeSpeaker) { f.routes = append(slices.Clone(honest), rogue...) })
	st = h.waitStatus("refused routes in status", func(st *weftv1.AgentStatus) bool { return st.BgpRefusedCount == 3 })
	want := []string{
		`0.0.0.0/0 via 192.168.1.2: outside the cluster's pod network 10.244.0.0/16`,
		`10.244.1.0/24 via 192.168.1.2: overlaps this node's own pod CIDR 10.244.1.0/24`,
		`10.244.2.128/25 via 192.168.1.3: next hop is node "n3"'s underlay address, but 10.244.2.0/24 is node "n2"'s (a node announces only its own pod CIDRs)`,
	}
	if !slices.Equal(st.BgpRefusedRoutes, want) || st.Degraded {
		t.Fatalf("status refused routes = %q (degraded %v), want %q", st.BgpRefusedRoutes, st.Degraded, want)
	}
	sp.set(func(f *fakeSpeaker) {}) // the same routes again
	h.waitStatus("status again", func(st *weftv1.AgentStatus) bool { return st.BgpRefusedCount == 3 })
	if k := h.dp.Kernel(); !slices.Equal(k.Routes, honest) {
		t.Fatalf("kernel routes %v, want only %v", k.Routes, honest)
	}
	rec = httptest.NewRecorder()
	h.a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, m := range []string{"weft_agent_bgp_routes_refused 3", `weft_agent_bgp_routes_refused_total{reason="outside_pod_networks"} 1`,
		`weft_agent_bgp_routes_refused_total{reason="own_pod_cidr"} 1`, `weft_agent_bgp_routes_refused_total{reason="wrong_next_hop"} 1`,
		`weft_agent_bgp_routes_refused_total{reason="unassigned"} 0`} {
		if !strings.Contains(rec.Body.String(), m) {
			t.Errorf("metrics lack %q", m)
		}
	}
	logs := h.logs.String()
	if n := strings.Count(logs, "learned BGP route refused"); n != 3 ||
		!strings.Contains(logs, `prefix=10.244.2.128/25 next_hop=192.168.1.3 reason=wrong_next_hop why="next hop is node \"n3\"'s`) {
		t.Fatalf("%d refusals logged, want 3 naming prefix, next hop, reason:\n%s", n, logs)
	}
	sp.set(func(f *fakeSpeaker) { f.routes = slices.Clone(honest) })
	h.waitStatus("no refused routes once withdrawn", func(st *weftv1.AgentStatus) bool { return st.BgpRefusedCount == 0 && len(st.BgpRefusedRoutes) == 0 })

	// A speaker error (config it cannot use) shows as last_error; the
	// datapath keeps converging (a masquerade change goes through).
	sp.set(func(f *fakeSpeaker) { f.applyErr = fmt.Errorf("%w: asn is 0", bgp.ErrInvalidConfig) })
	c2 := bgpCfg()
	c2.Bgp.HoldTimeSeconds, c2.Masquerade = 12, true
	h.append(logtest.Config(c2))
	h.waitStatus("speaker error in last_error", func(st *weftv1.AgentStatus) bool {
		return strings.Contains(st.LastError, "configure bgp speaker") && st.AppliedSeq == 5
	})
	eventually(t, "datapath still converges", func() (bool, string) {
		k := h.dp.Kernel()
		return k.Masquerade != nil, k.String()
	})
	sp.set(func(f *fakeSpeaker) { f.applyErr = nil })
	h.append(logtest.Config(bgpCfg()))
	h.waitStatus("error cleared", func(st *weftv1.AgentStatus) bool { return st.LastError == "" && st.AppliedSeq == 6 })

	// Leaving bgp mode withdraws and leaves no BGP route or session.
	h.append(logtest.Config(cfg()))
	eventually(t, "vxlan without BGP routes", func() (bool, string) {
		k := h.dp.Kernel()
		return k.Mode == spec.ModeVXLAN && !hasProtoBGP(k), k.String()
	})
	h.waitStatus("no sessions", func(st *weftv1.AgentStatus) bool { return st.Mode == "vxlan" && len(st.BgpSessions) == 0 })
	if _, _, stops := sp.last(); !slices.Equal(stops, []bool{true}) {
		t.Fatalf("stops (withdraw flags) = %v, want [true]", stops)
	}

	// Removed from the log while in bgp mode: withdraw too.
	h.append(logtest.Config(bgpCfg()))
	eventually(t, "bgp again", func() (bool, string) {
		k := h.dp.Kernel()
		return k.Mode == spec.ModeBGP && hasProtoBGP(k), k.String()
	})
	h.append(logtest.Removed("n1"))
	eventually(t, "withdrawn on NodeRemoved", func() (bool, string) {
		_, _, stops := sp.last()
		return slices.Equal(stops, []bool{true, true}), fmt.Sprint(stops)
	})
	h.append(self)

	// Back to bgp, then the agent stops: no withdraw (graceful restart),
	// and the datapath keeps the routes.
	h.append(logtest.Config(bgpCfg()))
	eventually(t, "bgp again", func() (bool, string) {
		k := h.dp.Kernel()
		return k.Mode == spec.ModeBGP && hasProtoBGP(k), k.String()
	})
	h.stop()
	h.stop = func() {}
	if _, _, stops := sp.last(); !slices.Equal(stops, []bool{true, true, false}) {
		t.Fatalf("stops (withdraw flags) = %v, want [true true false]", stops)
	}
	if !hasProtoBGP(h.dp.Kernel()) {
		t.Fatal("agent shutdown removed the BGP routes")
	}
}

// TestAgentBGPFreshStartDoesNotWait: without a subnet file at start (first
// agent since boot) there are no kernel routes to keep, so the first sync
// does not wait for the sessions.
func TestAgentBGPFreshStartDoesNotWait(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	sp := newFakeSpeaker()
	h.a.speaker, h.a.cfg.BGP = sp, sp
	sp.sessions = []*weftv1.BGPSession{{Peer: "192.168.1.254", State: "connect"}}
	h.append(logtest.Config(bgpCfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.start()
	h.waitStatus("converged while the session is down", func(st *weftv1.AgentStatus) bool {
		return st.Mode == "bgp" && st.AppliedSeq == 2 && len(st.BgpSessions) == 2
	})
	if h.dp.Syncs() == 0 {
		t.Fatal("no sync")
	}
}

// TestAgentBGPNeverStartedLeftCleanly: a speaker that never applied (on
// Kubernetes it was "bind: permission denied" on port 179, the agent
// lacking CAP_NET_BIND_SERVICE) is still stopped when the cluster leaves
// bgp mode, and its error leaves last_error with it: the child may run
// although its Apply failed, and the error is of a mode no longer in
// force.
func TestAgentBGPNeverStartedLeftCleanly(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	sp := newFakeSpeaker()
	sp.applyErr = fmt.Errorf("start bgp on port 179: listen tcp4 192.168.1.1:179: bind: permission denied")
	h.a.speaker, h.a.cfg.BGP = sp, sp
	h.append(logtest.Config(bgpCfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.start()
	h.waitStatus("the speaker's error in last_error", func(st *weftv1.AgentStatus) bool {
		return st.Mode == "bgp" && strings.Contains(st.LastError, "configure bgp speaker: start bgp on port 179")
	})
	h.append(logtest.Config(cfg()))
	h.waitStatus("vxlan without the bgp error", func(st *weftv1.AgentStatus) bool {
		return st.Mode == "vxlan" && st.AppliedSeq == 3 && st.LastError == "" && len(st.BgpSessions) == 0
	})
	if _, _, stops := sp.last(); !slices.Equal(stops, []bool{true}) {
		t.Fatalf("stops (withdraw flags) = %v, want [true]: the speaker that failed to apply was not stopped", stops)
	}
}
