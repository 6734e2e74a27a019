// Package chaos runs seeded fault injection against a secure testenv
// cluster (3 nodes × 2 pods, a 3-member etcd with TLS and auth, 2
// controllers) while every pod pings every other pod every 10 ms, and
// checks after every fault and at the end that weft kept its promises:
// `weftctl check` clean, no pod pair unreachable beyond the bound of the
// fault kind, no NodeRemoved for a node whose agent was alive and could
// reach etcd, nothing left on the machine after teardown.
//
// The faults come from Plan(seed, duration): the same seed and duration
// replay the same faults. docs/testenv.md lists the kinds, their bounds
// and the overlap rule.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/garbage"
)

// The cluster's timing: short, so a lease runs out and a grace ends
// within seconds.
const (
	leaseTTL    = 3 * time.Second
	maxLeaseTTL = 4 * time.Second // an agent-config may restart an agent with this TTL
	nodeGrace   = 8 * time.Second
	electionTTL = 3
)

// RejoinBound is how long after a node that left is back (agent running,
// pods attached again with addresses from its new pod CIDR) pairs with
// its pods may still lose pings: every agent must have applied its
// NodeAdded by then.
const RejoinBound = 10 * time.Second

// settle is the quiet time after a step has recovered; a step's window
// (the pings charged to it) ends after it.
const settle = time.Second

// Options of a chaos run.
type Options struct {
	Seed     int64
	Duration time.Duration // how much fault time to plan (Plan fills it)
	Interval time.Duration // ping interval, default 10 ms
	BinDir   string        // the weft binaries (weft-testenv among them)
	Prefix   string        // run prefix; default a fresh one
	LogDir   string        // when set, the run's logs are copied here before teardown
	Out      io.Writer     // progress, one line per step; default io.Discard
	Logger   hclog.Logger
}

// ClusterOptions is the cluster a chaos run builds.
func ClusterOptions(o Options) testenv.Options {
	return testenv.Options{
		Prefix:      o.Prefix,
		Nodes:       3,
		PodsPerNode: 2,
		Etcd:        testenv.EtcdExternal,
		EtcdMembers: 3,
		Controllers: 2,
		Secure:      true,
		LeaseTTL:    int(leaseTTL / time.Second),
		NodeGrace:   int(nodeGrace / time.Second),
		ElectionTTL: electionTTL,
		BinDir:      o.BinDir,
		Logger:      o.Logger,
	}
}

func timing() Timing {
	return Timing{LeaseTTL: leaseTTL, MaxTTL: maxLeaseTTL, Grace: nodeGrace, Nodes: 3, Members: 3}
}

// PlanFor is the plan a run with these options executes.
func PlanFor(o Options) []Step { return Plan(o.Seed, o.Duration, timing()) }

// Report is what a run found.
type Report struct {
	Seed     int64
	Duration time.Duration
	Prefix   string
	Start    time.Time
	Elapsed  time.Duration
	Interval time.Duration
	Pairs    int

	Baseline Window   // before the first fault
	Steps    []Window // one per step
	Tail     Window   // after the last step until the pings stopped

	Sent, Received, Lost int
	Removals             []Removal
	Violations           []string
	Leftovers            []string
}

// Window is a stretch of the run and the pings lost in it.
type Window struct {
	Index      int
	Step       Step
	Targets    []string // what each fault hit, resolved when injected
	Start, End time.Time
	Recovered  time.Duration // from the end of the faults to converged
	Lost       int           // pings lost beyond the bound
	Allowed    int           // pings lost within a bound (leave-rejoin)
	// Unsent are pings whose request reached the pod and whose echo reply
	// the pod's kernel could not send (its ICMP OutErrors, Mesh.ReplyErrors):
	// not lost by a datapath, so not charged.
	Unsent     int
	Longest    time.Duration // longest outage of one pair
	Removed    []string
	Check      string // "ok" or what weftctl check said
	Violations []string

	rejoin   time.Time // leave-rejoin: when the node's pods were back
	rejoined []string  // leave-rejoin: its pods
	// unsentBy is how many echo replies each pod's kernel could not send
	// during the window; nil when they could not be read.
	unsentBy map[string]uint64
}

