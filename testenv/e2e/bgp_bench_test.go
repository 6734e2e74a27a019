package e2e

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/testenv"
)

// BenchmarkNodeJoin measures, per backend, the time from a node joining (its
// namespace, agent and pod being created) to its pod being reachable
// (ICMP) from a pod on every other node, as the 10th node of a
// two-segment cluster: VXLAN overlay against bgp (eBGP with BIRD 2 as the
// router). Each op adds node 10 and, with the timer stopped, removes it
// again. Reported: ns/op (join → reachable from all), and s-lease (join →
// subnet file written, i.e. the controller's NodeAdded reached the agent).
func BenchmarkNodeJoin(b *testing.B) {
	for _, backend := range []string{"vxlan", "bgp"} {
		b.Run(backend, func(b *testing.B) {
			o := testenv.Options{Nodes: 9, PodsPerNode: 1, Segments: 2, Backend: backend, NodeGrace: 1, LeaseTTL: 2, LogLevel: "info"}
			if backend == "bgp" {
				if _, err := os.Stat(testenv.BIRDPath); err != nil {
					b.Skipf("needs BIRD 2 (Debian package bird2): %v", err)
				}
				o.Config = fmt.Sprintf(`"bgp": {"asn": 64512, "hold_time_seconds": 3, "keepalive_seconds": 1, "peers": [`+
					`{"address": "%s", "asn": %d}, {"address": "%s", "asn": %d}]}`,
					testenv.RouterIP(0), testenv.RouterASN, testenv.RouterIP(1), testenv.RouterASN)
			}
			c := start(b, o)
			b.Cleanup(func() { _ = c.StopBIRD() })
			ctx := context.Background()
			var lease time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				begin := time.Now()
				n, err := c.AddNode(ctx)
				if err != nil {
					b.Fatal(err)
				}
				lease += time.Since(begin) // AddNode returns once the subnet file is there and the pod attached
				waitReachable(b, c, n)
				b.StopTimer()
				if err := c.RemoveNode(ctx, n.Index); err != nil {
					b.Fatal(err)
				}
				// The controller drops it after the lease and grace; wait so
				// the next op joins a 10-node cluster again.
				deadline := time.Now().Add(30 * time.Second)
				for {
					ns, err := c.StoreNodes(ctx)
					if err == nil && len(ns) == o.Nodes {
						break
					}
					if time.Now().After(deadline) {
						b.Fatalf("node %s not removed from the store", n.Name)
					}
					time.Sleep(100 * time.Millisecond)
				}
				b.StartTimer()
			}
			b.ReportMetric(lease.Seconds()/float64(b.N), "s-lease")
		})
	}
}

// waitReachable polls (every 20 ms) until every other node's first pod
// gets an ICMP reply from n's pod.
func waitReachable(b *testing.B, c *testenv.Cluster, n *testenv.Node) {
	b.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	var pending []*testenv.Pod
	for _, other := range c.Nodes() {
		if other != n && len(other.Pods) > 0 {
			pending = append(pending, other.Pods[0])
		}
	}
	dst := n.Pods[0].Addr
	for len(pending) > 0 {
		var mu sync.Mutex
		var still []*testenv.Pod
		var wg sync.WaitGroup
		for _, p := range pending {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
				if testenv.CheckICMP(cctx, p.NS, dst) != nil {
					mu.Lock()
					still = append(still, p)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		pending = still
		if len(pending) > 0 {
			if time.Now().After(deadline) {
				b.Fatalf("%s's pod %s not reachable from %d pods", n.Name, dst, len(pending))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
