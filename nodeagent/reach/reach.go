// Package reach tells whether a node can reach its peers through its own
// datapath. Applying the log is not the same as reaching the peers: native
// mode without direct routes relies on the network, gateway mode on a
// router, bgp mode on routes learned from peers. The Prober sends an ICMP
// echo from the node's network namespace to each peer's pod gateway (the
// first address of the peer's pod CIDR), at a low bounded rate, and says
// which peers do not answer and, where the mode tells, what is missing.
//
// It only reports: a peer whose probes fail is never removed from or
// changed in the datapath.
//
// Cost: one goroutine schedules every probe and one per address family
// reads replies; no goroutine per peer. Each peer is probed at most every
// Interval, and the whole node sends at most Rate probes per second, so a
// round over N peers takes max(Interval, N/Rate).
package reach

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Defaults of Config fields left zero.
const (
	// DefaultInterval is how often each peer is probed at most.
	DefaultInterval = 5 * time.Second
	// DefaultRate caps the probes one node sends per second (all peers
	// together): at 5,000 peers a round takes 100 s.
	DefaultRate = 50
	// DefaultTimeout is how long a probe waits for its reply.
	DefaultTimeout = time.Second
	// DefaultRetry is how soon a failed probe is repeated, to confirm
	// the failure before the peer counts as unreachable.
	DefaultRetry = time.Second
	// DefaultGrace is how long a peer first seen (or whose path changed:
	// a new address, a mode switch) may fail before it counts as
	// unreachable: long enough for a joining node's agent, its peers'
	// agents and the network (BGP, a router) to converge.
	DefaultGrace = 30 * time.Second
	// Failures is how many probes in a row must fail before a peer counts
	// as unreachable: one lost packet never does.
	Failures = 2
)

// Path says what carries packets from this node to a peer in the mode in
// force.
type Path uint8

// The paths.
const (
	// PathTunnel: encapsulated towards the peer's underlay IP (Via).
	PathTunnel Path = iota + 1
	// PathDirect: weft's route via the peer's underlay IP (Via).
	PathDirect
	// PathBGP: a route learned over BGP via Via.
	PathBGP
	// PathNetwork: weft installs nothing for the peer; the node's own
	// routing (the network) must carry it.
	PathNetwork
)

func (p Path) String() string {
	switch p {
	case PathTunnel:
		return "tunnel"
	case PathDirect:
		return "direct route"
	case PathBGP:
		return "BGP route"
	case PathNetwork:
		return "network"
	}
	return fmt.Sprintf("path(%d)", uint8(p))
}

// Target is one peer to probe.
type Target struct {
	// Node is the peer's name.
	Node string
	// Addr is the peer's pod gateway, the address probed.
	Addr netip.Addr
	// Prefix is the peer's pod CIDR that holds Addr.
	Prefix netip.Prefix
	// Mode is the datapath mode in force on this node.
	Mode string
	// Path and Via say how this node's datapath carries the probe.
	Path Path
	Via  netip.Addr
	// Needs names what the mode relies on for this peer beyond weft's own
	// state (PathNetwork only), e.g. "direct routes are off ...": it ends
	// the reason of a failure.
	Needs string
}

// targetKey identifies a target: a peer is probed once per address
// family. A struct, not a string, so 5,000 peers cost no key allocations.
type targetKey struct {
	node string
	v6   bool
}

func (t Target) key() targetKey { return targetKey{t.Node, t.Addr.Is6()} }

// same reports whether a and b probe the same way; a changed target starts
// over with a new grace.
func (t Target) same(o Target) bool {
	return t.Addr == o.Addr && t.Prefix == o.Prefix && t.Mode == o.Mode && t.Path == o.Path && t.Via == o.Via
}