// OK reports whether the run found no violation.
func (r *Report) OK() bool { return len(r.Violations) == 0 }

// Run builds the cluster, runs the plan, checks the invariants and tears
// the cluster down. The report is returned whenever the cluster came up;
// the error says why the run could not go on.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Interval == 0 {
		o.Interval = 10 * time.Millisecond
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Prefix == "" {
		o.Prefix = testenv.NewPrefix()
	}
	plan, more := plan(o.Seed, o.Duration, timing())
	fmt.Fprintf(o.Out, "chaos: seed %d, duration %s, %d steps planned, cluster %s\n", o.Seed, o.Duration, len(plan), o.Prefix)
	c, err := testenv.New(ctx, ClusterOptions(o))
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	r := &Report{Seed: o.Seed, Duration: o.Duration, Prefix: c.Prefix, Interval: o.Interval}
	runErr := r.run(ctx, c, o, plan, more)
	if o.LogDir != "" {
		if err := copyLogs(c, o.LogDir); err != nil {
			fmt.Fprintln(o.Out, "chaos: copy logs:", err)
		}
	}
	if err := c.Close(); err != nil {
		r.Violations = append(r.Violations, fmt.Sprintf("teardown: %v", err))
	}
	r.Leftovers = testenv.Leftovers(c.Prefix)
	if len(r.Leftovers) > 0 {
		r.Violations = append(r.Violations, "left on the machine after teardown: "+strings.Join(r.Leftovers, ", "))
	}
	return r, runErr
}

func (r *Report) run(ctx context.Context, c *testenv.Cluster, o Options, plan []Step, more *Planner) error {
	if err := r.recover(ctx, c); err != nil {
		return fmt.Errorf("cluster not ready: %w", err)
	}
	lastSeq, err := c.Head(ctx)
	if err != nil {
		return err
	}
	targets := c.Targets()
	r.Pairs = len(targets) * (len(targets) - 1)
	mesh, err := StartMesh(targets, o.Interval)
	if err != nil {
		return err
	}
	replyErrors, err := mesh.ReplyErrors()
	if err != nil {
		mesh.Stop()
		return err
	}
	// unsent records in win the replies each pod's kernel could not send
	// since the last window.
	unsent := func(win *Window) {
		now, err := mesh.ReplyErrors()
		if err != nil {
			win.Violations = append(win.Violations, err.Error())
			return
		}
		win.unsentBy = map[string]uint64{}
		for pod, n := range now {
			win.unsentBy[pod] = n - min(n, replyErrors[pod])
		}
		replyErrors = now
	}
	w := watch(c)
	r.Start = time.Now()
	r.Baseline = Window{Index: -1, Start: r.Start}
	sleep(ctx, 3*time.Second)
	r.Baseline.End = time.Now()
	unsent(&r.Baseline)

	var stepErr error
	for i := 0; ; i++ {
		if ctx.Err() != nil {
			stepErr = ctx.Err()
			break
		}
		// The plan, then more draws of the same seed while the duration
		// has not passed (the estimates are rough).
		var step Step
		if i < len(plan) {
			step = plan[i]
		} else if left := o.Duration - time.Since(r.Start); left <= 0 {
			break
		} else if s, ok := more.Next(left); ok {
			step = s
		} else {
			break
		}
		win := r.runStep(ctx, c, mesh, i, step)
		unsent(&win)
		var removed []*weftv1.Event
		removed, lastSeq, err = removals(ctx, c, lastSeq)
		if err != nil {
			win.Violations = append(win.Violations, err.Error())
		}
		for _, e := range removed {
			win.Removed = append(win.Removed, e.GetNodeRemoved().GetName())
			at, _ := time.Parse(time.RFC3339Nano, e.GetTime())
			r.Removals = append(r.Removals, Removal{Node: e.GetNodeRemoved().GetName(), At: at, Reason: e.GetNodeRemoved().GetReason()})
		}
		fmt.Fprintf(o.Out, "chaos: step %d +%s: %s → %s; recovered in %s; check %s\n", i, win.Start.Sub(r.Start).Round(100*time.Millisecond),
			step, strings.Join(win.Targets, ", "), win.Recovered.Round(100*time.Millisecond), win.Check)
		for _, v := range win.Violations {
			fmt.Fprintf(o.Out, "chaos:   %s\n", v)
		}
		r.Steps = append(r.Steps, win)
		if win.Check != "ok" && strings.HasPrefix(win.Check, "did not recover") {
			stepErr = errors.New(win.Check)
			break
		}
	}
	r.Tail = Window{Index: len(r.Steps), Start: time.Now()}
	if out, err := c.Weftctl(ctx, "check"); err != nil {
		r.Violations = append(r.Violations, fmt.Sprintf("final weftctl check: %v", err))
	} else {
		r.Tail.Check = "ok"
		_ = out
	}
	var lost []Loss
	r.Sent, r.Received, lost = mesh.Stop()
	r.Lost = len(lost)
	r.Tail.End = time.Now()
	unsent(&r.Tail)
	ev := w.Stop()
	r.Elapsed = time.Since(r.Start)

	r.attribute(lost)
	for i := range r.Removals {
		rm := &r.Removals[i]
		rm.Justified, rm.Why = ev.Judge(rm.Node, rm.At, nodeGrace)
		if !rm.Justified {
			r.Violations = append(r.Violations, fmt.Sprintf("NodeRemoved %s at +%s (%s): %s", rm.Node, rm.At.Sub(r.Start).Round(100*time.Millisecond), rm.Reason, rm.Why))
		}
	}
	for _, win := range append(append([]Window{r.Baseline}, r.Steps...), r.Tail) {
		for _, v := range win.Violations {
			r.Violations = append(r.Violations, fmt.Sprintf("%s: %s", win.Name(), v))
		}
	}
	return stepErr
}

