package nodeagent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weftnet/weft/nodeagent/model"
	"github.com/weftnet/weft/nodeagent/reach"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// The agent's side of package reach: after each converge it hands the
// prober one target per peer (derived from the spec it synced), and the
// prober's verdicts flow into status, health and metrics. An unreachable
// peer makes the agent degraded; nothing in the datapath changes for it.

// newProber makes the prober when the config asks for one.
func (a *Agent) newProber() {
	if a.cfg.Probe == nil {
		return
	}
	pc := *a.cfg.Probe
	pc.OnChange = func() { poke(a.reachKick) }
	pc.Logger = a.log.Named("reach")
	a.prober = reach.New(pc)
}

// setTargets gives the prober the peers of the spec last synced. It runs
// after every converge, also when the spec did not change: in modes where
// weft routes nothing per peer (gateway, native without direct routes) a
// joining peer changes no spec but is a new target.
func (l *loop) setTargets() {
	a := l.a
	d, cfg := l.synced, l.state.Config()
	if a.prober == nil || d == nil || cfg == nil {
		return
	}
	peers := make([]reach.Peer, 0, l.state.Len())
	l.state.EachNode(func(name string, ip, ip6 netip.Addr, cidrs []netip.Prefix) {
		if name != a.cfg.NodeName {
			peers = append(peers, reach.Peer{Node: name, Underlay: ip, Underlay6: ip6, PodCIDRs: cidrs})
		}
	})
	a.prober.Set(reach.Targets(d, cfg.AutoDirectNodeRoutes, l.underlay, peers))
}

// statusUnreachable is how many unreachable gateways the status lists
// (the first by node name); unreachable_count has them all. A status that
// listed every one would grow to hundreds of kilobytes when thousands of
// peers fail at once, and be rewritten at every change.
const statusUnreachable = 64

// reachChanged runs on the converge loop when the prober's verdicts
// changed. It folds them in (metrics, and health logged again when the
// number of unreachable peers or the prober's own error changed) at once,
// then at most once per StatusMinInterval while they keep changing, the
// last change always (reachDue, reachPending): a wave of thousands of
// peers failing one after another costs a few reports and log lines, not
// one per peer. The status and /healthz read the prober when they are
// asked, so they are not held back by this; the status writer coalesces
// its writes to one per StatusMinInterval.
func (l *loop) reachChanged() {
	if l.reachDue != nil {
		l.reachPending = true
		return
	}
	l.reachPending = false
	l.reachDue = time.After(l.a.cfg.StatusMinInterval)
	r := l.a.prober.ReportFirst(0)
	n := r.UnreachablePeers()
	l.a.metrics.peersUnreachable.Set(float64(n))
	if n != l.unreachable || r.Err != l.probeErr {
		l.unreachable, l.probeErr = n, r.Err
		l.healthDirty = true
	}
}

// reachPaused runs when reachChanged's pause ends: a change that came
// during it is folded in now.
func (l *loop) reachPaused() {
	l.reachDue = nil
	if l.reachPending {
		l.reachChanged()
	}
}

// reachStatus fills the status's reachability fields: the counts, and the
// first statusUnreachable unreachable gateways by node name.
func reachStatus(st *weftv1.AgentStatus, r reach.Report) {
	st.ReachablePeers = uint32(r.Reachable)
	st.UnreachableCount = uint32(r.UnreachablePeers())
	for _, u := range r.Unreachable {
		st.UnreachablePeers = append(st.UnreachablePeers, &weftv1.UnreachablePeer{
			Node: u.Node, Address: u.Addr.String(), Reason: u.Reason,
			Since: u.Since.UTC().Format("2006-01-02T15:04:05Z07:00"),
		})
	}
}

// reachShown is how many unreachable gateways the health reason names.
const reachShown = 3

// reachReason is the health reason for unreachable peers: how many, and
// the first few (r lists at most reachShown) with their reasons.
func reachReason(r reach.Report) string {
	n := r.UnreachablePeers()
	if n == 0 {
		return ""
	}
	var parts []string
	named := 0
	for i, u := range r.Unreachable[:min(reachShown, len(r.Unreachable))] {
		parts = append(parts, u.Node+": "+u.Reason)
		if i == 0 || r.Unreachable[i-1].Node != u.Node {
			named++
		}
	}
	s := fmt.Sprintf("%d of %d peers unreachable: %s", n, r.Peers, strings.Join(parts, "; "))
	if more := n - named; more > 0 {
		s += fmt.Sprintf("; and %d more", more)
	}
	return s
}

// ensurePodGateway makes the node's pod gateway exist (a PodGateway
// datapath) when the node's pod CIDRs are new to it, or when force
// (reconcile) says to check again. Peers probe that address, so a node
// answers for its pod network before any pod is attached.
func (l *loop) ensurePodGateway(plan model.Plan, force bool) {
	gw, ok := l.a.dp.(PodGateway)
	if !ok || plan.Desired == nil || plan.Self == nil || len(plan.Desired.LocalPodCIDRs) == 0 {
		return
	}
	cidrs := plan.Desired.LocalPodCIDRs
	if slices.Equal(l.gateway, cidrs) && !force {
		return
	}
	if err := gw.EnsurePodGateway(cidrs, plan.PodMTU); err != nil {
		l.a.log.Error("make the pod gateway", "pod_cidrs", cidrs, "error", err)
		return
	}
	l.gateway = slices.Clone(cidrs)
}
