package nodeagent

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/nodeagent/reach"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

func (h *harness) get(path string) (int, string) {
	rec := httptest.NewRecorder()
	h.a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code, rec.Body.String()
}

// TestDegradedAgentIsAlive: an agent whose peers are unreachable, and then
// whose etcd is stopped as well, answers /healthz 503 naming both, and
// /livez 200 throughout, for longer than StuckAfter: neither is cured by a
// restart, so the liveness probe must not ask for one (readiness does say
// it, deploy/kubernetes/agent-daemonset.yaml). The converge loop's
// heartbeat does not depend on etcd or the peers.
func TestDegradedAgentIsAlive(t *testing.T) {
	srv, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.a.cfg.StuckAfter = 2 * time.Second
	h.a.cfg.Probe = &reach.Config{Open: (&fakeNet{}).open, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond,
		Retry: 20 * time.Millisecond, Grace: 300 * time.Millisecond}
	h.a.newProber()
	native := cfg()
	native.Backend = "native"
	h.append(logtest.Config(native))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.start()
	h.waitStatus("converged in native mode", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 3 && st.Mode == "native" })

	eventually(t, "peers unreachable", func() (bool, string) {
		code, body := h.get("/healthz")
		return code == 503 && strings.Contains(body, "1 of 1 peers unreachable: n2"), body
	})
	if code, body := h.get("/livez"); code != 200 || body != "ok\n" {
		t.Fatalf("livez with the peers unreachable = %d %q", code, body)
	}

	srv.Close()
	eventually(t, "etcd unreachable", func() (bool, string) {
		code, body := h.get("/healthz")
		return code == 503 && strings.Contains(body, "etcd unreachable") && strings.Contains(body, "peers unreachable"), body
	})
	// Longer than StuckAfter with etcd away: /livez stays 200.
	for start := time.Now(); time.Since(start) < 3*h.a.cfg.StuckAfter; time.Sleep(50 * time.Millisecond) {
		if code, body := h.get("/livez"); code != 200 {
			t.Fatalf("livez %s after etcd stopped = %d %q", time.Since(start).Round(time.Millisecond), code, body)
		}
	}
	if code, body := h.get("/healthz"); code != 503 || !strings.Contains(body, "etcd unreachable") {
		t.Fatalf("healthz after %s without etcd = %d %q", 3*h.a.cfg.StuckAfter, code, body)
	}
}

// TestStuckLoopIsNotAlive: a converge loop held inside a Sync for longer
// than StuckAfter makes /livez 503 naming it, and /healthz 503 too (the
// view it reads is the loop's last); once the Sync returns both are 200
// again.
func TestStuckLoopIsNotAlive(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.a.cfg.StuckAfter = 300 * time.Millisecond
	var hold atomic.Bool
	release := make(chan struct{})
	h.dp.OnSync = func(*spec.Desired) {
		if hold.Load() {
			<-release
		}
	}
	h.startWithPeer()
	// Registered after the harness's stop, so it runs first: a test that
	// fails while the Sync is held still stops the agent.
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	eventually(t, "alive and healthy", func() (bool, string) {
		lc, lb := h.get("/livez")
		hc, hb := h.get("/healthz")
		return lc == 200 && hc == 200, lb + hb
	})

	hold.Store(true)
	h.append(logtest.Added("n3", "192.168.1.3", "10.244.3.0/24")) // a Sync that does not return
	var body string
	eventually(t, "livez 503", func() (bool, string) {
		var code int
		code, body = h.get("/livez")
		return code == 503, body
	})
	if !strings.HasPrefix(body, "converge loop stuck: not back at its wait for ") {
		t.Errorf("livez body %q", body)
	}
	if code, body := h.get("/healthz"); code != 503 || !strings.Contains(body, "converge loop stuck") {
		t.Errorf("healthz with the loop stuck = %d %q", code, body)
	}
	if !strings.Contains(h.logs.String(), "liveness failed") {
		t.Errorf("no log line for the failed liveness")
	}

	unblock()
	eventually(t, "alive again", func() (bool, string) {
		code, body := h.get("/livez")
		return code == 200, body
	})
	eventually(t, "healthy again", func() (bool, string) {
		code, body := h.get("/healthz")
		return code == 200, body
	})
}

