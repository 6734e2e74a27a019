// Package nodeagent is weft's node agent: it registers the node on a
// lease, follows the event log (package follow) into the desired-state
// model (package model), drives the datapath from the model's spec,
// repairs drift on a timer, and reports status, metrics and health.
//
// The agent talks to the kernel only through the Datapath interface, which
// *bpf.Datapath satisfies; tests replace it at the Sync boundary.
//
// Concurrency: one goroutine, the converge loop (converge.go), owns the
// model and everything derived from it. The follower hands it the log by
// messages; the lease keeper (lease.go), the BGP watcher and the prober
// poke it; after
// every change it publishes an immutable view that status, health,
// metrics and the registration read, and while it waits it stamps the
// heartbeat /livez reads (liveness.go). Nothing else is shared.
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
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp/proc"
	"github.com/weftnet/weft/nodeagent/follow"
	"github.com/weftnet/weft/nodeagent/model"
	"github.com/weftnet/weft/nodeagent/reach"
	"github.com/weftnet/weft/proto/keys"
)

// Datapath is what the agent needs of a node's datapath. *bpf.Datapath
// implements it. The converge loop calls Underlay, Sync and Reconcile,
// one at a time; Counters is called at metric scrapes, from another
// goroutine.
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
// controller's NodeUpdated, the node in the log) follows a device whose
// MAC is not the one the spec asks for (spec.VTEPMAC of the node's name,
// which the registration carries while there is no device).
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
	// DefaultStuckAfter: a Sync of 5,000 peers takes well under a second
	// (docs/BENCHMARKS.md), so a converge loop away from its wait for a
	// minute is stuck, not busy.
	DefaultStuckAfter = time.Minute
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
	// come from the Datapath if it implements NodeInfo (the MAC, without
	// a device or without NodeInfo, is spec.VTEPMAC(NodeName)).
	Capabilities []string
	VTEPMAC      string
	// ExtraRoutes, when set, is asked for routes learned elsewhere (the
	// BGP speaker) at each converge, on the converge loop; they are used
	// in bgp mode. Call Agent.Kick when they change.
	ExtraRoutes func() []spec.Route
	// BGP is the speaker run while the config in force has backend "bgp"
	// (see bgpmode.go); nil means a proc.Client that runs weft-bgp found
	// by proc.Find. Its child process starts in the agent's network
	// namespace.
	BGP Speaker
	// ASN is this node's BGP AS number, sent in the registration; 0 means
	// the cluster's bgp.asn.
	ASN uint32
	// HostRouting overrides the cluster config's host_routing on this
	// node: "bpf", "stack" or "" (follow the config).
	HostRouting string
	// TunnelDatapath overrides the cluster config's tunnel_datapath on
	// this node: "device", "bpf" or "" (follow the config).
	TunnelDatapath string
	// Probe, when set, turns on the reachability prober (package reach):
	// every peer's pod gateway is probed through the datapath, and
	// unreachable peers make the agent degraded. Its OnChange and Logger
	// are set by the agent. Its Open must open sockets in the datapath's
	// network namespace.
	Probe *reach.Config
	// Follow tunes the log follower (backoff, timeouts); its callbacks
	// and logger are set by the agent.
	Follow follow.Options
	// StuckAfter is how long the converge loop may stay away from its
	// wait (in one Sync, reconcile, BGP call or batch of events) before
	// /livez calls it stuck and answers 503; default DefaultStuckAfter.
	StuckAfter time.Duration
	// Converged, when set, is called once, on the converge loop, after
	// the node's first successful Sync; it must not block.
	Converged func()
	// Logger defaults to a null logger.
	Logger hclog.Logger
}

