package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/testenv/garbage"
)

// Kind is a kind of fault.
type Kind string

// The fault kinds, in the order the tables list them. docs/testenv.md
// says what each does and the loss bound it is held to.
const (
	ControllerKill Kind = "controller-kill"  // SIGKILL the leading controller, start it again after Hold
	AgentKill      Kind = "agent-kill"       // SIGKILL a node's agent, start it again after Hold
	AgentStop      Kind = "agent-stop"       // SIGSTOP a node's agent for Hold (longer than its lease TTL), then SIGCONT
	AgentConfig    Kind = "agent-config"     // restart a node's agent (SIGTERM) with one flag changed
	EtcdMemberKill Kind = "etcd-member-kill" // SIGKILL an etcd member that does not lead, start it again after Hold
	EtcdLeaderKill Kind = "etcd-leader-kill" // SIGKILL the etcd raft leader, start it again after Hold
	EtcdDown       Kind = "etcd-down"        // stop every etcd member for Hold (60 s)
	EtcdBlock      Kind = "etcd-block"       // drop a node's traffic to and from etcd (nftables) for Hold
	LeaveRejoin    Kind = "leave-rejoin"     // a node leaves (agent stopped, pods detached), is removed, and rejoins
	Garbage        Kind = "garbage"          // write a bad value into a key by hand (package garbage) for Hold, then put the old one back
)

// Kinds lists every kind.
var Kinds = []Kind{ControllerKill, AgentKill, AgentStop, AgentConfig, EtcdMemberKill, EtcdLeaderKill, EtcdDown, EtcdBlock, LeaveRejoin, Garbage}

// Timing is what the draws need to know about the cluster.
type Timing struct {
	LeaseTTL time.Duration // the agents' lease TTL (the smallest an agent-config may set)
	MaxTTL   time.Duration // the largest lease TTL an agent-config may set
	Grace    time.Duration // node grace period
	Nodes    int
	Members  int // etcd members
}

// MaxAbsence is the longest absence from etcd a node is promised to
// outlive (docs/DESIGN.md), and so the longest etcd-block and agent-stop:
// the agent's lease ends at least two thirds of the smallest TTL into the
// absence (it is renewed every third of a TTL), the controller waits the
// grace from there, and the agent is registered again within
// etcdconn.RecoveryBound of being back (its path to etcd working again,
// or SIGCONT).
func (t Timing) MaxAbsence() time.Duration {
	return t.Grace + 2*t.LeaseTTL/3 - etcdconn.RecoveryBound
}

// Fault is one drawn fault. Which controller leads and which etcd member
// leads are found when the fault is injected: the draw names the role.
type Fault struct {
	Kind   Kind
	Node   int           // the node of agent-*, etcd-block, leave-rejoin and garbage; -1 otherwise
	Member int           // etcd-member-kill: the Member-th member (mod the followers) that does not lead
	Delay  time.Duration // from the start of its step
	Hold   time.Duration // how long the fault lasts before it is healed
	Flag   string        // agent-config: the flag changed
	Value  string        // agent-config: its new value
	Case   garbage.Case  // garbage: what is written (Node is the node it corrupts or claims from)
}

func (f Fault) String() string {
	var b strings.Builder
	b.WriteString(string(f.Kind))
	switch f.Kind {
	case AgentKill, AgentStop, EtcdBlock, LeaveRejoin:
		fmt.Fprintf(&b, " n%d", f.Node)
	case Garbage:
		fmt.Fprintf(&b, " %s n%d", f.Case, f.Node)
	case AgentConfig:
		fmt.Fprintf(&b, " n%d %s=%s", f.Node, f.Flag, f.Value)
	case EtcdMemberKill:
		fmt.Fprintf(&b, " follower#%d", f.Member)
	}
	if f.Delay > 0 {
		fmt.Fprintf(&b, " +%s", f.Delay.Round(100*time.Millisecond))
	}
	if f.Hold > 0 {
		fmt.Fprintf(&b, " for %s", f.Hold.Round(100*time.Millisecond))
	}
	return b.String()
}

