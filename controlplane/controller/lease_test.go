package controller_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// slowLeaseAnswers delays every answer on a lease keepalive stream by d:
// the renewals reach etcd on time, their answers come late, as from an
// etcd slowed by a huge value on a loaded machine.
func slowLeaseAnswers(d time.Duration) grpc.DialOption {
	return grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != "/etcdserverpb.Lease/LeaseKeepAlive" {
			return s, err
		}
		return slowRecv{ClientStream: s, d: d}, nil
	})
}

type slowRecv struct {
	grpc.ClientStream
	d time.Duration
}

func (s slowRecv) RecvMsg(m any) error {
	time.Sleep(s.d)
	return s.ClientStream.RecvMsg(m)
}

// TestSlowLeaseAnswersKeepTheTerm: with the shortest election TTL etcd
// grants (1 s here) and every keepalive answer 800 ms late, the leader
// keeps its term for 6 s (the etcd client's own keepalive sends only a
// third of a TTL after an answer, on a 500 ms tick, so it renewed about
// every 1.5 s: etcd let the lease lapse and the term ended); revoking
// its lease by hand still ends the term.
func TestSlowLeaseAnswersKeepTheTerm(t *testing.T) {
	srv, _ := etcdtest.New(t)
	c, err := clientv3.New(clientv3.Config{
		Endpoints: srv.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{slowLeaseAnswers(800 * time.Millisecond)},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m, metric := newMetrics(t)
	r := startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), Metrics: m, ElectionTTL: time.Second})
	eventually(t, "c1 leads", 10*time.Second, r.c.IsLeader)
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !r.c.IsLeader() || metric("weft_controller_terms_ended_total") > 0 {
			t.Fatalf("the term ended while lease answers were slow")
		}
	}
	ctx := context.Background()
	got, err := c.Get(ctx, k.Election()+"/", clientv3.WithPrefix())
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("election keys %v: %v", got, err)
	}
	if _, err := c.Revoke(ctx, clientv3.LeaseID(got.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the term ends once its lease is gone", 10*time.Second, func() bool {
		return metric("weft_controller_terms_ended_total") > 0
	})
}
