// Package nodeagent is weft's node agent: it registers the node on a
// lease, follows the event log (package follow) into the desired-state
// model (package model), drives the datapath from the model's spec,
// repairs drift on a timer, and reports status, metrics and health.
//
// The agent talks to the kernel only through the Datapath interface, which
// *bpf.Datapath satisfies; tests replace it at the Sync boundary.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	"github.com/weftnet/weft/nodeagent/follow"
	"github.com/weftnet/weft/nodeagent/model"
	"github.com/weftnet/weft/nodeagent/reach"
	"github.com/weftnet/weft/proto/keys"
)

// Datapath is what the agent needs of a node's datapath. *bpf.Datapath
// implements it; methods may be called from any goroutine, one at a time.
type Datapath interface {
	// Underlay reports the node's underlay interface, address, MTU and
	// directly connected networks.
	Underlay() (spec.Underlay, error)
	// Sync makes the datapath equal want; it writes nothing when nothing
	// changed.
	Sync(ctx context.Context, want *spec.Desired) (spec.Report, error)
	// Reconcile reads the kernel back and repairs drift from want, naming
	// each repair in Report.Repaired.
	Reconcile(ctx context.Context, want *spec.Desired) (spec.Report, error)
	// Counters returns the datapath statistics.
	Counters() (spec.Counters, error)
}

// NodeInfo is implemented by a Datapath that can say what the node
// supports and which MAC its overlay device has (*bpf.Datapath does); the
// agent puts both into the registration. The agent asks for Capabilities
// once at start and for VTEPMAC at start and after each Sync or Reconcile
// that changed the kernel, so the registration (and through the
// controller's NodeUpdated, the node in the log) follows a recreated
// device.
type NodeInfo interface {
	// Capabilities names what the node supports, e.g. "tcx", "vxlan",
	// "geneve", "ipv6".
	Capabilities() []string
	// VTEPMAC is the overlay device's MAC, nil when there is none.
	VTEPMAC() (net.HardwareAddr, error)
}

// PodGateway is implemented by a Datapath that can make the node's pod
// gateway (the first address of each pod CIDR, on the pod bridge) exist
// before any pod is attached (*bpf.Datapath does). The agent calls it
// before the first Sync with the node's pod CIDRs and at each reconcile,
// so peers' reachability probes find the node's pod gateway.
type PodGateway interface {
	EnsurePodGateway(podCIDRs []netip.Prefix, mtu int) error
}

// Defaults of Config fields left zero.
const (
	DefaultLeaseTTL          = 10 * time.Second
	DefaultReconcileInterval = 10 * time.Second
	DefaultStatusInterval    = 5 * time.Second
	DefaultStatusMinInterval = time.Second
)

// Config configures an Agent.
type Config struct {
	// Client is the etcd client; the agent does not close it.
	Client *clientv3.Client
	// Prefix is the key prefix of the cluster (default /weft).
	Prefix string
	// NodeName is this node's name; required.
	NodeName string
	// Datapath is the node's datapath; required.
	Datapath Datapath
	// SubnetFile is where subnet.env is written; "" writes none.
	SubnetFile string
	// LeaseTTL is the TTL of the registration and status lease.
	LeaseTTL time.Duration
	// ReconcileInterval is how often the kernel is re-read and drift
	// repaired; negative disables it.
	ReconcileInterval time.Duration
	// StatusInterval is how often the status is rewritten even when
	// nothing changed (it doubles as the etcd reachability probe).
	StatusInterval time.Duration
	// StatusMinInterval is how long a change waits (plus up to half
	// again as jitter) before the status is written, so bursts coalesce.
	StatusMinInterval time.Duration
	// Capabilities and VTEPMAC go into the registration; when unset they
	// come from the Datapath if it implements NodeInfo.
	Capabilities []string
	VTEPMAC      string
	// ExtraRoutes, when set, is asked for routes learned elsewhere (the
	// BGP speaker) at each converge; they are used in bgp mode. Call
	// Agent.Kick when they change.
	ExtraRoutes func() []spec.Route
	// BGP is the speaker run while the config in force has backend "bgp"
	// (see bgpmode.go); nil means a bgp.New speaker. The speaker opens
	// sockets from whatever thread runs it, so one agent per process (or
	// per network namespace) uses it.
	BGP Speaker
	// ASN is this node's BGP AS number, sent in the registration; 0 means
	// the cluster's bgp.asn.
	ASN uint32
	// Probe, when set, turns on the reachability prober (package reach):
	// every peer's pod gateway is probed through the datapath, and
	// unreachable peers make the agent degraded. Its OnChange and Logger
	// are set by the agent. Its Open must open sockets in the datapath's
	// network namespace.
	Probe *reach.Config
	// Follow tunes the log follower (backoff, timeouts); its callbacks
	// and logger are set by the agent.
	Follow follow.Options
	// Logger defaults to a null logger.
	Logger hclog.Logger
}

