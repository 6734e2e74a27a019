package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/internal/backoff"
	"github.com/weftnet/weft/nodeagent/model"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// view is an immutable picture of the agent that the converge loop
// publishes after every change, for the readers on other goroutines:
// status, health, metrics and the registration. The loop builds a new one
// each time and never changes one it published; the slices and specs it
// points to are never changed either.
type view struct {
	applied, head uint64
	// The registration's inputs.
	underlayIP  netip.Addr // invalid until the underlay was read once
	underlayIP6 netip.Addr // the underlay's IPv6 address beside an IPv4 underlayIP
	caps        []string
	vtepMAC     string
	// What the converger last achieved.
	refused []model.Refusal
	// quarantined are the keys of the projection values the model cannot
	// use (the follower re-reads them).
	quarantined []string
	plan        model.Plan    // Problems and PodMTU of the last plan
	synced      *spec.Desired // the spec last synced, nil before
	syncErr     error
	health      []string // degraded reasons, empty when healthy
	// unconverged names what the node's first convergence (the first
	// successful Sync) still waits for; "" once it happened. Readiness
	// (/healthz) fails while it is set, and the status carries it
	// (not_converged).
	unconverged string
	// BGP.
	bgpOn      bool
	bgpSkipped []*weftv1.BGPSession
	bgpErr     error
}

// loop is the converge loop's state. Only the loop's goroutine touches it
// (and Run, after the loop ended).
type loop struct {
	a     *Agent
	state *model.State
	head  uint64

	underlay spec.Underlay
	haveUnd  bool
	caps     []string // from NodeInfo
	// vtepMAC is the overlay device's MAC (from NodeInfo) or, while there
	// is no device, the one the datapath will create it with.
	vtepMAC string

	synced    *spec.Desired
	plan      model.Plan
	syncErr   error
	followErr error
	storeErr  error
	underErr  error
	// failing is which of the above made the agent degraded at the last
	// publish, so a change of health is logged once.
	failing [4]bool
	// quarantine is the model's quarantine as last published, so a change
	// is logged once.
	quarantine []model.Quarantine
	subnetEnv  string
	// regChanged: the registration's inputs changed since the last
	// publish; the lease keeper is asked to rewrite it after the view
	// that holds them is out.
	regChanged bool
	// The prober's verdicts as last seen (reachChanged); healthDirty: they
	// changed, so health is logged again at the next publish. reachDue:
	// they were last looked at less than StatusMinInterval ago;
	// reachPending: they changed since.
	unreachable  int
	probeErr     string
	healthDirty  bool
	reachDue     <-chan time.Time
	reachPending bool
	// gateway: the pod CIDRs whose gateway EnsurePodGateway made.
	gateway []netip.Prefix

	waitLogged  bool
	selfApplied bool
	// listed: the follower's first list arrived. firstWait: why the last
	// syncOnce before the first successful Sync did not sync (notConverged).
	listed    bool
	firstWait string
	bgp       bgpState
	// refusedRoutes are the learned routes refused at the last plan (by
	// RefusedRoute.String), each logged and counted once.
	refusedRoutes map[string]bool
	// bigTCPNotes are the plan's BigTCPNotes as last logged.
	bigTCPNotes []string
}

func newLoop(a *Agent) *loop {
	l := &loop{a: a, state: model.New(), vtepMAC: spec.VTEPMAC(a.cfg.NodeName).String()}
	l.bgp.fresh = a.fresh
	return l
}

// Backoffs of the converge loop's retries.
const (
	underlayRetryMin, underlayRetryMax = 100 * time.Millisecond, 5 * time.Second
	syncRetryMin, syncRetryMax         = 200 * time.Millisecond, 10 * time.Second
	bgpHoldRetry                       = 250 * time.Millisecond
)

