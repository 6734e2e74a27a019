package gobgp

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	"github.com/weftnet/weft/testenv/birdtest"
)

const benchNodes = 10

// BenchmarkConvergence measures, per op, the time from one speaker's Apply
// advertising a new prefix to the moment the last of the other nine
// speakers has it as a best route (each child stamps the moment its
// Routes() first contains it). ms/learned-by-all is that latency; ns/op
// also includes the withdraw that resets each round.
func BenchmarkConvergence(b *testing.B) {
	b.Run("mesh", func(b *testing.B) { benchConvergence(b, false) })
	b.Run("bird", func(b *testing.B) { benchConvergence(b, true) })
}

func benchConvergence(b *testing.B, viaBIRD bool) {
	l := newLab(b)
	hub := l.ns("hub")
	var routerAddr netip.Prefix
	if viaBIRD {
		routerAddr = pfx("10.79.0.254/24")
	}
	l.bridge(hub, "br0", routerAddr)
	conf := birdtest.Config{RouterID: routerAddr.Addr(), ASN: 65000}
	nodes := make([]*proc, benchNodes)
	addrs := make([]netip.Addr, benchNodes)
	cfgs := make([]bgp.Config, benchNodes)
	cidrs := make([]netip.Prefix, benchNodes)
	for i := range benchNodes {
		ns := l.ns(fmt.Sprintf("n%d", i))
		addrs[i] = ip(fmt.Sprintf("10.79.0.%d", i+1))
		cidrs[i] = pfx(fmt.Sprintf("10.244.%d.0/24", i+1))
		l.attach(ns, netip.PrefixFrom(addrs[i], 24), hub, "br0", fmt.Sprintf("p%d", i))
		nodes[i] = l.speaker(ns, fmt.Sprintf("n%d", i), "warn")
		conf.Peers = append(conf.Peers, birdtest.Peer{Name: fmt.Sprintf("n%d", i), Neighbor: addrs[i], NeighborASN: uint32(65101 + i)})
	}
	if viaBIRD {
		startBIRD(l, hub, conf)
	}
	for i := range benchNodes {
		cfgs[i] = bgp.Config{RouterID: addrs[i], ASN: 64512, ListenPort: 179, LocalAddress: addrs[i]}
		if viaBIRD {
			cfgs[i].ASN = uint32(65101 + i)
			cfgs[i].Peers = []bgp.Peer{{Address: routerAddr.Addr(), ASN: 65000}}
		} else {
			for j := range benchNodes {
				cfgs[i].Peers = append(cfgs[i].Peers, bgp.Peer{Address: addrs[j]})
			}
		}
		nodes[i].apply(cfgs[i], addrs[i], cidrs[i])
	}
	for i, p := range nodes {
		var want []spec.Route
		for j := range benchNodes {
			if j != i {
				want = append(want, spec.Route{Prefix: cidrs[j]})
			}
		}
		p.wait(60*time.Second, request{Present: want})
	}

	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		extra := pfx(fmt.Sprintf("10.245.%d.0/24", i%250))
		start := time.Now()
		nodes[0].apply(cfgs[0], addrs[0], cidrs[0], extra)
		last, err := waitAll(nodes[1:], request{Op: "wait", TimeoutMS: 30000, Present: []spec.Route{{Prefix: extra}}})
		if err != nil {
			b.Fatal(err)
		}
		total += time.Unix(0, last).Sub(start)
		nodes[0].apply(cfgs[0], addrs[0], cidrs[0])
		if _, err := waitAll(nodes[1:], request{Op: "wait", TimeoutMS: 30000, Absent: []netip.Prefix{extra}}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/learned-by-all")
}

// waitAll runs req on every proc at once and returns the latest At.
func waitAll(ps []*proc, req request) (int64, error) {
	var mu sync.Mutex
	var ats []int64
	var errs []error
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() {
			rep, err := p.call(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
			}
			ats = append(ats, rep.At)
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return 0, errs[0]
	}
	return slices.Max(ats), nil
}
