// Package backoff is the retry delay of every weft loop that waits for
// something it needs (etcd, the kernel): it doubles from a minimum to a
// ceiling, each wait is jittered so that a thousand agents that lost etcd
// together do not come back in the same instant, and Reset after a
// success makes the next failure start from the minimum again.
//
//	b := backoff.New(100*time.Millisecond, 5*time.Second)
//	for {
//		if err := try(); err == nil {
//			b.Reset()
//			...
//		}
//		d := b.Next()
//		log.Warn("...; retrying", "error", err, "in", d)
//		if !backoff.Sleep(ctx, d) {
//			return
//		}
//	}
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is one retry loop's delay. It is not safe for concurrent use:
// each loop owns its own.
type Backoff struct {
	min, max time.Duration
	step     time.Duration // the next step before jitter; 0 means min
}

// New returns a backoff that starts at lo and doubles up to hi. A lo of
// less than 1 ms is 1 ms; a hi below lo is lo.
func New(lo, hi time.Duration) *Backoff {
	lo = max(lo, time.Millisecond)
	return &Backoff{min: lo, max: max(hi, lo)}
}

// Next returns how long to wait before the next try: between half and all
// of the current step, at random. Each call doubles the step, up to the
// ceiling.
func (b *Backoff) Next() time.Duration {
	d := b.step
	if d <= 0 {
		d = b.min
	}
	b.step = min(2*d, b.max)
	return d/2 + rand.N(d/2+1)
}

// Reset makes the next failure wait the minimum again. Call it after each
// success.
func (b *Backoff) Reset() { b.step = 0 }

// Sleep waits d and returns true, or returns false as soon as ctx ends.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
