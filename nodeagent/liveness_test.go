package nodeagent

import (
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/nodeagent/reach"
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
