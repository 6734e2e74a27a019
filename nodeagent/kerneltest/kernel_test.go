// Package kerneltest holds the agent's privileged tests: the agent driving
// the real datapath (package bpf) in a test network namespace, against a
// real etcd. They need root and skip without it.
package kerneltest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/bpfpin"
	"github.com/weftnet/weft/testenv/etcdtest"
	"github.com/weftnet/weft/testenv/netnstest"
	"github.com/weftnet/weft/testenv/poll"
	"github.com/weftnet/weft/testenv/syncbuf"
)

func TestMain(m *testing.M) {
	logtest.MaybeRunEtcdChild()
	os.Exit(m.Run())
}

func requireRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)")
	}
}

func sh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNode makes a network namespace with an underlay device (a veth, with
// 192.168.50.1/24) and returns its name and a pin directory; both are
// removed when t ends.
func newNode(t testing.TB) (ns, pinDir string) {
	requireRoot(t)
	prefix := fmt.Sprintf("wa%d", os.Getpid()%100000)
	ns = prefix + "-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	if len(ns) > 40 {
		ns = ns[:40]
	}
	pinDir = "/sys/fs/bpf/" + ns
	n := netnstest.New(t, ns)
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	for _, err := range []error{
		n.Veth("ul0", n, "ulpeer"),
		n.Up("ulpeer"),
		n.Addr("ul0", netip.MustParsePrefix("192.168.50.1/24")),
		n.Up("ul0"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return ns, pinDir
}

// recDatapath is a real *bpf.Datapath bound to a test namespace that
// records the report of every Sync the agent makes.
type recDatapath struct {
	*bpf.Datapath
	mu   sync.Mutex
	reps []spec.Report
	// onSync, when set, is called after each successful Sync.
	onSync func(*spec.Desired)
}

func openIn(t testing.TB, ns string, cfg bpf.Config) *recDatapath {
	cfg.NetNS = netnstest.PathOf(ns)
	dp, err := bpf.Open(cfg)
	if err != nil {
		t.Fatalf("open datapath in %s: %v", ns, err)
	}
	return &recDatapath{Datapath: dp}
}

func (w *recDatapath) Sync(ctx context.Context, want *spec.Desired) (spec.Report, error) {
	r, err := w.Datapath.Sync(ctx, want)
	w.mu.Lock()
	w.reps = append(w.reps, r)
	cb := w.onSync
	w.mu.Unlock()
	if err == nil && cb != nil {
		cb(want)
	}
	return r, err
}

var _ nodeagent.NodeInfo = (*recDatapath)(nil)

func (w *recDatapath) reports() []spec.Report {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]spec.Report(nil), w.reps...)
}

