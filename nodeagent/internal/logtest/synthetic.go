package logtest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// SyntheticNode is the n-th node of the agent's benchmarks: underlay
// addresses in 10.0.0.0/8, a /26 pod CIDR in 172.16.0.0/12 (room for
// 16,384 nodes; see SyntheticConfig).
func SyntheticNode(n int) *weftv1.Node {
	return &weftv1.Node{
		Name:       fmt.Sprintf("node-%05d", n),
		UnderlayIp: fmt.Sprintf("10.%d.%d.%d", n/62500, (n/250)%250, n%250+1),
		PodCidrs:   []string{SyntheticPodCIDR(n)},
	}
}

// SyntheticPodCIDR is SyntheticNode(n)'s pod CIDR.
func SyntheticPodCIDR(n int) string {
	// 172.16.0.0/12 holds 2^14 /26s.
	base := 172<<24 | 16<<16 | n<<6
	return fmt.Sprintf("%d.%d.%d.%d/26", base>>24&255, base>>16&255, base>>8&255, base&255)
}

// SyntheticConfig is the cluster config of the synthetic nodes.
func SyntheticConfig() *weftv1.ClusterConfig {
	return &weftv1.ClusterConfig{ClusterCidr: "172.16.0.0/12", NodeMaskSize: 26}
}

// Percentile is the p-th (0..1) smallest of d, 0 when d is empty.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// ReportLatency reports the median, p99 and maximum of d in
// milliseconds as p50-<unit>, p99-<unit> and max-<unit>.
func ReportLatency(b *testing.B, d []time.Duration, unit string) {
	b.ReportMetric(float64(Percentile(d, 0.5).Microseconds())/1000, "p50-"+unit)
	b.ReportMetric(float64(Percentile(d, 0.99).Microseconds())/1000, "p99-"+unit)
	b.ReportMetric(float64(Percentile(d, 1).Microseconds())/1000, "max-"+unit)
}

// SeedSynthetic seeds l with SyntheticConfig and SyntheticNode(0..n-1),
// head at head.
func (l *Log) SeedSynthetic(ctx context.Context, head uint64, n int) error {
	nodes := make([]*weftv1.Node, n)
	for i := range nodes {
		nodes[i] = SyntheticNode(i)
	}
	return l.Seed(ctx, head, SyntheticConfig(), nodes)
}

// BenchEventToSync is the body of the event-to-programmed benchmarks: with
// an agent following l, whose datapath sends the tunnel count of every
// Sync to synced, and nodes synthetic nodes in the log, it waits for the
// first full Sync (nodes-1 tunnels), then b.N times appends the NodeAdded
// of the next synthetic node and waits for the Sync that holds it, and
// reports the latency from the append (the etcd transaction included) and
// the p99 of the transaction alone.
func BenchEventToSync(b *testing.B, l *Log, synced <-chan int, nodes int) {
	ctx := context.Background()
	for n := <-synced; n != nodes-1; n = <-synced {
	}
	var lat, commit []time.Duration
	b.ResetTimer()
	for i := range b.N {
		want := nodes + i
		n := SyntheticNode(want)
		start := time.Now()
		if _, err := l.Append(ctx, Added(n.Name, n.UnderlayIp, n.PodCidrs...)); err != nil {
			b.Fatal(err)
		}
		commit = append(commit, time.Since(start))
		for got := <-synced; got != want; got = <-synced {
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	ReportLatency(b, lat, "ms")
	// The etcd transaction alone (with its fsync), part of every latency.
	b.ReportMetric(float64(Percentile(commit, 0.99).Microseconds())/1000, "p99-commit-ms")
}

// VmRSS is the resident set size of this process in bytes (0 when
// /proc/self/status cannot be read).
func VmRSS() uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
