package cni_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/nodeagent/cni"
	"github.com/weftnet/weft/testenv/netnstest"
)

// BenchmarkAddDel is one pod attach and detach as a runtime does it:
// two plugin processes through libcni, real veth, addresses and routes.
func BenchmarkAddDel(b *testing.B) {
	e := newEnv(b, subnetV4, "1.1.0")
	pod := newNS(b)
	for b.Loop() {
		if _, err := e.add(e.list, "bench", pod); err != nil {
			b.Fatal(err)
		}
		if err := e.del("bench", pod); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFirstPacket is fresh pods that talk at once: ADD through
// libcni, then one UDP datagram to each gateway and to a peer pod (IPv4
// and IPv6) with the kernel's default neighbour settings, until all are
// answered (port unreachable: the read fails with ECONNREFUSED); DEL.
// Pods are added 32 at a time, so the kernel's link-state and addrconf
// work wait for the RTNL lock as on a busy node. ns/pod is the whole
// cycle per pod, add-p50/p99-ms the time ADD took, first-answer-p50/p99/
// max-ms the wait for the answers after ADD returned, and retried/op the
// share of pods that waited more than 500 ms: a lost first ARP request or
// neighbour solicitation (or its answer) costs the one-second retry.
func BenchmarkFirstPacket(b *testing.B) {
	e := newEnv(b, subnetDual, "1.1.0")
	peer, err := e.add(e.list, "peer", newNS(b))
	if err != nil {
		b.Fatal(err)
	}
	targets := []netip.Addr{netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("fd00:10:244:1::1")}
	for _, ipc := range peer.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		targets = append(targets, a.Unmap())
	}
	var waits, adds []time.Duration
	seq := 0
	for b.Loop() {
		// One b.Loop iteration is a batch; ns/op is divided below.
		const batch = 32
		pods := make([]*netnstest.NS, batch)
		for i := range pods {
			seq++
			pod, err := netnstest.Create(fmt.Sprintf("weftcni-%d-bench-%d", os.Getpid(), seq))
			if err != nil {
				b.Fatal(err)
			}
			pods[i] = pod
		}
		got := make([]time.Duration, batch)
		add := make([]time.Duration, batch)
		errs := make([]error, batch)
		var wg sync.WaitGroup
		for i, pod := range pods {
			wg.Go(func() {
				id := fmt.Sprint("bench-", i)
				start := time.Now()
				if _, errs[i] = e.add(e.list, id, pod.Path()); errs[i] != nil {
					return
				}
				add[i] = time.Since(start)
				got[i], errs[i] = firstAnswers(pod.Path(), targets)
				if errs[i] == nil {
					errs[i] = e.del(id, pod.Path())
				}
			})
		}
		wg.Wait()
		for _, pod := range pods {
			pod.Delete()
		}
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
		waits = append(waits, got...)
		adds = append(adds, add...)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(len(waits)), "ns/pod")
	if len(waits) == 0 {
		return
	}
	slices.Sort(waits)
	slices.Sort(adds)
	ms := func(ds []time.Duration, q float64) float64 {
		return float64(ds[int(q*float64(len(ds)-1))].Microseconds()) / 1000
	}
	retried := 0
	for _, w := range waits {
		if w > 500*time.Millisecond {
			retried++
		}
	}
	b.ReportMetric(ms(adds, 0.5), "add-p50-ms")
	b.ReportMetric(ms(adds, 0.99), "add-p99-ms")
	b.ReportMetric(ms(waits, 0.5), "first-answer-p50-ms")
	b.ReportMetric(ms(waits, 0.99), "first-answer-p99-ms")
	b.ReportMetric(ms(waits, 1), "first-answer-max-ms")
	b.ReportMetric(float64(retried)/float64(len(waits)), "retried/op")
}

// BenchmarkStoreReserveRelease is the address store alone: lock, read,
// write+fsync+rename, unlock, twice.
func BenchmarkStoreReserveRelease(b *testing.B) {
	s, _ := cni.OpenStore(b.TempDir())
	ps := []cni.Pool{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("10.244.1.1")}}
	for i := range 100 { // a node with 100 pods
		if _, _, err := s.Reserve(fmt.Sprint("bg-", i), "eth0", ps); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, _, err := s.Reserve("c", "eth0", ps); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Release("c", "eth0"); err != nil {
			b.Fatal(err)
		}
	}
}

// firstAnswers sends one UDP datagram from the pod to port 9 of each
// target and returns how long it took until every target answered with
// port unreachable.
func firstAnswers(podNS string, targets []netip.Addr) (time.Duration, error) {
	var took time.Duration
	err := inNS(podNS, func() error {
		start := time.Now()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for _, dst := range targets {
			c, err := net.Dial("udp", netip.AddrPortFrom(dst, 9).String())
			if err != nil {
				return fmt.Errorf("dial %s: %w", dst, err)
			}
			conns = append(conns, c)
			if _, err := c.Write([]byte("first")); err != nil {
				return fmt.Errorf("send to %s: %w", dst, err)
			}
		}
		for i, c := range conns {
			c.SetReadDeadline(start.Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 16)); !errors.Is(err, unix.ECONNREFUSED) {
				return fmt.Errorf("answer from %s: %v, want connection refused", targets[i], err)
			}
		}
		took = time.Since(start)
		return nil
	})
	return took, err
}