func runAgent(t testing.TB, c *clientv3.Client, dp nodeagent.Datapath, logs *syncbuf.Buffer) (*nodeagent.Agent, func()) {
	a, err := nodeagent.New(nodeagent.Config{
		Client:            c,
		NodeName:          "n1",
		Datapath:          dp,
		LeaseTTL:          3 * time.Second,
		ReconcileInterval: 150 * time.Millisecond,
		StatusMinInterval: 10 * time.Millisecond,
		Logger:            hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return a, stop
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	poll.Eventually(t, 10*time.Second, 20*time.Millisecond, what, cond)
}

// tunnelKeys reads the keys of the node's pinned tunnel map, independent
// of the datapath under test.
func tunnelKeys(t testing.TB, pinDir string) [][]byte {
	t.Helper()
	keys, err := bpfpin.Keys(pinDir, "weft_tunnels")
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestAgentRepairsDriftAndRestartsWithoutFlush(t *testing.T) {
	ns, pinDir := newNode(t)
	ctx := context.Background()
	_, c := etcdtest.New(t)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []*weftv1.Event{
		logtest.Config(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"}),
		logtest.Added("n1", "192.168.50.1", "10.244.1.0/24"),
		logtest.Added("n2", "192.168.50.2", "10.244.2.0/24"),
		logtest.Added("n3", "192.168.50.3", "10.244.3.0/24"),
	} {
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	dp := openIn(t, ns, bpf.Config{PinDir: pinDir, Underlay: "ul0"})
	logs := &syncbuf.Buffer{}
	a, stop := runAgent(t, c, dp, logs)
	eventually(t, "converged", func() (bool, string) {
		st := a.Status()
		return st.AppliedSeq == 4 && st.TunnelEntries == 2 && st.Mode == "vxlan" && !st.Degraded, st.String()
	})
	route := "10.244.0.0/16 dev weft_vxlan"
	if out := sh(t, "ip", "-n", ns, "route", "show", "10.244.0.0/16"); !strings.Contains(out, route) {
		t.Fatalf("no cluster route:\n%s", out)
	}
	if mtu := sh(t, "ip", "-n", ns, "-o", "link", "show", "weft_vxlan"); !strings.Contains(mtu, "mtu 1450") {
		t.Fatalf("device: %s", mtu)
	}
	if n := len(tunnelKeys(t, pinDir)); n != 2 {
		t.Fatalf("tunnel map holds %d entries", n)
	}
	// The first Sync made the device with the MAC derived from the
	// node's name, which the registration carried from the start: it was
	// written once (a second write would cost a NodeUpdated per join).
	mac := strings.Fields(sh(t, "ip", "-n", ns, "-br", "link", "show", "weft_vxlan"))[2]
	if want := spec.VTEPMAC("n1").String(); mac != want {
		t.Fatalf("device MAC %s, want %s", mac, want)
	}
	if v := checkRegistration(t, c, mac); v != 1 {
		t.Fatalf("registration written %d times, want once", v)
	}

	// Drift 1: the cluster route is deleted behind the agent's back.
	sh(t, "ip", "-n", ns, "route", "del", "10.244.0.0/16", "dev", "weft_vxlan")
	eventually(t, "route repaired", func() (bool, string) {
		out := sh(t, "ip", "-n", ns, "route", "show", "10.244.0.0/16")
		return strings.Contains(out, route) && strings.Contains(logs.String(), "repaired: route 10.244.0.0/16"), out
	})
	// Drift 2: a tunnel map entry disappears.
	if err := bpfpin.Delete(pinDir, "weft_tunnels", tunnelKeys(t, pinDir)[0]); err != nil {
		t.Fatal(err)
	}
	eventually(t, "map entry repaired", func() (bool, string) {
		return len(tunnelKeys(t, pinDir)) == 2 && strings.Count(logs.String(), "repaired:") >= 2, logs.String()
	})
	// Drift 3: the egress program is detached (its tcx link unpinned and
	// released).
	before := strings.Count(logs.String(), "repaired:")
	if err := bpfpin.DropLink(pinDir, "link_egress"); err != nil {
		t.Skipf("egress not attached through a pinned tcx link (tc fallback?): %v", err)
	}
	eventually(t, "program re-attached", func() (bool, string) {
		_, err := os.Stat(filepath.Join(pinDir, "link_egress"))
		return err == nil && strings.Count(logs.String(), "repaired:") > before, logs.String()
	})

	// Restart without a flush: stop the agent, close the datapath (fds
	// only), check the kernel kept everything, reopen and let a new agent
	// converge: it must change nothing.
	stop()
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(tunnelKeys(t, pinDir)); n != 2 {
		t.Fatalf("after Close the tunnel map holds %d entries", n)
	}
	if out := sh(t, "ip", "-n", ns, "route", "show", "10.244.0.0/16"); !strings.Contains(out, route) {
		t.Fatalf("route gone after Close:\n%s", out)
	}
	dp2 := openIn(t, ns, bpf.Config{PinDir: pinDir, Underlay: "ul0"})
	defer dp2.Close()
	if n := len(tunnelKeys(t, pinDir)); n != 2 {
		t.Fatalf("after re-Open the tunnel map holds %d entries", n)
	}
	a2, _ := runAgent(t, c, dp2, logs)
	eventually(t, "restarted agent converged", func() (bool, string) {
		st := a2.Status()
		return st.AppliedSeq == 4 && st.TunnelEntries == 2 && !st.Degraded, st.String()
	})
	reps := dp2.reports()
	if len(reps) != 1 || reps[0].Changed() {
		t.Fatalf("restart changed the kernel: %+v", reps)
	}
	// The restarted agent registers the device it found, MAC and all.
	checkRegistration(t, c, mac)

	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "repaired:") {
			t.Log(line)
		}
	}
	// The status key in etcd says the same (it is written shortly after).
	eventually(t, "status in etcd", func() (bool, string) {
		r, err := c.Get(ctx, keys.New("").Status("n1"))
		if err != nil || len(r.Kvs) == 0 {
			return false, fmt.Sprint("no status ", err)
		}
		st, err := keys.DecodeStatus(r.Kvs[0].Value)
		return err == nil && st.TunnelEntries == 2 && st.Mode == "vxlan", st.String()
	})
}

// checkRegistration waits for n1's registration in etcd to carry mac and
// the capabilities (at least vxlan, which every supported kernel has) and
// returns the key's version (how often it was written).
func checkRegistration(t *testing.T, c *clientv3.Client, mac string) (version int64) {
	t.Helper()
	eventually(t, "registration with capabilities and MAC", func() (bool, string) {
		r, err := c.Get(context.Background(), keys.New("").Registration("n1"))
		if err != nil || len(r.Kvs) == 0 {
			return false, fmt.Sprint("no registration ", err)
		}
		version = r.Kvs[0].Version
		reg, err := keys.DecodeRegistration(r.Kvs[0].Value)
		return err == nil && reg.VtepMac == mac && slices.Contains(reg.Capabilities, "vxlan"), string(r.Kvs[0].Value)
	})
	return version
}

// TestAgentSetsTheDeviceMACOfAnOlderAgent: a node whose overlay device was
// made by an agent that let the kernel pick its MAC registers that MAC;
// its first Sync sets the MAC derived from the node's name, and the
// registration follows (the controller turns that into one NodeUpdated).
func TestAgentSetsTheDeviceMACOfAnOlderAgent(t *testing.T) {
	ns, pinDir := newNode(t)
	ctx := context.Background()
	_, c := etcdtest.New(t)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []*weftv1.Event{
		logtest.Config(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"}),
		logtest.Added("n2", "192.168.50.2", "10.244.2.0/24"),
	} {
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	old := "02:00:00:00:00:77"
	sh(t, "ip", "-n", ns, "link", "add", "weft_vxlan", "address", old, "type", "vxlan", "external", "dstport", "8472", "nolearning")
	dp := openIn(t, ns, bpf.Config{PinDir: pinDir, Underlay: "ul0"})
	defer dp.Close()
	a, _ := runAgent(t, c, dp, &syncbuf.Buffer{})
	// Not in the log yet: nothing synced, the device's MAC registered.
	checkRegistration(t, c, old)
	if _, err := l.Append(ctx, logtest.Added("n1", "192.168.50.1", "10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "converged", func() (bool, string) {
		st := a.Status()
		return st.TunnelEntries == 1 && !st.Degraded, st.String()
	})
	want := spec.VTEPMAC("n1").String()
	if mac := strings.Fields(sh(t, "ip", "-n", ns, "-br", "link", "show", "weft_vxlan"))[2]; mac != want {
		t.Fatalf("device MAC %s after the first Sync, want %s", mac, want)
	}
	if v := checkRegistration(t, c, want); v != 2 {
		t.Fatalf("registration written %d times, want twice (old MAC, then the new one)", v)
	}
}

// TestAgentLiveConfigChanges drives the real datapath through config
// changes from the log: MTU, port and VNI of the overlay, then a switch to
// native routing and back, checking the kernel after each.
func TestAgentLiveConfigChanges(t *testing.T) {
	ns, pinDir := newNode(t)
	ctx := context.Background()
	_, c := etcdtest.New(t)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		t.Fatal(err)
	}
	appendAll := func(es ...*weftv1.Event) {
		t.Helper()
		for _, e := range es {
			if _, err := l.Append(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	base := func() *weftv1.ClusterConfig { return &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"} }
	appendAll(logtest.Config(base()),
		logtest.Added("n1", "192.168.50.1", "10.244.1.0/24"),
		logtest.Added("n2", "192.168.50.2", "10.244.2.0/24"),
		logtest.Added("far", "172.31.0.9", "10.244.3.0/24"))
	dp := openIn(t, ns, bpf.Config{PinDir: pinDir, Underlay: "ul0"})
	// Closed after the agent stops (cleanups run last-registered first): a
	// reconcile of a still-running agent must not find it closed.
	t.Cleanup(func() { dp.Close() })
	a, _ := runAgent(t, c, dp, &syncbuf.Buffer{})
	waitApplied := func(seq uint64, mode string) *weftv1.AgentStatus {
		t.Helper()
		var st *weftv1.AgentStatus
		eventually(t, fmt.Sprintf("applied %d in %s mode", seq, mode), func() (bool, string) {
			st = a.Status()
			return st.AppliedSeq == seq && st.Mode == mode && st.LastError == "", st.String()
		})
		return st
	}
	waitApplied(4, "vxlan")
	link := func() string { return sh(t, "ip", "-n", ns, "-d", "-o", "link", "show") }
	if out := link(); !strings.Contains(out, "weft_vxlan") || !strings.Contains(out, "dstport 8472") {
		t.Fatalf("no vxlan device with port 8472:\n%s", out)
	}

	c2 := base()
	c2.Mtu, c2.UdpPort, c2.Vni = 1400, 4789, 7
	appendAll(logtest.Config(c2))
	waitApplied(5, "vxlan")
	eventually(t, "new MTU and port", func() (bool, string) {
		out := link()
		return strings.Contains(out, "mtu 1350") && strings.Contains(out, "dstport 4789") && !strings.Contains(out, "dstport 8472"), out
	})

	c3 := base()
	c3.Backend, c3.AutoDirectNodeRoutes = "native", true
	appendAll(logtest.Config(c3))
	st := waitApplied(6, "native")
	if len(st.PeerProblems) != 1 || st.PeerProblems[0].Node != "far" {
		t.Fatalf("peer problems = %v", st.PeerProblems)
	}
	eventually(t, "native routes, no overlay", func() (bool, string) {
		routes := sh(t, "ip", "-n", ns, "route", "show")
		return strings.Contains(routes, "10.244.2.0/24 via 192.168.50.2") && !strings.Contains(routes, "10.244.3.0/24") &&
			!strings.Contains(routes, "weft_vxlan") && !strings.Contains(link(), "weft_vxlan"), routes
	})

	appendAll(logtest.Config(base()))
	waitApplied(7, "vxlan")
	eventually(t, "back to the overlay, no direct routes", func() (bool, string) {
		routes := sh(t, "ip", "-n", ns, "route", "show")
		return strings.Contains(routes, "10.244.0.0/16 dev weft_vxlan") && !strings.Contains(routes, "via 192.168.50.2") &&
			strings.Contains(link(), "dstport 8472"), routes
	})
	if n := len(tunnelKeys(t, pinDir)); n != 2 {
		t.Fatalf("tunnel map holds %d entries after switching back", n)
	}
}
