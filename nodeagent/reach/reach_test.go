package reach

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/bpf/spec"
)

// fakeConn records what the Prober sends; the test answers by calling
// Prober.reply itself, so every step is deterministic.
type fakeConn struct {
	mu     sync.Mutex
	sent   []sentProbe
	noRute map[netip.Addr]bool
	closed chan struct{}
	once   sync.Once
}

type sentProbe struct {
	dst netip.Addr
	seq uint16
}

func newFakeConn() *fakeConn {
	return &fakeConn{noRute: map[netip.Addr]bool{}, closed: make(chan struct{})}
}

func (c *fakeConn) Send(dst netip.Addr, seq uint16) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.noRute[dst] {
		return fmt.Errorf("send probe to %s: %w", dst, ErrNoRoute)
	}
	c.sent = append(c.sent, sentProbe{dst, seq})
	return nil
}

func (c *fakeConn) Recv() (Reply, error) {
	<-c.closed
	return Reply{}, errors.New("closed")
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// take returns and forgets what was sent since the last call.
func (c *fakeConn) take() []sentProbe {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sent
	c.sent = nil
	return s
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock               { return &clock{t: time.Unix(1_000_000, 0)} }
func addr(s string) netip.Addr       { return netip.MustParseAddr(s) }
func prefix(s string) netip.Prefix   { return netip.MustParsePrefix(s) }
func target(node, gw, mode string) Target {
	return Target{Node: node, Addr: addr(gw), Mode: mode, Path: PathTunnel}
}

func newTestProber(t *testing.T, clk *clock, conn *fakeConn, changes *int) *Prober {
	t.Helper()
	p := New(Config{
		Open:     func(bool) (Conn, error) { return conn, nil },
		OnChange: func() { *changes++ },
		now:      clk.now,
	})
	t.Cleanup(p.close)
	return p
}

// run steps the prober through d of fake time in 10 ms ticks, answering
// every probe sent to a reachable address at once.
func run(p *Prober, clk *clock, conn *fakeConn, d time.Duration, answers func(netip.Addr) bool) (sent int) {
	for end := clk.t.Add(d); clk.t.Before(end); clk.add(10 * time.Millisecond) {
		p.step(clk.t)
		for _, s := range conn.take() {
			sent++
			if answers(s.dst) {
				p.reply(Reply{Seq: s.seq, From: s.dst}, clk.t)
			}
		}
		p.notify()
	}
	return sent
}

func TestGraceThenUnreachableThenRecovered(t *testing.T) {
	clk, conn, changes := newClock(), newFakeConn(), 0
	p := newTestProber(t, clk, conn, &changes)
	tg := Target{Node: "n2", Addr: addr("10.244.2.1"), Prefix: prefix("10.244.2.0/24"), Mode: "native", Path: PathNetwork,
		Needs: "direct routes are off (auto_direct_node_routes=false), so the network must route 10.244.2.0/24"}
	p.Set([]Target{target("n1", "10.244.1.1", "native"), tg})
	up := map[netip.Addr]bool{addr("10.244.1.1"): true}
	answers := func(a netip.Addr) bool { return up[a] }

	run(p, clk, conn, DefaultGrace-time.Second, answers)
	r := p.Report()
	if r.Reachable != 1 || len(r.Unreachable) != 0 || r.Pending() != 1 {
		t.Fatalf("within the grace: %+v, want n1 reachable and n2 pending", r)
	}
	run(p, clk, conn, 2*DefaultInterval, answers)
	r = p.Report()
	if len(r.Unreachable) != 1 || r.Unreachable[0].Node != "n2" {
		t.Fatalf("after the grace: %+v, want n2 unreachable", r)
	}
	u := r.Unreachable[0]
	if !strings.Contains(u.Reason, "no reply from 10.244.2.1") || !strings.Contains(u.Reason, "auto_direct_node_routes=false") {
		t.Errorf("reason %q does not say what failed and what the mode lacks", u.Reason)
	}
	before := changes
	up[addr("10.244.2.1")] = true
	run(p, clk, conn, DefaultInterval+2*time.Second, answers)
	r = p.Report()
	if r.Reachable != 2 || len(r.Unreachable) != 0 {
		t.Fatalf("after the route appeared: %+v, want both reachable", r)
	}
	if changes == before {
		t.Error("OnChange not called when n2 became reachable")
	}
}

func TestOneLostProbeIsNotUnreachable(t *testing.T) {
	clk, conn, changes := newClock(), newFakeConn(), 0
	p := newTestProber(t, clk, conn, &changes)
	p.Set([]Target{target("n1", "10.244.1.1", "vxlan")})
	run(p, clk, conn, DefaultGrace+time.Second, func(netip.Addr) bool { return true })
	// Lose exactly one probe, then answer again.
	lost := false
	run(p, clk, conn, 3*DefaultInterval, func(netip.Addr) bool {
		if !lost {
			lost = true
			return false
		}
		return true
	})
	if !lost {
		t.Fatal("no probe was sent")
	}
	r := p.Report()
	if r.Reachable != 1 || len(r.Unreachable) != 0 || r.Failed != 1 {
		t.Fatalf("%+v: one lost probe must not make a peer unreachable", r)
	}
	// Two in a row do.
	run(p, clk, conn, 3*DefaultInterval, func(netip.Addr) bool { return false })
	if r := p.Report(); len(r.Unreachable) != 1 || !strings.Contains(r.Unreachable[0].Reason, "through the tunnel to") {
		t.Fatalf("%+v: two lost probes after the grace make it unreachable (through the tunnel)", r)
	}
}

func TestChangedTargetStartsANewGrace(t *testing.T) {
	clk, conn, changes := newClock(), newFakeConn(), 0
	p := newTestProber(t, clk, conn, &changes)
	p.Set([]Target{target("n1", "10.244.1.1", "vxlan")})
	run(p, clk, conn, DefaultGrace+3*DefaultInterval, func(netip.Addr) bool { return false })
	if r := p.Report(); len(r.Unreachable) != 1 {
		t.Fatalf("%+v: want n1 unreachable", r)
	}
	// A mode switch: the same peer on a new path is pending again, not
	// unreachable, for the grace.
	tg := target("n1", "10.244.1.1", "native")
	tg.Path = PathDirect
	p.Set([]Target{tg})
	run(p, clk, conn, DefaultGrace/2, func(netip.Addr) bool { return false })
	if r := p.Report(); len(r.Unreachable) != 0 || r.Pending() != 1 {
		t.Fatalf("%+v: a changed target must start a new grace", r)
	}
	// The same target again keeps its state.
	p.Set([]Target{tg})
	run(p, clk, conn, DefaultGrace/2+3*DefaultInterval, func(netip.Addr) bool { return false })
	r := p.Report()
	if len(r.Unreachable) != 1 || !strings.Contains(r.Unreachable[0].Reason, "over the direct route via") {
		t.Fatalf("%+v: want n1 unreachable over the direct route after the grace", r)
	}
	// A removed peer is forgotten.
	p.Set(nil)
	if r := p.Report(); r.Peers != 0 || len(r.Unreachable) != 0 {
		t.Fatalf("%+v: removed peer still reported", r)
	}
}

func TestNoRouteAndICMPErrorsNameTheCause(t *testing.T) {
	clk, conn, changes := newClock(), newFakeConn(), 0
	p := newTestProber(t, clk, conn, &changes)
	gw := Target{Node: "n2", Addr: addr("10.244.2.1"), Prefix: prefix("10.244.2.0/24"), Mode: "gateway", Path: PathNetwork,
		Needs: "no gateway route: gateway mode needs this node's gateway to route 10.244.2.0/24"}
	bgp := Target{Node: "n3", Addr: addr("10.244.3.1"), Prefix: prefix("10.244.3.0/24"), Mode: "bgp", Path: PathBGP, Via: addr("10.99.0.254")}
	conn.noRute[gw.Addr] = true
	p.Set([]Target{gw, bgp})
	for end := clk.t.Add(DefaultGrace + 3*DefaultInterval); clk.t.Before(end); clk.add(10 * time.Millisecond) {
		p.step(clk.t)
		for _, s := range conn.take() {
			p.reply(Reply{Seq: s.seq, From: addr("10.99.0.254"), Err: "network unreachable"}, clk.t)
		}
	}
	r := p.Report()
	if len(r.Unreachable) != 2 {
		t.Fatalf("%+v: want both unreachable", r)
	}
	want := map[string]string{
		"n2": "no route to 10.244.2.1 on this node: no gateway route: gateway mode needs this node's gateway to route 10.244.2.0/24",
		"n3": "10.99.0.254 answered network unreachable over the BGP route via 10.99.0.254",
	}
	for _, u := range r.Unreachable {
		if u.Reason != want[u.Node] {
			t.Errorf("%s: reason %q, want %q", u.Node, u.Reason, want[u.Node])
		}
	}
}

// TestRateAndInterval: however many peers, a node sends at most Rate
// probes per second, and each peer is probed once per round.
func TestRateAndInterval(t *testing.T) {
	for _, n := range []int{3, 250, 5000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			clk, conn, changes := newClock(), newFakeConn(), 0
			p := newTestProber(t, clk, conn, &changes)
			var ts []Target
			for i := range n {
				ts = append(ts, target(fmt.Sprintf("n%d", i), netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}).Next().String(), "vxlan"))
			}
			p.Set(ts)
			round := max(DefaultInterval, time.Duration(n)*time.Second/DefaultRate)
			per := map[netip.Addr]int{}
			maxPerSecond, window := 0, 0
			for end := clk.t.Add(3 * round); clk.t.Before(end); clk.add(10 * time.Millisecond) {
				if clk.t.Sub(time.Unix(1_000_000, 0))%time.Second == 0 {
					maxPerSecond, window = max(maxPerSecond, window), 0
				}
				p.step(clk.t)
				for _, s := range conn.take() {
					window++
					per[s.dst]++
					p.reply(Reply{Seq: s.seq, From: s.dst}, clk.t)
				}
			}
			if maxPerSecond > DefaultRate+DefaultRate/10 {
				t.Errorf("%d probes in one second, want at most %d", maxPerSecond, DefaultRate)
			}
			for _, tg := range ts {
				// Three rounds (±10 % jitter): 2 to 4 probes each.
				if c := per[tg.Addr]; c < 2 || c > 4 {
					t.Errorf("%s probed %d times in 3 rounds of %v", tg.Node, c, round)
					break
				}
			}
			if r := p.Report(); r.Reachable != n {
				t.Errorf("%d of %d reachable", r.Reachable, n)
			}
		})
	}
}

