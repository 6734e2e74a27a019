package controller_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
	"github.com/weftnet/weft/testenv/poll"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

var k = keys.New("/weft")

// graceUnit makes node_grace_seconds tick in tens of milliseconds.
const graceUnit = 10 * time.Millisecond

func baseConfig() *weftv1.ClusterConfig {
	return &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", NodeMaskSize: 24, NodeGraceSeconds: 30}
}

func logger(t testing.TB) hclog.Logger {
	if os.Getenv("WEFT_TEST_LOG") != "" {
		return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug})
	}
	return hclog.NewNullLogger()
}

type running struct {
	c      *controller.Controller
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *running) stop() { r.cancel(); <-r.done }

// start runs a controller on c until the test ends or stop.
func start(t testing.TB, c *clientv3.Client, initial *weftv1.ClusterConfig, id string) *running {
	t.Helper()
	ctl := controller.New(controller.Options{
		Client: c, Layout: k, Initial: initial, ElectionTTL: time.Second, ID: id,
		Logger: logger(t), GraceUnit: graceUnit, Batch: 5 * time.Millisecond, TrimInterval: 50 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: ctl, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := ctl.Run(ctx); err != nil {
			t.Errorf("controller %s: %v", id, err)
		}
	}()
	var once sync.Once
	t.Cleanup(func() { once.Do(r.stop) })
	return r
}

// register puts r on lease, or on a new lease when lease is 0: the
// controller refuses a registration without one.
func register(t testing.TB, c *clientv3.Client, lease clientv3.LeaseID, r *weftv1.Registration) {
	t.Helper()
	if lease == 0 {
		lease = grant(t, c)
	}
	if _, err := c.Put(context.Background(), k.Registration(r.Name), keys.EncodeString(r), clientv3.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
}

func reg(name string, i int) *weftv1.Registration {
	return &weftv1.Registration{Name: name, UnderlayIp: fmt.Sprintf("192.168.%d.%d", i/250, i%250+1)}
}

func grant(t testing.TB, c *clientv3.Client) clientv3.LeaseID {
	t.Helper()
	l, err := c.Grant(context.Background(), 30)
	if err != nil {
		t.Fatal(err)
	}
	return l.ID
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	poll.Eventually(t, d, 10*time.Millisecond, what, func() (bool, string) { return cond(), "still false" })
}

func load(t testing.TB, c *clientv3.Client) (cfg *weftv1.ClusterConfig, nodes map[string]*weftv1.Node, head uint64) {
	t.Helper()
	st, _, err := store.Load(context.Background(), c, k)
	if err != nil {
		t.Fatal(err)
	}
	return st.Config, st.Nodes, st.Head
}

func mustCheck(t testing.TB, c *clientv3.Client) *store.Report {
	t.Helper()
	rep, err := store.Check(context.Background(), c, k)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("check: %v", rep.Problems)
	}
	return rep
}

func events(t testing.TB, c *clientv3.Client) []*weftv1.Event {
	t.Helper()
	r, err := c.Get(context.Background(), k.Events(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []*weftv1.Event
	for _, kv := range r.Kvs {
		e, err := keys.DecodeEvent(kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func problem(t testing.TB, c *clientv3.Client, name string) string {
	t.Helper()
	r, err := c.Get(context.Background(), k.Problem(name))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) == 0 {
		return ""
	}
	p, err := keys.DecodeProblem(r.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return p.Reason
}