// run drives the datapath from the model until ctx ends: it folds the
// log the follower sends, syncs the plan after every change (a burst of
// events costs one Sync: everything queued is folded first), retries a
// failed Sync with backoff, and reconciles on a timer.
func (l *loop) run(ctx context.Context) {
	// Before the underlay: the lease keeper waits for it, so the first
	// registration already carries these.
	l.loadNodeInfo()
	var reconcile <-chan time.Time
	if l.a.cfg.ReconcileInterval > 0 {
		t := time.NewTicker(l.a.cfg.ReconcileInterval)
		defer t.Stop()
		reconcile = t.C
	}
	underlayBO := backoff.New(underlayRetryMin, underlayRetryMax)
	syncBO := backoff.New(syncRetryMin, syncRetryMax)
	var underlayRetry, retry <-chan time.Time
	readUnderlay := func() {
		if err := l.refreshUnderlay(); err != nil {
			d := underlayBO.Next()
			l.a.log.Error("read underlay", "error", err, "retry_in", d)
			underlayRetry = time.After(d)
			return
		}
		underlayBO.Reset()
		underlayRetry = nil
	}
	// The heartbeat: a tick taken whenever the loop is back at its wait,
	// four times per StuckAfter (liveness.go).
	beat := time.NewTicker(l.a.cfg.StuckAfter / 4)
	defer beat.Stop()
	l.a.beat.Store(time.Now().UnixNano())
	readUnderlay()
	l.publish()
	for {
		converge := false
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			// The time the tick is taken, not the one it carries: a tick
			// that waited in the channel while the loop was busy was sent
			// before the loop came back.
			l.a.beat.Store(time.Now().UnixNano())
			continue
		case m := <-l.a.inbox:
			converge = l.handle(m)
			// Fold everything already queued before syncing once.
			for more := true; more; {
				select {
				case m := <-l.a.inbox:
					converge = l.handle(m) || converge
				default:
					more = false
				}
			}
		case <-l.a.kick:
			converge = true
		case <-retry:
			converge = true
		case <-underlayRetry:
			readUnderlay()
		case <-l.a.reachKick:
			l.reachChanged()
		case <-l.reachDue:
			l.reachPaused()
		case <-reconcile:
			if !l.haveUnd {
				break // underlayRetry reads it
			}
			if err := l.refreshUnderlay(); err != nil {
				l.a.log.Error("read underlay; keeping the last one", "error", err)
			}
			l.reconcile(ctx)
		}
		if converge && l.haveUnd {
			retry = nil
			err := l.syncOnce(ctx)
			switch {
			case err == nil:
				syncBO.Reset()
			case ctx.Err() != nil:
				return
			case errors.Is(err, errBGPHold):
				retry = time.After(bgpHoldRetry)
			default:
				d := syncBO.Next()
				l.a.log.Error("converge failed; will retry", "error", err, "in", d)
				retry = time.After(d)
			}
		}
		l.publish()
	}
}

// handle folds one message into the loop's state and tells whether the
// model changed (so a converge is due).
func (l *loop) handle(m message) bool {
	a := l.a
	switch m := m.(type) {
	case listed:
		l.listed = true
		before := len(l.state.Refused())
		l.state.Reset(m.snap)
		for _, x := range l.state.Refused()[min(before, len(l.state.Refused())):] {
			a.metrics.refused.Inc()
			a.log.Error("projection value refused; keeping the last good state", "key", l.refusedKey(x.What), "reason", x.Reason)
		}
		l.seen(m.snap.Head)
		return true
	case event:
		refused, err := l.state.Apply(m.seq, m.value)
		l.seen(m.seq)
		if err != nil {
			// The follower hands over each seq once and in order after
			// the list it sent; a gap here is a bug, not the log's.
			a.log.Error("event not applied", "seq", m.seq, "error", err)
			return false
		}
		a.metrics.eventsApplied.Inc()
		if a.onApplied != nil {
			a.onApplied(m.seq)
		}
		if refused != nil {
			a.metrics.refused.Inc()
			a.log.Error("event refused; keeping the last good state", "key", a.k.Event(m.seq), "reason", refused)
		}
		return true
	case followHealth:
		if m.err == nil && l.followErr != nil {
			poke(a.etcdUp) // etcd answers again: register now, not after a backoff
		}
		l.followErr = m.err
	case storeHealth:
		l.storeErr = m.err
	}
	return false
}

