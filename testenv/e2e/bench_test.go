package e2e

import (
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weftnet/weft/testenv"
)

// BenchmarkPodTCP measures pod-to-pod TCP between two nodes for each
// backend in one run: plain kernel routing (testenv's own routes, no
// weft, the baseline), weft's VXLAN overlay and weft's native routing.
// Throughput: 1 MiB written per op to the pod's discard server (MB/s).
// RoundTrip: one byte to the echo server and back per op (ns/op = RTT).
func BenchmarkPodTCP(b *testing.B) {
	for _, backend := range []string{testenv.BackendKernel, "vxlan", "native"} {
		b.Run(backend, func(b *testing.B) {
			c := start(b, testenv.Options{Nodes: 2, PodsPerNode: 1, Backend: backend, Config: backendConfig(backend)})
			from, to := c.Node(0).Pods[0], c.Node(1).Pods[0]
			b.Run("Throughput", func(b *testing.B) { benchThroughput(b, from.NS, to.Addr) })
			b.Run("RoundTrip", func(b *testing.B) { benchRoundTrip(b, from.NS, to.Addr) })
		})
	}
}

func backendConfig(backend string) string {
	if backend == "native" {
		return `"auto_direct_node_routes": true`
	}
	return ""
}

func dialPod(b *testing.B, ns string, dst netip.Addr, port uint16) net.Conn {
	var conn net.Conn
	err := testenv.InNS(ns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(dst, port).String(), 5*time.Second)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return conn
}

func benchThroughput(b *testing.B, ns string, dst netip.Addr) {
	conn := dialPod(b, ns, dst, testenv.DiscardPort)
	defer conn.Close()
	chunk := make([]byte, 1<<20)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := conn.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
}

func benchRoundTrip(b *testing.B, ns string, dst netip.Addr) {
	conn := dialPod(b, ns, dst, testenv.EchoPort)
	defer conn.Close()
	one := []byte{1}
	buf := make([]byte, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := conn.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPodTCPFamilies measures pod-to-pod TCP between the same two
// pods of one dual-stack cluster over IPv4 and over IPv6, side by side:
// each op (a round) writes 32 MiB to the other pod's discard server and
// does 200 one-byte round trips over each family, IPv4 first in even
// rounds and IPv6 first in odd ones, so both families see the same
// machine load. vxlan: IPv6 pods cross the IPv4 underlay in the tunnel;
// native: each family is routed via the peer's underlay address of that
// family. Reported: MB/s and round-trip µs per family over all rounds,
// and the median of the rounds' IPv6 ÷ IPv4 throughput and round-trip
// ratios (a round's ratio compares two measurements taken moments apart).
func BenchmarkPodTCPFamilies(b *testing.B) {
	for _, backend := range []string{"vxlan", "native"} {
		b.Run(backend, func(b *testing.B) {
			c := start(b, testenv.Options{Nodes: 2, PodsPerNode: 1, Backend: backend, IPFamily: testenv.FamilyDual, Config: backendConfig(backend)})
			from, to := c.Node(0).Pods[0], c.Node(1).Pods[0]
			type fam struct {
				name       string
				data, echo net.Conn
				bytes      float64
				took, rtt  time.Duration
			}
			var fams []*fam
			for _, v6 := range []bool{false, true} {
				f := &fam{name: "IPv4"}
				if v6 {
					f.name = "IPv6"
				}
				f.data = dialPod(b, from.NS, to.AddrOf(v6), testenv.DiscardPort)
				defer f.data.Close()
				f.echo = dialPod(b, from.NS, to.AddrOf(v6), testenv.EchoPort)
				defer f.echo.Close()
				fams = append(fams, f)
			}
			chunk := make([]byte, 1<<20)
			one, buf := []byte{1}, make([]byte, 1)
			const chunks, trips = 32, 200
			var tputRatios, rttRatios []float64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var took, rtt [2]time.Duration
				for k := range fams {
					j := (k + i) % 2 // which family goes first alternates
					f := fams[j]
					begin := time.Now()
					for range chunks {
						if _, err := f.data.Write(chunk); err != nil {
							b.Fatal(err)
						}
					}
					took[j] = time.Since(begin)
					f.took += took[j]
					f.bytes += chunks * float64(len(chunk))
					begin = time.Now()
					for range trips {
						if _, err := f.echo.Write(one); err != nil {
							b.Fatal(err)
						}
						if _, err := io.ReadFull(f.echo, buf); err != nil {
							b.Fatal(err)
						}
					}
					rtt[j] = time.Since(begin)
					f.rtt += rtt[j]
				}
				// Throughput ratio: IPv6 bytes per second over IPv4's, the
				// same bytes each, so IPv4's time over IPv6's.
				tputRatios = append(tputRatios, took[0].Seconds()/took[1].Seconds())
				rttRatios = append(rttRatios, rtt[1].Seconds()/rtt[0].Seconds())
			}
			b.StopTimer()
			for _, f := range fams {
				b.ReportMetric(f.bytes/1e6/f.took.Seconds(), f.name+"-MB/s")
				b.ReportMetric(float64(f.rtt.Microseconds())/float64(b.N*trips), f.name+"-rtt-µs")
			}
			b.ReportMetric(median(tputRatios), "IPv6/IPv4-MB/s")
			b.ReportMetric(median(rttRatios), "IPv6/IPv4-rtt")
		})
	}
}

// median of xs (not empty); xs is sorted in place.
func median(xs []float64) float64 {
	slices.Sort(xs)
	if n := len(xs); n%2 == 0 {
		return (xs[n/2-1] + xs[n/2]) / 2
	}
	return xs[len(xs)/2]
}
