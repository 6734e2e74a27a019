// Package ipam is weft's pod-CIDR allocator: one subnet of node_mask_size
// per node out of the IPv4 cluster CIDR and, when configured, one out of
// the IPv6 cluster CIDR. It never hands the same subnet to two nodes, lets
// an operator pin a node's subnet, and keeps a node's subnets until the
// controller releases them, so a node that comes back within its grace
// period gets them again.
//
// The allocator is plain in-memory state rebuilt from the projection
// (Restore) whenever the controller becomes leader; the subnet guard keys
// in etcd enforce uniqueness in the store itself. It is not safe for
// concurrent use.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

var (
	// ErrExhausted: the cluster CIDR has no free subnet.
	ErrExhausted = errors.New("ipam: cluster CIDR exhausted")
	// ErrPin: a pinned subnet cannot be leased (outside the cluster CIDR,
	// wrong size, or held by another node).
	ErrPin = errors.New("ipam: pinned subnet unusable")
)

// Allocator leases pod CIDRs to nodes by name.
type Allocator struct {
	pools []*pool // IPv4 first, then IPv6 when configured
	holds map[string][]netip.Prefix
}

// New returns an empty allocator for cfg (which has had defaults applied
// and passed validation): a pool for each family the config has a
// cluster CIDR of.
func New(cfg *weftv1.ClusterConfig) (*Allocator, error) {
	a := &Allocator{holds: map[string][]netip.Prefix{}}
	for _, f := range []struct {
		field, cidr string
		mask        uint32
	}{
		{"cluster_cidr", cfg.GetClusterCidr(), cfg.GetNodeMaskSize()},
		{"cluster_cidr_v6", cfg.GetClusterCidrV6(), cfg.GetNodeMaskSizeV6()},
	} {
		if f.cidr == "" {
			continue
		}
		c, err := netip.ParsePrefix(f.cidr)
		if err != nil {
			return nil, fmt.Errorf("new allocator: %s: %w", f.field, err)
		}
		p, err := newPool(c, int(f.mask))
		if err != nil {
			return nil, fmt.Errorf("new allocator: %w", err)
		}
		a.pools = append(a.pools, p)
	}
	if len(a.pools) == 0 {
		return nil, errors.New("new allocator: no cluster CIDR")
	}
	return a, nil
}

func (a *Allocator) poolFor(s netip.Prefix) *pool {
	for _, p := range a.pools {
		if p.cluster.Addr().Is4() == s.Addr().Is4() {
			return p
		}
	}
	return nil
}

// Restore records that name holds cidrs (from the projection). It fails
// when a CIDR is not a subnet of the cluster CIDR or is held by another
// node.
func (a *Allocator) Restore(name string, cidrs []string) error {
	var ps []netip.Prefix
	for _, c := range cidrs {
		s, err := netip.ParsePrefix(c)
		if err != nil {
			return fmt.Errorf("restore node %q: %w", name, err)
		}
		ps = append(ps, s)
	}
	if err := a.check(name, ps); err != nil {
		return fmt.Errorf("restore node %q: %w", name, err)
	}
	a.Release(name)
	a.hold(name, ps)
	return nil
}

func (a *Allocator) check(name string, ps []netip.Prefix) error {
	for _, s := range ps {
		p := a.poolFor(s)
		if p == nil {
			return fmt.Errorf("%w: %s: no cluster CIDR of its family", ErrPin, s)
		}
		i, ok := p.index(s)
		if !ok {
			return fmt.Errorf("%w: %s is not a /%d inside %s", ErrPin, s, p.mask, p.cluster)
		}
		if o, ok := p.used[i]; ok && o != name {
			return fmt.Errorf("%w: %s is held by node %q", ErrPin, s, o)
		}
	}
	return nil
}

func (a *Allocator) hold(name string, ps []netip.Prefix) {
	for _, s := range ps {
		p := a.poolFor(s)
		i, _ := p.index(s)
		p.used[i] = name
	}
	a.holds[name] = ps
}