// refusedKey is the key of a refused projection value ("config", "node
// <name>").
func (l *loop) refusedKey(what string) string {
	if name, ok := strings.CutPrefix(what, "node "); ok {
		return l.a.k.Node(name)
	}
	return l.a.k.Config()
}

// seen records the applied seq and the highest head seen.
func (l *loop) seen(seq uint64) {
	l.head = max(l.head, seq)
	l.a.metrics.applied.Set(float64(l.state.Applied()))
	l.a.metrics.head.Set(float64(l.head))
}

// publish stores a new view for the other goroutines, logs a change of
// health and asks for a status write.
func (l *loop) publish() {
	v := &view{
		applied:     l.state.Applied(),
		head:        l.head,
		caps:        l.caps,
		vtepMAC:     l.vtepMAC,
		refused:     l.state.Refused(),
		plan:        l.plan,
		synced:      l.synced,
		syncErr:     l.syncErr,
		bgpOn:       l.bgp.on,
		bgpSkipped:  l.bgp.skipped,
		bgpErr:      l.bgp.err,
		unconverged: l.notConverged(),
	}
	if l.haveUnd {
		v.underlayIP, v.underlayIP6 = l.underlay.IP, l.underlay.IPv6
	}
	failing := [4]bool{l.followErr != nil, l.storeErr != nil, l.underErr != nil, l.syncErr != nil}
	switch {
	case l.followErr != nil:
		v.health = append(v.health, etcdReason(l.followErr, l.a.cfg.NodeName))
	case l.storeErr != nil:
		v.health = append(v.health, etcdReason(l.storeErr, l.a.cfg.NodeName))
	}
	if l.underErr != nil {
		v.health = append(v.health, l.underErr.Error())
	}
	if l.syncErr != nil {
		v.health = append(v.health, "datapath not converged: "+l.syncErr.Error())
	}
	// A projection value the model cannot use: the agent holds what it
	// kept and says so, naming the key.
	q := l.state.Quarantined()
	for _, x := range q {
		key := l.a.k.Config()
		if x.Node != "" {
			key = l.a.k.Node(x.Node)
		}
		v.quarantined = append(v.quarantined, key)
		v.health = append(v.health, fmt.Sprintf("bad value at %s: %.300s; holding %s", key, x.Reason, x.Kept))
	}
	if !slices.Equal(q, l.quarantine) {
		l.quarantine, l.healthDirty = q, true
		l.a.metrics.quarantined.Set(float64(len(q)))
	}
	l.a.view.Store(v)
	if l.regChanged {
		l.regChanged = false
		poke(l.a.regKick)
	}
	if failing != l.failing || l.healthDirty {
		l.failing, l.healthDirty = failing, false
		if ok, reasons := l.a.Health(); ok {
			l.a.metrics.degraded.Set(0)
			l.a.log.Info("healthy")
		} else {
			l.a.metrics.degraded.Set(1)
			l.a.log.Warn("degraded", "reasons", reasons)
		}
	}
	poke(l.a.statusKick)
}

// notConverged names what the node's first convergence waits for, ""
// once the first Sync succeeded: the underlay, the log's first list, the
// cluster config, this node's NodeAdded (its pod CIDRs, from the
// controller), the BGP sessions a first sync in bgp mode waits for, or the
// first Sync itself (failed: the health reasons say why).
func (l *loop) notConverged() string {
	switch {
	case l.selfApplied:
		return ""
	case !l.haveUnd:
		return "underlay not read"
	case !l.listed:
		return "log not listed from etcd"
	case l.firstWait != "":
		return l.firstWait
	default:
		return "first sync of the datapath pending"
	}
}

// markFirstSync publishes, before the node's first Sync, a view that says
// the Sync runs (the loop publishes none until it returns), and asks for
// a status write: the write comes after the debounce, so a Sync shorter
// than that costs no extra write (the one after it carries the converged
// status), and a longer one shows in the status as running.
func (l *loop) markFirstSync() {
	l.firstWait = "first sync of the datapath running"
	v := *l.a.view.Load()
	v.unconverged = l.notConverged()
	l.a.view.Store(&v)
	poke(l.a.statusKick)
}

