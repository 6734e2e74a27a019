package controller_test

import (
	"context"
	"fmt"
	"sync"
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
// etcd slowed by a huge value on a loaded machine. It records in st how
// much longer than d an answer took to come (etcd itself slow).
func slowLeaseAnswers(d time.Duration, st *stalls) grpc.DialOption {
	return grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != "/etcdserverpb.Lease/LeaseKeepAlive" {
			return s, err
		}
		return &slowRecv{ClientStream: s, d: d, st: st}, nil
	})
}

type slowRecv struct {
	grpc.ClientStream
	d  time.Duration
	st *stalls

	mu    sync.Mutex
	sent  []time.Time // sends not answered yet
	sends int
}

func (s *slowRecv) SendMsg(m any) error {
	s.mu.Lock()
	s.sent = append(s.sent, time.Now())
	s.sends++
	s.mu.Unlock()
	return s.ClientStream.SendMsg(m)
}

// RecvMsg waits d before each answer, or until the stream ends: a
// sleep that ignored the stream made closing the client wait out every
// answer still queued.
func (s *slowRecv) RecvMsg(m any) error {
	select {
	case <-time.After(s.d):
	case <-s.Context().Done():
	}
	err := s.ClientStream.RecvMsg(m)
	s.mu.Lock()
	if err == nil && len(s.sent) > 0 {
		// Only a stream of one renewal (KeepAliveOnce's) measures
		// etcd: on the session's stream answers queue behind the
		// injected delay.
		if s.sends == 1 {
			s.st.note(time.Since(s.sent[0]) - s.d)
		}
		s.sent = s.sent[1:]
	}
	s.mu.Unlock()
	return err
}

// stalls is the longest time the test process (a 10 ms heartbeat
// woke late) or etcd (an answer came later than injected) stood still.
type stalls struct {
	mu      sync.Mutex
	longest time.Duration
}

func (s *stalls) note(d time.Duration) {
	s.mu.Lock()
	s.longest = max(s.longest, d)
	s.mu.Unlock()
}

func (s *stalls) get() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.longest
}

// heartbeat notes in st how late a 10 ms ticker wakes, until ctx ends.
func heartbeat(ctx context.Context, st *stalls) {
	const every = 10 * time.Millisecond
	last := time.Now()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			st.note(now.Sub(last) - every)
			last = now
		}
	}
}

// TestSlowLeaseAnswersKeepTheTerm: with the shortest election TTL etcd
// grants (1 s here) and every keepalive answer 800 ms late, the leader
// keeps its term for 6 s (the etcd client's own keepalive sends only a
// third of a TTL after an answer, on a 500 ms tick, and gave up on the
// lease after three late answers: the term ended 2.4 s in); revoking its
// lease by hand still ends the term.
//
// The controller renews every third of a TTL, so the lease lapses only
// if nothing reaches etcd for two thirds of a TTL (667 ms): the test
// process (etcd runs in it) starved that long, or etcd stalled, as on a
// machine under extreme load. Such an attempt proves nothing either
// way: when the term ended and a stall that long was measured (a
// heartbeat that woke late, an answer later than injected), the test
// says so and tries again, up to three attempts; a term that ended
// without one fails at once. The TTL stays 1 s: the session keepalive's
// failure needs a TTL that short against its 500 ms tick.
func TestSlowLeaseAnswersKeepTheTerm(t *testing.T) {
	const (
		ttl    = time.Second
		margin = (ttl - ttl/3) / time.Millisecond * time.Millisecond
	)
	for attempt := 1; ; attempt++ {
		stalled, err := slowLeaseAttempt(t, ttl)
		if err == nil {
			return
		}
		if stalled <= margin || attempt == 3 {
			t.Fatalf("attempt %d: %v (longest stall of the process or etcd: %v, margin %v)", attempt, err, stalled.Round(time.Millisecond), margin)
		}
		t.Logf("attempt %d: %v, but the process or etcd stood still for %v (more than the lease's margin of %v): again", attempt, err, stalled.Round(time.Millisecond), margin)
	}
}

// slowLeaseAttempt is one run of TestSlowLeaseAnswersKeepTheTerm's
// scenario: the error says what went wrong, the duration is the longest
// stall measured while the term was held.
func slowLeaseAttempt(t *testing.T, ttl time.Duration) (time.Duration, error) {
	srv, _ := etcdtest.New(t)
	st := &stalls{}
	c, err := clientv3.New(clientv3.Config{
		Endpoints: srv.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{slowLeaseAnswers(ttl*8/10, st)},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the controller stops (cleanups run last in, first out).
	t.Cleanup(func() { c.Close() })
	m, metric := newMetrics(t)
	r := startWith(t, controller.Options{Client: c, ID: "c1", Initial: baseConfig(), Metrics: m, ElectionTTL: ttl})
	defer r.stop()
	eventually(t, "c1 leads", 10*time.Second, r.c.IsLeader)
	hctx, stopBeat := context.WithCancel(context.Background())
	defer stopBeat()
	st.mu.Lock()
	st.longest = 0 // stalls before the term are not the term's
	st.mu.Unlock()
	go heartbeat(hctx, st)
	led := time.Now()
	for end := led.Add(6 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !r.c.IsLeader() || metric("weft_controller_terms_ended_total") > 0 {
			return st.get(), fmt.Errorf("the term ended %v in while lease answers were slow", time.Since(led).Round(time.Millisecond))
		}
	}
	stopBeat()
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
	return 0, nil
}
