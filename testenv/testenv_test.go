package testenv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// These tests prove the framework itself with plain kernel routing between
// the node namespaces (BackendKernel): namespaces, underlay, pods, the
// connectivity checks (that they pass and that they fail), processes,
// cleanup and leftover detection. The weft clusters are tested in e2e/.

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("testenv needs root: network namespaces, veths, bpffs (run the tests with sudo)")
	}
}

func kernelCluster(t *testing.T, o Options) *Cluster {
	t.Helper()
	needRoot(t)
	o.Backend = BackendKernel
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if left := Leftovers(c.Prefix); len(left) > 0 {
			t.Errorf("leftovers after close: %v", left)
		}
	})
	return c
}

func TestKernelOneSegment(t *testing.T) {
	c := kernelCluster(t, Options{Nodes: 3, PodsPerNode: 2})
	ctx := context.Background()
	if got := len(c.Pods()); got != 6 {
		t.Fatalf("pods = %d, want 6", got)
	}
	m := CheckAll(ctx, c.Targets(), nil)
	if len(m.Results) != 30 {
		t.Fatalf("pairs checked = %d, want 30", len(m.Results))
	}
	if f := m.Failed(); len(f) > 0 {
		t.Fatalf("failed pairs:\n%s", m)
	}
	t.Logf("matrix:\n%s", m)

	// The checks fail where there is no path: a pod address that does not
	// exist, and a node that is gone.
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	from := c.Pods()[0]
	if err := CheckICMP(cctx, from.NS, netip.MustParseAddr("10.244.77.7")); err == nil {
		t.Error("icmp to an address nobody holds succeeded")
	}
	if err := CheckTCP(cctx, from.NS, netip.MustParseAddr("10.244.77.7")); err == nil {
		t.Error("tcp to an address nobody holds succeeded")
	}
	gone := c.Node(2).Pods[0].Target()
	if err := c.RemoveNode(ctx, 2); err != nil {
		t.Fatal(err)
	}
	fctx, fcancel := context.WithTimeout(ctx, 4*time.Second)
	defer fcancel()
	m = CheckAll(fctx, []Target{from.Target(), gone}, func(f, _ Target) bool { return f.Name == gone.Name })
	if len(m.Results) != 1 || m.Results[0].ICMP == nil || m.Results[0].TCP == nil || m.Results[0].UDP == nil {
		t.Fatalf("checks to a removed node did not all fail:\n%s", m)
	}
	// The removed node's namespaces are gone while the rest stays.
	left := Leftovers(c.Prefix)
	if containsAny(left, "-n2") || !containsAny(left, "-n1") {
		t.Errorf("leftovers after removing node 2: %v", left)
	}
}

// procState is field 3 of /proc/<pid>/stat ("" if pid is gone).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