// Name names the window in tables and violations.
func (w Window) Name() string {
	switch {
	case w.Index < 0:
		return "baseline"
	case len(w.Step.Faults) == 0:
		return "after the last step"
	default:
		return fmt.Sprintf("step %d (%s)", w.Index, w.Step)
	}
}

// attribute charges every lost ping to the window it was sent in and
// turns those beyond the bound into violations.
func (r *Report) attribute(lost []Loss) {
	wins := []*Window{&r.Baseline}
	for i := range r.Steps {
		wins = append(wins, &r.Steps[i])
	}
	wins = append(wins, &r.Tail)
	per := make([][]Loss, len(wins))
	for _, l := range lost {
		k := len(wins) - 1
		for i, w := range wins {
			if l.At.Before(w.End) {
				k = i
				break
			}
		}
		per[k] = append(per[k], l)
	}
	for i, w := range wins {
		// Each reply a pod's kernel could not send is one lost ping to
		// that pod that no datapath lost. Which of the pod's lost pings
		// they were cannot be told: as many of those beyond the bound go
		// uncharged, never more (a rejoined pod whose gateway entry is
		// unresolved sends no request to take them).
		left := maps.Clone(w.unsentBy)
		var charged []Loss
		for _, l := range per[i] {
			if w.allows(l) {
				w.Allowed++
			} else {
				charged = append(charged, l)
			}
		}
		kept := charged[:0]
		for _, l := range charged {
			if left[l.To] > 0 {
				left[l.To]--
				w.Unsent++
				continue
			}
			kept = append(kept, l)
		}
		charged = kept
		w.Lost = len(charged)
		for _, o := range Outages(per[i], r.Interval, 5*r.Interval) {
			w.Longest = max(w.Longest, o.Len())
		}
		if len(charged) > 0 {
			pairs := map[Pair]bool{}
			for _, l := range charged {
				pairs[l.Pair] = true
			}
			outs := Outages(charged, r.Interval, 5*r.Interval)
			first := outs[0]
			w.Violations = append(w.Violations, fmt.Sprintf("%d pings lost on %d pairs beyond the bound (%s), first %s from +%s for %s; %s",
				len(charged), len(pairs), w.bound(), first.Pair, first.From.Sub(r.Start).Round(10*time.Millisecond), first.Len().Round(10*time.Millisecond),
				r.outageList(outs)))
			if w.Unsent > 0 {
				w.Violations[len(w.Violations)-1] += fmt.Sprintf("; %d more reached their pod, whose kernel could not send the reply (ICMP OutErrors), and are not charged", w.Unsent)
			}
		}
	}
}

