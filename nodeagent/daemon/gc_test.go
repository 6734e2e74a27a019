package daemon

import (
	"runtime/debug"
	"testing"
	"time"
)

// gcPercent reads the GC goal now in force.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
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