func TestTargets(t *testing.T) {
	u := spec.Underlay{IP: addr("10.99.0.1"), Networks: []netip.Prefix{prefix("10.99.0.0/24")}}
	peers := []Peer{
		{Node: "self", Underlay: addr("10.99.0.1"), PodCIDRs: []netip.Prefix{prefix("10.244.1.0/24")}},
		{Node: "near", Underlay: addr("10.99.0.2"), PodCIDRs: []netip.Prefix{prefix("10.244.2.0/24"), prefix("fd00:244:2::/64")}},
		{Node: "far", Underlay: addr("10.99.1.3"), PodCIDRs: []netip.Prefix{prefix("10.244.3.0/24")}},
		{Node: "v6only", Underlay: addr("10.99.0.4"), PodCIDRs: []netip.Prefix{prefix("fd00:244:4::/64")}},
	}
	local := []netip.Prefix{prefix("10.244.1.0/24")}
	tunnels := []spec.Tunnel{
		{Prefix: prefix("10.244.2.0/24"), Endpoint: addr("10.99.0.2")},
		{Prefix: prefix("10.244.3.0/24"), Endpoint: addr("10.99.1.3")},
	}
	direct := spec.Route{Prefix: prefix("10.244.2.0/24"), Via: addr("10.99.0.2"), Proto: spec.ProtoDirect}
	type want struct {
		path  Path
		via   string
		needs string
	}
	cases := []struct {
		name       string
		d          *spec.Desired
		autoDirect bool
		want       map[string]want
	}{
		{"vxlan", &spec.Desired{Mode: spec.ModeVXLAN, LocalPodCIDRs: local, Tunnels: tunnels}, false, map[string]want{
			"near": {PathTunnel, "10.99.0.2", ""}, "far": {PathTunnel, "10.99.1.3", ""}}},
		{"native direct", &spec.Desired{Mode: spec.ModeNative, LocalPodCIDRs: local, Routes: []spec.Route{direct}}, true, map[string]want{
			"near": {PathDirect, "10.99.0.2", ""}, "far": {PathNetwork, "", "not on a directly connected network"}}},
		{"native", &spec.Desired{Mode: spec.ModeNative, LocalPodCIDRs: local}, false, map[string]want{
			"near": {PathNetwork, "", "direct routes are off"}, "far": {PathNetwork, "", "direct routes are off"}}},
		{"hybrid", &spec.Desired{Mode: spec.ModeHybrid, LocalPodCIDRs: local, Tunnels: tunnels[1:], Routes: []spec.Route{direct}}, false, map[string]want{
			"near": {PathDirect, "10.99.0.2", ""}, "far": {PathTunnel, "10.99.1.3", ""}}},
		{"gateway", &spec.Desired{Mode: spec.ModeGateway, LocalPodCIDRs: local}, false, map[string]want{
			"near": {PathNetwork, "", "no gateway route"}, "far": {PathNetwork, "", "no gateway route"}}},
		{"bgp", &spec.Desired{Mode: spec.ModeBGP, LocalPodCIDRs: local, Routes: []spec.Route{
			{Prefix: prefix("10.244.0.0/16"), Via: addr("10.99.0.254"), Proto: spec.ProtoBGP},
			{Prefix: prefix("10.244.2.0/24"), Via: addr("10.99.0.2"), Proto: spec.ProtoBGP}}}, false, map[string]want{
			"near": {PathBGP, "10.99.0.2", ""}, "far": {PathBGP, "10.99.0.254", ""}}},
		{"bgp without routes", &spec.Desired{Mode: spec.ModeBGP, LocalPodCIDRs: local}, false, map[string]want{
			"near": {PathNetwork, "", "no BGP route for 10.244.2.0/24"}, "far": {PathNetwork, "", "no BGP route for 10.244.3.0/24"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Targets(tc.d, tc.autoDirect, u, peers)
			if len(got) != len(tc.want) {
				t.Fatalf("targets %+v, want %d (self and the IPv6-only peer left out)", got, len(tc.want))
			}
			for _, tg := range got {
				w := tc.want[tg.Node]
				gw := map[string]string{"near": "10.244.2.1", "far": "10.244.3.1"}[tg.Node]
				if tg.Addr.String() != gw || tg.Path != w.path || tg.Mode != string(tc.d.Mode) {
					t.Errorf("%s: %+v, want %s by %v", tg.Node, tg, gw, w.path)
				}
				if (w.via == "") != !tg.Via.IsValid() || (w.via != "" && tg.Via.String() != w.via) {
					t.Errorf("%s: via %v, want %q", tg.Node, tg.Via, w.via)
				}
				if (w.needs == "") != (tg.Needs == "") || !strings.Contains(tg.Needs, w.needs) {
					t.Errorf("%s: needs %q, want it to say %q", tg.Node, tg.Needs, w.needs)
				}
			}
		})
	}
	// A node with only IPv6 pod CIDRs probes the IPv6 gateways.
	d := &spec.Desired{Mode: spec.ModeVXLAN, LocalPodCIDRs: []netip.Prefix{prefix("fd00:244:1::/64")}}
	got := Targets(d, false, u, peers)
	if len(got) != 2 || got[0].Addr != addr("fd00:244:2::1") || got[1].Addr != addr("fd00:244:4::1") {
		t.Errorf("IPv6-only node: %+v", got)
	}
}

// TestTargetsDualStack: a dual-stack node probes each peer's pod gateway
// of both families; a native peer without an IPv6 underlay address is
// named in its IPv6 target's reason.
func TestTargetsDualStack(t *testing.T) {
	u := spec.Underlay{IP: addr("10.99.0.1"), IPv6: addr("fd99::1"), Networks: []netip.Prefix{prefix("10.99.0.0/24"), prefix("fd99::/64")}}
	peers := []Peer{
		{Node: "dual", Underlay: addr("10.99.0.2"), Underlay6: addr("fd99::2"), PodCIDRs: []netip.Prefix{prefix("10.244.2.0/24"), prefix("fd00:244:2::/64")}},
		{Node: "only4", Underlay: addr("10.99.0.3"), PodCIDRs: []netip.Prefix{prefix("10.244.3.0/24"), prefix("fd00:244:3::/64")}},
	}
	local := []netip.Prefix{prefix("10.244.1.0/24"), prefix("fd00:244:1::/64")}
	d := &spec.Desired{Mode: spec.ModeNative, LocalPodCIDRs: local, Routes: []spec.Route{
		{Prefix: prefix("10.244.2.0/24"), Via: addr("10.99.0.2")}, {Prefix: prefix("fd00:244:2::/64"), Via: addr("fd99::2")},
		{Prefix: prefix("10.244.3.0/24"), Via: addr("10.99.0.3")}}}
	got := Targets(d, true, u, peers)
	want := []struct {
		node, gw, via, needs string
	}{
		{"dual", "10.244.2.1", "10.99.0.2", ""},
		{"dual", "fd00:244:2::1", "fd99::2", ""},
		{"only4", "10.244.3.1", "10.99.0.3", ""},
		{"only4", "fd00:244:3::1", "", "the peer has no IPv6 underlay address to route fd00:244:3::/64 via"},
	}
	if len(got) != len(want) {
		t.Fatalf("targets %+v, want %d", got, len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Node != w.node || g.Addr.String() != w.gw || (w.via != "" && g.Via.String() != w.via) || !strings.Contains(g.Needs, w.needs) || (w.needs == "") != (g.Needs == "") {
			t.Errorf("target %d: %+v, want %+v", i, g, w)
		}
	}
}

// TestReportPerPeer: with a target per family, a peer is reachable when
// both answer, unreachable when either is (listed per address), pending
// otherwise; the counts are of peers.
func TestReportPerPeer(t *testing.T) {
	clk, conn, changes := newClock(), newFakeConn(), 0
	p := newTestProber(t, clk, conn, &changes)
	tg := func(node, gw string) Target {
		return Target{Node: node, Addr: addr(gw), Prefix: netip.PrefixFrom(addr(gw), 64).Masked(), Mode: "vxlan", Path: PathTunnel}
	}
	p.Set([]Target{tg("a", "10.244.1.1"), tg("a", "fd00:1::1"), tg("b", "10.244.2.1"), tg("b", "fd00:2::1"), tg("c", "10.244.3.1"), tg("c", "fd00:3::1")})
	up := map[netip.Addr]bool{addr("10.244.1.1"): true, addr("fd00:1::1"): true, addr("10.244.2.1"): true, addr("10.244.3.1"): true}
	run(p, clk, conn, 2*time.Second, func(a netip.Addr) bool { return up[a] })
	r := p.Report()
	if r.Peers != 3 || r.Reachable != 1 || r.UnreachablePeers() != 0 || r.Pending() != 2 {
		t.Fatalf("within the grace: %+v (pending %d), want 3 peers, a reachable, b and c pending", r, r.Pending())
	}
	delete(up, addr("10.244.3.1"))
	run(p, clk, conn, DefaultGrace+2*DefaultInterval, func(a netip.Addr) bool { return up[a] })
	r = p.Report()
	if r.Peers != 3 || r.Reachable != 1 || r.UnreachablePeers() != 2 || r.Pending() != 0 || len(r.Unreachable) != 3 {
		t.Fatalf("after the grace: %+v, want a reachable, b unreachable over IPv6, c over both", r)
	}
	for i, w := range []string{"b fd00:2::1", "c 10.244.3.1", "c fd00:3::1"} {
		if got := r.Unreachable[i].Node + " " + r.Unreachable[i].Addr.String(); got != w {
			t.Errorf("unreachable[%d] = %s, want %s", i, got, w)
		}
	}
}

// BenchmarkRound5000 is the prober's CPU for one round over 5,000 peers
// (5,000 probes sent and answered, 100 s of probing at the default rate).
func BenchmarkRound5000(b *testing.B) {
	clk, conn := newClock(), newFakeConn()
	p := New(Config{Open: func(bool) (Conn, error) { return conn, nil }, now: clk.now})
	defer p.close()
	var ts []Target
	for i := range 5000 {
		ts = append(ts, target(fmt.Sprintf("n%d", i), netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}).Next().String(), "vxlan"))
	}
	p.Set(ts)
	b.ResetTimer()
	sent := 0
	for b.Loop() {
		for end := clk.t.Add(100 * time.Second); clk.t.Before(end); clk.add(20 * time.Millisecond) {
			p.step(clk.t)
			for _, s := range conn.take() {
				sent++
				p.reply(Reply{Seq: s.seq, From: s.dst}, clk.t)
			}
		}
	}
	b.ReportMetric(float64(sent)/float64(b.N), "probes/round")
}

