package nodeagent

import (
	"fmt"
	"net/http"
	"time"
)

// Liveness is the agent's answer to "is this process worth keeping?",
// which is not Health's "is this node's network as it should be?". An
// agent that cannot reach etcd or its peers is degraded (Health, /healthz)
// but alive: a restart brings neither back, and the datapath it keeps
// forwarding meanwhile is the node's network. What a restart can cure is
// a converge loop that no longer comes back to its wait: it then neither
// follows the log nor repairs the datapath. The loop stamps a heartbeat
// whenever it waits (a ticker case in its select, four times per
// StuckAfter); Liveness answers false, with the heartbeat's age, once that
// is older than StuckAfter. Before Run the heartbeat is New's time, so an
// agent whose Run never starts is not alive either after StuckAfter, nor
// is one StuckAfter after its Run returned.
func (a *Agent) Liveness() (ok bool, reason string) {
	last := time.Unix(0, a.beat.Load())
	if age := time.Since(last); age > a.cfg.StuckAfter {
		return false, fmt.Sprintf("converge loop stuck: not back at its wait for %s (since %s; limit %s)",
			age.Round(time.Millisecond), last.UTC().Format(time.RFC3339), a.cfg.StuckAfter)
	}
	return true, ""
}

// serveLivez answers /livez: 200 "ok" while the converge loop comes back
// to its wait, 503 with Liveness's reason (and a log line) when it has
// not for StuckAfter. The kubelet's liveness probe asks it
// (deploy/kubernetes/agent-daemonset.yaml); /healthz, the readiness
// probe, says whether the node is degraded.
func (a *Agent) serveLivez(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if ok, reason := a.Liveness(); !ok {
		a.log.Error("liveness failed", "reason", reason)
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, reason)
		return
	}
	fmt.Fprintln(w, "ok")
}
