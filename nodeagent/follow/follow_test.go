package follow

import (
	"context"
	"errors"
	"net/url"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/nodeagent/model"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stateSink is the agent's sink reduced to the model, with the re-lists
// and health reports the follower made.
type stateSink struct {
	mu      sync.Mutex
	s       *model.State
	relists []string
	health  []error
	applies int
}

func (k *stateSink) Reset(snap model.Snapshot) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.s.Reset(snap)
}

func (k *stateSink) Apply(seq uint64, v []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.applies++
	_, err := k.s.Apply(seq, v)
	return err
}

func (k *stateSink) opts() Options {
	return Options{
		OnRelist:   func(r string) { k.mu.Lock(); k.relists = append(k.relists, r); k.mu.Unlock() },
		OnHealth:   func(err error) { k.mu.Lock(); k.health = append(k.health, err); k.mu.Unlock() },
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
		// Small pages exercise the paginated list.
		PageSize:       2,
		RequestTimeout: time.Second,
	}
}

func (k *stateSink) count(reason string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, r := range k.relists {
		if r == reason {
			n++
		}
	}
	return n
}

// converged waits until the sink's state equals the fold of the
// projection currently in etcd at head.
func converged(t *testing.T, ctx context.Context, c *clientv3.Client, k *stateSink, head uint64) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		want := projection(t, ctx, c)
		k.mu.Lock()
		ok := k.s.Applied() == head && k.s.Equal(want)
		last = k.s.String() + "\nwant " + want.String()
		k.mu.Unlock()
		if ok {
			return
		}
	}
	t.Fatalf("not converged to head %d:\n%s", head, last)
}

// projection folds what the controller's projection in etcd says.
func projection(t *testing.T, ctx context.Context, c *clientv3.Client) *model.State {
	f := New(c, keys.New("/weft"), Options{})
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	snap, _, err := f.list(ctx, wctx)
	if err != nil {
		t.Fatal(err)
	}
	s := model.New()
	s.Reset(snap)
	return s
}

func start(t *testing.T, c *clientv3.Client) (*stateSink, func()) {
	k := &stateSink{s: model.New()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- New(c, keys.New("/weft"), k.opts()).Run(ctx, k) }()
	return k, func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v", err)
		}
	}
}

