package proc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"syscall"
	"time"
)

// freezePoll is how often the child looks at its parent's state and the
// client at its child's.
const freezePoll = 250 * time.Millisecond

// The speaker was part of the agent's process, so an agent frozen with
// SIGSTOP froze its BGP sessions too, and peers withdrew its routes when
// their hold timers expired. A signal to one process does not stop the
// other, so the two follow each other: the child stops itself while its
// parent is stopped (FollowParentStops), and the client continues a
// stopped child once the agent runs again (continueStopped). The cgroup
// freezer (a paused pod, `systemctl freeze`) freezes both at once anyway.

// FollowParentStops stops this process (SIGSTOP) whenever its parent is
// seen stopped, polling until ctx ends; the parent's Client continues it
// when the parent runs again. weft-bgp runs it.
func FollowParentStops(ctx context.Context) {
	t := time.NewTicker(freezePoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if stopped(os.Getppid()) {
			_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		}
	}
}

// continueStopped sends SIGCONT to pid whenever it is seen stopped, until
// done closes.
func continueStopped(pid int, done <-chan struct{}) {
	t := time.NewTicker(freezePoll)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if stopped(pid) {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
}

// stopped tells whether process pid is stopped by a signal ("T" in
// /proc/PID/stat; "t", stopped by a tracer, does not count).
func stopped(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// hold any byte.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'T'
}
