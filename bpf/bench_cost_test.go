package bpf

import (
	"os"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/testenv/netnstest"
)

// BenchmarkProgramCost measures what each of weft's programs costs per
// packet, in nanoseconds of the kernel's own run-time statistics
// (kernel.bpf_stats_enabled, turned on for the run through BPF_ENABLE_STATS
// and off again after it): the weft VXLAN, weft native and weft-bpf (VXLAN
// in the programs, both sides) setups of BenchmarkPodToPod, each
// carrying WEFT_BENCH_RTS (default 20,000) one-byte request/response round
// trips, busy-polling as there. A round trip runs every program on its path
// twice (once per direction), so these costs are the datapath's own share
// of BenchmarkPodToPod's latency, without the noise of the rest of the
// machine (a program runs with preemption off; an interrupt inside it is
// counted, so the spread is upwards). Run with -benchtime 1x.
func BenchmarkProgramCost(b *testing.B) {
	netnstest.RequireRoot(b)
	count := 20000
	if v := os.Getenv("WEFT_BENCH_RTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("WEFT_BENCH_RTS=%q", v)
		}
		count = n
	}
	setups := []podSetup{
		{"weft", setupWeft(b, true)},
		{"weft-native", setupWeftNative(b)},
		{"weft-bpf", setupWeftBPF(b)},
	}
	for _, s := range setups {
		if !netnstest.Reach(b, s.c.nodes[0].pod, s.c.nodes[1].podIP, reachTimeout) {
			b.Fatalf("%s: no pod-to-pod path", s.name)
		}
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("BPF_ENABLE_STATS (Linux 5.8): %v", err)
	}
	defer stats.Close()
	for _, s := range setups {
		type progStat struct{ ns, runs uint64 }
		read := func() map[string]progStat {
			out := map[string]progStat{}
			for _, n := range s.c.nodes {
				o := n.dp.objs
				for name, p := range map[string]*ebpf.Program{
					"from_port": o.WeftFromPort, "from_underlay": o.WeftFromUnderlay, "from_pods": o.WeftFromPods,
					"egress": o.WeftEgress, "ingress": o.WeftIngress,
				} {
					ps, err := p.Stats()
					must(b, err)
					st := out[name]
					st.ns += uint64(ps.Runtime)
					st.runs += ps.RunCount
					out[name] = st
				}
			}
			return out
		}
		before := read()
		lat := rr(b, s.c, count)
		after := read()
		total := 0.0
		for _, name := range []string{"from_port", "from_pods", "egress", "ingress", "from_underlay"} {
			runs := after[name].runs - before[name].runs
			if runs == 0 {
				continue
			}
			per := float64(after[name].ns-before[name].ns) / float64(runs)
			perRT := per * float64(runs) / float64(count)
			total += perRT
			b.Logf("%-11s %-13s %8d runs  %6.1f ns/run  %6.1f ns per round trip", s.name, name, runs, per, perRT)
			b.ReportMetric(per, s.name+"_"+name+"_ns/run")
		}
		b.Logf("%-11s all programs %.1f ns per round trip of %.1f µs (median)", s.name, total, lat)
		b.ReportMetric(total, s.name+"_prog_ns/rt")
	}
}
