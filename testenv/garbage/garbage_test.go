package garbage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/controlplane/ctl"
	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/nodeagent"
	"github.com/weftnet/weft/nodeagent/follow"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
	"github.com/weftnet/weft/testenv/garbage"
	"github.com/weftnet/weft/testenv/poll"
	"github.com/weftnet/weft/testenv/syncbuf"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

var k = keys.New("/weft")

// datapath is the kernel as the agents in this test see it: it keeps the
// last spec synced.
type datapath struct {
	ip   netip.Addr
	mu   sync.Mutex
	last *spec.Desired
}

func (d *datapath) Underlay() (spec.Underlay, error) {
	return spec.Underlay{Interface: "eth0", IP: d.ip, MTU: 1500, Networks: []netip.Prefix{netip.MustParsePrefix("192.168.7.0/24")}}, nil
}

func (d *datapath) Sync(_ context.Context, want *spec.Desired) (spec.Report, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.last = want
	return spec.Report{}, nil
}

func (d *datapath) Reconcile(context.Context, *spec.Desired) (spec.Report, error) {
	return spec.Report{}, nil
}

func (d *datapath) Counters() (spec.Counters, error) { return spec.Counters{}, nil }

// tunnels returns the endpoints of the synced tunnel entries.
func (d *datapath) tunnels() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	if d.last != nil {
		for _, t := range d.last.Tunnels {
			out = append(out, t.Endpoint.String())
		}
	}
	slices.Sort(out)
	return out
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	poll.Eventually(t, 15*time.Second, 20*time.Millisecond, what, cond)
}

// cluster is a controller and two agents on one embedded etcd.
type cluster struct {
	t    *testing.T
	c    *clientv3.Client
	logs *syncbuf.Buffer
	ctl  func() // stops the controller
	dps  map[string]*datapath
	ips  map[string]string // underlay address by node name
}

func (cl *cluster) startController(id string) {
	ctx, cancel := context.WithCancel(context.Background())
	c := controller.New(controller.Options{
		// The controller's default election TTL (10 s): with
		// a 1 s lease, etcd itself revoked the leader's lease while it
		// stalled reading and writing the 1 MiB values on a loaded
		// machine (7 of 150 runs beside stress-ng), which no client can
		// prevent; the handover to c2 is a resign, so it costs no time.
		Client: cl.c, Layout: k, ID: id, ElectionTTL: 10 * time.Second,
		Initial:   &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", NodeGraceSeconds: 3600},
		Logger:    hclog.New(&hclog.LoggerOptions{Name: id, Output: cl.logs, Level: hclog.Info}),
		Batch:     5 * time.Millisecond,
		GraceUnit: time.Second,
		// Repairs happen when a leader starts, when an append meets a
		// conflict, and here not on a timer: the test first sees the
		// damage named, then a new leader repair it.
		VerifyInterval:  time.Hour,
		ContactInterval: 200 * time.Millisecond,
	})
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	cl.ctl = func() { cancel(); <-done }
	eventually(cl.t, "controller "+id+" leads", func() (bool, string) { return c.IsLeader(), "" })
}