// Conn sends ICMP echo requests of one address family and receives the
// answers to them. ListenICMP opens the real one.
type Conn interface {
	// Send sends one echo request to dst with sequence number seq. An
	// error (for example ErrNoRoute) ends the probe at once.
	Send(dst netip.Addr, seq uint16) error
	// Recv blocks until an echo reply to one of this Conn's requests, or
	// an ICMP error about one, arrives; it returns an error once the Conn
	// is closed.
	Recv() (Reply, error)
	Close() error
}

// Reply is an answer to a probe.
type Reply struct {
	Seq uint16
	// From is who answered: the target for an echo reply, else the
	// router (or this node) that sent the ICMP error.
	From netip.Addr
	// Err is empty for an echo reply, else what the ICMP error says,
	// e.g. "network unreachable".
	Err string
}

// ErrNoRoute is returned (wrapped) by Conn.Send when this node has no route
// to the destination.
var ErrNoRoute = errors.New("reach: no route")

// Config configures a Prober.
type Config struct {
	// Open opens the Conn for IPv4 (v6 false) or IPv6; required.
	// ListenICMP is the real one.
	Open     func(v6 bool) (Conn, error)
	Interval time.Duration
	Rate     int
	Timeout  time.Duration
	Retry    time.Duration
	Grace    time.Duration
	// OnChange is called (without locks held) whenever a peer becomes
	// reachable or unreachable, or the report's counts change.
	OnChange func()
	Logger   hclog.Logger
	// now replaces the clock in tests.
	now func() time.Time
}

// Unreachable is a peer whose probes to one of its pod gateways (one per
// address family) fail.
type Unreachable struct {
	Node   string
	Addr   netip.Addr
	Reason string
	Since  time.Time
}

// Report is the Prober's verdict now. A peer is probed once per address
// family the node has pod CIDRs of; it is reachable when every one of its
// pod gateways answered its last probe, and unreachable when any of them
// is.
type Report struct {
	// Peers is the number of peers (nodes) probed.
	Peers int
	// Reachable peers answered their last probe in every family.
	Reachable int
	// Unreachable lists each unreachable pod gateway (a peer that fails
	// in both families appears twice), sorted by node name, then
	// address.
	Unreachable []Unreachable
	// Sent, Answered and Failed count probes since start.
	Sent, Answered, Failed uint64
	// Err says why this node cannot probe at all (its socket does not
	// open, e.g. without CAP_NET_RAW); empty when it can.
	Err string

	unreachablePeers int
}

// UnreachablePeers is the number of peers with an unreachable pod
// gateway (also those ReportFirst left out of Unreachable).
func (r Report) UnreachablePeers() int { return r.unreachablePeers }

// Pending is the number of peers without a verdict yet (not probed yet,
// or failing within their grace, in some family and unreachable in none).
func (r Report) Pending() int { return r.Peers - r.Reachable - r.UnreachablePeers() }

type verdict uint8

const (
	pending verdict = iota
	reachable
	unreachable
)

// both is the verdict on a node from those on its two targets.
func both(a, b verdict) verdict {
	switch {
	case a == unreachable || b == unreachable:
		return unreachable
	case a == reachable && b == reachable:
		return reachable
	}
	return pending
}

type peer struct {
	t         Target
	firstSeen time.Time
	due       time.Time
	idx       int // in the due heap
	fails     int
	state     verdict
	since     time.Time
	reason    string
	seq       uint16 // of the probe in flight
	inFlight  bool
	sentAt    time.Time
}

// Prober probes a set of targets. Create it with New, give it targets
// with Set and run it with Run; Report is safe from any goroutine.
type Prober struct {
	cfg Config
	log hclog.Logger

	wake chan struct{}

	mu       sync.Mutex
	peers    map[targetKey]*peer
	due      dueHeap
	inFlight map[uint16]*peer
	seq      uint16
	tokens   float64
	lastFill time.Time
	conns    [2]Conn // [0] IPv4, [1] IPv6
	connErr  [2]error
	sent     uint64
	answered uint64
	failed   uint64
	changed  bool
	closed   bool
	readers  sync.WaitGroup
}