// TestCannotProbe: a socket that does not open (no CAP_NET_RAW, say) gives
// no verdict on anyone and says why; once it opens, probing starts.
func TestCannotProbe(t *testing.T) {
	clk, conn, changes := newClock(), newFakeConn(), 0
	fail := true
	p := New(Config{
		Open: func(bool) (Conn, error) {
			if fail {
				return nil, errors.New("open probe socket ip4:icmp: operation not permitted")
			}
			return conn, nil
		},
		OnChange: func() { changes++ },
		now:      clk.now,
	})
	t.Cleanup(p.close)
	p.Set([]Target{target("n1", "10.244.1.1", "vxlan")})
	run(p, clk, conn, DefaultGrace+3*DefaultInterval, func(netip.Addr) bool { return false })
	r := p.Report()
	if r.Err != "cannot probe peers: open probe socket ip4:icmp: operation not permitted" || len(r.Unreachable) != 0 || r.Sent != 0 {
		t.Fatalf("%+v: want the error, no probe and no verdict", r)
	}
	before := changes
	fail = false
	run(p, clk, conn, 2*DefaultInterval, func(netip.Addr) bool { return true })
	if r := p.Report(); r.Err != "" || r.Reachable != 1 || changes == before {
		t.Fatalf("%+v (changes %d→%d): want probing to start once the socket opens", r, before, changes)
	}
}