// Agent is one node's agent. Create it with New and call Run once.
type Agent struct {
	cfg     Config
	k       keys.Layout
	dp      Datapath
	log     hclog.Logger
	metrics *metrics
	speaker Speaker

	kick       chan struct{}
	statusKick chan struct{}
	regKick    chan struct{}

	mu       sync.Mutex
	state    *model.State
	head     uint64
	lease    clientv3.LeaseID
	underlay spec.Underlay
	haveUnd  bool
	caps     []string // from NodeInfo
	vtepMAC  string   // from NodeInfo
	// What the converger last achieved, for status and health.
	synced    *spec.Desired
	plan      model.Plan
	syncErr   error
	followErr error
	storeErr  error
	underErr  error
	subnetEnv string
	// onApplied, when set (benchmarks), is called after each event folded.
	onApplied   func(seq uint64)
	waitLogged  bool
	selfApplied bool
	bgp         bgpState
	prober      *reach.Prober  // nil without Config.Probe
	unreachable int            // peers the prober last called unreachable
	probeErr    string         // why the prober cannot probe, "" when it can
	gateway     []netip.Prefix // pod CIDRs whose gateway EnsurePodGateway made
}

// New checks cfg and returns an agent.
func New(cfg Config) (*Agent, error) {
	if cfg.Client == nil || cfg.Datapath == nil {
		return nil, errors.New("new agent: client and datapath are required")
	}
	if err := keys.ValidName(cfg.NodeName); err != nil {
		return nil, fmt.Errorf("new agent: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.ReconcileInterval == 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = DefaultStatusInterval
	}
	if cfg.StatusMinInterval <= 0 {
		cfg.StatusMinInterval = DefaultStatusMinInterval
	}
	if cfg.BGP == nil {
		cfg.BGP = bgp.New(cfg.Logger)
	}
	a := &Agent{
		speaker:    cfg.BGP,
		cfg:        cfg,
		k:          keys.New(cfg.Prefix),
		dp:         cfg.Datapath,
		log:        cfg.Logger,
		kick:       make(chan struct{}, 1),
		statusKick: make(chan struct{}, 1),
		regKick:    make(chan struct{}, 1),
		state:      model.New(),
	}
	a.metrics = newMetrics(a)
	a.newProber()
	if cfg.SubnetFile != "" {
		_, err := os.Stat(cfg.SubnetFile)
		a.bgp.fresh = errors.Is(err, fs.ErrNotExist)
	}
	return a, nil
}

// Kick asks for a converge soon (e.g. when ExtraRoutes changed). It never
// blocks.
func (a *Agent) Kick() { poke(a.kick) }

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Run registers, follows the log and converges until ctx ends; it returns
// nil then. It does not return because etcd is unreachable, and it never
// tears the datapath down: on return the datapath stays as it was, so the
// node keeps forwarding.
func (a *Agent) Run(ctx context.Context) error {
	a.log.Info("starting", "node", a.cfg.NodeName, "prefix", a.k.Prefix)
	fo := a.cfg.Follow
	fo.Logger = a.log.Named("follow")
	fo.OnRelist = a.onRelist
	fo.OnHealth = a.onFollowHealth
	fo.OnHead = a.onHead
	f := follow.New(a.cfg.Client, a.k, fo)

	var wg sync.WaitGroup
	run := func(fn func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); fn(ctx) }()
	}
	run(func(ctx context.Context) { f.Run(ctx, (*sink)(a)) })
	run(a.converge)
	run(a.register)
	run(a.reportStatus)
	run(a.watchBGP)
	if a.prober != nil {
		run(a.prober.Run)
	}
	wg.Wait()
	a.stopBGP()
	a.log.Info("stopped; datapath left in place")
	return nil
}