// New returns a Prober with cfg's zero fields defaulted.
func New(cfg Config) *Prober {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Rate <= 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	return &Prober{
		cfg:      cfg,
		log:      cfg.Logger,
		wake:     make(chan struct{}, 1),
		peers:    map[targetKey]*peer{},
		inFlight: map[uint16]*peer{},
	}
}

// burst is how many probes may go out at once: a tenth of a second's
// worth, so no second ever sees much more than Rate.
func (p *Prober) burst() float64 { return max(1, float64(p.cfg.Rate)/10) }

// Set replaces the targets. A target equal to the current one for its node
// and family keeps its state; a new or changed one starts over with a new
// grace and is probed soon. Targets must have distinct nodes per family.
func (p *Prober) Set(targets []Target) {
	now := p.cfg.now()
	p.mu.Lock()
	keep := make(map[targetKey]bool, len(targets))
	// New peers are spread over the first second, so a whole cluster
	// (re)appearing does not probe in one burst beyond the rate.
	for _, t := range targets {
		k := t.key()
		keep[k] = true
		old := p.peers[k]
		if old != nil && old.t.same(t) {
			old.t = t
			continue
		}
		if old != nil {
			p.drop(old)
		}
		pr := &peer{t: t, firstSeen: now, due: now.Add(rand.N(time.Second))}
		p.peers[k] = pr
		heap.Push(&p.due, pr)
		p.changed = true
	}
	for k, pr := range p.peers {
		if !keep[k] {
			p.drop(pr)
			p.changed = true
		}
	}
	p.mu.Unlock()
	p.notify()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// drop forgets pr. Callers hold p.mu.
func (p *Prober) drop(pr *peer) {
	if pr.inFlight {
		delete(p.inFlight, pr.seq)
	}
	heap.Remove(&p.due, pr.idx)
	delete(p.peers, pr.t.key())
}

// Report returns the current verdicts, every unreachable gateway listed.
func (p *Prober) Report() Report { return p.ReportFirst(-1) }

// ReportFirst returns the current verdicts with only the first limit
// unreachable gateways listed (all when limit < 0); the counts are always
// whole. The agent calls it on every change of a verdict, so when
// thousands of peers fail one after another its cost must not grow with
// the number already failing: it allocates at most limit entries.
func (p *Prober) ReportFirst(limit int) Report {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := Report{Sent: p.sent, Answered: p.answered, Failed: p.failed}
	for _, err := range p.connErr {
		if err != nil {
			r.Err = "cannot probe peers: " + err.Error()
		}
	}
	// Per node: every target reachable, or some unreachable. A node is
	// counted at its IPv4 target when it has one, else at its IPv6 one.
	for k, pr := range p.peers {
		if pr.state == unreachable {
			u := Unreachable{Node: pr.t.Node, Addr: pr.t.Addr, Reason: pr.reason, Since: pr.since}
			if limit < 0 {
				r.Unreachable = append(r.Unreachable, u)
			} else {
				r.Unreachable = keepFirst(r.Unreachable, limit, u)
			}
		}
		v := pr.state
		if other := p.peers[targetKey{k.node, !k.v6}]; other != nil {
			if k.v6 {
				continue
			}
			v = both(v, other.state)
		}
		r.Peers++
		switch v {
		case reachable:
			r.Reachable++
		case unreachable:
			r.unreachablePeers++
		}
	}
	if limit < 0 {
		slices.SortFunc(r.Unreachable, compareUnreachable)
	}
	return r
}

// keepFirst inserts u into list, kept sorted by node name then address,
// and drops what falls beyond limit (limit >= 0).
func keepFirst(list []Unreachable, limit int, u Unreachable) []Unreachable {
	i, _ := slices.BinarySearchFunc(list, u, compareUnreachable)
	if i >= limit {
		return list
	}
	if len(list) == limit {
		list = list[:limit-1]
	}
	return slices.Insert(list, i, u)
}

func compareUnreachable(a, b Unreachable) int {
	if c := strings.Compare(a.Node, b.Node); c != 0 {
		return c
	}
	return a.Addr.Compare(b.Addr)
}

// Run probes until ctx ends, then closes its Conns.
func (p *Prober) Run(ctx context.Context) {
	defer p.close()
	// One timer for the prober's life: a new one per step was most of
	// what an agent at rest allocated after its reconciles (a step runs
	// for every probe, Rate times a second).
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		wait := p.step(p.cfg.now())
		p.notify()
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-t.C:
		}
	}
}

