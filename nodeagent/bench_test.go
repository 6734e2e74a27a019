package nodeagent

import (
	"context"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/internal/fakedp"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func benchUnderlay() spec.Underlay {
	u := testUnderlay()
	u.IP = mustAddr("10.0.0.1")
	return u
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func newBenchAgent(b *testing.B, c *clientv3.Client, name string, dp Datapath) *Agent {
	// The defaults weft-agent runs with.
	a, err := New(Config{Client: c, NodeName: name, Datapath: dp})
	if err != nil {
		b.Fatal(err)
	}
	return a
}

func runBenchAgent(b *testing.B, a *Agent) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// BenchmarkEventToProgrammed: a NodeAdded committed to etcd until the
// agent has synced the tunnel entry into its (fake) datapath, with 1,000
// nodes in the cluster. The time includes the etcd transaction.
func BenchmarkEventToProgrammed(b *testing.B) {
	ctx := context.Background()
	c := logtest.StartEtcdProcess(b)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		b.Fatal(err)
	}
	if err := l.SeedSynthetic(ctx, 1, 1000); err != nil {
		b.Fatal(err)
	}
	dp := fakedp.New(benchUnderlay())
	synced := make(chan int, 1024)
	dp.OnSync = func(d *spec.Desired) { synced <- len(d.Tunnels) }
	stop := runBenchAgent(b, newBenchAgent(b, c, "node-00000", dp))
	defer stop()
	logtest.BenchEventToSync(b, l, synced, 1000)
}

// BenchmarkColdStart5000: an agent starting against a projection of 5,000
// nodes, until its first Sync (4,999 tunnel entries) returned, with the
// fake datapath; then the agent's heap and the process RSS (etcd runs in
// a child process).
func BenchmarkColdStart5000(b *testing.B) {
	ctx := context.Background()
	c := logtest.StartEtcdProcess(b)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		b.Fatal(err)
	}
	if err := l.SeedSynthetic(ctx, 5000, 5000); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	var heap, rss uint64
	b.ResetTimer()
	for range b.N {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		dp := fakedp.New(benchUnderlay())
		done := make(chan struct{}, 1)
		dp.OnSync = func(d *spec.Desired) {
			if len(d.Tunnels) == 4999 {
				done <- struct{}{}
			}
		}
		start := time.Now()
		stop := runBenchAgent(b, newBenchAgent(b, c, "node-00000", dp))
		<-done
		lat = append(lat, time.Since(start))
		b.StopTimer()
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap = max(heap, after.HeapInuse-min(after.HeapInuse, before.HeapInuse))
		rss = max(rss, logtest.VmRSS())
		stop()
		b.StartTimer()
	}
	b.StopTimer()
	logtest.ReportLatency(b, lat, "ms")
	b.ReportMetric(float64(heap)/(1<<20), "heap-MB")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MB")
}

