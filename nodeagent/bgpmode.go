package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	"github.com/weftnet/weft/nodeagent/bgp/proc"
	"github.com/weftnet/weft/nodeagent/model"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Speaker is what the agent needs of its BGP speaker (bgp.Speaker; the
// agent's is a proc.Client running weft-bgp).
type Speaker = bgp.Speaker

// speakerExits is implemented by a speaker that runs in a process of its
// own (proc.Client, the weft-bgp child): only such a speaker can die and
// be restarted under a running agent, and Exits counts those deaths.
type speakerExits interface {
	Exits() uint64
}

// speakerDrops is implemented by a speaker whose learned routes cross a
// process boundary (proc.Client): DroppedRoutes counts those that did not
// parse.
type speakerDrops interface {
	DroppedRoutes() uint64
}

// The agent's speaker has both counts; a renamed method would drop its
// metric without a word.
var _ interface {
	speakerExits
	speakerDrops
} = (*proc.Client)(nil)

const (
	// bgpSettle is how long every session must have been established
	// before a restarted agent's first Sync: GoBGP drops a returning
	// peer's stale routes and re-learns them a few milliseconds later.
	bgpSettle = time.Second
	// bgpHoldMax bounds how long the first Sync in bgp mode waits for the
	// sessions (a peer may be down for good).
	bgpHoldMax = 10 * time.Second
	// stateSkipped marks a configured peer this node does not dial.
	stateSkipped = "skipped"
)

// errBGPHold makes the converger retry soon without logging an error.
var errBGPHold = errors.New("bgp: first sync held until sessions are up")

// bgpState is the converge loop's view of its speaker.
type bgpState struct {
	on bool // the speaker has been applied and not stopped
	// tried: Apply was called since the last Stop. A speaker whose Apply
	// failed may run all the same (weft-bgp answers the error and keeps
	// running), so leaving bgp mode and shutdown stop it too.
	tried   bool
	since   time.Time
	allUpAt time.Time // when every session was first seen established
	args    *bgpArgs  // last successful Apply
	err     error     // config error, shown as last_error
	skipped []*weftv1.BGPSession
	held    bool // a hold was logged
	// fresh: no subnet file when the agent started (Agent.fresh).
	fresh bool
}

type bgpArgs struct {
	cfg      bgp.Config
	adv      []netip.Prefix
	nexthops []netip.Addr
}

func (x *bgpArgs) equal(y *bgpArgs) bool {
	if x == nil || y == nil {
		return x == y
	}
	c, d := x.cfg, y.cfg
	return c.RouterID == d.RouterID && c.ASN == d.ASN && c.ListenPort == d.ListenPort && c.LocalAddress == d.LocalAddress &&
		c.GracefulRestart == d.GracefulRestart && c.RestartTime == d.RestartTime && c.HoldTime == d.HoldTime &&
		c.Keepalive == d.Keepalive && slices.Equal(c.Peers, d.Peers) &&
		slices.Equal(x.adv, y.adv) && slices.Equal(x.nexthops, y.nexthops)
}

// bgpStep runs the speaker for the config in force and returns the routes
// it learned: in bgp mode it (re)applies the speaker's config derived from
// the cluster, outside it stops a running speaker with a withdraw. It
// never fails: config errors are kept for the status.
func (l *loop) bgpStep(ctx context.Context) []spec.Route {
	a := l.a
	cfg := l.state.Config()
	self := l.state.Node(a.cfg.NodeName)
	if cfg == nil {
		return a.speaker.Routes()
	}
	// Outside bgp mode, or this node removed from the log (its CIDR may go
	// to another node): withdraw and stop.
	// An error of bgp mode goes with it.
	if cfg.Backend != string(spec.ModeBGP) || self == nil {
		if l.bgp.on || l.bgp.tried {
			err := a.speaker.Stop(ctx, true)
			a.log.Info("speaker stopped, prefixes withdrawn", "backend", cfg.Backend, "node_in_log", self != nil, "error", err)
		}
		l.bgp = bgpState{fresh: l.bgp.fresh}
		return nil
	}
	var nodes []*weftv1.Node
	if cfg.Bgp != nil && cfg.Bgp.FullMesh {
		for _, n := range l.state.Names() {
			nodes = append(nodes, l.state.Node(n))
		}
	}
	bc, adv, nh, err := bgp.FromCluster(cfg.Bgp, self, nodes)
	var skipped []*weftv1.BGPSession
	if err == nil {
		bc.Peers, skipped = reachablePeers(bc, l.underlay)
		args := &bgpArgs{cfg: bc, adv: adv, nexthops: nh}
		if !args.equal(l.bgp.args) || l.bgp.err != nil {
			l.bgp.tried = true
			if err = a.speaker.Apply(ctx, bc, adv, nh); err == nil {
				a.log.Info("bgp speaker applied", "asn", bc.ASN, "router_id", bc.RouterID, "peers", len(bc.Peers),
					"skipped", len(skipped), "advertise", adv)
			}
		}
		if err == nil {
			l.bgp.args = args
			if !l.bgp.on {
				l.bgp.on, l.bgp.since = true, time.Now()
			}
		}
	}
	wasErr := l.bgp.err
	if err != nil {
		err = fmt.Errorf("configure bgp speaker: %w", err)
		l.bgp.args = nil
	}
	l.bgp.err, l.bgp.skipped = err, skipped
	if err != nil && (wasErr == nil || wasErr.Error() != err.Error()) {
		a.log.Error("bgp speaker not configured; the rest of the datapath goes on", "error", err)
	}
	return a.speaker.Routes()
}

// maxRefusedLogged bounds the refusals logged one by one per converge: a
// router that sends a full table must not flood the log.
const maxRefusedLogged = 64

// noteRefused logs and counts each learned route the model refused, once
// while it is announced (keyed by route and why: a route refused for a
// new reason is logged again).
func (l *loop) noteRefused(rs []model.RefusedRoute) {
	if len(rs) == 0 && len(l.refusedRoutes) == 0 {
		return
	}
	was := l.refusedRoutes
	l.refusedRoutes = make(map[string]bool, len(rs))
	logged, more := 0, 0
	for _, r := range rs {
		k := r.String()
		if l.refusedRoutes[k] {
			continue
		}
		l.refusedRoutes[k] = true
		if was[k] {
			continue
		}
		l.a.metrics.bgpRefused.WithLabelValues(r.Reason).Inc()
		if logged == maxRefusedLogged {
			more++
			continue
		}
		logged++
		l.a.log.Warn("learned BGP route refused, not installed", "prefix", r.Route.Prefix, "next_hop", r.Route.Via,
			"reason", r.Reason, "why", r.Detail)
	}
	if more > 0 {
		l.a.log.Warn("more learned BGP routes refused, not installed (not logged one by one)", "count", more)
	}
	l.a.metrics.bgpRefusedNow.Set(float64(len(l.refusedRoutes)))
}

// reachablePeers drops configured eBGP peers without multihop_ttl that are
// not on a directly connected network of the node: a single-hop eBGP
// session needs its peer on the link (BIRD and every router check the
// same). With one peer list for the whole cluster, each node so dials the
// router address on its own segment. iBGP peers are always kept.
func reachablePeers(c bgp.Config, u spec.Underlay) (keep []bgp.Peer, skipped []*weftv1.BGPSession) {
	for _, p := range c.Peers {
		ebgp := p.ASN != 0 && p.ASN != c.ASN
		if ebgp && p.MultihopTTL == 0 && len(u.Networks) > 0 && !u.Adjacent(p.Address) {
			skipped = append(skipped, &weftv1.BGPSession{Peer: p.Address.String(), State: stateSkipped,
				Reason: "eBGP peer not on a directly connected network (set multihop_ttl to reach it)"})
			continue
		}
		keep = append(keep, p)
	}
	return keep, skipped
}

// bgpHold tells whether the first Sync of this process must wait for the
// speaker: the datapath removes route-protocol-0x58 routes that are not in
// the spec, and a restarted agent does not know the routes its predecessor
// installed until its sessions are back. So the first Sync in bgp mode
// waits until every session has been established for bgpSettle, or
// bgpHoldMax passed; the kernel keeps forwarding meanwhile. A fresh agent
// (no subnet file at start) does not wait.
func (l *loop) bgpHold(sessions []*weftv1.BGPSession) bool {
	if l.selfApplied || l.bgp.fresh || !l.bgp.on || time.Since(l.bgp.since) >= bgpHoldMax {
		return false
	}
	up := 0
	for _, s := range sessions {
		if s.State == "established" {
			up++
		}
	}
	if up == 0 || up < len(sessions) {
		l.bgp.allUpAt = time.Time{}
		return true
	}
	if l.bgp.allUpAt.IsZero() {
		l.bgp.allUpAt = time.Now()
	}
	return time.Since(l.bgp.allUpAt) < bgpSettle
}

// watchBGP turns the speaker's change signal into a converge and a status
// write.
func (a *Agent) watchBGP(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.speaker.Changed():
			a.Kick()
			poke(a.statusKick)
		}
	}
}