func (p *Prober) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = [2]Conn{}
	p.mu.Unlock()
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	p.readers.Wait()
}

// notify calls OnChange if something changed since the last call.
func (p *Prober) notify() {
	p.mu.Lock()
	changed := p.changed
	p.changed = false
	p.mu.Unlock()
	if changed && p.cfg.OnChange != nil {
		p.cfg.OnChange()
	}
}

// interval is how often each peer is probed: Interval, or longer when the
// rate cap cannot probe every peer that often. Callers hold p.mu.
func (p *Prober) interval() time.Duration {
	return max(p.cfg.Interval, time.Duration(len(p.peers))*time.Second/time.Duration(p.cfg.Rate))
}

// step expires probes that timed out and sends those that are due, within
// the rate; it returns how long to sleep before the next step.
func (p *Prober) step(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	for seq, pr := range p.inFlight {
		if now.Sub(pr.sentAt) >= p.cfg.Timeout {
			delete(p.inFlight, seq)
			pr.inFlight = false
			p.fail(pr, now, fmt.Sprintf("no reply from %s within %v", pr.t.Addr, p.cfg.Timeout), false)
		}
	}
	p.tokens = min(p.burst(), p.tokens+now.Sub(p.lastFill).Seconds()*float64(p.cfg.Rate))
	p.lastFill = now
	for p.due.Len() > 0 {
		pr := p.due[0]
		if pr.due.After(now) {
			break
		}
		if p.tokens < 1 {
			return time.Duration((1 - p.tokens) / float64(p.cfg.Rate) * float64(time.Second))
		}
		p.tokens--
		p.send(pr, now)
	}
	wait := time.Hour
	if p.due.Len() > 0 {
		wait = p.due[0].due.Sub(now)
	}
	for _, pr := range p.inFlight {
		wait = min(wait, pr.sentAt.Add(p.cfg.Timeout).Sub(now))
	}
	return max(wait, time.Millisecond)
}

// send probes pr now. Callers hold p.mu.
func (p *Prober) send(pr *peer, now time.Time) {
	// Until its answer comes, the peer is due again after the timeout
	// (the answer or the timeout reschedules it).
	pr.due = now.Add(p.cfg.Timeout + p.interval())
	heap.Fix(&p.due, pr.idx)
	c, err := p.conn(pr.t.Addr.Is6())
	if err != nil {
		// This node cannot probe at all: no verdict on anyone.
		return
	}
	p.seq++
	for p.inFlight[p.seq] != nil {
		p.seq++
	}
	p.sent++
	if err := c.Send(pr.t.Addr, p.seq); err != nil {
		why := err.Error()
		noRoute := errors.Is(err, ErrNoRoute)
		if noRoute {
			why = fmt.Sprintf("no route to %s on this node", pr.t.Addr)
		}
		p.fail(pr, now, why, noRoute)
		return
	}
	pr.seq, pr.inFlight, pr.sentAt = p.seq, true, now
	p.inFlight[p.seq] = pr
}