// maxListed is how many outages a violation lists.
const maxListed = 24

// outageList names the outages (in time order, at most maxListed), so a
// report shows which pairs lost pings when: whether pods on one node lost
// pings between themselves too, for instance, tells a datapath's state
// for other nodes from anything that hits every pod.
func (r *Report) outageList(outs []Outage) string {
	var b strings.Builder
	b.WriteString("outages:")
	for i, o := range outs {
		if i == maxListed {
			fmt.Fprintf(&b, " and %d more", len(outs)-i)
			break
		}
		fmt.Fprintf(&b, " %s %d from +%s for %s;", o.Pair, o.Lost, o.From.Sub(r.Start).Round(time.Millisecond), o.Len().Round(time.Millisecond))
	}
	return strings.TrimSuffix(b.String(), ";")
}

// allows reports whether a lost ping is within the window's bound: only a
// leave-rejoin allows loss, on pairs with the rejoined node's pods, until
// RejoinBound after they are back.
func (w *Window) allows(l Loss) bool {
	if w.rejoin.IsZero() || !(slices.Contains(w.rejoined, l.From) || slices.Contains(w.rejoined, l.To)) {
		return false
	}
	return l.At.Before(w.rejoin.Add(RejoinBound))
}

func (w *Window) bound() string {
	for _, f := range w.Step.Faults {
		if f.Kind == LeaveRejoin {
			return fmt.Sprintf("0, and %s after the rejoin for the node's pods", RejoinBound)
		}
	}
	return "0"
}

// runStep injects the step's faults, heals them, waits for the cluster to
// recover and checks it.
func (r *Report) runStep(ctx context.Context, c *testenv.Cluster, mesh *Mesh, i int, step Step) Window {
	win := Window{Index: i, Step: step, Start: time.Now(), Targets: make([]string, len(step.Faults))}
	errs := make([]error, len(step.Faults))
	done := make(chan int)
	for k, f := range step.Faults {
		go func() {
			sleep(ctx, f.Delay)
			win.Targets[k], errs[k] = inject(ctx, c, mesh, f, &win)
			done <- k
		}()
	}
	for range step.Faults {
		<-done
	}
	for k, err := range errs {
		if err != nil {
			win.Violations = append(win.Violations, fmt.Sprintf("%s: %v", step.Faults[k].Kind, err))
		}
	}
	healed := time.Now()
	if err := r.recover(ctx, c); err != nil {
		win.Check = fmt.Sprintf("did not recover: %v", err)
		win.Violations = append(win.Violations, win.Check)
	} else {
		win.Recovered = time.Since(healed)
		win.Check = check(ctx, c)
		if win.Check != "ok" {
			win.Violations = append(win.Violations, "weftctl check: "+win.Check)
		}
	}
	sleep(ctx, settle)
	win.End = time.Now()
	return win
}