// sink is the Agent as the follower's Sink.
type sink Agent

func (s *sink) Reset(snap model.Snapshot) {
	a := (*Agent)(s)
	a.mu.Lock()
	before := len(a.state.Refused())
	a.state.Reset(snap)
	a.noteRefusals(before)
	a.metrics.applied.Set(float64(a.state.Applied()))
	a.mu.Unlock()
	a.Kick()
	poke(a.statusKick)
}

func (s *sink) Apply(seq uint64, value []byte) error {
	a := (*Agent)(s)
	a.mu.Lock()
	refused, err := a.state.Apply(seq, value)
	applied := a.state.Applied()
	a.mu.Unlock()
	if err != nil {
		return err
	}
	a.metrics.applied.Set(float64(applied))
	a.metrics.eventsApplied.Inc()
	if a.onApplied != nil {
		a.onApplied(seq)
	}
	if refused != nil {
		a.metrics.refused.Inc()
		a.log.Error("event refused; keeping the last good state", "seq", seq, "reason", refused)
	}
	a.Kick()
	poke(a.statusKick)
	return nil
}

// noteRefusals logs refusals a Reset added. Callers hold a.mu.
func (a *Agent) noteRefusals(before int) {
	r := a.state.Refused()
	for _, x := range r[min(before, len(r)):] {
		a.metrics.refused.Inc()
		a.log.Error("projection value refused; keeping the last good state", "what", x.What, "reason", x.Reason)
	}
}

func (a *Agent) onRelist(reason string) {
	a.metrics.relists.WithLabelValues(reason).Inc()
	if reason != follow.ReasonStart {
		a.log.Info("re-listed", "reason", reason)
	}
}

func (a *Agent) onFollowHealth(err error) {
	a.mu.Lock()
	changed := (err == nil) != (a.followErr == nil)
	a.followErr = err
	a.mu.Unlock()
	if changed {
		a.healthChanged()
	}
}

func (a *Agent) onHead(seq uint64) {
	a.mu.Lock()
	a.head = max(a.head, seq)
	head := a.head
	a.mu.Unlock()
	a.metrics.head.Set(float64(head))
}

// refreshUnderlay asks the datapath for the underlay once. A new address
// updates the registration; any change re-converges (adjacency, MTU).
func (a *Agent) refreshUnderlay() error {
	u, err := a.dp.Underlay()
	if err == nil && !u.IP.IsValid() {
		err = errors.New("underlay has no address")
	}
	a.mu.Lock()
	wasErr := a.underErr
	if err != nil {
		a.underErr = fmt.Errorf("read underlay: %w", err)
		a.mu.Unlock()
		if wasErr == nil {
			a.healthChanged()
		}
		return err
	}
	a.underErr = nil
	newIP := !a.haveUnd || u.IP != a.underlay.IP
	changed := !a.haveUnd || u.IP != a.underlay.IP || u.MTU != a.underlay.MTU || !slices.Equal(u.Networks, a.underlay.Networks)
	a.underlay, a.haveUnd = u, true
	a.mu.Unlock()
	if wasErr != nil {
		a.healthChanged()
	}
	if newIP {
		poke(a.regKick)
	}
	if changed {
		a.Kick()
	}
	return nil
}

