package chaos

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/testenv/garbage"
)

var testTiming = Timing{LeaseTTL: 3 * time.Second, MaxTTL: 4 * time.Second, Grace: 8 * time.Second, Nodes: 3, Members: 3}

func TestPlanReplays(t *testing.T) {
	a := Plan(42, 10*time.Minute, testTiming)
	b := Plan(42, 10*time.Minute, testTiming)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the same seed planned different steps")
	}
	if c := Plan(43, 10*time.Minute, testTiming); reflect.DeepEqual(a, c) {
		t.Fatal("seeds 42 and 43 planned the same steps")
	}
	var est time.Duration
	for _, s := range a {
		est += s.Estimate(testTiming)
	}
	if est > 10*time.Minute || est < 9*time.Minute {
		t.Fatalf("10 minutes planned as %s of steps", est)
	}
}

// TestPlanRules checks every draw of many seeds against the overlap rule
// and the hold bounds the docs promise.
func TestPlanRules(t *testing.T) {
	seen := map[Kind]bool{}
	cases := map[garbage.Case]bool{}
	for seed := int64(0); seed < 200; seed++ {
		for _, s := range Plan(seed, 10*time.Minute, testTiming) {
			for _, f := range s.Faults {
				seen[f.Kind] = true
				if f.Kind == Garbage {
					cases[f.Case] = true
				}
				if err := holdOK(f, testTiming); err != "" {
					t.Fatalf("seed %d: %s: %s", seed, f, err)
				}
			}
			if err := overlapOK(s); err != "" {
				t.Fatalf("seed %d: step %s: %s", seed, s, err)
			}
		}
	}
	for _, k := range Kinds {
		if !seen[k] {
			t.Errorf("no seed of 200 drew %s", k)
		}
	}
	for _, c := range garbage.Cases() {
		if !cases[c] {
			t.Errorf("no seed of 200 drew garbage %s", c)
		}
	}
}

func holdOK(f Fault, tm Timing) string {
	switch f.Kind {
	case AgentStop:
		// longer than any lease TTL, no longer than grace + 2/3 TTL - 3 s
		if f.Hold <= tm.MaxTTL || f.Hold > tm.Grace+2*tm.LeaseTTL/3-etcdconn.RecoveryBound {
			return "stop not between the largest lease TTL and the longest absence a node is promised to outlive"
		}
	case EtcdBlock:
		if f.Hold > tm.Grace+2*tm.LeaseTTL/3-etcdconn.RecoveryBound || f.Hold < 2*time.Second {
			return "block longer than a node is promised to outlive"
		}
	case EtcdDown:
		if f.Hold != EtcdDownHold {
			return "etcd-down is not 60 s"
		}
	case Garbage:
		if f.Hold < tm.MaxTTL || !slices.Contains(garbage.Cases(), f.Case) {
			return "garbage shorter than a lease TTL or of no known case"
		}
	}
	switch f.Kind {
	case AgentKill, AgentStop, AgentConfig, EtcdBlock, LeaveRejoin, Garbage:
		if f.Node < 0 || f.Node >= tm.Nodes {
			return "no node"
		}
	}
	return ""
}

func overlapOK(s Step) string {
	switch len(s.Faults) {
	case 1:
		return ""
	case 2:
	default:
		return "more than two faults"
	}
	a, b := s.Faults[0].Kind, s.Faults[1].Kind
	etcd := func(k Kind) bool { return strings.HasPrefix(string(k), "etcd-") && k != EtcdBlock }
	switch {
	case etcd(a) && etcd(b):
		return "two etcd faults at once"
	case a == EtcdDown || b == EtcdDown || a == LeaveRejoin || b == LeaveRejoin || a == Garbage || b == Garbage:
		return "etcd-down, leave-rejoin or garbage not alone"
	case slices.Contains(controlKinds, a) == slices.Contains(controlKinds, b):
		return "not one control-plane and one node fault"
	}
	return ""
}