// conn returns the Conn of a family, opening it (and its reader) on first
// use. Callers hold p.mu.
func (p *Prober) conn(v6 bool) (Conn, error) {
	i := 0
	if v6 {
		i = 1
	}
	if p.conns[i] != nil {
		return p.conns[i], nil
	}
	if p.closed {
		return nil, errors.New("reach: closed")
	}
	c, err := p.cfg.Open(v6)
	if err != nil {
		if p.connErr[i] == nil || p.connErr[i].Error() != err.Error() {
			p.log.Error("cannot probe peers", "error", err)
			p.changed = true
		}
		p.connErr[i] = err
		return nil, err
	}
	if p.connErr[i] != nil {
		p.connErr[i] = nil
		p.changed = true
	}
	p.conns[i] = c
	p.readers.Add(1)
	go p.read(c)
	return c, nil
}

// read hands c's replies to the prober until c is closed.
func (p *Prober) read(c Conn) {
	defer p.readers.Done()
	for {
		r, err := c.Recv()
		if err != nil {
			return
		}
		p.reply(r, p.cfg.now())
		p.notify()
	}
}

func (p *Prober) reply(r Reply, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr := p.inFlight[r.Seq]
	if pr == nil || (r.Err == "" && r.From != pr.t.Addr) {
		return // late (already timed out), or not ours
	}
	delete(p.inFlight, r.Seq)
	pr.inFlight = false
	if r.Err != "" {
		p.fail(pr, now, fmt.Sprintf("%s answered %s", r.From, r.Err), false)
		return
	}
	p.answered++
	pr.fails = 0
	pr.due = now.Add(jitter(p.interval()))
	heap.Fix(&p.due, pr.idx)
	if pr.state != reachable {
		if pr.state == unreachable {
			p.log.Info("peer reachable again", "node", pr.t.Node, "addr", pr.t.Addr, "path", pr.t.Path.String(), "after", now.Sub(pr.since).Round(time.Second))
		}
		pr.state, pr.reason = reachable, ""
		p.changed = true
	}
}

// fail records a failed probe of pr. Callers hold p.mu.
func (p *Prober) fail(pr *peer, now time.Time, why string, noRoute bool) {
	p.failed++
	pr.fails++
	if pr.fails == 1 {
		pr.due = now.Add(p.cfg.Retry)
	} else {
		pr.due = now.Add(jitter(p.interval()))
	}
	heap.Fix(&p.due, pr.idx)
	if pr.fails < Failures || now.Sub(pr.firstSeen) < p.cfg.Grace {
		return
	}
	reason := Reason(pr.t, why, noRoute)
	if pr.state == unreachable && pr.reason == reason {
		return
	}
	if pr.state != unreachable {
		pr.since = now
		p.log.Warn("peer unreachable", "node", pr.t.Node, "addr", pr.t.Addr, "reason", reason)
	}
	pr.state, pr.reason = unreachable, reason
	p.changed = true
}

// Reason is the text of an unreachable peer: what failed (why) and,
// where the target says so, what the mode lacks for it.
func Reason(t Target, why string, noRoute bool) string {
	var b strings.Builder
	b.WriteString(why)
	if !noRoute {
		switch t.Path {
		case PathTunnel:
			fmt.Fprintf(&b, " through the tunnel to %s", t.Via)
		case PathDirect:
			fmt.Fprintf(&b, " over the direct route via %s", t.Via)
		case PathBGP:
			fmt.Fprintf(&b, " over the BGP route via %s", t.Via)
		}
	}
	if t.Needs != "" {
		b.WriteString(": ")
		b.WriteString(t.Needs)
	}
	return b.String()
}

// jitter spreads d by ±10 %, so peers probed together drift apart.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

// dueHeap orders peers by when they are due.
type dueHeap []*peer

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *dueHeap) Push(x any) {
	pr := x.(*peer)
	pr.idx = len(*h)
	*h = append(*h, pr)
}
func (h *dueHeap) Pop() any {
	old := *h
	pr := old[len(old)-1]
	*h = old[:len(old)-1]
	return pr
}
