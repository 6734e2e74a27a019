package e2e

import (
	"context"
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
// Throughput: 1 MiB echoed per op (MB/s counts the bytes once; they cross
// the path in both directions). RoundTrip: one byte there and back per op.
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

func dialPod(b *testing.B, ns string, dst netip.Addr) net.Conn {
	var conn net.Conn
	err := testenv.InNS(ns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(dst, testenv.EchoPort).String(), 5*time.Second)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return conn
}

func benchThroughput(b *testing.B, ns string, dst netip.Addr) {
	conn := dialPod(b, ns, dst)
	defer conn.Close()
	chunk := make([]byte, 1<<20)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < b.N; i++ {
			if _, err := conn.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	if _, err := io.CopyN(io.Discard, conn, int64(b.N)*int64(len(chunk))); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

func benchRoundTrip(b *testing.B, ns string, dst netip.Addr) {
	conn := dialPod(b, ns, dst)
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
	_ = context.Background
}