// loadUnderlay retries refreshUnderlay until it succeeds or ctx ends.
func (a *Agent) loadUnderlay(ctx context.Context) bool {
	backoff := 100 * time.Millisecond
	for {
		err := a.refreshUnderlay()
		if err == nil {
			return true
		}
		a.log.Error("read underlay", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// converge drives the datapath from the model: Sync on every change
// (bursts coalesce in the one-slot kick channel), Reconcile on a timer.
func (a *Agent) converge(ctx context.Context) {
	// Before the underlay: register waits for it, so the first
	// registration already carries these.
	a.loadNodeInfo()
	if !a.loadUnderlay(ctx) {
		return
	}
	var reconcile <-chan time.Time
	if a.cfg.ReconcileInterval > 0 {
		t := time.NewTicker(a.cfg.ReconcileInterval)
		defer t.Stop()
		reconcile = t.C
	}
	var retry <-chan time.Time
	retryIn := 200 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-retry:
		case <-reconcile:
			if err := a.refreshUnderlay(); err != nil {
				a.log.Error("read underlay; keeping the last one", "error", err)
			}
			a.reconcile(ctx)
			continue
		}
		retry = nil
		if err := a.syncOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, errBGPHold) {
				retry = time.After(250 * time.Millisecond)
				continue
			}
			a.log.Error("converge failed; will retry", "error", err, "in", retryIn)
			retry = time.After(retryIn)
			retryIn = min(2*retryIn, 10*time.Second)
			continue
		}
		retryIn = 200 * time.Millisecond
	}
}

// syncOnce computes the plan and syncs it when it differs from what was
// last synced.
func (a *Agent) syncOnce(ctx context.Context) error {
	extra := a.bgpStep(ctx)
	if a.cfg.ExtraRoutes != nil {
		extra = append(extra, a.cfg.ExtraRoutes()...)
	}
	a.mu.Lock()
	plan := model.Desired(a.state, a.cfg.NodeName, a.underlay, model.Options{ExtraRoutes: extra})
	synced, lastErr := a.synced, a.syncErr
	a.plan = plan
	a.mu.Unlock()
	a.metrics.peerProblems.Set(float64(len(plan.Problems)))

	if plan.Desired == nil || plan.Self == nil {
		// Until the controller's NodeAdded gives this node its pod CIDRs
		// (or after a NodeRemoved of this node) the datapath is left as
		// it is: a restarted agent must not touch pinned state before it
		// knows what it should be.
		a.mu.Lock()
		logIt := !a.waitLogged
		a.waitLogged = true
		removed := a.selfApplied
		a.mu.Unlock()
		switch {
		case logIt && removed:
			a.log.Warn("this node is no longer in the log (NodeRemoved); datapath left as it is until it is added again", "node", a.cfg.NodeName)
		case logIt:
			a.log.Info("waiting for this node's NodeAdded; datapath left as it is", "node", a.cfg.NodeName, "config_known", plan.Desired != nil)
		}
		poke(a.statusKick)
		return nil
	}
	a.mu.Lock()
	a.waitLogged = false
	a.mu.Unlock()
	if synced != nil && lastErr == nil && equalDesired(synced, plan.Desired) {
		a.setTargets()
		return nil
	}
	if plan.Desired.Mode == spec.ModeBGP && a.bgpHold(a.speaker.Sessions()) {
		a.mu.Lock()
		logIt := !a.bgp.held
		a.bgp.held = true
		a.mu.Unlock()
		if logIt {
			a.log.Info("first sync in bgp mode waits for the sessions; the kernel's BGP routes stay meanwhile", "at_most", bgpHoldMax)
		}
		return errBGPHold
	}
	a.ensurePodGateway(plan, false)
	start := time.Now()
	rep, err := a.dp.Sync(ctx, plan.Desired)
	a.metrics.syncDuration.WithLabelValues("sync").Observe(time.Since(start).Seconds())
	a.mu.Lock()
	a.syncErr = err
	if err == nil {
		a.synced = plan.Desired
	}
	first := !a.selfApplied && err == nil
	if first {
		a.selfApplied = true
	}
	a.mu.Unlock()
	if err != nil {
		if lastErr == nil {
			a.healthChanged()
		}
		poke(a.statusKick)
		return fmt.Errorf("sync datapath: %w", err)
	}
	a.metrics.entries(plan.Desired)
	a.setTargets()
	// subnet.env before the status: whoever sees this node converged in
	// its status finds the file that matches.
	if err := a.writeSubnetEnv(plan); err != nil {
		a.log.Error("write subnet file", "error", err)
	}
	if lastErr != nil {
		a.healthChanged()
	}
	poke(a.statusKick)
	if first || rep.Changed() {
		a.refreshVTEPMAC()
	}
	if first {
		a.log.Info("node converged", "pod_cidrs", plan.Self.PodCidrs, "desired", plan.Desired.String())
	} else if rep.Changed() {
		a.log.Debug("synced", "added", rep.Added, "updated", rep.Updated, "removed", rep.Removed, "desired", plan.Desired.String())
	}
	for _, p := range plan.Problems {
		a.log.Debug("peer not served", "node", p.Node, "reason", p.Reason)
	}
	return nil
}