// cpuTime is the user+system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkThousandFollowers: 1,000 complete agents (registration, lease,
// status, follower, model, converge loop) in one process, with fake
// datapaths, against one etcd (in a child process). Each iteration
// appends one NodeAdded and waits until every agent has synced it; the
// metrics are over all agents' latencies.
func BenchmarkThousandFollowers(b *testing.B) {
	const agents, perClient = 1000, 100
	ctx := context.Background()
	c := logtest.StartEtcdProcess(b)
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		b.Fatal(err)
	}
	var nodes []*weftv1.Node
	for i := range agents {
		nodes = append(nodes, logtest.SyntheticNode(i))
	}
	if err := l.Seed(ctx, 1, logtest.SyntheticConfig(), nodes); err != nil {
		b.Fatal(err)
	}
	var clients []*clientv3.Client
	for range agents / perClient {
		cc, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: c.GetLogger()})
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Close()
		clients = append(clients, cc)
	}

	var mu sync.Mutex
	var target atomic.Int64 // tunnel count that means "synced the new node"
	var targetSeq atomic.Uint64
	var applied []time.Duration
	var pendingApplied sync.WaitGroup
	var start atomic.Int64 // unix nanos of the current append
	var lat []time.Duration
	var pending sync.WaitGroup
	var ready sync.WaitGroup
	ready.Add(agents)
	var stops []func()
	for i := range agents {
		dp := fakedp.New(spec.Underlay{IP: mustAddr(logtest.SyntheticNode(i).UnderlayIp), MTU: 1500})
		var seenReady, seen atomic.Int64
		dp.OnSync = func(d *spec.Desired) {
			n := int64(len(d.Tunnels))
			if n == agents-1 && seenReady.CompareAndSwap(0, 1) {
				ready.Done()
			}
			if t := target.Load(); n == t && seen.Swap(t) != t {
				mu.Lock()
				lat = append(lat, time.Duration(time.Now().UnixNano()-start.Load()))
				mu.Unlock()
				pending.Done()
			}
		}
		a := newBenchAgent(b, clients[i/perClient], logtest.SyntheticNode(i).Name, dp)
		a.onApplied = func(seq uint64) {
			if seq == targetSeq.Load() {
				mu.Lock()
				applied = append(applied, time.Duration(time.Now().UnixNano()-start.Load()))
				mu.Unlock()
				pendingApplied.Done()
			}
		}
		stops = append(stops, runBenchAgent(b, a))
	}
	defer func() {
		var wg sync.WaitGroup
		for _, s := range stops {
			wg.Go(s)
		}
		wg.Wait()
	}()
	ready.Wait()
	// Steady state: every agent registered and reported once.
	for {
		r, err := c.Get(ctx, keys.New("").Statuses(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			b.Fatal(err)
		}
		if r.Count == agents {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	var all, allApplied []time.Duration
	var worst, worstApplied []time.Duration
	var cpu time.Duration
	b.ResetTimer()
	for i := range b.N {
		n := agents + i
		// Let the previous event's status writes (debounced by
		// DefaultStatusMinInterval plus jitter) finish: each event is
		// measured arriving in a quiet cluster.
		b.StopTimer()
		time.Sleep(DefaultStatusMinInterval * 2)
		b.StartTimer()
		mu.Lock()
		lat, applied = lat[:0], applied[:0]
		mu.Unlock()
		pending.Add(agents)
		pendingApplied.Add(agents)
		target.Store(int64(n))
		targetSeq.Store(l.Head() + 1)
		cpu0 := cpuTime()
		start.Store(time.Now().UnixNano())
		if _, err := l.Append(ctx, logtest.Added(logtest.SyntheticNode(n).Name, logtest.SyntheticNode(n).UnderlayIp, logtest.SyntheticPodCIDR(n))); err != nil {
			b.Fatal(err)
		}
		pending.Wait()
		pendingApplied.Wait()
		cpu += cpuTime() - cpu0
		mu.Lock()
		all = append(all, lat...)
		worst = append(worst, logtest.Percentile(lat, 1))
		allApplied = append(allApplied, applied...)
		worstApplied = append(worstApplied, logtest.Percentile(applied, 1))
		mu.Unlock()
	}
	b.StopTimer()
	// Per agent: event committed → folded into the model (applied), and →
	// synced into its datapath. Per event: the slowest of the 1,000.
	logtest.ReportLatency(b, all, "synced-ms")
	b.ReportMetric(float64(logtest.Percentile(allApplied, 0.5).Microseconds())/1000, "p50-applied-ms")
	b.ReportMetric(float64(logtest.Percentile(allApplied, 0.99).Microseconds())/1000, "p99-applied-ms")
	b.ReportMetric(float64(logtest.Percentile(worstApplied, 0.99).Microseconds())/1000, "p99-event-all-applied-ms")
	b.ReportMetric(float64(logtest.Percentile(worst, 0.99).Microseconds())/1000, "p99-event-all-synced-ms")
	// CPU this process (1,000 agents) spent per event, independent of how
	// busy the machine is; etcd's own CPU is in its child process.
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/event")
}