// TestReportAllocatesNothingPerPeer: the report runs at every status
// write, so at 5,000 peers (both families for half of them) it allocates
// nothing while none is unreachable.
func TestReportAllocatesNothingPerPeer(t *testing.T) {
	clk, conn, changes := newClock(), newFakeConn(), 0
	p := newTestProber(t, clk, conn, &changes)
	var ts []Target
	for i := range 5000 {
		name := fmt.Sprintf("n%d", i)
		ts = append(ts, target(name, netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}).Next().String(), "vxlan"))
		if i%2 == 0 {
			ts = append(ts, target(name, fmt.Sprintf("fd00:%x::1", i+1), "vxlan"))
		}
	}
	p.Set(ts)
	run(p, clk, conn, 2*time.Second, func(netip.Addr) bool { return true })
	if r := p.Report(); r.Peers != 5000 {
		t.Fatalf("report counts %d peers, want 5000", r.Peers)
	}
	if n := testing.AllocsPerRun(5, func() { p.Report() }); n != 0 {
		t.Errorf("Report allocates %v times at 5,000 peers, want 0", n)
	}
}

// TestReportFirst: the counts are whole and the list is the first limit
// entries of the full report.
func TestReportFirst(t *testing.T) {
	clk, conn, changes := newClock(), newFakeConn(), 0
	p := newTestProber(t, clk, conn, &changes)
	var ts []Target
	for i := range 10 {
		ts = append(ts, target(fmt.Sprintf("n%d", 9-i), fmt.Sprintf("10.244.%d.1", i), "vxlan"))
	}
	p.Set(ts)
	run(p, clk, conn, DefaultGrace+2*DefaultInterval, func(a netip.Addr) bool { return a.As4()[2]%3 == 0 })
	all := p.Report()
	if all.UnreachablePeers() != 6 || len(all.Unreachable) != 6 {
		t.Fatalf("report %+v, want 6 unreachable", all)
	}
	for _, limit := range []int{0, 1, 3, 6, 20} {
		r := p.ReportFirst(limit)
		if r.UnreachablePeers() != 6 || r.Peers != 10 || r.Reachable != 4 {
			t.Errorf("ReportFirst(%d) counts %d of %d unreachable, %d reachable; want 6 of 10, 4", limit, r.UnreachablePeers(), r.Peers, r.Reachable)
		}
		if want := all.Unreachable[:min(limit, 6)]; !slices.Equal(r.Unreachable, want) {
			t.Errorf("ReportFirst(%d) lists %v, want %v", limit, r.Unreachable, want)
		}
	}
}

