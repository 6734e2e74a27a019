package bpf

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

func benchWant(n int) *spec.Desired {
	w := &spec.Desired{
		Mode:          spec.ModeVXLAN,
		Overlay:       &spec.Overlay{Kind: spec.ModeVXLAN, Port: 8472, VNI: 1, MTU: 1450},
		ClusterCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.255.255.0/24")},
		Tunnels:       make([]spec.Tunnel, n),
	}
	for i := range n {
		w.Tunnels[i] = spec.Tunnel{
			Prefix:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			Endpoint: netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)}),
			VNI:      1,
		}
	}
	return w
}

func openBench(b *testing.B) *Datapath {
	netnstest.RequireRoot(b)
	prefix := netnstest.Prefix()
	ns := netnstest.New(b, prefix+"-bench")
	d, err := Open(Config{NetNS: ns.Path(), PinDir: fmt.Sprintf("/sys/fs/bpf/%s-bench", prefix)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Teardown() })
	return d
}

// BenchmarkSyncFromEmpty measures one Sync that fills an empty tunnel map
// with n entries (plus device and route on the first run only: the device
// step is a no-op afterwards because the map is emptied by a Sync that
// keeps the device).
func BenchmarkSyncFromEmpty(b *testing.B) {
	for _, n := range []int{5000, 50000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			d := openBench(b)
			full, empty := benchWant(n), benchWant(0)
			ctx := b.Context()
			if _, err := d.Sync(ctx, empty); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				rep, err := d.Sync(ctx, full)
				if err != nil || rep.Added != n {
					b.Fatalf("sync: %v %+v", err, rep)
				}
				b.StopTimer()
				if _, err := d.Sync(ctx, empty); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(n)*1000, "ns/entry")
			b.Logf("tunnel map batch operations: %v", d.batch)
		})
	}
}

// BenchmarkSyncOneChange measures a Sync that changes one endpoint in a
// map of n entries.
func BenchmarkSyncOneChange(b *testing.B) {
	for _, n := range []int{5000, 50000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			d := openBench(b)
			w1, w2 := benchWant(n), benchWant(n)
			w2.Tunnels[n/2].Endpoint = netip.MustParseAddr("172.31.255.254")
			ctx := b.Context()
			if _, err := d.Sync(ctx, w1); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				w := w1
				if i%2 == 0 {
					w = w2
				}
				rep, err := d.Sync(ctx, w)
				if err != nil || rep.Updated != 1 {
					b.Fatalf("sync: %v %+v", err, rep)
				}
			}
		})
	}
}
