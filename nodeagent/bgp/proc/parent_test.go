package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary a helper process of
// TestFollowParentNoticesReparenting instead of running tests.
const helperEnv = "WEFT_PROC_TEST_HELPER"

// TestFollowParentHelper is no test of its own: run with helperEnv set,
// it is the agent that dies ("middle") or the speaker below it
// ("follower"), or scriptedSpeaker's stand-in weft-bgp ("scripted").
func TestFollowParentHelper(t *testing.T) {
	out := os.Getenv("WEFT_PROC_TEST_OUT")
	switch os.Getenv(helperEnv) {
	case "middle":
		// Starts the follower without a parent death signal (the one
		// that went missing), waits until it runs, tells its pid and
		// dies, leaving the follower to the kernel's care.
		cmd := exec.Command(os.Args[0], "-test.run=^TestFollowParentHelper$")
		cmd.Env = append(os.Environ(), helperEnv+"=follower")
		r, err := cmd.StdoutPipe()
		if err == nil {
			err = cmd.Start()
		}
		if err == nil {
			_, err = bufio.NewReader(r).ReadString('\n')
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "middle:", err)
			os.Exit(1)
		}
		fmt.Println(cmd.Process.Pid)
		os.Exit(0)
	case "scripted":
		if err := runScripted(); err != nil {
			fmt.Fprintln(os.Stderr, "scripted weft-bgp:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case "follower":
		parent := os.Getppid()
		// Its stdout is the middle's pipe, gone with the middle: the
		// outcome goes to a file.
		fmt.Println("ready")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := FollowParent(ctx, parent)
		_ = os.WriteFile(out, fmt.Appendf(nil, "%d %v", parent, err), 0o644)
		os.Exit(0)
	}
}

// TestFollowParentNoticesReparenting: a speaker whose agent died without
// its parent death signal firing (here the agent never set one) notices
// that its parent changed and ends, naming the agent it lost.
func TestFollowParentNoticesReparenting(t *testing.T) {
	out := filepath.Join(t.TempDir(), "outcome")
	cmd := exec.Command(os.Args[0], "-test.run=^TestFollowParentHelper$")
	cmd.Env = append(os.Environ(), helperEnv+"=middle", "WEFT_PROC_TEST_OUT="+out)
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("middle process: %v", err)
	}
	follower, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("middle process said %q", b)
	}
	middle := cmd.Process.Pid
	eventually(t, 10*time.Second, "the follower ends, naming its lost parent", func() (bool, string) {
		got, _ := os.ReadFile(out)
		gone := !alive(follower)
		return gone && strings.HasPrefix(string(got), fmt.Sprintf("%d %v: started by process %d", middle, ErrParentGone, middle)),
			fmt.Sprintf("follower %d alive %v, outcome %q", follower, !gone, got)
	})
}

// alive tells whether process pid exists and is no zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// TestFollowParentKeepsRunning: while the parent is the one it was
// started by, FollowParent returns only when its context ends; told of
// another parent, it returns ErrParentGone before it waits at all (an
// ended context does not hide it).
func TestFollowParentKeepsRunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*freezePoll)
	defer cancel()
	if err := FollowParent(ctx, os.Getppid()); err != nil {
		t.Fatalf("parent unchanged: %v", err)
	}
	err := FollowParent(ctx, os.Getppid()+1)
	if !errors.Is(err, ErrParentGone) || !strings.Contains(err.Error(), fmt.Sprintf("now a child of %d", os.Getppid())) {
		t.Fatalf("another parent: %v, want ErrParentGone naming %d", err, os.Getppid())
	}
}
