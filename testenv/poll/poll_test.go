package poll

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// fatalT records Fatalf and ends the goroutine, as testing.T does.
type fatalT struct {
	testing.TB
	msg string
}

func (f *fatalT) Helper() {}

func (f *fatalT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls Eventually on a goroutine (Fatalf ends it) and returns the
// failure message, "" if it returned.
func run(d time.Duration, cond func() (bool, string)) string {
	f := &fatalT{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Eventually(f, d, time.Millisecond, "the thing", cond)
	}()
	<-done
	return f.msg
}

func TestEventuallyReturnsWhenTrue(t *testing.T) {
	calls := 0
	msg := run(time.Minute, func() (bool, string) {
		calls++
		return calls == 3, fmt.Sprintf("call %d", calls)
	})
	if msg != "" || calls != 3 {
		t.Fatalf("failed %q after %d calls, want success on the 3rd", msg, calls)
	}
}

func TestEventuallyFailsWithTheLastReason(t *testing.T) {
	calls := 0
	start := time.Now()
	msg := run(20*time.Millisecond, func() (bool, string) {
		calls++
		return false, fmt.Sprintf("call %d", calls)
	})
	if time.Since(start) < 20*time.Millisecond {
		t.Errorf("gave up after %v, before the 20ms it was given", time.Since(start))
	}
	if want := fmt.Sprintf("the thing: not within 20ms: call %d", calls); msg != want || calls < 2 {
		t.Fatalf("failure %q after %d calls, want %q", msg, calls, want)
	}
}
