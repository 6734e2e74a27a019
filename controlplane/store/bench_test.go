package store_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/weftnet/weft/controlplane/store"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// BenchmarkAppend measures events appended per second to a real embedded
// etcd: one event per transaction, and batches of 40 (as bulk joins are).
func BenchmarkAppend(b *testing.B) {
	for _, batch := range []int{1, 40} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			_, c := etcdtest.New(b)
			ctx := context.Background()
			s, err := store.Open(ctx, c, k, store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Append(ctx, cfgEvent()); err != nil {
				b.Fatal(err)
			}
			iter, events := 0, 0
			for b.Loop() {
				// Nodes join, then leave, so the projection stays small.
				evs := make([]*weftv1.Event, batch)
				for j := range evs {
					if iter%2 == 0 {
						evs[j] = added(fmt.Sprintf("n%d", j), j)
					} else {
						evs[j] = removed(fmt.Sprintf("n%d", j))
					}
				}
				iter++
				n, err := s.Append(ctx, evs...)
				if err != nil {
					b.Fatal(err)
				}
				events += n
			}
			b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
