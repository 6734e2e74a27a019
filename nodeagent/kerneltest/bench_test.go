package kerneltest

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
)

func startAgent(b *testing.B, l *logtest.Log, dp nodeagent.Datapath) func() {
	a, err := nodeagent.New(nodeagent.Config{Client: l.C, NodeName: "node-00000", Datapath: dp})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// BenchmarkEventToProgrammedBPF: a NodeAdded committed to etcd until the
// agent's Sync has written the entry into the real tunnel map, with 1,000
// nodes in the cluster. Includes the etcd transaction.
func BenchmarkEventToProgrammedBPF(b *testing.B) {
	ns, pinDir := newNode(b)
	ctx := context.Background()
	l, err := logtest.New(ctx, logtest.StartEtcdProcess(b), "/weft")
	if err != nil {
		b.Fatal(err)
	}
	if err := l.SeedSynthetic(ctx, 1, 1000); err != nil {
		b.Fatal(err)
	}
	dp := openIn(b, ns, bpf.Config{PinDir: pinDir, Underlay: "ul0"})
	defer dp.Close()
	synced := make(chan int, 1024)
	dp.onSync = func(d *spec.Desired) { synced <- len(d.Tunnels) }
	stop := startAgent(b, l, dp)
	defer stop()
	logtest.BenchEventToSync(b, l, synced, 1000)
	if got := len(tunnelKeys(b, pinDir)); got != 1000+b.N-1 {
		b.Fatalf("tunnel map holds %d entries, want %d", got, 1000+b.N-1)
	}
}

// BenchmarkColdStart5000BPF: an agent starting on a fresh node (no device,
// no pins) against a projection of 5,000 nodes, until its first Sync has
// created the device, the route, attached the programs and written 4,999
// tunnel entries. Each iteration tears the datapath down first.
func BenchmarkColdStart5000BPF(b *testing.B) {
	ns, pinDir := newNode(b)
	ctx := context.Background()
	l, err := logtest.New(ctx, logtest.StartEtcdProcess(b), "/weft")
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
		b.StopTimer()
		os.RemoveAll(pinDir)
		dp := openIn(b, ns, bpf.Config{PinDir: pinDir, Underlay: "ul0"})
		done := make(chan struct{}, 1)
		dp.onSync = func(d *spec.Desired) {
			if len(d.Tunnels) == 4999 {
				done <- struct{}{}
			}
		}
		b.StartTimer()
		start := time.Now()
		stop := startAgent(b, l, dp)
		<-done
		lat = append(lat, time.Since(start))
		b.StopTimer()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap = max(heap, ms.HeapInuse)
		rss = max(rss, logtest.VmRSS())
		stop()
		if got := len(tunnelKeys(b, pinDir)); got != 4999 {
			b.Fatalf("tunnel map holds %d entries", got)
		}
		if err := dp.Teardown(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	logtest.ReportLatency(b, lat, "ms")
	// The whole benchmark process (etcd runs in a child): the agent with
	// 5,000 nodes, its client, the datapath's fds and the test harness.
	b.ReportMetric(float64(heap)/(1<<20), "heap-MB")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MB")
}
