package logtest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftnet/weft/testenv/etcdtest"
)

// ChildEnv names the directory a child etcd keeps its data in; set, it
// makes MaybeRunEtcdChild serve etcd instead of running tests.
const ChildEnv = "WEFT_TEST_ETCD_CHILD_DIR"

// MaybeRunEtcdChild turns the test binary into an etcd member when it was
// started by StartEtcdProcess; call it first in TestMain. It returns only
// in an ordinary test run.
func MaybeRunEtcdChild() {
	dir := os.Getenv(ChildEnv)
	if dir == "" {
		return
	}
	s, err := etcdtest.Start(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(s.Endpoints[0])
	io.Copy(io.Discard, os.Stdin) // run until the parent closes stdin
	s.Close()
	os.Exit(0)
}

// StartEtcdProcess runs an etcd member in a child process (this test
// binary, see MaybeRunEtcdChild), so that a benchmark's own memory and
// CPU figures are the agent's alone. It returns a client of it; both go
// away when tb ends.
func StartEtcdProcess(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), ChildEnv+"="+tb.TempDir())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("start etcd child: %v", err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{strings.TrimSpace(line)}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}
