package backoff

import (
	"context"
	"testing"
	"time"
)

func TestNextDoublesWithJitterAndResets(t *testing.T) {
	b := New(100*time.Millisecond, 800*time.Millisecond)
	for round := range 2 {
		for i, step := range []time.Duration{100, 200, 400, 800, 800, 800} {
			step *= time.Millisecond
			if d := b.Next(); d < step/2 || d > step {
				t.Fatalf("round %d try %d: %v outside [%v, %v]", round, i, d, step/2, step)
			}
		}
		b.Reset()
	}
	// The jitter spreads: 200 draws of one step are not all equal.
	seen := map[time.Duration]bool{}
	for range 200 {
		seen[New(time.Second, time.Second).Next()] = true
	}
	if len(seen) < 100 {
		t.Fatalf("only %d distinct delays out of 200", len(seen))
	}
}

func TestNewBounds(t *testing.T) {
	b := New(0, -1)
	if d := b.Next(); d > time.Millisecond {
		t.Fatalf("zero min: %v", d)
	}
	if d := b.Next(); d > time.Millisecond {
		t.Fatalf("max below min does not cap at min: %v", d)
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep returned false without cancellation")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep did not return at once on a cancelled context")
	}
}
