// Package fakedp is an in-memory datapath for the agent's logic tests and
// benchmarks: it replaces the kernel at the Sync boundary. Privileged tests
// use the real package bpf instead.
package fakedp

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/weftnet/weft/bpf/spec"
)

// Datapath records what it was asked to hold. Kernel is what it "holds";
// tests change it to simulate drift, and Reconcile repairs it.
type Datapath struct {
	mu       sync.Mutex
	under    spec.Underlay
	underErr error
	kernel   *spec.Desired
	syncs    int
	failNext error
	// OnSync, when set, is called after each Sync with the spec synced.
	OnSync func(*spec.Desired)
	// Pins is what PinDir returns.
	Pins string
}

// PinDir returns Pins (the agent writes it into the subnet file).
func (d *Datapath) PinDir() string { return d.Pins }

// New returns a datapath on underlay u.
func New(u spec.Underlay) *Datapath { return &Datapath{under: u} }

// Underlay returns the underlay given to New or SetUnderlay.
func (d *Datapath) Underlay() (spec.Underlay, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.under, d.underErr
}

// SetUnderlay changes what Underlay returns.
func (d *Datapath) SetUnderlay(u spec.Underlay, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.under, d.underErr = u, err
}

// Sync stores want.
func (d *Datapath) Sync(ctx context.Context, want *spec.Desired) (spec.Report, error) {
	d.mu.Lock()
	if err := d.failNext; err != nil {
		d.failNext = nil
		d.mu.Unlock()
		return spec.Report{}, err
	}
	// Keep want itself: the agent never changes a spec after syncing it,
	// and copying thousands of entries per Sync would make the fake, not
	// the agent, the cost a benchmark measures.
	rep := spec.Report{Updated: 1}
	d.kernel = want
	d.syncs++
	cb := d.OnSync
	d.mu.Unlock()
	if cb != nil {
		cb(want)
	}
	return rep, nil
}

// Reconcile repairs what differs between the held state and want.
func (d *Datapath) Reconcile(ctx context.Context, want *spec.Desired) (spec.Report, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var rep spec.Report
	if d.kernel != nil && slices.Equal(d.kernel.Tunnels, want.Tunnels) && slices.Equal(d.kernel.ClusterCIDRs, want.ClusterCIDRs) {
		return rep, nil
	}
	have := map[spec.Tunnel]bool{}
	if d.kernel != nil {
		for _, t := range d.kernel.Tunnels {
			have[t] = true
		}
	}
	for _, t := range want.Tunnels {
		if !have[t] {
			rep.Repaired = append(rep.Repaired, fmt.Sprintf("tunnel %s via %s", t.Prefix, t.Endpoint))
		}
	}
	if d.kernel == nil || !slices.Equal(d.kernel.ClusterCIDRs, want.ClusterCIDRs) {
		for _, c := range want.ClusterCIDRs {
			rep.Repaired = append(rep.Repaired, fmt.Sprintf("route %s dev %s", c, want.Overlay.DeviceName()))
		}
	}
	d.kernel = want
	return rep, nil
}

// Counters returns fixed counters.
func (d *Datapath) Counters() (spec.Counters, error) {
	return spec.Counters{TxPackets: 7, DropSpoofed: 1, RxDirect: 5, TxDirect: 4, TxEncap: 6, TxEncapBig: 8, RxDecapBig: 9, RxDecapStack: 1, RoutedRx: 3, RoutedTx: 2, Drops: map[string]uint64{"wrong_endpoint": 1, "no_tunnel": 0}}, nil
}

// Kernel returns a copy of what the datapath holds (nil before a Sync).
func (d *Datapath) Kernel() *spec.Desired {
	d.mu.Lock()
	defer d.mu.Unlock()
	return clone(d.kernel)
}

// Mutate changes the held state in place, as drift would.
func (d *Datapath) Mutate(fn func(*spec.Desired)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.kernel = clone(d.kernel)
	fn(d.kernel)
}

// Syncs is the number of successful Sync calls.
func (d *Datapath) Syncs() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.syncs
}

// FailNextSync makes the next Sync return err.
func (d *Datapath) FailNextSync(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failNext = err
}

func clone(d *spec.Desired) *spec.Desired {
	if d == nil {
		return nil
	}
	c := *d
	c.ClusterCIDRs = slices.Clone(d.ClusterCIDRs)
	c.LocalPodCIDRs = slices.Clone(d.LocalPodCIDRs)
	c.Tunnels = slices.Clone(d.Tunnels)
	c.Routes = slices.Clone(d.Routes)
	if d.Overlay != nil {
		o := *d.Overlay
		c.Overlay = &o
	}
	if d.Masquerade != nil {
		c.Masquerade = &spec.Masquerade{PodCIDRs: slices.Clone(d.Masquerade.PodCIDRs), NativeCIDRs: slices.Clone(d.Masquerade.NativeCIDRs)}
	}
	return &c
}