// BenchmarkUnreachableWave5000 is what the agent asks of the prober while
// 5,000 peers turn unreachable one after another: at each change, a
// report for the counts and one for the health reason. "every" is the
// full report the agent used to take twice per change (garbage grows with
// the square of the peers); "first" is ReportFirst as the agent takes it
// now.
func BenchmarkUnreachableWave5000(b *testing.B) {
	for _, c := range []struct {
		name   string
		counts func(*Prober) Report
		reason func(*Prober) Report
	}{
		{"every", (*Prober).Report, (*Prober).Report},
		{"first", func(p *Prober) Report { return p.ReportFirst(0) }, func(p *Prober) Report { return p.ReportFirst(3) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			clk, conn := newClock(), newFakeConn()
			p := New(Config{Open: func(bool) (Conn, error) { return conn, nil }, now: clk.now})
			defer p.close()
			var ts []Target
			for i := range 5000 {
				ts = append(ts, target(fmt.Sprintf("n%04d", i), netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}).Next().String(), "vxlan"))
			}
			p.Set(ts)
			n := 0
			for b.Loop() {
				for _, pr := range p.peers {
					pr.state = reachable
				}
				for _, pr := range p.peers {
					pr.state, pr.reason, pr.since = unreachable, "no reply", clk.t
					n += c.counts(p).UnreachablePeers() + len(c.reason(p).Unreachable)
				}
			}
			if n == 0 {
				b.Fatal("no report")
			}
		})
	}
}
