package daemon

import (
	"runtime/debug"
	"runtime/metrics"
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

	rest := startGC(true, 400, 20, time.Hour)
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
	startGC(true, 400, 20, 10*time.Millisecond)
	for end := time.Now().Add(10 * time.Second); gcPercent() != 20; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("GC percent %d 10 s after a 10 ms window, want 20", gcPercent())
		}
	}

	debug.SetGCPercent(77)
	rest = startGC(false, 400, 20, time.Hour)
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
		rest := startGC(true, 400, 20, 0)
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