// TestNotReadyUntilConverged: /healthz, the readiness probe, is 503 until
// the node's first convergence (its first Sync returned), naming what it
// waits for: the converge loop before Run, this node's NodeAdded, then
// the first Sync while it runs; /livez is 200 meanwhile (the Sync is held
// for less than StuckAfter, so the loop is not stuck). Once the first
// Sync returns, /healthz is 200 "ok".
func TestNotReadyUntilConverged(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.a.cfg.StuckAfter = 4 * time.Second
	release := make(chan struct{})
	h.dp.OnSync = func(*spec.Desired) { <-release }
	notReady := func(what, reason string) {
		t.Helper()
		eventually(t, "not ready: "+what, func() (bool, string) {
			code, body := h.get("/healthz")
			return code == 503 && body == "not ready: not converged yet: "+reason+"\n", fmt.Sprintf("%d %q", code, body)
		})
		if code, body := h.get("/livez"); code != 200 || body != "ok\n" {
			t.Fatalf("livez while %s = %d %q", what, code, body)
		}
	}
	notReady("before Run", "converge loop not started")

	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.start()
	// Registered after the harness's stop, so it runs first: a test that
	// fails while the Sync is held still stops the agent.
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	h.waitStatus("status without this node's NodeAdded", func(st *weftv1.AgentStatus) bool { return st.AppliedSeq == 2 })
	notReady("without this node's NodeAdded", "no NodeAdded of n1 in the log (the controller has not given it pod CIDRs)")

	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	eventually(t, "first Sync called", func() (bool, string) { return h.dp.Syncs() == 1, fmt.Sprint(h.dp.Syncs()) })
	notReady("the first Sync runs", "first sync of the datapath running")
	// Held for a second (five status intervals), well short of
	// StuckAfter: still not ready, still alive.
	time.Sleep(time.Second)
	notReady("the first Sync is held", "first sync of the datapath running")

	unblock()
	eventually(t, "ready once the first Sync returned", func() (bool, string) {
		code, body := h.get("/healthz")
		return code == 200 && body == "ok\n", fmt.Sprintf("%d %q", code, body)
	})
	if code, body := h.get("/livez"); code != 200 {
		t.Fatalf("livez after the first Sync = %d %q", code, body)
	}
}

// TestStatusSaysNotConverged: the status in etcd says what the node's
// first convergence waits for, as /healthz does, while nothing else in it
// is wrong (applied at the head, not degraded): no cluster config, then no
// NodeAdded of this node (no controller gives it one here), then the first
// Sync while it is held; once the Sync returned the field is gone from
// the value. The periodic rewrite is an hour away, so every one of these
// values is written because it changed.
func TestStatusSaysNotConverged(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.a.cfg.StatusInterval = time.Hour
	release := make(chan struct{})
	h.dp.OnSync = func(*spec.Desired) { <-release }
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	h.start()
	// Registered after the harness's stop, so it runs first.
	t.Cleanup(unblock)
	waiting := func(what, reason string, applied uint64) {
		t.Helper()
		st := h.waitStatus(what, func(st *weftv1.AgentStatus) bool {
			return st.NotConverged == reason && st.AppliedSeq == applied
		})
		if st.Degraded || st.LastError != "" || st.HeadSeq != applied {
			t.Fatalf("status while %s: %v", what, st)
		}
		// As etcdctl shows it.
		if raw := h.rawStatus(); !strings.Contains(raw, `"not_converged":"`+reason+`"`) {
			t.Fatalf("status value while %s: %s", what, raw)
		}
	}
	waiting("the log is empty", "no cluster config in the log", 0)
	h.waitRegistration()

	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	waiting("without this node's NodeAdded", "no NodeAdded of n1 in the log (the controller has not given it pod CIDRs)", 2)

	// The view of the running Sync is the last one published but for the
	// reason: seq 3 shows once the Sync returned.
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	waiting("the first Sync runs", "first sync of the datapath running", 2)

	unblock()
	st := h.waitStatus("converged", func(st *weftv1.AgentStatus) bool { return st.NotConverged == "" && st.TunnelEntries == 1 })
	if st.AppliedSeq != 3 || st.Degraded {
		t.Fatalf("status once converged: %v", st)
	}
	if raw := h.rawStatus(); strings.Contains(raw, "not_converged") {
		t.Fatalf("status value once converged: %s", raw)
	}
}

// rawStatus is n1's status value as etcd holds it.
func (h *harness) rawStatus() string {
	h.t.Helper()
	r, err := h.c.Get(context.Background(), keys.New("").Status("n1"))
	if err != nil || len(r.Kvs) == 0 {
		h.t.Fatalf("status: %v, %d values", err, len(r.Kvs))
	}
	return string(r.Kvs[0].Value)
}