func newCluster(t *testing.T) *cluster {
	_, c := etcdtest.New(t)
	cl := &cluster{t: t, c: c, logs: &syncbuf.Buffer{}, dps: map[string]*datapath{}, ips: map[string]string{}}
	cl.startController("c1")
	t.Cleanup(func() { cl.ctl() })
	for i, name := range []string{"n1", "n2"} {
		dp := &datapath{ip: netip.AddrFrom4([4]byte{192, 168, 7, byte(i + 1)})}
		cl.dps[name], cl.ips[name] = dp, dp.ip.String()
		a, err := nodeagent.New(nodeagent.Config{
			Client: c, NodeName: name, Datapath: dp, LeaseTTL: 5 * time.Second,
			ReconcileInterval: -1, StatusInterval: 200 * time.Millisecond, StatusMinInterval: 10 * time.Millisecond,
			Follow: follow.Options{RequestTimeout: time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
				RecheckInterval: 100 * time.Millisecond},
			Logger: hclog.New(&hclog.LoggerOptions{Name: name, Output: cl.logs, Level: hclog.Info}),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); a.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	cl.served("n1", "n2")
	return cl
}

// served waits until both agents applied the head (as far as it reads)
// and each agent's datapath has a tunnel to every other named node: the
// controller added them, and the agents keep them.
func (cl *cluster) served(names ...string) {
	cl.t.Helper()
	ctx := context.Background()
	eventually(cl.t, fmt.Sprintf("%v served", names), func() (bool, string) {
		p, err := store.Read(ctx, cl.c, k)
		if err != nil {
			return false, err.Error()
		}
		for agent, dp := range cl.dps {
			r, err := cl.c.Get(ctx, k.Status(agent))
			if err != nil || len(r.Kvs) == 0 {
				return false, agent + " has no status"
			}
			st, err := keys.DecodeStatus(r.Kvs[0].Value)
			if err != nil || st.AppliedSeq < p.State.Head {
				return false, fmt.Sprintf("%s applied %d of %d", agent, st.GetAppliedSeq(), p.State.Head)
			}
			var want []string
			for _, n := range names {
				if n != agent {
					want = append(want, cl.ips[n])
				}
			}
			slices.Sort(want)
			if got := dp.tunnels(); !slices.Equal(got, want) {
				return false, fmt.Sprintf("%s tunnels %v, want %v", agent, got, want)
			}
		}
		return true, ""
	})
}

// join registers a node without an agent (on a lease that lives as long
// as the test).
func (cl *cluster) join(name string, ip string) {
	cl.t.Helper()
	ctx := context.Background()
	g, err := cl.c.Grant(ctx, 600)
	if err != nil {
		cl.t.Fatal(err)
	}
	cl.ips[name] = ip
	r := &weftv1.Registration{Name: name, UnderlayIp: ip}
	if _, err := cl.c.Put(ctx, k.Registration(name), keys.EncodeString(r), clientv3.WithLease(g.ID)); err != nil {
		cl.t.Fatal(err)
	}
}

// weftctl runs a weftctl verb against the cluster and returns its exit
// code and output.
func (cl *cluster) weftctl(args ...string) (int, string) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ep := cl.c.Endpoints()[0]
	code := ctl.Main(ctx, append([]string{"--etcd-endpoints", ep}, args...), strings.NewReader(""), &out, &out, func(string) string { return "" })
	return code, out.String()
}

// named reports whether a refusal names the injected key or value:
// weftctl check names every key that does not decode or validate; the
// controller answers a desired config and records a problem for a valid
// registration it refuses.
func (cl *cluster) named(in *garbage.Injected) (bool, string) {
	code, out := cl.weftctl("check")
	if code == 1 && strings.Contains(out, in.Key) {
		return true, out
	}
	ctx := context.Background()
	switch in.Case.Kind {
	case garbage.DesiredConfig:
		r, err := cl.c.Get(ctx, k.DesiredStatus())
		if err == nil && len(r.Kvs) > 0 {
			if s, err := keys.DecodeConfigStatus(r.Kvs[0].Value); err == nil && !s.Accepted && strings.Contains(s.Reason, "vni") {
				return true, s.Reason
			}
		}
	case garbage.Registrations:
		r, err := cl.c.Get(ctx, k.Problem("garbage"))
		if err == nil && len(r.Kvs) > 0 {
			return true, string(r.Kvs[0].Value)
		}
	}
	return false, out
}

// TestEveryComponentSurvivesGarbage writes every kind of garbage package
// garbage knows into a running cluster (controller, two agents) and
// requires, for each: weftctl check (or the controller's answer) names
// it; a node registering afterwards joins and both agents serve it while
// keeping each other; weftctl nodes, status and events still work; a new
// leader starting on the garbage leads and serves too; a component that
// reads the key logs it.
func TestEveryComponentSurvivesGarbage(t *testing.T) {
	if testing.Short() {
		t.Skip("a cluster per kind of garbage")
	}
	for i, c := range garbage.Cases() {
		t.Run(c.String(), func(t *testing.T) {
			cl := newCluster(t)
			in, err := garbage.Inject(context.Background(), cl.c, k, c, garbage.Target{Node: "n1", LeaseTTL: 600})
			if err != nil {
				t.Fatal(err)
			}
			eventually(t, "the garbage named", func() (bool, string) { return cl.named(in) })
			cl.join("late", fmt.Sprintf("192.168.7.%d", 100+i))
			cl.served("n1", "n2", "late")
			for _, verb := range []string{"nodes", "status", "events"} {
				if code, out := cl.weftctl(verb); code != 0 {
					t.Errorf("weftctl %s exits %d with %s in the store:\n%.2000s", verb, code, c, out)
				}
			}
			// A new leader starts on the garbage.
			cl.ctl()
			cl.startController("c2")
			cl.join("later", fmt.Sprintf("192.168.7.%d", 200+i))
			cl.served("n1", "n2", "late", "later")
			if strings.Contains(cl.logs.String(), "leadership ended") {
				t.Errorf("leadership ended because of %s:\n%s", c, cl.logs.String())
			}
			// A component that reads the key logs it (only weftctl reads
			// another node's status).
			if c.Kind != garbage.Status && !strings.Contains(cl.logs.String(), "key="+in.Key) {
				t.Errorf("no component logged %s:\n%.4000s", in.Key, cl.logs.String())
			}
		})
	}
}

// TestInjectUndo: Undo puts back what Inject changed.
func TestInjectUndo(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.New(t)
	c.Put(ctx, k.Head(), "3")
	in, err := garbage.Inject(ctx, c, k, garbage.Case{Kind: garbage.Head, Variant: garbage.NotJSON}, garbage.Target{})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := c.Get(ctx, k.Head()); string(r.Kvs[0].Value) != "not a seq" {
		t.Fatalf("head %q", r.Kvs[0].Value)
	}
	if err := in.Undo(ctx, c); err != nil {
		t.Fatal(err)
	}
	if r, _ := c.Get(ctx, k.Head()); string(r.Kvs[0].Value) != "3" {
		t.Fatalf("head after undo %q", r.Kvs[0].Value)
	}
	// A key written since Inject keeps what was written: an event the
	// controller appended where the garbage was is not deleted.
	in, err = garbage.Inject(ctx, c, k, garbage.Case{Kind: garbage.Events, Variant: garbage.NotJSON}, garbage.Target{})
	if err != nil {
		t.Fatal(err)
	}
	c.Put(ctx, in.Key, "the event appended since")
	if err := in.Undo(ctx, c); err != nil {
		t.Fatal(err)
	}
	if r, _ := c.Get(ctx, in.Key); len(r.Kvs) == 0 || string(r.Kvs[0].Value) != "the event appended since" {
		t.Fatalf("%s after undo: %q, want the value written since Inject", in.Key, r.Kvs)
	}
	if _, err := garbage.Inject(ctx, c, k, garbage.Case{Kind: garbage.Nodes, Variant: garbage.NotJSON}, garbage.Target{}); !errors.Is(err, garbage.ErrNotApplicable) {
		t.Fatalf("nodes garbage without a node: %v", err)
	}
}
