package object

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BenchmarkLoad measures what Load costs an agent's start: each op creates
// the maps in a fresh pin directory and loads the five programs, and
// reports the process's CPU time for it (the verifier runs in the loading
// thread, so its work is in there). Needs root (bpffs, CAP_BPF).
func BenchmarkLoad(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: creates maps under /sys/fs/bpf and loads programs")
	}
	pinDir := fmt.Sprintf("/sys/fs/bpf/weft-bench-load-%d", os.Getpid())
	b.Cleanup(func() { os.RemoveAll(pinDir) })
	var cpu time.Duration
	b.ResetTimer()
	for range b.N {
		if err := os.Mkdir(pinDir, 0o700); err != nil {
			b.Fatal(err)
		}
		before := cpuTime(b)
		objs, _, err := Load(pinDir)
		if err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime(b) - before
		b.StopTimer()
		objs.Close()
		if err := os.RemoveAll(pinDir); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkVerifier loads the five programs (without their maps pinned)
// with the verifier's statistics, and reports per program the
// instructions the verifier processed, the states it kept (total, and
// at the peak) and the mean verification time the verifier gives. The
// first three are deterministic for one kernel and object; with -v each
// program's summary line is logged. Needs root (CAP_BPF).
func BenchmarkVerifier(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: loads programs")
	}
	usec := map[string]int{}
	var last []progStats
	for range b.N {
		last = verifierStats(b)
		for _, s := range last {
			usec[s.name] += s.verifyUsec
		}
	}
	b.StopTimer()
	for _, s := range last {
		b.Logf("%-20s %s", s.name, s.line)
		b.ReportMetric(float64(s.insns), s.name+"-insns")
		b.ReportMetric(float64(s.states), s.name+"-states")
		b.ReportMetric(float64(s.peak), s.name+"-peak")
		b.ReportMetric(float64(usec[s.name])/float64(b.N), s.name+"-us")
	}
}

type progStats struct {
	name                string
	insns, states, peak int
	maxPerIns           int
	verifyUsec          int
	line                string // the verifier's own summary
}

var (
	processedRe = regexp.MustCompile(`processed (\d+) insns .*max_states_per_insn (\d+) total_states (\d+) peak_states (\d+)`)
	usecRe      = regexp.MustCompile(`verification time (\d+) usec`)
)

// verifierStats loads the object's programs (no maps pinned) with the
// verifier's statistics and returns them by program name.
func verifierStats(tb testing.TB) []progStats {
	spec, err := LoadWeft()
	if err != nil {
		tb.Fatal(err)
	}
	resolveKfuncs(spec)
	for _, ms := range spec.Maps {
		ms.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	})
	if err != nil {
		tb.Fatal(err)
	}
	defer coll.Close()
	var out []progStats
	for name, p := range coll.Programs {
		s := progStats{name: name}
		m := processedRe.FindStringSubmatch(p.VerifierLog)
		if m == nil {
			tb.Fatalf("%s: no statistics in the verifier's log:\n%s", name, p.VerifierLog)
		}
		s.line = m[0]
		s.insns, _ = strconv.Atoi(m[1])
		s.maxPerIns, _ = strconv.Atoi(m[2])
		s.states, _ = strconv.Atoi(m[3])
		s.peak, _ = strconv.Atoi(m[4])
		if u := usecRe.FindStringSubmatch(p.VerifierLog); u != nil {
			s.verifyUsec, _ = strconv.Atoi(u[1])
			s.line += ", " + u[0]
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func cpuTime(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