// reconcile re-reads the kernel and repairs drift from what was synced.
func (a *Agent) reconcile(ctx context.Context) {
	a.mu.Lock()
	want, plan := a.synced, a.plan
	a.mu.Unlock()
	if want == nil {
		return
	}
	a.ensurePodGateway(plan, true)
	start := time.Now()
	rep, err := a.dp.Reconcile(ctx, want)
	a.metrics.syncDuration.WithLabelValues("reconcile").Observe(time.Since(start).Seconds())
	for _, r := range rep.Repaired {
		a.log.Warn("repaired: " + r)
		a.metrics.repairs.Inc()
	}
	if len(rep.Repaired) > 0 {
		a.refreshVTEPMAC() // a recreated device has a new MAC
	}
	a.mu.Lock()
	lastErr := a.syncErr
	a.syncErr = err
	a.mu.Unlock()
	if err != nil {
		a.log.Error("reconcile datapath", "error", err)
	}
	if (err == nil) != (lastErr == nil) {
		a.healthChanged()
		poke(a.statusKick)
		if err == nil {
			a.Kick()
		}
	}
}

// equalDesired compares two normalized specs without reflection (it runs
// on every event with thousands of tunnels).
func equalDesired(a, b *spec.Desired) bool {
	if a.Mode != b.Mode || (a.Overlay == nil) != (b.Overlay == nil) || (a.Masquerade == nil) != (b.Masquerade == nil) {
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
		slices.Equal(a.Tunnels, b.Tunnels) && slices.Equal(a.Routes, b.Routes)
}

// Health reports whether the agent is degraded and why: etcd unreachable,
// the datapath failing to converge, or peers unreachable through the
// datapath.
func (a *Agent) Health() (ok bool, reasons []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.healthLocked()
}

func (a *Agent) healthLocked() (bool, []string) {
	r, peers := a.healthPartsLocked()
	if peers != "" {
		r = append(r, peers)
	}
	return len(r) == 0, r
}

// healthPartsLocked returns the agent's own reasons to be degraded and,
// apart, the one about unreachable peers ("" when none).
func (a *Agent) healthPartsLocked() (own []string, peers string) {
	var r []string
	if a.followErr != nil {
		r = append(r, "etcd unreachable: "+a.followErr.Error())
	} else if a.storeErr != nil {
		r = append(r, "etcd unreachable: "+a.storeErr.Error())
	}
	if a.underErr != nil {
		r = append(r, a.underErr.Error())
	}
	if a.syncErr != nil {
		r = append(r, "datapath not converged: "+a.syncErr.Error())
	}
	if a.prober != nil {
		rep := a.prober.Report()
		if rep.Err != "" {
			r = append(r, rep.Err)
		}
		peers = reachReason(rep)
	}
	return r, peers
}

func (a *Agent) healthChanged() {
	ok, reasons := a.Health()
	if ok {
		a.metrics.degraded.Set(0)
		a.log.Info("healthy")
	} else {
		a.metrics.degraded.Set(1)
		a.log.Warn("degraded", "reasons", reasons)
	}
	poke(a.statusKick)
}

// Applied returns the seq of the last event folded into the model.
func (a *Agent) Applied() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state.Applied()
}

// localPrefixes returns the node's IPv4 and IPv6 pod CIDRs of d.
func localPrefixes(d *spec.Desired) (v4, v6 netip.Prefix) {
	for _, p := range d.LocalPodCIDRs {
		if p.Addr().Is4() && !v4.IsValid() {
			v4 = p
		} else if p.Addr().Is6() && !v6.IsValid() {
			v6 = p
		}
	}
	return v4, v6
}