// refreshUnderlay asks the datapath for the underlay once. A new address
// updates the registration; any change re-converges (adjacency, MTU).
func (l *loop) refreshUnderlay() error {
	u, err := l.a.dp.Underlay()
	if err == nil && !u.IP.IsValid() {
		err = errors.New("underlay has no address")
	}
	if err != nil {
		l.underErr = fmt.Errorf("read underlay: %w", err)
		return err
	}
	l.underErr = nil
	newIP := !l.haveUnd || u.IP != l.underlay.IP || u.IPv6 != l.underlay.IPv6
	changed := newIP || u.MTU != l.underlay.MTU || !slices.Equal(u.Networks, l.underlay.Networks)
	l.underlay, l.haveUnd = u, true
	if newIP {
		l.regChanged = true
	}
	if changed {
		l.a.Kick()
	}
	return nil
}

// syncOnce computes the plan and syncs it when it differs from what was
// last synced.
func (l *loop) syncOnce(ctx context.Context) error {
	a := l.a
	extra := l.bgpStep(ctx)
	if a.cfg.ExtraRoutes != nil {
		extra = append(extra, a.cfg.ExtraRoutes()...)
	}
	plan := model.Desired(l.state, a.cfg.NodeName, l.underlay, model.Options{ExtraRoutes: extra, HostRouting: a.cfg.HostRouting, TunnelDatapath: a.cfg.TunnelDatapath})
	l.plan = plan
	l.noteRefused(plan.RefusedRoutes)
	a.metrics.peerProblems.Set(float64(len(plan.Problems)))
	l.logBigTCPNotes(plan)

	if plan.Desired == nil || plan.Self == nil {
		// Until the controller's NodeAdded gives this node its pod CIDRs
		// (or after a NodeRemoved of this node) the datapath is left as
		// it is: a restarted agent must not touch pinned state before it
		// knows what it should be.
		l.firstWait = fmt.Sprintf("no NodeAdded of %s in the log (the controller has not given it pod CIDRs)", a.cfg.NodeName)
		if plan.Desired == nil {
			l.firstWait = "no cluster config in the log"
		}
		if !l.waitLogged {
			l.waitLogged = true
			if l.selfApplied {
				a.log.Warn("this node is no longer in the log (NodeRemoved); datapath left as it is until it is added again", "node", a.cfg.NodeName)
			} else {
				a.log.Info("waiting for this node's NodeAdded; datapath left as it is", "node", a.cfg.NodeName, "config_known", plan.Desired != nil)
			}
		}
		return nil
	}
	l.waitLogged = false
	lastErr := l.syncErr
	if l.synced != nil && lastErr == nil && equalDesired(l.synced, plan.Desired) {
		l.setTargets()
		return nil
	}
	if plan.Desired.Mode == spec.ModeBGP && l.bgpHold(a.speaker.Sessions()) {
		l.firstWait = "first sync in bgp mode waits for the BGP sessions"
		if !l.bgp.held {
			l.bgp.held = true
			a.log.Info("first sync in bgp mode waits for the sessions; the kernel's BGP routes stay meanwhile", "at_most", bgpHoldMax)
		}
		return errBGPHold
	}
	l.ensurePodGateway(plan, false)
	if !l.selfApplied {
		l.markFirstSync()
	}
	start := time.Now()
	rep, err := a.dp.Sync(ctx, plan.Desired)
	a.metrics.syncDuration.WithLabelValues("sync").Observe(time.Since(start).Seconds())
	l.syncErr = err
	if err != nil {
		l.firstWait = "first sync of the datapath failed"
		return fmt.Errorf("sync datapath: %w", err)
	}
	l.synced = plan.Desired
	first := !l.selfApplied
	l.selfApplied = true
	a.metrics.entries(plan.Desired)
	l.setTargets()
	// subnet.env before the status: whoever sees this node converged in
	// its status finds the file that matches.
	if err := l.writeSubnetEnv(plan); err != nil {
		a.log.Error("write subnet file", "error", err)
	}
	if first || rep.Changed() {
		l.refreshVTEPMAC()
	}
	if first {
		a.log.Info("node converged", "pod_cidrs", plan.Self.PodCidrs, "desired", plan.Desired.String())
		if a.cfg.Converged != nil {
			a.cfg.Converged()
		}
	} else if rep.Changed() {
		a.log.Debug("synced", "added", rep.Added, "updated", rep.Updated, "removed", rep.Removed, "desired", plan.Desired.String())
	}
	for _, p := range plan.Problems {
		a.log.Debug("peer not served", "node", p.Node, "reason", p.Reason)
	}
	return nil
}

