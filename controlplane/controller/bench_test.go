package controller_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// BenchmarkRegister5000 measures the time from the first of 5,000
// registrations (written by 50 clients' transactions of 100 at once) to
// the last NodeAdded in the log, with the embedded etcd on the same
// machine. It also reports the bytes the store holds per node (keys and
// values of the log, projection, guards and registrations).
func BenchmarkRegister5000(b *testing.B) {
	const n = 5000
	for b.Loop() {
		b.StopTimer()
		srv, err := etcdtest.Start(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		c, err := srv.Client()
		if err != nil {
			b.Fatal(err)
		}
		ctl := controller.New(controller.Options{Client: c, Layout: k, ElectionTTL: 5 * time.Second,
			Initial: &weftv1.ClusterConfig{ClusterCidr: "10.0.0.0/8", NodeMaskSize: 24}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = ctl.Run(ctx) }()
		for !ctl.IsLeader() {
			time.Sleep(5 * time.Millisecond)
		}
		lease, err := c.Grant(ctx, 600)
		if err != nil {
			b.Fatal(err)
		}
		regs := make([][]clientv3.Op, 0, n/100)
		for i := 0; i < n; i += 100 {
			var ops []clientv3.Op
			for j := i; j < i+100; j++ {
				r := &weftv1.Registration{Name: fmt.Sprintf("node-%05d", j), UnderlayIp: fmt.Sprintf("172.16.%d.%d", j/250, j%250+1),
					VtepMac: "02:00:00:00:00:01", Capabilities: []string{"tcx"}}
				ops = append(ops, clientv3.OpPut(k.Registration(r.Name), keys.EncodeString(r), clientv3.WithLease(lease.ID)))
			}
			regs = append(regs, ops)
		}
		b.StartTimer()
		start := time.Now()
		errs := make(chan error, len(regs))
		for _, ops := range regs {
			go func() { _, err := c.Txn(ctx).Then(ops...).Commit(); errs <- err }()
		}
		for range regs {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		for {
			r, err := c.Get(ctx, k.Head())
			if err != nil {
				b.Fatal(err)
			}
			if len(r.Kvs) > 0 && string(r.Kvs[0].Value) == keys.FormatHead(n+1) {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		took := time.Since(start)
		b.StopTimer()
		b.ReportMetric(took.Seconds(), "s/5000-nodes")
		var bytes int
		r, err := c.Get(ctx, k.Root(), clientv3.WithPrefix())
		if err != nil {
			b.Fatal(err)
		}
		for _, kv := range r.Kvs {
			bytes += len(kv.Key) + len(kv.Value)
		}
		b.ReportMetric(float64(bytes)/n, "bytes/node")
		if st, err := c.Status(ctx, srv.Endpoints[0]); err == nil {
			b.ReportMetric(float64(st.DbSizeInUse)/n, "db-bytes/node")
		}
		cancel()
		<-done
		c.Close()
		srv.Close()
		b.StartTimer()
	}
}

// BenchmarkJoin: one registration written into a quiet cluster of 1,000
// nodes until its NodeAdded is in the log (seen by a watch on the head),
// side by side with a plain put of the same etcd (one raft commit and
// fsync, the floor of the append): commit-ratio is the join's median
// over the commit's.
func BenchmarkJoin(b *testing.B) {
	const existing = 1000
	srv, err := etcdtest.Start(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	c, err := srv.Client()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctl := controller.New(controller.Options{Client: c, Layout: k, ElectionTTL: 5 * time.Second,
		Initial: &weftv1.ClusterConfig{ClusterCidr: "10.0.0.0/8", NodeMaskSize: 24}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ctl.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for !ctl.IsLeader() {
		time.Sleep(5 * time.Millisecond)
	}
	lease, err := c.Grant(ctx, 3600)
	if err != nil {
		b.Fatal(err)
	}
	reg := func(i int) clientv3.Op {
		r := &weftv1.Registration{Name: fmt.Sprintf("node-%05d", i), UnderlayIp: fmt.Sprintf("172.16.%d.%d", i/250, i%250+1),
			VtepMac: "02:00:00:00:00:01", Capabilities: []string{"tcx"}}
		return clientv3.OpPut(k.Registration(r.Name), keys.EncodeString(r), clientv3.WithLease(lease.ID))
	}
	var ops []clientv3.Op
	for i := range existing {
		ops = append(ops, reg(i))
		if len(ops) == 100 {
			if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
				b.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	heads := c.Watch(ctx, k.Head())
	waitHead := func(want uint64) {
		for {
			r, err := c.Get(ctx, k.Head())
			if err != nil {
				b.Fatal(err)
			}
			if len(r.Kvs) > 0 && string(r.Kvs[0].Value) == keys.FormatHead(want) {
				return
			}
			<-heads
		}
	}
	waitHead(existing + 1)

	var join, commit []time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		time.Sleep(50 * time.Millisecond) // quiet: the controller is idle
		start := time.Now()
		if _, err := c.Put(ctx, "/bench-commit", fmt.Sprint(i)); err != nil {
			b.Fatal(err)
		}
		commit = append(commit, time.Since(start))
		b.StartTimer()
		start = time.Now()
		if _, err := c.Txn(ctx).Then(reg(existing + i)).Commit(); err != nil {
			b.Fatal(err)
		}
		for seen := false; !seen; {
			resp := <-heads
			for _, ev := range resp.Events {
				seen = seen || string(ev.Kv.Value) == keys.FormatHead(uint64(existing+2+i))
			}
		}
		join = append(join, time.Since(start))
	}
	b.StopTimer()
	p50 := func(d []time.Duration) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[len(s)/2].Microseconds()) / 1000
	}
	p99 := func(d []time.Duration) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[(len(s)*99+99)/100-1].Microseconds()) / 1000
	}
	b.ReportMetric(p50(join), "p50-join-ms")
	b.ReportMetric(p99(join), "p99-join-ms")
	b.ReportMetric(p50(commit), "p50-commit-ms")
	b.ReportMetric(p50(join)/p50(commit), "commit-ratio")
}
