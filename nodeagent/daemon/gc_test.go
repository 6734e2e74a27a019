package daemon

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// gcPercent reads the GC goal now in force, without setting it: a read
// through SetGCPercent and back would undo a change the window's timer
// makes in between.
func gcPercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// TestStartGC: the start's goal holds until rest is called (the node
// converged), then the rest's; an agent that never converges gets the
// rest's goal after the window all the same; with GOGC in the
// environment (own false) the goal is never touched.
func TestStartGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))

	rest := startGC(true, 400, 20, 0, time.Hour)
	if p := gcPercent(); p != 400 {
		t.Fatalf("while starting: GC percent %d, want 400", p)
	}
	rest()
	if p := gcPercent(); p != 20 {
		t.Fatalf("after rest: GC percent %d, want 20", p)
	}
	debug.SetGCPercent(77)
	rest() // once only
	if p := gcPercent(); p != 77 {
		t.Fatalf("a second rest set the GC percent again: %d", p)
	}

	// Never converged: the window ends the start's goal.
	startGC(true, 400, 20, 0, 10*time.Millisecond)
	for end := time.Now().Add(10 * time.Second); gcPercent() != 20; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("GC percent %d 10 s after a 10 ms window, want 20", gcPercent())
		}
	}

	debug.SetGCPercent(77)
	rest = startGC(false, 400, 20, 0, time.Hour)
	rest()
	if p := gcPercent(); p != 77 {
		t.Fatalf("with GOGC set: GC percent %d, want 77 (untouched)", p)
	}
}

// TestStartGCWindowBeforeReturn: a window that ends before startGC has
// returned (a loaded machine can deschedule the caller that long) runs
// the rest's goal without touching a timer not yet stored, and rest
// called after it does nothing more.
func TestStartGCWindowBeforeReturn(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	for range 200 {
		rest := startGC(true, 400, 20, 0, 0)
		for end := time.Now().Add(10 * time.Second); gcPercent() != 20; time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("GC percent %d 10 s after a window of 0, want 20", gcPercent())
			}
		}
		debug.SetGCPercent(77)
		rest()
		if p := gcPercent(); p != 77 {
			t.Fatalf("rest after the window set the GC percent again: %d", p)
		}
	}
}

// vmFlags returns the VmFlags of the mapping holding addr
// (/proc/self/smaps).
func vmFlags(t *testing.T, addr uintptr) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	in := false
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && len(f) >= 5 {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil && uint64(addr) >= a && uint64(addr) < b
			continue
		}
		if in && f[0] == "VmFlags:" {
			return f[1:]
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return nil
}

// TestStartHuge: the start's heap range is advised huge pages (VmFlags
// hg) and, at rest, not (nh); a size of 0 advises nothing.
func TestStartHuge(t *testing.T) {
	if r := startHuge(0); r != (hugeRange{}) {
		t.Fatalf("startHuge(0) = %+v, want nothing", r)
	}
	r := startHuge(8 << 20)
	if r.hi-r.lo < 4<<20 || r.lo%(2<<20) != 0 || r.hi%(2<<20) != 0 {
		t.Fatalf("range %#x-%#x: want at least 4 MB of whole 2 MB pages", r.lo, r.hi)
	}
	if f := vmFlags(t, r.lo); !slices.Contains(f, "hg") {
		t.Fatalf("after startHuge: VmFlags %v, want hg", f)
	}
	r.end()
	if f := vmFlags(t, r.lo); slices.Contains(f, "hg") || !slices.Contains(f, "nh") {
		t.Fatalf("after end: VmFlags %v, want nh and no hg", f)
	}
}
