// Package poll waits, in tests, for a condition that something running
// beside the test (an agent, a controller, a child process, the kernel)
// is to make true.
package poll

import (
	"testing"
	"time"
)

// Eventually calls cond every interval until it reports true, and returns
// how long that took. If cond still reports false after d, Eventually
// fails t (t.Fatalf) naming what, d and the reason cond gave last. cond is
// called once more after d has passed before it gives up.
func Eventually(t testing.TB, d, every time.Duration, what string, cond func() (ok bool, why string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, why := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v: %s", what, d, why)
		}
		time.Sleep(every)
	}
}
