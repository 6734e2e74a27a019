package chaos

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/testenv"
)

// Sample is what the evidence watcher saw of one node at one moment.
type Sample struct {
	At    time.Time
	Alive bool // the agent process runs and is not stopped
	Reach bool // the node's namespace completed a TLS handshake with an etcd member
}

// QuorumSample says whether etcd answered a read from the root namespace.
type QuorumSample struct {
	At time.Time
	Up bool
}

// Evidence is the record a removal is judged by: per node, whether its
// agent was alive and its machine could reach etcd, and whether etcd as a
// whole answered, sampled every few hundred milliseconds.
type Evidence struct {
	Nodes  map[string][]Sample
	Quorum []QuorumSample
}

// watcher samples the evidence until stopped.
type watcher struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	ev   Evidence
}

const sampleEvery = 250 * time.Millisecond

func watch(c *testenv.Cluster) *watcher {
	w := &watcher{stop: make(chan struct{}), ev: Evidence{Nodes: map[string][]Sample{}}}
	for _, n := range c.Nodes() {
		w.wg.Add(1)
		go w.node(c, n.Index, n.Name)
	}
	w.wg.Add(1)
	go w.quorum(c)
	return w
}

func (w *watcher) node(c *testenv.Cluster, i int, name string) {
	defer w.wg.Done()
	for {
		s := Sample{At: time.Now()}
		if n := c.Node(i); n != nil && n.Agent != nil {
			s.Alive = n.Agent.Running() && !n.Agent.Stopped()
		}
		s.Reach = c.ReachEtcd(i, 500*time.Millisecond) == nil
		w.mu.Lock()
		w.ev.Nodes[name] = append(w.ev.Nodes[name], s)
		w.mu.Unlock()
		select {
		case <-w.stop:
			return
		case <-time.After(sampleEvery):
		}
	}
}

func (w *watcher) quorum(c *testenv.Cluster) {
	defer w.wg.Done()
	cl, err := c.Client()
	if err != nil {
		// No client: every sample says down, which makes no removal look
		// justified (the strict side).
		cl = nil
	}
	defer func() {
		if cl != nil {
			cl.Close()
		}
	}()
	head := keys.New("/weft").Head()
	for {
		s := QuorumSample{At: time.Now()}
		if cl != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := cl.Get(ctx, head)
			cancel()
			s.Up = err == nil
		}
		w.mu.Lock()
		w.ev.Quorum = append(w.ev.Quorum, s)
		w.mu.Unlock()
		select {
		case <-w.stop:
			return
		case <-time.After(sampleEvery):
		}
	}
}

func (w *watcher) Stop() Evidence {
	close(w.stop)
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ev
}

// quorumUpNear reports whether etcd answered some read within slack of t:
// only then is a node that could not reach etcd at t the node's own
// trouble rather than etcd's.
func (e Evidence) quorumUpNear(t time.Time, slack time.Duration) bool {
	i := sort.Search(len(e.Quorum), func(i int) bool { return !e.Quorum[i].At.Before(t.Add(-slack)) })
	for ; i < len(e.Quorum) && !e.Quorum[i].At.After(t.Add(slack)); i++ {
		if e.Quorum[i].Up {
			return true
		}
	}
	return false
}

// Gap is a stretch in which a node was away on its own account: its agent
// dead or stopped, or its machine cut off from an etcd that answered
// others. From is the last sample before it that was not away, To the
// first one after it (zero: still away at the end).
type Gap struct{ From, To time.Time }

// Gaps returns the node's gaps in time order.
func (e Evidence) Gaps(node string) []Gap {
	var out []Gap
	var last time.Time // last sample not away
	in := false
	var cur Gap
	for _, s := range e.Nodes[node] {
		away := !s.Alive || (!s.Reach && e.quorumUpNear(s.At, time.Second))
		switch {
		case away && !in:
			in = true
			cur = Gap{From: last}
			if last.IsZero() {
				cur.From = s.At
			}
		case !away && in:
			in = false
			cur.To = s.At
			out = append(out, cur)
		}
		if !away {
			last = s.At
		}
	}
	if in {
		out = append(out, cur)
	}
	return out
}

// Removal is a NodeRemoved event and the verdict on it.
type Removal struct {
	Node      string
	At        time.Time // the event's time (the controller's append)
	Reason    string
	Justified bool
	Why       string
}

// backSlack is how long after an agent is back (alive, reaching etcd) a
// removal still counts as the end of its absence: it takes the agent a
// keepalive to find its lease gone and a write to register again.
const backSlack = 5 * time.Second

// Judge decides whether a node may have been removed at t: only if, before
// t, it was away on its own account for at least minAway and was not back
// for longer than backSlack by t. A run passes the node grace period: the
// controller removes a node a grace period after its lease ran out, and
// the lease ran out no earlier than the node went away, so a node away
// for less than the grace was removed on no evidence.
func (e Evidence) Judge(node string, t time.Time, minAway time.Duration) (bool, string) {
	if _, ok := e.Nodes[node]; !ok {
		return false, "no such node in the run"
	}
	var longest time.Duration
	for _, g := range e.Gaps(node) {
		if g.From.After(t) {
			break
		}
		end := t
		if !g.To.IsZero() && g.To.Before(t) {
			end = g.To
		}
		d := end.Sub(g.From)
		longest = max(longest, d)
		if d >= minAway-sampleEvery && (g.To.IsZero() || !t.After(g.To.Add(backSlack))) {
			return true, fmt.Sprintf("away %s from %s (at least %s needed)", d.Round(100*time.Millisecond), g.From.Format("15:04:05.0"), minAway)
		}
	}
	return false, fmt.Sprintf("its agent was alive and reached etcd (longest absence before it: %s, at least %s needed)", longest.Round(100*time.Millisecond), minAway)
}
