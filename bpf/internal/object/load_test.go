package object

import (
	"fmt"
	"os"
	"regexp"
	"runtime"
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

// BenchmarkVerifier loads each of the five programs on its own (its maps
// created once beforehand, not pinned) with the verifier's statistics, and
// reports per program the instructions the verifier processed, the states
// it kept (total, and at the peak), the CPU time of the load (the loading
// thread's, in the kernel almost all of it the verifier) and the
// verification time the verifier gives (wall time, so a busy machine
// inflates it). The first three are deterministic for one kernel and
// object; with -v each program's summary line is logged once. Needs root
// (CAP_BPF).
func BenchmarkVerifier(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: loads programs")
	}
	spec, err := LoadWeft()
	if err != nil {
		b.Fatal(err)
	}
	resolveKfuncs(spec)
	maps := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		ms = ms.Copy()
		ms.Pinning = ebpf.PinNone
		m, err := ebpf.NewMap(ms)
		if err != nil {
			b.Fatalf("create map %s: %v", name, err)
		}
		defer m.Close()
		maps[name] = m
	}
	var names []string
	for name := range spec.Programs {
		names = append(names, name)
	}
	sort.Strings(names)
	sum := map[string]*progStats{}
	b.ResetTimer()
	for i := range b.N {
		for _, name := range names {
			s := loadStats(b, spec, name, maps)
			if i == 0 {
				b.Logf("%-20s %s, %.2f ms CPU", name, s.line, float64(s.cpu.Microseconds())/1000)
				sum[name] = &s
				continue
			}
			sum[name].cpu += s.cpu
			sum[name].verifyUsec += s.verifyUsec
		}
	}
	b.StopTimer()
	for _, name := range names {
		s := sum[name]
		b.ReportMetric(float64(s.insns), name+"-insns")
		b.ReportMetric(float64(s.states), name+"-states")
		b.ReportMetric(float64(s.peak), name+"-peak")
		b.ReportMetric(float64(s.cpu.Microseconds())/float64(b.N), name+"-cpu-us")
		b.ReportMetric(float64(s.verifyUsec)/float64(b.N), name+"-verify-us")
	}
}

type progStats struct {
	insns, states, peak int
	maxPerIns           int
	verifyUsec          int
	cpu                 time.Duration
	line                string // the verifier's own summary
}

var (
	processedRe = regexp.MustCompile(`processed (\d+) insns .*max_states_per_insn (\d+) total_states (\d+) peak_states (\d+)`)
	usecRe      = regexp.MustCompile(`verification time (\d+) usec`)
)

// loadStats loads the program name of spec alone, with maps for its
// maps, and returns the verifier's statistics and the CPU time the
// loading thread spent.
func loadStats(tb testing.TB, spec *ebpf.CollectionSpec, name string, maps map[string]*ebpf.Map) progStats {
	one := spec.Copy()
	for n := range one.Programs {
		if n != name {
			delete(one.Programs, n)
		}
	}
	opts := ebpf.CollectionOptions{
		Programs:        ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
		MapReplacements: maps,
	}
	runtime.LockOSThread()
	before := threadCPU(tb)
	coll, err := ebpf.NewCollectionWithOptions(one, opts)
	cpu := threadCPU(tb) - before
	runtime.UnlockOSThread()
	if err != nil {
		tb.Fatalf("load %s: %v", name, err)
	}
	defer coll.Close()
	log := coll.Programs[name].VerifierLog
	s := progStats{cpu: cpu}
	m := processedRe.FindStringSubmatch(log)
	if m == nil {
		tb.Fatalf("%s: no statistics in the verifier's log:\n%s", name, log)
	}
	s.line = m[0]
	s.insns, _ = strconv.Atoi(m[1])
	s.maxPerIns, _ = strconv.Atoi(m[2])
	s.states, _ = strconv.Atoi(m[3])
	s.peak, _ = strconv.Atoi(m[4])
	if u := usecRe.FindStringSubmatch(log); u != nil {
		s.verifyUsec, _ = strconv.Atoi(u[1])
		s.line += ", " + u[0]
	}
	return s
}

// threadCPU is the calling thread's CPU time, to the nanosecond (its
// rusage moves in ticks).
func threadCPU(tb testing.TB) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

func cpuTime(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
