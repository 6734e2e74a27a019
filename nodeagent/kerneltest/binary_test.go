package kerneltest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/netnstest"
)

// nsDialer dials TCP from inside network namespace ns: the socket is
// created on a thread in ns (and then works from any thread), so a test
// client reaches an etcd listening on the namespace's own loopback.
func nsDialer(ns string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := netnstest.Run(ns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, "tcp", strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "unix://"))
			return err
		})
		return c, err
	}
}

// BenchmarkAgentBinaryRSS5000 runs the real weft-agent binary in a node
// namespace against an etcd (a child process in the same namespace)
// holding 5,000 nodes, waits until its status reports 4,999 tunnel
// entries, and reads the agent process's VmRSS and VmHWM. The binary is
// built the way the shipped one is (a plain `go build` links libc: 32.2
// against 30.5 MB RSS in one run each). It measures one
// run; b.N only repeats it.
func BenchmarkAgentBinaryRSS5000(b *testing.B) {
	ns, pinDir := newNode(b)
	dir := b.TempDir()
	bin := filepath.Join(dir, "weft-agent")
	// Built as deploy/Containerfile builds what ships: static, stripped.
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", bin, "github.com/weftnet/weft/cmd/weft-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build weft-agent: %v\n%s", err, out)
	}

	etcd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^$", "-test.bench=^$")
	etcd.Env = append(os.Environ(), logtest.ChildEnv+"="+filepath.Join(dir, "etcd"))
	etcd.Stderr = os.Stderr
	stdin, _ := etcd.StdinPipe()
	stdout, _ := etcd.StdoutPipe()
	if err := etcd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); etcd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("start etcd in %s: %v", ns, err)
	}
	endpoint := strings.TrimSpace(line)
	c, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(nsDialer(ns))},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		b.Fatal(err)
	}
	if err := l.SeedSynthetic(ctx, 5000, 5000); err != nil {
		b.Fatal(err)
	}

	var rss, hwm, ms float64
	for range b.N {
		os.RemoveAll(pinDir)
		// The last run's status outlives it (the lease is not revoked on
		// exit); remove it so this run waits for its own.
		if _, err := c.Delete(ctx, keys.New("").Status("node-00000")); err != nil {
			b.Fatal(err)
		}
		// nsenter switches only the network namespace; ip netns exec would
		// also give the agent a private /sys (and so a private bpffs).
		agent := exec.Command("nsenter", "--net=/run/netns/"+ns, bin,
			"--etcd-endpoints", endpoint, "--node-name", "node-00000", "--underlay", "ul0",
			"--bpffs-dir", pinDir, "--subnet-file", filepath.Join(dir, "subnet.env"), "--metrics-addr", "127.0.0.1:0",
			"--log-level", "warn")
		agent.Stderr = os.Stderr
		start := time.Now()
		if err := agent.Start(); err != nil {
			b.Fatal(err)
		}
		var st *weftv1.AgentStatus
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			r, err := c.Get(ctx, keys.New("").Status("node-00000"))
			if err == nil && len(r.Kvs) > 0 {
				st, _ = keys.DecodeStatus(r.Kvs[0].Value)
				if st != nil && st.TunnelEntries == 4999 {
					break
				}
			}
			if time.Now().After(deadline) {
				agent.Process.Kill()
				agent.Wait()
				b.Fatalf("agent did not converge: %v", st)
			}
		}
		ms = float64(time.Since(start).Milliseconds())
		// nsenter execs the agent in place, so the pid is the agent's.
		rss, hwm = procMem(agent.Process.Pid)
		agent.Process.Signal(syscall.SIGTERM)
		if err := agent.Wait(); err != nil {
			b.Fatalf("agent exit: %v", err)
		}
		if n := len(tunnelKeys(b, pinDir)); n != 4999 {
			b.Fatalf("after SIGTERM the tunnel map holds %d entries, want 4999 (no teardown on exit)", n)
		}
		out, err := exec.Command("nsenter", "--net=/run/netns/"+ns, bin, "--teardown", "--bpffs-dir", pinDir, "--underlay", "ul0",
			"--subnet-file", filepath.Join(dir, "subnet.env")).CombinedOutput()
		if err != nil {
			b.Fatalf("teardown: %v\n%s", err, out)
		}
		if _, err := os.Stat(pinDir); !os.IsNotExist(err) {
			b.Fatalf("pins left after --teardown: %v", err)
		}
	}
	b.ReportMetric(rss, "rss-MB")
	b.ReportMetric(hwm, "peak-rss-MB")
	// Includes the status write's debounce (1-1.5 s after converging).
	b.ReportMetric(ms, "start-to-status-ms")
}

func procMem(pid int) (rss, hwm float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	get := func(field string) float64 {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
				return kb / 1024
			}
		}
		return 0
	}
	return get("VmRSS"), get("VmHWM")
}