func TestOutages(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	ab, ba := Pair{"a", "b"}, Pair{"b", "a"}
	losses := []Loss{{ab, ms(20)}, {ab, ms(0)}, {ab, ms(10)}, {ba, ms(10)}, {ab, ms(500)}}
	got := Outages(losses, 10*time.Millisecond, 50*time.Millisecond)
	want := []Outage{
		{Pair: ab, From: ms(0), To: ms(30), Lost: 3},
		{Pair: ba, From: ms(10), To: ms(20), Lost: 1},
		{Pair: ab, From: ms(500), To: ms(510), Lost: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("outages\n got %+v\nwant %+v", got, want)
	}
}

// TestJudge: a removal stands only on a recorded absence of the node
// itself (agent dead or stopped, or cut off from an etcd that answered)
// of at least the grace, not on an etcd outage, and not long after the
// agent was back.
func TestJudge(t *testing.T) {
	t0 := time.Unix(2000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	// samples every 250 ms over 40 s
	ev := Evidence{Nodes: map[string][]Sample{}}
	for s := 0.0; s < 40; s += 0.25 {
		ev.Quorum = append(ev.Quorum, QuorumSample{At: at(s), Up: s < 20 || s >= 30}) // etcd down 20–30 s
		ev.Nodes["dead"] = append(ev.Nodes["dead"], Sample{At: at(s), Alive: s < 5 || s >= 12, Reach: true})
		ev.Nodes["cut"] = append(ev.Nodes["cut"], Sample{At: at(s), Alive: true, Reach: s < 5 || s >= 12})
		ev.Nodes["outage"] = append(ev.Nodes["outage"], Sample{At: at(s), Alive: true, Reach: s < 20 || s >= 30})
		ev.Nodes["blip"] = append(ev.Nodes["blip"], Sample{At: at(s), Alive: s < 5 || s >= 6, Reach: true})
		ev.Nodes["fine"] = append(ev.Nodes["fine"], Sample{At: at(s), Alive: true, Reach: true})
	}
	grace := 6 * time.Second
	for _, c := range []struct {
		node string
		t    float64
		want bool
	}{
		{"dead", 13, true},     // away 5–12 s
		{"dead", 16, true},     // within backSlack of its return
		{"dead", 18, false},    // back for 6 s already
		{"dead", 6, false},     // away 1 s so far: the lease cannot have run out
		{"dead", 10, false},    // away 5 s so far: the lease ran out, the grace has not
		{"cut", 13, true},      // cut off from etcd 5–12 s while etcd answered
		{"outage", 29, false},  // etcd itself was down: not the node's absence
		{"outage", 31, false},  // just after the outage
		{"blip", 8, false},     // away 1 s only
		{"fine", 20, false},    // never away
		{"missing", 10, false}, // no such node
	} {
		got, why := ev.Judge(c.node, at(c.t), grace)
		if got != c.want {
			t.Errorf("%s removed at %gs: justified %v (%s), want %v", c.node, c.t, got, why, c.want)
		}
	}
}

// TestAttribute: every lost ping is charged to the window it was sent in;
// a leave-rejoin allows losses of the rejoined pods' pairs up to
// RejoinBound after they are back, and nothing else.
func TestAttribute(t *testing.T) {
	t0 := time.Unix(3000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	r := &Report{Start: t0, Interval: 10 * time.Millisecond,
		Baseline: Window{Index: -1, Start: at(0), End: at(3)},
		Steps: []Window{
			{Index: 0, Step: Step{Faults: []Fault{{Kind: AgentKill}}}, Start: at(3), End: at(10)},
			{Index: 1, Step: Step{Faults: []Fault{{Kind: LeaveRejoin}}}, Start: at(10), End: at(40),
				rejoin: at(25), rejoined: []string{"p3", "p4"}},
		},
		Tail: Window{Index: 2, Start: at(40), End: at(41)},
	}
	lost := []Loss{
		{Pair{"p1", "p2"}, at(1)},  // baseline: charged
		{Pair{"p3", "p1"}, at(26)}, // rejoined pod, within the bound: allowed
		{Pair{"p1", "p4"}, at(34)}, // within the bound: allowed
		{Pair{"p1", "p4"}, at(36)}, // past the bound: charged
		{Pair{"p1", "p2"}, at(26)}, // other pods: charged
		{Pair{"p2", "p1"}, at(40.5)},
	}
	r.attribute(lost)
	got := []int{r.Baseline.Lost, r.Steps[0].Lost, r.Steps[1].Lost, r.Steps[1].Allowed, r.Tail.Lost}
	if want := []int{1, 0, 2, 2, 1}; !reflect.DeepEqual(got, want) {
		t.Fatalf("baseline, step 0, step 1 (charged, allowed), tail: got %v, want %v", got, want)
	}
	if len(r.Steps[0].Violations) != 0 || len(r.Steps[1].Violations) != 1 || len(r.Baseline.Violations) != 1 {
		t.Fatalf("violations: baseline %v, step 0 %v, step 1 %v", r.Baseline.Violations, r.Steps[0].Violations, r.Steps[1].Violations)
	}
	// The violation names every charged outage, not only the first.
	v := r.Steps[1].Violations[0]
	for _, want := range []string{"p1→p2 1 from +26s for 10ms", "p1→p4 1 from +36s for 10ms"} {
		if !strings.Contains(v, want) {
			t.Errorf("step 1's violation does not list %q: %s", want, v)
		}
	}
}

// TestAttributeUnsent: a pod whose kernel could not send some echo
// replies (its ICMP OutErrors) loses that many pings to it beyond the
// bound without a charge, never more; the rest are charged.
func TestAttributeUnsent(t *testing.T) {
	t0 := time.Unix(3000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	r := &Report{Start: t0, Interval: 10 * time.Millisecond,
		Baseline: Window{Index: -1, Start: at(0), End: at(3), unsentBy: map[string]uint64{"p2": 5}},
		Steps: []Window{
			{Index: 0, Step: Step{Faults: []Fault{{Kind: LeaveRejoin}}}, Start: at(3), End: at(40),
				rejoin: at(25), rejoined: []string{"p3"}, unsentBy: map[string]uint64{"p1": 2, "p2": 1}},
		},
		Tail: Window{Index: 1, Start: at(40), End: at(41)},
	}
	lost := []Loss{
		// baseline: three pings to p2, which did not send five replies
		{Pair{"p1", "p2"}, at(1)}, {Pair{"p3", "p2"}, at(1.01)}, {Pair{"p1", "p2"}, at(1.02)},
		// step 0: p3 came back at 25; its ping to p1 is allowed
		{Pair{"p3", "p1"}, at(26)},
		{Pair{"p2", "p1"}, at(27)}, // p1's two unsent replies: not charged
		{Pair{"p4", "p1"}, at(27.5)},
		{Pair{"p2", "p1"}, at(28)}, // beyond p1's unsent replies: charged
		{Pair{"p1", "p4"}, at(29)}, // p4 sent every reply: charged
		{Pair{"p4", "p2"}, at(30)}, // p2's one unsent reply
		// tail: nothing known about the replies, charged
		{Pair{"p2", "p1"}, at(40.5)},
	}
	r.attribute(lost)
	got := []int{r.Baseline.Lost, r.Baseline.Unsent, r.Steps[0].Lost, r.Steps[0].Allowed, r.Steps[0].Unsent, r.Tail.Lost, r.Tail.Unsent}
	if want := []int{0, 3, 2, 1, 3, 1, 0}; !reflect.DeepEqual(got, want) {
		t.Fatalf("baseline (lost, unsent), step 0 (lost, allowed, unsent), tail (lost, unsent): got %v, want %v", got, want)
	}
	if len(r.Baseline.Violations) != 0 || len(r.Steps[0].Violations) != 1 || len(r.Tail.Violations) != 1 {
		t.Fatalf("violations: baseline %v, step 0 %v, tail %v", r.Baseline.Violations, r.Steps[0].Violations, r.Tail.Violations)
	}
	if v := r.Steps[0].Violations[0]; !strings.Contains(v, "2 pings lost on 2 pairs") || !strings.Contains(v, "3 more reached their pod") {
		t.Fatalf("step 0's violation: %s", v)
	}
}

func TestSetFlag(t *testing.T) {
	args := []string{"agent", "--lease-ttl", "3", "--log-level", "debug"}
	if got := setFlag(args, "--lease-ttl", "4"); !reflect.DeepEqual(got, []string{"agent", "--lease-ttl", "4", "--log-level", "debug"}) {
		t.Fatalf("replace: %v", got)
	}
	if got := setFlag(args, "--probe-grace", "5s"); !reflect.DeepEqual(got[len(got)-2:], []string{"--probe-grace", "5s"}) {
		t.Fatalf("add: %v", got)
	}
	if args[2] != "3" {
		t.Fatal("setFlag changed its input")
	}
}