// recover waits until every agent runs, one controller leads and every
// agent has applied the head and reaches every peer.
func (r *Report) recover(ctx context.Context, c *testenv.Cluster) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		why := ""
		if k, reason := c.Leader(ctx); k < 0 {
			why = reason
		} else if ok, reason, err := c.Converged(ctx); err != nil {
			why = err.Error()
		} else if !ok {
			why = reason
		}
		for _, n := range c.Nodes() {
			if n.Agent != nil && (!n.Agent.Running() || n.Agent.Stopped()) {
				why = n.Name + "'s agent is not running"
			}
		}
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("after 90s: %s", why)
		}
		sleep(ctx, 200*time.Millisecond)
	}
}

// check runs `weftctl check`; a failure to reach etcd is retried, what
// the check finds is returned.
func check(ctx context.Context, c *testenv.Cluster) string {
	var out string
	var err error
	for try := 0; try < 3; try++ {
		out, err = c.Weftctl(ctx, "check")
		if err == nil {
			return "ok"
		}
		if !strings.Contains(out, "context deadline exceeded") && !strings.Contains(out, "unavailable") {
			break
		}
		sleep(ctx, time.Second)
	}
	return strings.Join(strings.Fields(strings.TrimSpace(out)), " ")
}

// inject runs one fault from start to heal and returns what it hit.
func inject(ctx context.Context, c *testenv.Cluster, mesh *Mesh, f Fault, win *Window) (string, error) {
	switch f.Kind {
	case ControllerKill:
		var k int
		var why string
		for wait := time.Now().Add(15 * time.Second); ; {
			if k, why = c.Leader(ctx); k >= 0 || time.Now().After(wait) {
				break
			}
			sleep(ctx, 200*time.Millisecond)
		}
		if k < 0 {
			return "", fmt.Errorf("find the leading controller: %s", why)
		}
		if err := c.KillController(k); err != nil {
			return "", err
		}
		sleep(ctx, f.Hold)
		return fmt.Sprintf("controller-%d", k), c.StartController(k)
	case AgentKill:
		if err := c.Kill(f.Node, syscall.SIGKILL); err != nil {
			return "", err
		}
		sleep(ctx, f.Hold)
		return agentName(c, f.Node), c.Node(f.Node).Agent.Start()
	case AgentStop:
		n := c.Node(f.Node)
		if err := n.Agent.Signal(syscall.SIGSTOP); err != nil {
			return "", err
		}
		sleep(ctx, f.Hold)
		return agentName(c, f.Node), n.Agent.Signal(syscall.SIGCONT)
	case AgentConfig:
		n := c.Node(f.Node)
		value := f.Value
		if f.Flag == "--underlay" && value == "ip" {
			value = n.UnderlayIP.String()
		}
		n.Agent.Args = setFlag(n.Agent.Args, f.Flag, value)
		return agentName(c, f.Node) + " " + f.Flag + "=" + value, c.RestartAgent(f.Node)
	case EtcdMemberKill, EtcdLeaderKill:
		lead, err := c.EtcdLeader(ctx)
		if err != nil {
			return "", err
		}
		m, what := lead, "leader"
		if f.Kind == EtcdMemberKill {
			var followers []int
			for k := range c.Etcd {
				if k != lead {
					followers = append(followers, k)
				}
			}
			m, what = followers[f.Member%len(followers)], "follower"
		}
		if err := c.Etcd[m].Kill(); err != nil {
			return "", err
		}
		sleep(ctx, f.Hold)
		return fmt.Sprintf("etcd e%d (%s)", m, what), c.Etcd[m].Start()
	case EtcdDown:
		if err := c.StopEtcd(); err != nil {
			return "", err
		}
		sleep(ctx, f.Hold)
		return "every etcd member", c.StartEtcd(context.WithoutCancel(ctx))
	case EtcdBlock:
		if err := c.BlockEtcd(f.Node); err != nil {
			return "", err
		}
		sleep(ctx, f.Hold)
		return nodeName(c, f.Node) + " ↔ etcd", c.UnblockEtcd(f.Node)
	case LeaveRejoin:
		return nodeName(c, f.Node), leaveRejoin(ctx, c, mesh, f, win)
	case Garbage:
		in, err := c.InjectGarbage(ctx, f.Case, garbage.Target{Node: c.Node(f.Node).Name})
		if err != nil {
			return "", err
		}
		sleep(ctx, f.Hold)
		// Put back what was there unless a component already replaced
		// the garbage (Undo compares the key's revision).
		return fmt.Sprintf("%s (%d bytes)", in.Key, in.Size), c.UndoGarbage(context.WithoutCancel(ctx), in)
	}
	return "", fmt.Errorf("unknown fault kind %q", f.Kind)
}

