package daemon

import (
	"runtime/debug"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
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
//
// Most of the start's CPU on a virtual machine can be page faults: every
// page the heap takes from the kernel faults on its first write, and on
// the machine of docs/BENCHMARKS.md a fault costs 15–20 µs (a 24 MB
// buffer written a byte per 4 KB page: 80–130 ms of CPU; 8–12 ms in 2 MB
// pages). The agent took ~4,200 faults per start at 5,000 peers. So the
// start's heap is asked for in 2 MB pages (startHugeBytes,
// MADV_HUGEPAGE, which the kernel honours where transparent huge pages
// are "madvise" or "always"): ~1,700 faults instead, ~25 ms less of the
// agent's CPU per start. Once the node converged the range is back to
// ordinary pages (MADV_NOHUGEPAGE: khugepaged leaves it alone) before the
// garbage is returned, which splits the huge pages it frees.
const (
	startGCPercent = 400
	// startHugeBytes is the heap range asked for in huge pages: more than
	// the heap reaches before the start's first collection.
	startHugeBytes = 24 << 20
	restGCPercent  = 20
	// startGCWindow bounds the start's goal for an agent that does not
	// converge (etcd unreachable, a datapath that fails to sync): it
	// then runs with the rest's goal after this long all the same.
	startGCWindow = 30 * time.Second
)

// startGC sets the GC goal to start (when own: the environment sets no
// GOGC), has the heap's next hugeBytes fault in huge pages (startHuge;
// 0: not) and returns rest, which sets it to the rest goal and returns the
// start's garbage to the kernel at once rather than as the scavenger
// gets to it. rest runs once: when the caller calls it (the node
// converged) or after window, whichever comes first; later calls do
// nothing. Without own only rest's return of memory happens.
func startGC(own bool, start, restPercent, hugeBytes int, window time.Duration) (rest func()) {
	if own {
		debug.SetGCPercent(start)
	}
	huge := startHuge(hugeBytes)
	var once sync.Once
	toRest := func() {
		huge.end()
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

// hugeRange is an address range of the heap advised MADV_HUGEPAGE.
type hugeRange struct{ lo, hi uintptr }

// startHuge takes n bytes of fresh heap, advises the 2 MB pages inside it
// MADV_HUGEPAGE and lets it go: n bytes over the GC goal start a
// collection at the next allocation, which frees them, and the
// allocations after it take those pages first (the heap hands out the
// lowest free pages), so that they fault 2 MB at a time. Nothing is
// written to the range here. A kernel without transparent huge pages
// refuses the advice, and the range stays ordinary.
func startHuge(n int) hugeRange {
	if n <= 0 {
		return hugeRange{}
	}
	b := make([]byte, n)
	const huge = 2 << 20
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	r := hugeRange{lo: (p + huge - 1) &^ (huge - 1), hi: (p + uintptr(n)) &^ (huge - 1)}
	if r.hi <= r.lo || r.advise(unix.MADV_HUGEPAGE) != nil {
		return hugeRange{}
	}
	return r
}

// end advises the range MADV_NOHUGEPAGE, so that khugepaged does not
// make huge pages of it again once the garbage is returned.
func (r hugeRange) end() {
	if r.hi > r.lo {
		r.advise(unix.MADV_NOHUGEPAGE)
	}
}

// advise is madvise(2) on the range; the heap's memory is the runtime's,
// so no slice of it is kept alive.
func (r hugeRange) advise(advice int) error {
	if _, _, e := unix.Syscall(unix.SYS_MADVISE, r.lo, r.hi-r.lo, uintptr(advice)); e != 0 {
		return e
	}
	return nil
}