// Step is one or two faults that run at the same time; the cluster
// recovers and the invariants are checked after every step.
type Step struct {
	Faults []Fault
}

func (s Step) String() string {
	parts := make([]string, len(s.Faults))
	for i, f := range s.Faults {
		parts[i] = f.String()
	}
	return strings.Join(parts, " + ")
}

// Estimate is how long a step is expected to take, recovery included;
// Plan fills the duration with steps by it.
func (s Step) Estimate(t Timing) time.Duration {
	var d time.Duration
	for _, f := range s.Faults {
		// measured on a 2-core machine: recovery and the checks take a
		// second or two after most faults
		e := f.Delay + f.Hold + 1500*time.Millisecond
		switch f.Kind {
		case LeaveRejoin:
			e += t.MaxTTL + t.Grace + 2*time.Second
		case EtcdDown:
			e += 8 * time.Second
		}
		d = max(d, e)
	}
	return d
}

// Weights of the kinds in a draw.
var weights = map[Kind]int{
	ControllerKill: 3, AgentKill: 3, AgentStop: 2, AgentConfig: 2,
	EtcdMemberKill: 2, EtcdLeaderKill: 2, EtcdDown: 1, EtcdBlock: 2, LeaveRejoin: 1, Garbage: 3,
}

// Overlap rule: a step is one fault, or a control-plane fault
// (controller-kill, etcd-member-kill, etcd-leader-kill) together with a
// node fault (agent-kill, agent-stop, agent-config, etcd-block). Never two
// etcd faults at once (one member down is the most a 3-member etcd loses
// and keeps quorum), etcd-down, leave-rejoin and garbage always alone.
var (
	controlKinds = []Kind{ControllerKill, EtcdMemberKill, EtcdLeaderKill}
	nodeKinds    = []Kind{AgentKill, AgentStop, AgentConfig, EtcdBlock}
)

// EtcdDownHold is how long etcd-down keeps every member stopped.
const EtcdDownHold = 60 * time.Second

// Planner draws steps from a seed: the same seed and timing give the same
// sequence of draws.
type Planner struct {
	rng *rand.Rand
	t   Timing
}

// NewPlanner starts the draws of seed.
func NewPlanner(seed int64, t Timing) *Planner {
	return &Planner{rng: rand.New(rand.NewPCG(uint64(seed), 0x5745_4654)), t: t} // "WEFT"
}

// Next draws a step that fits in left (by Estimate), or reports false
// after 20 draws that do not.
func (p *Planner) Next(left time.Duration) (Step, bool) {
	for misses := 0; misses < 20; misses++ {
		s := drawStep(p.rng, p.t)
		if s.Estimate(p.t) <= left {
			return s, true
		}
		// Too long for what is left (etcd-down, leave-rejoin): draw
		// again, a shorter one may fit.
	}
	return Step{}, false
}

// Plan draws the steps of a run of duration d from seed: the same seed,
// duration and timing give the same steps. A run executes them and, if
// they took less than d, goes on with the planner's next draws.
func Plan(seed int64, d time.Duration, t Timing) []Step {
	steps, _ := plan(seed, d, t)
	return steps
}

func plan(seed int64, d time.Duration, t Timing) ([]Step, *Planner) {
	p := NewPlanner(seed, t)
	var steps []Step
	for used := time.Duration(0); ; {
		s, ok := p.Next(d - used)
		if !ok {
			return steps, p
		}
		steps = append(steps, s)
		used += s.Estimate(t)
	}
}

