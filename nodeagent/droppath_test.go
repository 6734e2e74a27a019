package nodeagent

import (
	"net/url"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
	"github.com/weftnet/weft/testenv/netnstest"
)

// TestAgentBackSoonAfterAPathThatDropped: the path between the agent and
// a real etcd loses every packet (nftables, in a network namespace of the
// test's own) for 8 s, chaos's longest etcd-block with a 3 s lease TTL
// and an 8 s grace, so the lease runs out in etcd while the agent's
// connection stays open. The drop ends just after it swallowed one of the
// client's tries, the worst moment for a client that waits for its own
// next one. The agent, with its client made by etcdconn.New as
// weft-agent makes it and its default 5 s request timeout, must be
// registered again within etcdconn.RecoveryBound: the controller, which
// saw the registration go about a TTL into the block, removes the node a
// grace period after that.
func TestAgentBackSoonAfterAPathThatDropped(t *testing.T) {
	if netnstest.Isolated(t) {
		agentBackAfterDrop(t, netnstest.OnTheWay)
	}
}

// TestAgentBackSoonAfterItsFirewallDropped is the same with the agent's
// side dropping (as weft-testenv's etcd-block does): its own packets never
// leave, so its TCP probes instead of retransmitting.
func TestAgentBackSoonAfterItsFirewallDropped(t *testing.T) {
	if netnstest.Isolated(t) {
		agentBackAfterDrop(t, netnstest.AtSender)
	}
}

func agentBackAfterDrop(t *testing.T, where netnstest.Where) {
	const hold = 8 * time.Second
	srv, err := etcdtest.StartAlias(t.TempDir(), "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	c, err := srv.Client() // 127.0.0.1: the test's own path, never dropped
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ac, err := etcdconn.New(etcdconn.Config{Endpoints: []string{srv.Alias}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ac.Close() })
	u, _ := url.Parse(srv.Alias)
	port, _ := strconv.Atoi(u.Port())

	h := newHarness(t, ac, c)
	h.timeout, h.ttl = 0, 3*time.Second // 0: the agent's default, 5 s
	h.a = h.newAgent(ac)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.start()
	h.waitStatus("converged", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 2 })
	lease := func() clientv3.LeaseID { return registrationLease(c, "n1") }
	if lease() == clientv3.NoLease {
		t.Fatal("not registered")
	}

	dropped := time.Now()
	drop := netnstest.DropTCP(t, u.Hostname(), port, where)
	eventually(t, "lease gone in etcd", func() (bool, string) { return lease() == clientv3.NoLease, "registration still there" })
	gone := time.Now()
	time.Sleep(time.Until(dropped.Add(hold)))
	tries := drop.LiftAfterNextTry(30 * time.Second)
	back := time.Now()
	for lease() == clientv3.NoLease {
		if time.Since(back) > 30*time.Second {
			t.Fatalf("not registered again 30 s after the path came back\n%s", h.logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	again := time.Now()
	t.Logf("registration gone %v into the drop; path back after %v (%d tries dropped); registered again %v after the path came back, %v after the registration went",
		gone.Sub(dropped).Round(time.Millisecond), back.Sub(dropped).Round(time.Millisecond), tries,
		again.Sub(back).Round(time.Millisecond), again.Sub(gone).Round(time.Millisecond))
	if d := again.Sub(back); d > etcdconn.RecoveryBound {
		t.Fatalf("registered again %v after the path came back, not within %v\n%s", d.Round(time.Millisecond), etcdconn.RecoveryBound, h.logs)
	}
}