// Agent is one node's agent. Create it with New and call Run once. Its
// methods are safe to call from any goroutine, before, during and after
// Run.
type Agent struct {
	cfg     Config
	k       keys.Layout
	dp      Datapath
	log     hclog.Logger
	metrics *metrics
	speaker Speaker
	// prober probes the peers (nil without Config.Probe); it has its own
	// goroutine and lock, and the converge loop gives it its targets.
	prober *reach.Prober
	// fresh: no subnet file when the agent started, so no earlier agent
	// converged this node since boot (/run is a tmpfs) and there are no
	// kernel routes of a predecessor to keep (see bgpHold).
	fresh bool
	// previous: the pod CIDRs the subnet file named when the agent
	// started, which the registration asks for again (previousCIDRs).
	previous []string

	// inbox carries the log and health reports to the converge loop.
	inbox chan message
	// kick asks the converge loop for a converge soon.
	kick chan struct{}
	// statusKick and regKick ask the lease keeper to write the status
	// (debounced) and the registration.
	statusKick chan struct{}
	regKick    chan struct{}
	// reachKick tells the converge loop that the prober's verdicts
	// changed.
	reachKick chan struct{}
	// etcdUp tells the lease keeper that etcd answers again (the follower
	// reached it after failing, or the client's connection became ready):
	// a registration waiting out a backoff tries at once.
	etcdUp chan struct{}
	// view is what the converge loop last published.
	view atomic.Pointer[view]
	// beat is when the converge loop was last back at its wait (unix
	// ns); /livez reads it (liveness.go).
	beat atomic.Int64
	// regHeld is set while the agent's registration key is held on a
	// lease not its own (another agent with this node name): the status
	// says so and the agent does not write over it (lease.go).
	regHeld atomic.Pointer[string]

	// onApplied, when set (benchmarks), is called on the converge loop
	// after each event folded.
	onApplied func(seq uint64)
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
	if cfg.StuckAfter <= 0 {
		cfg.StuckAfter = DefaultStuckAfter
	}
	if cfg.BGP == nil {
		cfg.BGP = proc.New(proc.Options{Logger: cfg.Logger})
	}
	a := &Agent{
		speaker:    cfg.BGP,
		cfg:        cfg,
		k:          keys.New(cfg.Prefix),
		dp:         cfg.Datapath,
		log:        cfg.Logger,
		inbox:      make(chan message, 256),
		kick:       make(chan struct{}, 1),
		statusKick: make(chan struct{}, 1),
		regKick:    make(chan struct{}, 1),
		etcdUp:     make(chan struct{}, 1),
		reachKick:  make(chan struct{}, 1),
	}
	a.view.Store(&view{unconverged: "converge loop not started"})
	a.beat.Store(time.Now().UnixNano())
	a.metrics = newMetrics(a)
	a.newProber()
	if cfg.SubnetFile != "" {
		_, err := os.Stat(cfg.SubnetFile)
		a.fresh = errors.Is(err, fs.ErrNotExist)
		prev, err := previousCIDRs(cfg.SubnetFile)
		if err != nil {
			// A hint only: the controller allocates as for a new node.
			a.log.Warn("previous pod CIDRs not asked for", "error", err)
		}
		for _, p := range prev {
			a.previous = append(a.previous, p.String())
		}
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
	fo.OnHealth = func(err error) { a.send(ctx, followHealth{err}) }
	fo.Quarantined = func() []string { return a.view.Load().quarantined }
	// The head the agent reports is the highest seq of the lists and
	// events the loop received; the follower's OnHead adds nothing.
	f := follow.New(a.cfg.Client, a.k, fo)

	l := newLoop(a)
	var wg sync.WaitGroup
	wg.Go(func() { f.Run(ctx, sink{a, ctx}) })
	wg.Go(func() { l.run(ctx) })
	wg.Go(func() { a.keepLease(ctx) })
	wg.Go(func() { a.watchConn(ctx) })
	wg.Go(func() { a.watchBGP(ctx) })
	if a.prober != nil {
		wg.Go(func() { a.prober.Run(ctx) })
	}
	wg.Wait()
	// Every goroutine has ended: the loop's state is this goroutine's now.
	l.stopBGP()
	a.log.Info("stopped; datapath left in place")
	return nil
}

// message is what the converge loop receives in its inbox: listed,
// event, followHealth or storeHealth.
type message interface{}

type (
	// listed is a base the follower read at one revision.
	listed struct{ snap model.Snapshot }
	// event is one event of the log, in seq order after the last listed.
	event struct {
		seq   uint64
		value []byte
	}
	// followHealth: the follower could (nil) or could not read etcd.
	followHealth struct{ err error }
	// storeHealth: the lease keeper could (nil) or could not write.
	storeHealth struct{ err error }
)

// send hands m to the converge loop; it blocks while the inbox is full
// (the loop is syncing), which slows the follower down rather than
// letting it run ahead without bound.
func (a *Agent) send(ctx context.Context, m message) {
	select {
	case a.inbox <- m:
	case <-ctx.Done():
	}
}

// sink is the follower's Sink: it passes the log to the converge loop.
type sink struct {
	a   *Agent
	ctx context.Context
}

func (s sink) Reset(snap model.Snapshot) { s.a.send(s.ctx, listed{snap}) }

func (s sink) Apply(seq uint64, value []byte) error {
	s.a.send(s.ctx, event{seq, value})
	return nil
}

func (a *Agent) onRelist(reason string) {
	a.metrics.relists.WithLabelValues(reason).Inc()
	if reason != follow.ReasonStart {
		a.log.Info("re-listed", "reason", reason)
	}
}

// Health reports whether the agent is degraded and why: etcd unreachable,
// no usable underlay, the datapath failing to converge, a projection
// value it cannot use (named by key, with what it holds instead), or
// peers unreachable through the datapath.
func (a *Agent) Health() (ok bool, reasons []string) {
	own, peers := a.healthParts(a.view.Load())
	if peers != "" {
		own = append(own, peers)
	}
	return len(own) == 0, own
}

// readiness is what /healthz (the readiness probe) answers: what the
// node's first convergence (the first successful Sync of the datapath)
// still waits for, "" once it happened, and the reasons the agent is
// degraded: Health's, and the converge loop stuck (Liveness: a stuck loop
// publishes no view, and the last one would still say ok).
func (a *Agent) readiness() (unconverged string, degraded []string) {
	if why := a.view.Load().unconverged; why != "" {
		unconverged = "not converged yet: " + why
	}
	_, degraded = a.Health()
	if live, why := a.Liveness(); !live {
		degraded = append(degraded, why)
	}
	return unconverged, degraded
}

// healthParts returns the agent's own reasons to be degraded (v's and the
// prober's) and, apart, the one about unreachable peers ("" when none).
func (a *Agent) healthParts(v *view) (own []string, peers string) {
	own = slices.Clone(v.health)
	if a.prober != nil {
		rep := a.prober.ReportFirst(reachShown)
		if rep.Err != "" {
			own = append(own, rep.Err)
		}
		peers = reachReason(rep)
	}
	return own, peers
}

// Applied returns the seq of the last event folded into the model.
func (a *Agent) Applied() uint64 { return a.view.Load().applied }

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