func drawStep(rng *rand.Rand, t Timing) Step {
	k := drawKind(rng, Kinds)
	first := drawFault(rng, k, t)
	var partners []Kind
	switch {
	case contains(controlKinds, k):
		partners = nodeKinds
	case contains(nodeKinds, k):
		partners = controlKinds
	}
	if len(partners) == 0 || rng.IntN(3) != 0 {
		return Step{Faults: []Fault{first}}
	}
	second := drawFault(rng, drawKind(rng, partners), t)
	second.Delay = between(rng, 0, 2*time.Second)
	return Step{Faults: []Fault{first, second}}
}

func drawKind(rng *rand.Rand, from []Kind) Kind {
	total := 0
	for _, k := range from {
		total += weights[k]
	}
	n := rng.IntN(total)
	for _, k := range from {
		if n < weights[k] {
			return k
		}
		n -= weights[k]
	}
	return from[len(from)-1]
}

func drawFault(rng *rand.Rand, k Kind, t Timing) Fault {
	f := Fault{Kind: k, Node: -1}
	switch k {
	case ControllerKill:
		f.Hold = between(rng, time.Second, 5*time.Second)
	case AgentKill:
		f.Node = rng.IntN(t.Nodes)
		f.Hold = between(rng, 200*time.Millisecond, 3*time.Second)
	case AgentStop:
		// Longer than any lease TTL, so the lease runs out; no longer
		// than a node is promised to outlive, so it is not removed. (TTL
		// + grace - 3 s, the bound before, counted the grace from a full
		// TTL into the stop: a lease renewed just before SIGSTOP ends
		// there, one renewed a third of a TTL earlier 1 s sooner, which
		// left the agent 2 s after SIGCONT instead of RecoveryBound.)
		f.Node = rng.IntN(t.Nodes)
		f.Hold = between(rng, t.MaxTTL+time.Second, t.MaxAbsence())
	case AgentConfig:
		f.Node = rng.IntN(t.Nodes)
		f.Flag, f.Value = drawChange(rng, t)
	case EtcdMemberKill:
		f.Member = rng.IntN(max(1, t.Members-1))
		f.Hold = between(rng, 2*time.Second, 10*time.Second)
	case EtcdLeaderKill:
		f.Hold = between(rng, 2*time.Second, 10*time.Second)
	case EtcdDown:
		f.Hold = EtcdDownHold
	case EtcdBlock:
		f.Node = rng.IntN(t.Nodes)
		f.Hold = between(rng, 2*time.Second, t.MaxAbsence())
	case LeaveRejoin:
		f.Node = rng.IntN(t.Nodes)
		f.Hold = between(rng, 0, 3*time.Second) // away after the removal, before rejoining
	case Garbage:
		cases := garbage.Cases()
		f.Case = cases[rng.IntN(len(cases))]
		f.Node = rng.IntN(t.Nodes)
		// Longer than a lease TTL and the agents' re-reads, so every
		// component meets the value; the controller may repair it sooner.
		f.Hold = between(rng, t.MaxTTL, 2*t.MaxTTL)
	}
	return f
}

// drawChange picks the agent flag an agent-config restart changes and its
// new value.
func drawChange(rng *rand.Rand, t Timing) (string, string) {
	switch rng.IntN(5) {
	case 0:
		ttl := t.LeaseTTL
		if rng.IntN(2) == 0 {
			ttl = t.MaxTTL
		}
		return "--lease-ttl", fmt.Sprint(int(ttl / time.Second))
	case 1:
		return "--reconcile-interval", []string{"2s", "5s", "30s"}[rng.IntN(3)]
	case 2:
		return "--probe-grace", []string{"5s", "10s", "20s"}[rng.IntN(3)]
	case 3:
		return "--log-level", []string{"debug", "info"}[rng.IntN(2)]
	default:
		return "--underlay", []string{"ip", "eth0"}[rng.IntN(2)] // "ip": the node's underlay address instead of the interface name
	}
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	d := lo + time.Duration(rng.Int64N(int64(hi-lo)))
	return d.Round(100 * time.Millisecond)
}

func contains(ks []Kind, k Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}
