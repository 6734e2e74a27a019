package controller

import (
	"fmt"
	"time"
)

// The per-node update hold-off. A node's registration is written by the
// node itself (its agent, or whoever holds its etcd credentials), so the
// controller does not let one node decide how fast the log grows: each
// node may have updateBurst NodeUpdated appended at once, and then one
// every updateEvery. A change beyond that is held, not dropped: the node
// is reconciled again when the hold ends and whatever its registration
// says then is appended, so the last value always reaches the log and
// the changes between are coalesced. Only NodeUpdated is held: NodeAdded
// and NodeRemoved, and every other node, go on at once. Only an update
// the node's registration caused takes a token: one the controller makes
// of its own, with the registration unchanged (a pod CIDR of a family
// added to the config, a subnet freed for a node that lacked one), is
// bounded by the operator, not the node, and goes on at once.
//
// With the defaults a node whose registration flaps forever adds 0.1
// events a second to the log: at the default event_retention of 10,000
// it would take one such node 28 hours, not 70 seconds, to turn the
// window over.
const (
	// updateBurst: a node's first updates in a while reach the log at
	// once (a MAC fixed at the first Sync, an IPv6 address that came up).
	updateBurst = 3
	// updateEvery: after the burst, at most one NodeUpdated per node this
	// often; an idle node earns its burst back in updateBurst times it.
	updateEvery = 10 * time.Second
)

// Clock is the time the update hold-off counts in. Options.Clock defaults
// to the wall clock; tests pass one they move by hand.
type Clock interface {
	Now() time.Time
	// After sends the time once d has passed.
	After(d time.Duration) <-chan time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// holdoff is a token bucket per node. Credit is kept as time (a token is
// updateEvery of it) so a refill is exact integer arithmetic: the time a
// hold ends does not move when a held node is judged again.
type holdoff struct {
	nodes map[string]*bucket
}

type bucket struct {
	credit time.Duration // updateBurst*updateEvery when full
	at     time.Time     // credit counted up to then
	held   time.Time     // non-zero: a change is held until then
}

func newHoldoff() *holdoff { return &holdoff{nodes: map[string]*bucket{}} }

// allow reports whether node name may have a NodeUpdated appended at now,
// and takes its token if so. If not, the node is held and allow returns
// when the hold ends.
func (h *holdoff) allow(name string, now time.Time) (bool, time.Time) {
	b := h.nodes[name]
	if b == nil {
		b = &bucket{credit: updateBurst * updateEvery, at: now}
		h.nodes[name] = b
	}
	if d := now.Sub(b.at); d > 0 {
		b.credit = min(b.credit+d, updateBurst*updateEvery)
		b.at = now
	}
	if b.credit >= updateEvery {
		b.credit -= updateEvery
		b.held = time.Time{}
		return true, time.Time{}
	}
	b.held = b.at.Add(updateEvery - b.credit)
	return false, b.held
}

// refund gives back the token of an update that did not reach the log
// (etcd refused or the append failed): it will be tried again.
func (h *holdoff) refund(name string) {
	if b := h.nodes[name]; b != nil {
		b.credit = min(b.credit+updateEvery, updateBurst*updateEvery)
	}
}

// release ends the hold of name: it has nothing waiting any more, or is
// about to be judged again.
func (h *holdoff) release(name string) {
	if b := h.nodes[name]; b != nil {
		b.held = time.Time{}
	}
}

// forget drops a removed node's bucket.
func (h *holdoff) forget(name string) { delete(h.nodes, name) }

// next is the earliest time a hold ends, zero when no node is held.
func (h *holdoff) next() time.Time {
	var at time.Time
	for _, b := range h.nodes {
		if !b.held.IsZero() && (at.IsZero() || b.held.Before(at)) {
			at = b.held
		}
	}
	return at
}

// due returns the nodes whose hold has ended at now.
func (h *holdoff) due(now time.Time) []string {
	var out []string
	for name, b := range h.nodes {
		if !b.held.IsZero() && !now.Before(b.held) {
			out = append(out, name)
		}
	}
	return out
}

// held counts the nodes held now.
func (h *holdoff) held() int {
	n := 0
	for _, b := range h.nodes {
		if !b.held.IsZero() {
			n++
		}
	}
	return n
}

// heldReason is the problem recorded for a held node.
func heldReason(name string, until time.Time) string {
	return fmt.Sprintf("registration of %s changing too often: updates held, last value applied at %s (%d updates at once, then one per %s)",
		name, until.UTC().Format("2006-01-02T15:04:05.000Z07:00"), updateBurst, updateEvery)
}
