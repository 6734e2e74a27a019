package proc

import (
	"bytes"
	"context"
	"errors"
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
// parent is stopped (FollowParent), and the client continues a
// stopped child once the agent runs again (continueStopped). The cgroup
// freezer (a paused pod, `systemctl freeze`) freezes both at once anyway.

// ErrParentGone: the process that started this one is no longer its
// parent.
var ErrParentGone = errors.New("proc: parent gone")

// FollowParent follows the parent that started this process (parent: what
// os.Getppid returned first thing in main), polling until ctx ends. It
// stops this process (SIGSTOP) whenever the parent is seen stopped; the
// parent's Client continues it when the parent runs again. It returns
// ErrParentGone, naming both process ids, once os.Getppid differs from
// parent: the parent died and the kernel gave this process to init or a
// subreaper, which the parent death signal the Client sets should have
// prevented (a speaker whose agent is gone would go on advertising for a
// node nobody converges). It returns nil when ctx ends. weft-bgp runs it
// and exits on ErrParentGone.
func FollowParent(ctx context.Context, parent int) error {
	t := time.NewTicker(freezePoll)
	defer t.Stop()
	for {
		// Looked at before the first tick: a parent gone between main's
		// read and this call is noticed at once.
		if now := os.Getppid(); now != parent {
			return fmt.Errorf("%w: started by process %d, now a child of %d", ErrParentGone, parent, now)
		}
		if stopped(parent) {
			_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
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
