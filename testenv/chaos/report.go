package chaos

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable prints the faults injected, the pings each step lost, the
// removals and their verdicts, the totals by kind, the violations and the
// seed to replay the run.
func (r *Report) WriteTable(w io.Writer) {
	rel := func(t time.Time) string { return "+" + t.Sub(r.Start).Round(100*time.Millisecond).String() }
	fmt.Fprintf(w, "\nchaos run: seed %d, %s planned, %s run, %d pod pairs pinging every %s\n",
		r.Seed, r.Duration, r.Elapsed.Round(time.Second), r.Pairs, r.Interval)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tat\tfaults\thit\tlost\tallowed\tunsent\tlongest\trecovered\tcheck\tremoved")
	rows := append(append([]Window{r.Baseline}, r.Steps...), r.Tail)
	for _, s := range rows {
		idx, faults := fmt.Sprint(s.Index), s.Step.String()
		switch {
		case s.Index < 0:
			idx, faults = "-", "(baseline, no fault)"
		case len(s.Step.Faults) == 0:
			idx, faults = "-", "(after the last step)"
		}
		removed := strings.Join(s.Removed, ",")
		if removed == "" {
			removed = "-"
		}
		check := s.Check
		if check == "" {
			check = "-"
		}
		if len(check) > 40 {
			check = check[:40] + "…"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", idx, rel(s.Start), faults, strings.Join(s.Targets, "; "),
			s.Lost, s.Allowed, s.Unsent, s.Longest.Round(10*time.Millisecond), s.Recovered.Round(100*time.Millisecond), check, removed)
	}
	tw.Flush()

	fmt.Fprintln(w, "\nby kind (a step of two faults counts for both):")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "kind\tfaults\tpings lost\tallowed\tunsent\tlongest outage\tbound\tviolations")
	for _, k := range Kinds {
		n, lost, allowed, unsent, viol := 0, 0, 0, 0, 0
		var longest time.Duration
		for _, s := range r.Steps {
			if !s.has(k) {
				continue
			}
			n++
			lost += s.Lost
			allowed += s.Allowed
			unsent += s.Unsent
			longest = max(longest, s.Longest)
			viol += len(s.Violations)
		}
		bound := "0 lost"
		if k == LeaveRejoin {
			bound = fmt.Sprintf("0 lost; its pods: back within %s", RejoinBound)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t%d\n", k, n, lost, allowed, unsent, longest.Round(10*time.Millisecond), bound, viol)
	}
	tw.Flush()

	fmt.Fprintf(w, "\npings: %d sent, %d answered, %d lost (%d beyond a bound; %d reached their pod, whose kernel could not send the reply)\n",
		r.Sent, r.Received, r.Lost, r.charged(), r.unsent())
	if len(r.Removals) == 0 {
		fmt.Fprintln(w, "NodeRemoved: none")
	}
	for _, rm := range r.Removals {
		verdict := "justified"
		if !rm.Justified {
			verdict = "VIOLATION"
		}
		fmt.Fprintf(w, "NodeRemoved %s at %s: %s; %s: %s\n", rm.Node, rel(rm.At), rm.Reason, verdict, rm.Why)
	}
	if len(r.Leftovers) == 0 {
		fmt.Fprintln(w, "after teardown: nothing left on the machine")
	}
	fmt.Fprintf(w, "invariant violations: %d\n", len(r.Violations))
	for _, v := range r.Violations {
		fmt.Fprintf(w, "  %s\n", v)
	}
	fmt.Fprintf(w, "replay: weft-testenv chaos --seed %d --duration %s\n", r.Seed, r.Duration)
}

func (w Window) has(k Kind) bool {
	for _, f := range w.Step.Faults {
		if f.Kind == k {
			return true
		}
	}
	return false
}

func (r *Report) unsent() int {
	n := r.Baseline.Unsent + r.Tail.Unsent
	for _, s := range r.Steps {
		n += s.Unsent
	}
	return n
}

func (r *Report) charged() int {
	n := r.Baseline.Lost + r.Tail.Lost
	for _, s := range r.Steps {
		n += s.Lost
	}
	return n
}
