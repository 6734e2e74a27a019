package controller

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/backoff"
)

// The removal rule (docs/DESIGN.md, "When a node is gone (the removal rule)"): a node is
// removed only on evidence that it is gone, never because the controller
// or etcd was away. The evidence is its registration's absence, noticed
// at lost; the node is removed once it stayed absent for the grace
// period counted from the later of lost and the last time the leader
// regained contact with etcd (the term's start, a failed request that
// succeeds again, the node source listing again after its watch broke),
// and only while contact holds. So after an outage, or a failover, every
// agent has a whole grace period of working etcd to renew. With the
// registrations as the source, the removal's transaction also requires
// the registration to be absent, so an agent that renewed while the
// removal was decided wins (Kubernetes Nodes are not in etcd: a deleted
// Node is removed whatever registration its agent still keeps). A config
// change touches none of this: the clock is not restarted.

// contact tracks whether the leader reaches etcd. A goroutine checks it
// every interval with a read that must answer within that interval.
type contact struct {
	mu    sync.Mutex
	down  bool
	since time.Time // when contact was last regained
}

func newContact(now time.Time) *contact { return &contact{since: now} }

// state reports whether etcd does not answer now and since when it has
// answered.
func (c *contact) state() (down bool, since time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.down, c.since
}

func (c *contact) failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	was := c.down
	c.down = true
	return !was
}

// ok records an answer; it returns true when contact was regained.
func (c *contact) ok(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.down {
		return false
	}
	c.down, c.since = false, now
	return true
}

// regained moves the start of every grace period still running to now.
func (c *contact) regained(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.After(c.since) {
		c.since = now
	}
}

// run checks etcd every interval until ctx ends: a linearizable read of
// the leader's election key.
func (c *contact) run(ctx context.Context, cli *clientv3.Client, key string, interval time.Duration, log hclog.Logger) {
	for backoff.Sleep(ctx, interval) {
		rctx, cancel := context.WithTimeout(ctx, interval)
		_, err := cli.Get(rctx, key)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if c.failed() {
				log.Warn("etcd does not answer; no node is removed until it does and every agent had its grace period again", "error", err)
			}
		case c.ok(time.Now()):
			log.Info("etcd answers again; grace periods of departed nodes count from now")
		}
	}
}

// deadline is when a node that left at lost may be removed, given the
// last regained contact and the grace period.
func deadline(lost, since time.Time, grace time.Duration) time.Time {
	if since.After(lost) {
		lost = since
	}
	return lost.Add(grace)
}