func cfg() *weftv1.ClusterConfig { return &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"} }

func mustAppend(t *testing.T, ctx context.Context, l *logtest.Log, e *weftv1.Event) uint64 {
	t.Helper()
	seq, err := l.Append(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

func TestListThenWatchGapAndDuplicates(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.New(t)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, ctx, l, logtest.Config(cfg()))
	for i, n := range []string{"a", "b", "c", "d", "e"} {
		mustAppend(t, ctx, l, logtest.Added(n, "192.168.1."+string(rune('1'+i)), "10.244."+string(rune('1'+i))+".0/24"))
	}
	k, stop := start(t, c)
	defer stop()
	converged(t, ctx, c, k, 6)
	if k.count(ReasonStart) != 1 || k.s.Len() != 5 {
		t.Fatalf("relists %v, nodes %d", k.relists, k.s.Len())
	}

	// Watched events are applied in order.
	mustAppend(t, ctx, l, logtest.Removed("a"))
	mustAppend(t, ctx, l, logtest.Updated("b", "192.168.1.99", "10.244.2.0/24"))
	converged(t, ctx, c, k, 8)

	// An old event key rewritten (as a confused writer or a restore
	// would) is not applied again; the log below the head changed, so
	// the follower lists once and holds the projection.
	old, _ := c.Get(ctx, l.K.Event(3))
	if _, err := c.Put(ctx, l.K.Event(3), string(old.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, ctx, l, logtest.Added("f", "192.168.1.20", "10.244.20.0/24"))
	converged(t, ctx, c, k, 9)
	if n, g := k.count(ReasonRewritten), k.count(ReasonGap); n != 1 || g != 0 {
		t.Fatalf("rewritten event: %d rewritten and %d gap re-lists, want 1 and 0", n, g)
	}

	// A gap: event 11 without 10. The follower re-lists and the state is
	// the projection's.
	gap := keys.Encode(&weftv1.Event{Seq: 11, Kind: logtest.Removed("c").Kind})
	if err := l.AppendRaw(ctx, 11, gap, clientv3.OpDelete(l.K.Node("c"))); err != nil {
		t.Fatal(err)
	}
	converged(t, ctx, c, k, 11)
	if k.count(ReasonGap) != 1 || k.s.Node("c") != nil {
		t.Fatalf("gap: relists %v, state %s", k.relists, k.s)
	}
}

func TestTrimAndCompactionForceRelist(t *testing.T) {
	ctx := context.Background()
	srv, c := etcdtest.New(t)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, ctx, l, logtest.Config(cfg()))
	mustAppend(t, ctx, l, logtest.Added("a", "192.168.1.1", "10.244.1.0/24"))

	u, _ := url.Parse(srv.Endpoints[0])
	p, err := etcdtest.NewProxy(u.Host, false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pc := proxyClient(t, p)
	k, stop := start(t, pc)
	defer stop()
	converged(t, ctx, c, k, 2)

	// Cut the follower off; meanwhile the log moves on, old events are
	// trimmed and etcd compacts the history the watch would resume from.
	p.SetDown(true)
	mustAppend(t, ctx, l, logtest.Added("b", "192.168.1.2", "10.244.2.0/24"))
	mustAppend(t, ctx, l, logtest.Added("c", "192.168.1.3", "10.244.3.0/24"))
	mustAppend(t, ctx, l, logtest.Removed("a"))
	if err := l.Trim(ctx, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := etcdtest.Compact(ctx, c); err != nil {
		t.Fatal(err)
	}
	p.SetDown(false)
	converged(t, ctx, c, k, 5)
	if k.count(ReasonCompacted) != 1 || k.s.Node("a") != nil || k.s.Len() != 2 {
		t.Fatalf("relists %v, state %s", k.relists, k.s)
	}
}

func TestUnreachableAtStartIsRetried(t *testing.T) {
	ctx := context.Background()
	srv, c := etcdtest.New(t)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, ctx, l, logtest.Config(cfg()))
	mustAppend(t, ctx, l, logtest.Added("a", "192.168.1.1", "10.244.1.0/24"))
	u, _ := url.Parse(srv.Endpoints[0])
	p, err := etcdtest.NewProxy(u.Host, true) // etcd unreachable from the start
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	k, stop := start(t, proxyClient(t, p))
	defer stop()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		k.mu.Lock()
		n := len(k.health)
		k.mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no failed list reported")
		}
	}
	k.mu.Lock()
	if k.health[0] == nil || k.s.Applied() != 0 {
		t.Fatalf("health %v applied %d", k.health, k.s.Applied())
	}
	k.mu.Unlock()
	p.SetDown(false)
	converged(t, ctx, c, k, 2)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.health[len(k.health)-1] != nil {
		t.Fatalf("last health report %v", k.health[len(k.health)-1])
	}
}

func proxyClient(t *testing.T, p *etcdtest.Proxy) *clientv3.Client {
	pc, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{p.Endpoint()},
		DialTimeout: time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// TestBadProjectionValue: a list that finds a node value the model cannot
// use reads the retained log for it, so a fresh sink holds the node as
// the log says; when the value changes (repaired), the follower lists
// again within its recheck interval.
func TestBadProjectionValue(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.New(t)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, ctx, l, logtest.Config(cfg()))
	mustAppend(t, ctx, l, logtest.Added("a", "192.168.1.1", "10.244.1.0/24"))
	mustAppend(t, ctx, l, logtest.Added("b", "192.168.1.2", "10.244.2.0/24"))
	good, _ := c.Get(ctx, l.K.Node("a"))
	if _, err := c.Put(ctx, l.K.Node("a"), "not json {"); err != nil {
		t.Fatal(err)
	}
	k := &stateSink{s: model.New()}
	opts := k.opts()
	opts.RecheckInterval = 50 * time.Millisecond
	opts.Quarantined = func() []string {
		k.mu.Lock()
		defer k.mu.Unlock()
		var out []string
		for _, q := range k.s.Quarantined() {
			out = append(out, l.K.Node(q.Node))
		}
		return out
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- New(c, l.K, opts).Run(rctx, k) }()
	defer func() { cancel(); <-done }()
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			k.mu.Lock()
			ok := cond()
			k.mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s: %s", what, k.s)
			}
		}
	}
	wait("a from the log", func() bool {
		a := k.s.Node("a")
		return a != nil && a.UnderlayIp == "192.168.1.1" && a.Seq == 2 && len(k.s.Quarantined()) == 1
	})
	// Repaired: listed again, quarantine over.
	if _, err := c.Put(ctx, l.K.Node("a"), string(good.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}
	wait("repaired value listed", func() bool { return len(k.s.Quarantined()) == 0 })
	if k.count(ReasonChanged) != 1 {
		t.Fatalf("relists %v", k.relists)
	}
}