func containsAny(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func TestKernelTwoSegmentsAndAddNode(t *testing.T) {
	c := kernelCluster(t, Options{Nodes: 2, PodsPerNode: 1, Segments: 2})
	ctx := context.Background()
	if c.Node(0).Segment == c.Node(1).Segment {
		t.Fatal("nodes 0 and 1 should be on different segments")
	}
	n, err := c.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Segment != 0 {
		t.Fatalf("node 2 on segment %d, want 0", n.Segment)
	}
	m := CheckAll(ctx, c.Targets(), nil)
	if len(m.Results) != 6 || len(m.Failed()) > 0 {
		t.Fatalf("two-segment matrix:\n%s", m)
	}
	// The cross-segment path goes through the router.
	rs, err := Routes(c.Node(0).NS)
	if err != nil {
		t.Fatal(err)
	}
	if !containsAny(rs, "via 10.99.0.254") {
		t.Fatalf("node 0 routes %v: no route via the router", rs)
	}
}

func TestStreamCountsLoss(t *testing.T) {
	c := kernelCluster(t, Options{Nodes: 2, PodsPerNode: 1})
	a, b := c.Node(0).Pods[0], c.Node(1).Pods[0]
	s, err := StartStream(a.NS, []netip.Addr{b.Addr}, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	st := s.Stop()
	if st.Sent < 10 || st.Lost != 0 || st.Received != st.Sent {
		t.Fatalf("healthy stream: %+v", st)
	}
	// Cut the path and the stream must count losses.
	s, err = StartStream(a.NS, []netip.Addr{b.Addr}, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := c.RemoveNode(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	st = s.Stop()
	if st.Lost == 0 || st.Received == 0 || st.Sent != st.Received+st.Lost {
		t.Fatalf("cut stream: %+v, want some received, some lost", st)
	}
	t.Logf("cut stream: sent %d received %d lost %d", st.Sent, st.Received, st.Lost)
}

// TestDownRemovesCrashedRun leaves a run behind as a crash would (a
// process recorded in a pidfile, namespaces, a pin directory) and checks
// that Down removes all of it.
func TestDownRemovesCrashedRun(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	c, err := New(ctx, Options{Backend: BackendKernel, Nodes: 1, PodsPerNode: 1})
	if err != nil {
		t.Fatal(err)
	}
	prefix := c.Prefix
	t.Cleanup(func() { Down(prefix) })
	n := c.Node(0)
	if err := os.MkdirAll(n.BPFDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A process started the way agents are. Its pidfile names it by PID
	// and start time, so it is found however far its exec has got when
	// Leftovers looks (the command line reads empty for a while after
	// Start returns) and whatever its argv says: here nothing of the
	// prefix.
	p := c.newProc("sleeper", n.NS, []string{"/bin/sleep", "300"})
	p.Env = nil
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	pid := p.PID()
	left := Leftovers(prefix)
	for _, want := range []string{"netns " + prefix + "-ul", "netns " + n.NS, "netns " + n.Pods[0].NS, "bpffs " + n.BPFDir, fmt.Sprintf("process %d ", pid), "dir "} {
		if !containsAny(left, want) {
			t.Errorf("leftovers %v miss %q", left, want)
		}
	}
	// A pidfile whose PID is now another process (same PID, other start
	// time: a recycled PID) names nothing: not listed, not killed.
	other := exec.Command("/bin/sleep", "300")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	recycled := procIDOf(other.Process.Pid)
	recycled.start += "0"
	if err := os.WriteFile(RunDirOf(prefix)+"/pids/recycled.pid", []byte(recycled.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if left := Leftovers(prefix); containsAny(left, fmt.Sprintf("process %d ", other.Process.Pid)) {
		t.Errorf("leftovers %v list pid %d, which is not the process recorded", left, other.Process.Pid)
	}
	// A run whose owner is alive is not a leftover: Down from another
	// process leaves it alone (simulated by recording the sleeper as owner).
	if err := os.WriteFile(RunDirOf(prefix)+"/"+ownerFile, []byte(procIDOf(pid).String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Down(prefix); err != nil {
		t.Fatal(err)
	}
	if left := Leftovers(prefix); len(left) == 0 || !p.Running() {
		t.Fatalf("down removed a run whose owner is alive (left %v)", left)
	}
	// Down, not Close: the cluster object is abandoned like a crashed run
	// (owner gone: the record no longer matches a live process).
	if err := os.WriteFile(RunDirOf(prefix)+"/"+ownerFile, []byte("1 not-the-owner"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Down(prefix); err != nil {
		t.Fatal(err)
	}
	if left := Leftovers(prefix); len(left) > 0 {
		t.Fatalf("after down: %v", left)
	}
	if !p.Wait(5 * time.Second) {
		t.Fatalf("process %d still running after down", pid)
	}
	// Nothing reaps other before the cleanup, so a kill would leave a
	// zombie (state Z) behind.
	if st := procState(other.Process.Pid); st == "" || st == "Z" {
		t.Fatalf("down killed pid %d, recorded with another start time (state %q)", other.Process.Pid, st)
	}
	// A second Down finds nothing and does not fail, and neither does
	// closing the abandoned cluster object (which stops its echo servers).
	if err := Down(prefix); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close after down: %v", err)
	}
}

func TestRunPrefixOf(t *testing.T) {
	for name, want := range map[string]string{
		"wt1a2b-ul": "wt1a2b", "wt1a2b-ctl": "wt1a2b", "wt1a2b-n3": "wt1a2b", "wt1a2b-n3-p10": "wt1a2b", "wt1a2b-rt": "wt1a2b",
		"wt1a2b-x": "", "wt1a2b": "", "other-thing": "", "WT1a2b-ul": "", "wt1a2b-n3-q1": "", "toolongprefix-ul": "",
	} {
		got, ok := runPrefixOf(name)
		if got != want || ok != (want != "") {
			t.Errorf("runPrefixOf(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	m := ParseMetrics("# HELP x\nweft_a 3\nweft_b{dir=\"tx\"} 4.5\nweft_b{dir=\"rx\"} 1 1700000000\n")
	if m["weft_a"] != 3 || SumMetric(m, "weft_b") != 5.5 {
		t.Fatalf("parsed %v", m)
	}
}

// TestEtcdMemberUnixSocket runs the etcd-member code in-process and checks
// that a client reaches it over the unix socket the root namespace uses,
// and that a member restarted on its data directory keeps the data.
func TestEtcdMemberUnixSocket(t *testing.T) {
	dir := t.TempDir()
	sock := dir + "/e.sock"
	m := MemberConfig{Name: "e0", DataDir: dir + "/data", ListenClient: "unix://" + sock + ",http://" + freeAddr(t), ListenPeer: "http://" + freeAddr(t)}
	m.InitialCluster = "e0=" + m.ListenPeer
	run := func() (context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- RunEtcdMember(ctx, m) }()
		return cancel, done
	}
	cancel, done := run()
	cl := waitClient(t, sock)
	ctx, cctx := context.WithTimeout(context.Background(), 10*time.Second)
	defer cctx()
	if _, err := cl.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	cancel, done = run()
	defer func() { cancel(); <-done }()
	cl = waitClient(t, sock)
	defer cl.Close()
	r, err := cl.Get(ctx, "/k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v %v", r, err)
	}
}

func waitClient(t *testing.T, sock string) *clientv3.Client {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("etcd socket never appeared")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cl, err := clientv3.New(clientv3.Config{Endpoints: []string{"unix://" + sock}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestProcID checks the identity pidfiles and owner files hold: this
// process is alive under its own PID and start time and not under another
// start time, and the recorded form reads back.
func TestProcID(t *testing.T) {
	me := procIDOf(os.Getpid())
	if me.start == "" || !me.alive() {
		t.Fatalf("own process %v not alive", me)
	}
	if got, ok := parseProcID(me.String() + "\n"); !ok || got != me {
		t.Fatalf("parse %q = %v, %v; want %v", me.String(), got, ok, me)
	}
	if (procID{pid: me.pid, start: me.start + "0"}).alive() {
		t.Fatalf("pid %d alive under another start time", me.pid)
	}
	for _, bad := range []string{"", "12", "x 5", "1 5", "0 5", "-3 5"} {
		if id, ok := parseProcID(bad); ok {
			t.Errorf("parse %q = %v, want rejected", bad, id)
		}
	}
}

func TestOptionsRefuseNegativeCounts(t *testing.T) {
	for _, o := range []Options{{Nodes: -3}, {PodsPerNode: -1}, {Segments: -1}, {Controllers: -2}, {EtcdMembers: -1}} {
		if err := o.defaults(); err == nil || !strings.Contains(err.Error(), "negative") {
			t.Errorf("%+v: %v, want a refusal naming the negative count", o, err)
		}
	}
}

// TestNotConverged: Cluster.Converged's verdict on one node's status. A
// node that applied the head and is not degraded is still not converged
// while its agent says its first convergence waits (for its NodeAdded,
// while the controller is away), and the reason says for what.
func TestNotConverged(t *testing.T) {
	waiting := "no NodeAdded of n3 in the log (the controller has not given it pod CIDRs)"
	for _, tc := range []struct {
		st   *weftv1.AgentStatus
		want string
	}{
		{nil, "n3 has no status"},
		{&weftv1.AgentStatus{AppliedSeq: 3}, "n3 applied 3 of head 4"},
		{&weftv1.AgentStatus{AppliedSeq: 4, Degraded: true, LastError: "etcd unreachable"}, "n3 degraded: etcd unreachable"},
		{&weftv1.AgentStatus{AppliedSeq: 4, NotConverged: waiting}, "n3 converging: " + waiting},
		{&weftv1.AgentStatus{AppliedSeq: 4}, ""},
	} {
		if got := notConverged("n3", tc.st, 4); got != tc.want {
			t.Errorf("notConverged(%v) = %q, want %q", tc.st, got, tc.want)
		}
	}
}
