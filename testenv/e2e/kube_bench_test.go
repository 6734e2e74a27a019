package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/weftnet/weft/testenv/kube"
	"github.com/weftnet/weft/testenv/netnstest"
)

// BenchmarkKubePodLifecycle measures, on real Kubernetes components with
// weft deployed from deploy/kubernetes/ (2 nodes), over 20 pods created
// one at a time on node 0:
//   - ready: pod created through the API → its IP (from the pod's status)
//     answers ICMP echo from a pod on node 1 (median and p99);
//   - free: pod deleted through the API → its address is free again in
//     node 0's weft-cni store (median).
//
// Run: go test -run '^$' -bench BenchmarkKubePodLifecycle -benchtime 1x ./testenv/e2e/
func BenchmarkKubePodLifecycle(b *testing.B) {
	c := startKube(b, kube.Options{Nodes: 2, PodsPerNode: 1})
	ctx := context.Background()
	nodes := c.KubeNodes()
	from, err := netnstest.Open(podOn(c, nodes[1]).NS)
	if err != nil {
		b.Fatal(err)
	}
	defer from.Close()
	pinger, err := netnstest.NewPinger(from, false)
	if err != nil {
		b.Fatal(err)
	}
	defer pinger.Close()
	seq := 0
	const pods = 20
	var ready, free []time.Duration
	for i := 0; i < b.N; i++ {
		for j := 0; j < pods; j++ {
			name := fmt.Sprintf("%s-p%d", nodes[0].Name, 100+j)
			start := time.Now()
			p, err := c.CreatePod(ctx, nodes[0], name, nil)
			if err != nil {
				b.Fatal(err)
			}
			ip, err := c.WaitPodIP(ctx, p, 2*time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			for seq++; pinger.Ping(ip, seq, 20*time.Millisecond) != nil; seq++ {
				if time.Since(start) > 2*time.Minute {
					b.Fatalf("pod %s (%s) never answered", name, ip)
				}
			}
			ready = append(ready, time.Since(start))
			start = time.Now()
			if err := c.DeletePodNoWait(ctx, p); err != nil {
				b.Fatal(err)
			}
			for {
				l, err := nodes[0].Leases()
				if err != nil {
					b.Fatal(err)
				}
				if !leased(l, ip) {
					break
				}
				if time.Since(start) > 2*time.Minute {
					b.Fatalf("address %s of %s never freed", ip, name)
				}
				time.Sleep(10 * time.Millisecond)
			}
			free = append(free, time.Since(start))
			if err := c.WaitPodGone(ctx, name, time.Minute); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(quantile(ready, 0.5).Seconds()*1000, "ready-median-ms")
	b.ReportMetric(quantile(ready, 0.99).Seconds()*1000, "ready-p99-ms")
	b.ReportMetric(quantile(free, 0.5).Seconds()*1000, "free-median-ms")
	b.Logf("ready: %v", ready)
	b.Logf("free: %v", free)
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}