// Allocate returns name's subnets, one per configured family. A node that
// already holds subnets keeps them (the controller releases a departed
// node's subnets only when it removes the node, after its grace period);
// when it holds none of a family the config gained since (an IPv6 cluster
// CIDR added to a running IPv4 cluster), it gets one of that family too. pinned names
// subnets the operator wants for families the node holds none of yet:
// each must be a subnet of node_mask_size inside the cluster CIDR of its
// family and free, or Allocate fails with ErrPin; families without a pin
// are allocated. When a family has no free subnet Allocate fails with
// ErrExhausted naming the cluster CIDR: a new node is left holding
// nothing, a node that held subnets keeps exactly those, and they are
// returned with the error.
//
// previous names subnets the node had before (a hint, from its agent's
// subnet file): for a family with no pin, the node gets its previous
// subnet again when that is a subnet of node_mask_size inside the
// cluster CIDR and free; otherwise the family is allocated as if there
// were no hint. A hint never fails an allocation.
func (a *Allocator) Allocate(name string, pinned, previous []netip.Prefix) ([]netip.Prefix, error) {
	held := a.holds[name]
	var missing []*pool
	for _, p := range a.pools {
		if !slices.ContainsFunc(held, func(s netip.Prefix) bool { return s.Addr().Is4() == p.cluster.Addr().Is4() }) {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return slices.Clone(held), nil
	}
	var pins []netip.Prefix
	for _, s := range pinned {
		if !slices.ContainsFunc(held, func(h netip.Prefix) bool { return h.Addr().Is4() == s.Addr().Is4() }) {
			pins = append(pins, s)
		}
	}
	if err := a.check(name, pins); err != nil {
		return slices.Clone(held), fmt.Errorf("allocate for node %q: %w", name, err)
	}
	var got []netip.Prefix
	for _, p := range missing {
		var pin netip.Prefix
		for _, s := range pins {
			if s.Addr().Is4() == p.cluster.Addr().Is4() {
				if pin.IsValid() {
					return slices.Clone(held), fmt.Errorf("allocate for node %q: %w: two pins of one family (%s, %s)", name, ErrPin, pin, s)
				}
				pin = s
			}
		}
		if pin.IsValid() {
			got = append(got, pin)
			continue
		}
		if prev, ok := a.usable(name, p, previous); ok {
			got = append(got, prev)
			continue
		}
		// Nothing is marked used before hold below: each pool is asked
		// once, so a failure here has nothing to undo.
		s, _, ok := p.take()
		if !ok {
			return slices.Clone(held), fmt.Errorf("allocate for node %q: %w: %s has no free /%d", name, ErrExhausted, p.cluster, p.mask)
		}
		got = append(got, s)
	}
	out := append(slices.Clone(held), got...)
	// IPv4 first, then IPv6, whatever order the families were added in.
	slices.SortStableFunc(out, func(x, y netip.Prefix) int {
		switch {
		case x.Addr().Is4() == y.Addr().Is4():
			return 0
		case x.Addr().Is4():
			return -1
		}
		return 1
	})
	a.hold(name, out)
	return slices.Clone(out), nil
}

// usable returns the first of hints that is of p's family and could be
// leased to name (check: a subnet of p's size inside its cluster CIDR
// that no other node holds).
func (a *Allocator) usable(name string, p *pool, hints []netip.Prefix) (netip.Prefix, bool) {
	for _, s := range hints {
		if s.Addr().Is4() == p.cluster.Addr().Is4() && a.check(name, []netip.Prefix{s}) == nil {
			return s, true
		}
	}
	return netip.Prefix{}, false
}

// Holding returns the subnets name holds, or nil.
func (a *Allocator) Holding(name string) []netip.Prefix { return slices.Clone(a.holds[name]) }

// Owner returns the node holding s.
func (a *Allocator) Owner(s netip.Prefix) (string, bool) {
	p := a.poolFor(s)
	if p == nil {
		return "", false
	}
	i, ok := p.index(s)
	if !ok {
		return "", false
	}
	o, ok := p.used[i]
	return o, ok
}

// Release frees name's subnets at once.
func (a *Allocator) Release(name string) {
	for _, s := range a.holds[name] {
		p := a.poolFor(s)
		if i, ok := p.index(s); ok && p.used[i] == name {
			delete(p.used, i)
		}
	}
	delete(a.holds, name)
}

// Len returns how many nodes hold subnets.
func (a *Allocator) Len() int { return len(a.holds) }
