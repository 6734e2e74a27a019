package e2e

import (
	"io"
	"net"
	"net/netip"
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
		conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(dst, port).String(), 5*time.Second)
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