// stopBGP ends the speaker when the agent stops: without withdrawing, so
// peers with graceful restart keep this node's routes (and the kernel
// keeps theirs) until the next agent is back. Run calls it after the loop
// ended.
func (l *loop) stopBGP() {
	if !l.bgp.on && !l.bgp.tried {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.a.speaker.Stop(ctx, false); err != nil {
		l.a.log.Warn("stop bgp speaker", "error", err)
	} else {
		l.a.log.Info("bgp speaker stopped without withdraw (graceful restart)")
	}
}

// bgpSessions is the status' bgp_sessions: the speaker's sessions and the
// peers skipped as unreachable. Empty outside bgp mode.
func (a *Agent) bgpSessions(v *view) []*weftv1.BGPSession {
	if !v.bgpOn {
		return nil
	}
	return append(a.speaker.Sessions(), v.bgpSkipped...)
}

// bgpCollector exports the speaker's sessions and prefixes at scrape time.
type bgpCollector struct{ a *Agent }

var bgpDescs = struct{ up, total, adv, recv, exits, dropped *prometheus.Desc }{
	prometheus.NewDesc("weft_agent_bgp_sessions_up", "BGP sessions established.", nil, nil),
	prometheus.NewDesc("weft_agent_bgp_sessions", "BGP sessions configured (peers skipped as unreachable excluded).", nil, nil),
	prometheus.NewDesc("weft_agent_bgp_prefixes_advertised", "Prefixes advertised, summed over established sessions.", nil, nil),
	prometheus.NewDesc("weft_agent_bgp_prefixes_received", "Prefixes received, summed over sessions.", nil, nil),
	prometheus.NewDesc("weft_agent_bgp_speaker_exits_total", "BGP speaker processes (weft-bgp) that ended without the agent asking; each is restarted.", nil, nil),
	prometheus.NewDesc("weft_agent_bgp_routes_dropped_total", "Learned routes from the BGP speaker process (weft-bgp) that did not parse and were left out; each is logged.", nil, nil),
}

func (c bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bgpDescs.up
	ch <- bgpDescs.total
	ch <- bgpDescs.adv
	ch <- bgpDescs.recv
	ch <- bgpDescs.exits
	ch <- bgpDescs.dropped
}

func (c bgpCollector) Collect(ch chan<- prometheus.Metric) {
	var up, total, adv, recv float64
	for _, s := range c.a.bgpSessions(c.a.view.Load()) {
		if s.State == stateSkipped {
			continue
		}
		total++
		if s.State == "established" {
			up++
		}
		adv += float64(s.Advertised)
		recv += float64(s.Received)
	}
	g := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	g(bgpDescs.up, up)
	g(bgpDescs.total, total)
	g(bgpDescs.adv, adv)
	g(bgpDescs.recv, recv)
	if e, ok := c.a.speaker.(speakerExits); ok {
		ch <- prometheus.MustNewConstMetric(bgpDescs.exits, prometheus.CounterValue, float64(e.Exits()))
	}
	if d, ok := c.a.speaker.(speakerDrops); ok {
		ch <- prometheus.MustNewConstMetric(bgpDescs.dropped, prometheus.CounterValue, float64(d.DroppedRoutes()))
	}
}