// reconcile re-reads the kernel and repairs drift from what was synced.
func (l *loop) reconcile(ctx context.Context) {
	a := l.a
	want := l.synced
	if want == nil {
		return
	}
	l.ensurePodGateway(l.plan, true)
	start := time.Now()
	rep, err := a.dp.Reconcile(ctx, want)
	a.metrics.syncDuration.WithLabelValues("reconcile").Observe(time.Since(start).Seconds())
	for _, r := range rep.Repaired {
		a.log.Warn("repaired: " + r)
		a.metrics.repairs.Inc()
	}
	if len(rep.Repaired) > 0 {
		l.refreshVTEPMAC() // a recreated device has a new MAC
	}
	lastErr := l.syncErr
	l.syncErr = err
	if err != nil {
		a.log.Error("reconcile datapath", "error", err)
	}
	if lastErr != nil && err == nil {
		a.Kick()
	}
}

// equalDesired compares two normalized specs without reflection (it runs
// on every event with thousands of tunnels).
func equalDesired(a, b *spec.Desired) bool {
	if a.Mode != b.Mode || a.StackRouting != b.StackRouting || a.BigTCP != b.BigTCP || (a.Overlay == nil) != (b.Overlay == nil) || (a.Masquerade == nil) != (b.Masquerade == nil) {
		return false
	}
	if a.Overlay != nil && *a.Overlay != *b.Overlay {
		return false
	}
	if a.Masquerade != nil && (!slices.Equal(a.Masquerade.PodCIDRs, b.Masquerade.PodCIDRs) ||
		!slices.Equal(a.Masquerade.NativeCIDRs, b.Masquerade.NativeCIDRs)) {
		return false
	}
	return slices.Equal(a.ClusterCIDRs, b.ClusterCIDRs) && slices.Equal(a.LocalPodCIDRs, b.LocalPodCIDRs) &&
		slices.Equal(a.Tunnels, b.Tunnels) && slices.Equal(a.Routes, b.Routes) &&
		slices.Equal(a.PodNetworks, b.PodNetworks) && slices.Equal(a.PodOwners, b.PodOwners)
}

// loadNodeInfo asks a NodeInfo datapath for the node's capabilities (once)
// and its overlay device's MAC (which exists already after a restart).
func (l *loop) loadNodeInfo() {
	ni, ok := l.a.dp.(NodeInfo)
	if !ok {
		return
	}
	if l.a.cfg.Capabilities == nil {
		l.caps = ni.Capabilities()
		l.a.log.Info("node capabilities", "capabilities", l.caps)
	}
	l.refreshVTEPMAC()
}

// refreshVTEPMAC reads the overlay device's MAC from a NodeInfo datapath
// and, when it changed, updates the registration. Without a device it is
// the MAC Sync will create the device with (spec.VTEPMAC), so a node that
// joins registers its MAC before it has a device, and the registration
// changes only when a device's MAC differs from it (one made by an older
// agent until Sync sets it, or an address changed behind weft's back).
func (l *loop) refreshVTEPMAC() {
	ni, ok := l.a.dp.(NodeInfo)
	if !ok || l.a.cfg.VTEPMAC != "" {
		return
	}
	mac, err := ni.VTEPMAC()
	if err != nil {
		l.a.log.Warn("read overlay device MAC; keeping the last one", "error", err)
		return
	}
	s := spec.VTEPMAC(l.a.cfg.NodeName).String()
	if mac != nil {
		s = mac.String()
	}
	if s != l.vtepMAC {
		l.vtepMAC = s
		l.a.log.Info("overlay device MAC changed; updating the registration", "vtep_mac", s)
		l.regChanged = true
	}
}
