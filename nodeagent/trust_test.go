package nodeagent

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// TestAgentRestartWithBadNodeValueKeepsTheTunnel is issue 11's silent
// blackhole: another node's projected value is broken by hand and this
// node's agent restarts (no last good value in memory). The agent takes
// the node from the retained log, so the tunnel stays; it is degraded
// naming the key (health, metric, status) until the value is repaired,
// which it notices by itself.
func TestAgentRestartWithBadNodeValueKeepsTheTunnel(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.startWithPeer()
	h.stop()
	h.stop = func() {}

	key := keys.New("").Node("n2")
	good, err := c.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, key, "not json {"); err != nil {
		t.Fatal(err)
	}
	h.a = h.newAgent(c)
	h.start()
	st := h.waitStatus("restarted and degraded", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 3 && st.Degraded })
	if !strings.Contains(st.LastError, key) {
		t.Fatalf("status does not name %s: %v", key, st)
	}
	if k := h.dp.Kernel(); len(k.Tunnels) != 1 || k.Tunnels[0].Endpoint != netip.MustParseAddr("192.168.1.2") {
		t.Fatalf("tunnel to n2 lost: %+v", k.Tunnels)
	}
	if code, body := h.healthz(); code != 503 || !strings.Contains(body, key) || !strings.Contains(body, "the log's event 3") {
		t.Fatalf("healthz %d %q", code, body)
	}
	if m := scrape(t, h.a); m["weft_agent_degraded"] != 1 || m["weft_agent_quarantined_keys"] != 1 {
		t.Fatalf("metrics degraded %v quarantined %v", m["weft_agent_degraded"], m["weft_agent_quarantined_keys"])
	}

	// The value is repaired (as the controller does): the agent lists
	// again by itself and is healthy.
	if _, err := c.Put(ctx, key, string(good.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}
	h.waitStatus("healthy after the repair", func(st *weftv1.AgentStatus) bool { return !st.Degraded && st.LastError == "" })
	if code, _ := h.healthz(); code != 200 {
		t.Fatalf("healthz %d after the repair", code)
	}
}

// scrape reads the agent's /metrics into name → value (the last series
// of each name).
func scrape(t testing.TB, a *Agent) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := map[string]float64{}
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err == nil {
			out[name] = v
		}
	}
	return out
}

