package daemon

import (
	"runtime/debug"
	"sync"
	"time"
)

// weft-agent's GC goals, unless GOGC in its environment sets one.
//
// While it starts the agent allocates about 23 MB at 5,000 peers (the
// list's pages and their gRPC decoding, every node decoded and indexed,
// the programs loaded, the first Sync) for a live heap of about 9 MB at
// the end. With a goal of half the live heap (GOGC=50, the minimum heap
// 2 MB) that took 9–12 collections per start; with startGCPercent (the
// minimum heap 16 MB) it takes one (BenchmarkColdStartBinary5000,
// docs/BENCHMARKS.md "GC off the cold start": 12–18 ms less of the
// agent's ~230–250 ms of CPU per start). What that costs is the start's peak (VmHWM,
// ~4 MB more), not the RSS at rest: the garbage is returned to the
// kernel once the node converged. No collection at all until then cost
// more CPU, not less: every allocation then takes fresh pages, which
// fault and are zeroed.
//
// At rest the heap is almost all the log's nodes, which live as long as
// the agent, and it allocates little (about 0.1 MB/s at 5,000 peers,
// most of it the reconcile's read of the kernel's maps): a goal of a
// fifth of the live heap (restGCPercent) instead of half keeps its RSS
// from creeping up by ~2 MB over its first minute (5,000 peers, 100 s
// at rest: 33.4 → 33.9 MB against 33.4 → 35.3 MB) for 70 instead of
// 23 ms of GC CPU per 100 s (docs/agent.md, "Memory").
const (
	startGCPercent = 400
	restGCPercent  = 20
	// startGCWindow bounds the start's goal for an agent that does not
	// converge (etcd unreachable, a datapath that fails to sync): it
	// then runs with the rest's goal after this long all the same.
	startGCWindow = 30 * time.Second
)

// startGC sets the GC goal to start (when own: the environment sets no
// GOGC) and returns rest, which sets it to the rest goal and returns the
// start's garbage to the kernel at once rather than as the scavenger
// gets to it. rest runs once: when the caller calls it (the node
// converged) or after window, whichever comes first; later calls do
// nothing. Without own only rest's return of memory happens.
func startGC(own bool, start, restPercent int, window time.Duration) (rest func()) {
	if own {
		debug.SetGCPercent(start)
	}
	var once sync.Once
	toRest := func() {
		if own {
			debug.SetGCPercent(restPercent)
		}
		go debug.FreeOSMemory()
	}
	// The timer's function does not touch the timer: it may run before
	// AfterFunc's result is stored.
	timer := time.AfterFunc(window, func() { once.Do(toRest) })
	return func() {
		once.Do(func() {
			timer.Stop()
			toRest()
		})
	}
}