// leaveRejoin: the node leaves, the controller removes it after the lease
// and the grace, and after Hold it rejoins with its pods attached again.
func leaveRejoin(ctx context.Context, c *testenv.Cluster, mesh *Mesh, f Fault, win *Window) error {
	n := c.Node(f.Node)
	var pods []string
	for _, p := range n.Pods {
		pods = append(pods, p.Name)
	}
	mesh.Pause(pods...)
	if err := c.Leave(ctx, f.Node); err != nil {
		return err
	}
	limit := time.Now().Add(maxLeaseTTL + nodeGrace + 30*time.Second)
	for {
		nodes, err := c.StoreNodes(ctx)
		if err == nil && nodes[n.Name] == nil {
			break
		}
		if time.Now().After(limit) || ctx.Err() != nil {
			return fmt.Errorf("%s left but was not removed within %s", n.Name, maxLeaseTTL+nodeGrace+30*time.Second)
		}
		sleep(ctx, 200*time.Millisecond)
	}
	sleep(ctx, f.Hold)
	if err := c.Rejoin(context.WithoutCancel(ctx), f.Node); err != nil {
		return err
	}
	addrs := map[string]netip.Addr{}
	for _, p := range n.Pods {
		addrs[p.Name] = p.Addr
	}
	win.rejoin, win.rejoined = time.Now(), pods
	mesh.Resume(addrs)
	return nil
}

func agentName(c *testenv.Cluster, i int) string { return nodeName(c, i) + "'s agent" }

func nodeName(c *testenv.Cluster, i int) string {
	if n := c.Node(i); n != nil {
		return "n" + strings.TrimPrefix(n.Name, c.Prefix+"-n")
	}
	return fmt.Sprintf("node %d", i)
}

// setFlag sets --flag's value in args, replacing the one there or adding
// it.
func setFlag(args []string, flag, value string) []string {
	out := slices.Clone(args)
	for i := 0; i < len(out)-1; i++ {
		if out[i] == flag {
			out[i+1] = value
			return out
		}
	}
	return append(out, flag, value)
}

// removals reads the events after seq `after` and returns the
// NodeRemoved among them and the new last seq.
func removals(ctx context.Context, c *testenv.Cluster, after uint64) ([]*weftv1.Event, uint64, error) {
	cl, err := c.Client()
	if err != nil {
		return nil, after, err
	}
	defer cl.Close()
	l := keys.New("/weft")
	resp, err := cl.Get(ctx, l.Event(after+1), clientv3.WithRange(clientv3.GetPrefixRangeEnd(l.Events())))
	if err != nil {
		return nil, after, fmt.Errorf("read events after %d: %w", after, err)
	}
	var out []*weftv1.Event
	last := after
	for _, kv := range resp.Kvs {
		e, err := keys.DecodeEvent(kv.Value)
		if err != nil {
			return out, last, fmt.Errorf("event %s: %w", kv.Key, err)
		}
		if e.GetSeq() != last+1 {
			return out, last, fmt.Errorf("events after %d: next is %d (trimmed before the run read them?)", last, e.GetSeq())
		}
		last = e.GetSeq()
		if e.GetNodeRemoved() != nil {
			out = append(out, e)
		}
	}
	return out, last, nil
}

func copyLogs(c *testenv.Cluster, dir string) error {
	dst := filepath.Join(dir, c.Prefix)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(c.RunDir, "logs"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(c.RunDir, "logs", e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