// TestAgentKeepsItsLeaseAcrossAnOutage: the agent loses etcd for longer
// than its lease TTL (its session gives up), while etcd keeps the lease
// (as etcd does when it restarts: it extends every lease). When etcd
// answers again the agent keeps the same lease alive: the registration
// never disappeared, so the controller never saw the node go.
func TestAgentKeepsItsLeaseAcrossAnOutage(t *testing.T) {
	ctx := context.Background()
	p, c := etcdBehindProxy(t, false)
	// The agent's client as weft-agent makes it (its reconnect backoff).
	pc, err := etcdconn.New(etcdconn.Config{Endpoints: []string{p.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	h := newHarness(t, pc, c)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.start()
	h.waitStatus("converged", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 2 })
	r, err := c.Get(ctx, keys.New("").Registration("n1"))
	if err != nil || len(r.Kvs) == 0 {
		t.Fatal("no registration", err)
	}
	lease := clientv3.LeaseID(r.Kvs[0].Lease)

	// Cut the agent off for twice its TTL; keep the lease alive from
	// outside meanwhile, as etcd's own extension after a restart would.
	p.SetDown(true)
	kctx, stopKeeping := context.WithCancel(ctx)
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		for kctx.Err() == nil {
			c.KeepAliveOnce(kctx, lease)
			time.Sleep(300 * time.Millisecond)
		}
	}()
	defer func() { stopKeeping(); <-kept }()
	time.Sleep(4 * time.Second)
	eventually(t, "the agent noticed its session ended", func() (bool, string) {
		return strings.Contains(h.logs.String(), "lease session ended"), ""
	})
	p.SetDown(false)
	eventually(t, "registered again on the same lease", func() (bool, string) {
		return strings.Contains(h.logs.String(), "resumed=true"), h.logs.String()
	})
	r, err = c.Get(ctx, keys.New("").Registration("n1"))
	if err != nil || len(r.Kvs) == 0 || clientv3.LeaseID(r.Kvs[0].Lease) != lease {
		t.Fatalf("registration not on the old lease %x: %v", lease, r.Kvs)
	}
}

// BenchmarkReregisterAfterOutage measures issue 12's gap: an outage
// longer than the agent's lease TTL cost it its lease (revoked meanwhile,
// as an expiry would); from the moment etcd is reachable again to the
// agent's new registration. The agent's wake (the connection becoming
// ready, the follower reaching etcd) ends any backoff at once, so what
// remains is the client's reconnect and one grant and put. Reported as
// ms-to-register (per outage).
func BenchmarkReregisterAfterOutage(b *testing.B) {
	ctx := context.Background()
	p, c := etcdBehindProxy(b, false)
	pc, err := etcdconn.New(etcdconn.Config{Endpoints: []string{p.Endpoint()}})
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	h := newHarness(b, pc, c)
	if _, err := h.log.Append(ctx, logtest.Config(cfg())); err != nil {
		b.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { h.a.Run(actx); close(done) }()
	defer func() { cancel(); <-done }()
	lease := func() clientv3.LeaseID {
		r, err := c.Get(ctx, keys.New("").Registration("n1"))
		if err != nil || len(r.Kvs) == 0 {
			return clientv3.NoLease
		}
		return clientv3.LeaseID(r.Kvs[0].Lease)
	}
	for lease() == clientv3.NoLease {
		time.Sleep(10 * time.Millisecond)
	}
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p.SetDown(true)
		old := lease()
		c.Revoke(ctx, old)
		time.Sleep(12 * time.Second) // long enough for every backoff to reach its ceiling
		p.SetDown(false)
		back := time.Now()
		for lease() == clientv3.NoLease {
			if time.Since(back) > 30*time.Second {
				b.Fatal("not registered again", h.logs.String())
			}
			time.Sleep(2 * time.Millisecond)
		}
		total += time.Since(back)
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms-to-register")
	// The agent's own measurement: from etcd answering again to the
	// registration (its wake), per outage.
	for _, l := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(l, "after_etcd_answered") {
			b.Log(l)
		}
	}
}

// TestAgentRestoresItsRegistration: the registration is the agent's. One
// deleted by hand while the lease lives (the controller would remove the
// working node after the grace period), or overwritten with another
// address, is written again as the agent has it, on its lease.
func TestAgentRestoresItsRegistration(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.start()
	want := h.waitRegistration()
	key := keys.New("").Registration("n1")
	r, err := c.Get(ctx, key)
	if err != nil || len(r.Kvs) == 0 {
		t.Fatal("no registration", err)
	}
	lease := r.Kvs[0].Lease
	for _, damage := range []struct {
		what string
		do   func() error
	}{
		{"deleted", func() error { _, err := c.Delete(ctx, key); return err }},
		{"overwritten", func() error {
			_, err := c.Put(ctx, key, `{"name":"n1","underlay_ip":"192.168.1.99"}`)
			return err
		}},
	} {
		if err := damage.do(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "registration restored after it was "+damage.what, func() (bool, string) {
			r, err := c.Get(ctx, key)
			if err != nil || len(r.Kvs) == 0 {
				return false, "absent"
			}
			got, err := keys.DecodeRegistration(r.Kvs[0].Value)
			return err == nil && proto.Equal(got, want) && r.Kvs[0].Lease == lease, fmt.Sprintf("%s on lease %x", r.Kvs[0].Value, r.Kvs[0].Lease)
		})
	}
	if !strings.Contains(h.logs.String(), "own registration deleted or changed by another writer") {
		t.Errorf("the repair was not logged:\n%s", h.logs.String())
	}

	// Held on another live lease: a second agent named n1. The agent
	// does not write over it (two agents doing so would make an event
	// of every write) and says so in its status; once that lease ends
	// the key is deleted and the agent registers again.
	other, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	const theirs = `{"name":"n1","underlay_ip":"192.168.1.98"}`
	if _, err := c.Put(ctx, key, theirs, clientv3.WithLease(other.ID)); err != nil {
		t.Fatal(err)
	}
	h.waitStatus("status names the second agent", func(st *weftv1.AgentStatus) bool {
		return st.Degraded && strings.Contains(st.LastError, "second agent")
	})
	r, err = c.Get(ctx, key)
	if err != nil || len(r.Kvs) == 0 || string(r.Kvs[0].Value) != theirs || r.Kvs[0].Lease != int64(other.ID) {
		t.Fatalf("the agent wrote over a registration held on another lease: %v %v", r, err)
	}
	if _, err := c.Revoke(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "registration back on the agent's lease after the other lease ended", func() (bool, string) {
		r, err := c.Get(ctx, key)
		if err != nil || len(r.Kvs) == 0 {
			return false, "absent"
		}
		got, err := keys.DecodeRegistration(r.Kvs[0].Value)
		return err == nil && proto.Equal(got, want) && r.Kvs[0].Lease == lease, fmt.Sprintf("%s on lease %x", r.Kvs[0].Value, r.Kvs[0].Lease)
	})
	h.waitStatus("status clear again", func(st *weftv1.AgentStatus) bool {
		return !strings.Contains(st.LastError, "second agent")
	})
}
