package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func (l *leader) grace() time.Duration {
	return time.Duration(l.st.State().Config.GetNodeGraceSeconds()) * l.opt.GraceUnit
}

// untilDeadline is how long the loop may sleep before a retry or a
// removal is due.
func (l *leader) untilDeadline() time.Duration {
	wait := time.Hour
	if !l.retryAt.IsZero() {
		wait = time.Until(l.retryAt)
	}
	down, since := l.contact.state()
	for _, at := range l.lost {
		if down {
			wait = min(wait, l.opt.ContactInterval)
			break
		}
		wait = min(wait, time.Until(deadline(at, since, l.grace())))
	}
	return max(wait, time.Millisecond)
}

// reconcile compares the dirty nodes with the projection, appends the
// events that make them agree, and removes nodes whose grace ended.
func (l *leader) reconcile(ctx context.Context) error {
	if l.alloc == nil || !l.synced {
		return nil
	}
	cfg := l.st.State().Config
	nodes := l.st.State().Nodes
	now := time.Now()
	clock := l.opt.Clock.Now() // the hold-off's time
	var events []*weftv1.Event
	// charged: the NodeUpdated events that took a hold-off token;
	// releasing: those that give up an underlay address another node
	// may be waiting for.
	charged, releasing := map[*weftv1.Event]bool{}, map[*weftv1.Event]bool{}
	problems := map[string]string{} // changes to l.problems: "" clears
	owners := l.ownedAddresses()
	for _, name := range slices.Sorted(maps.Keys(l.dirty)) {
		proj := nodes[name]
		// Judged again now: held again below if its update must wait.
		l.hold.release(name)
		if reason, ok := l.invalid[name]; ok {
			problems[name] = reason
			continue
		}
		if reason, ok := l.refused[name]; ok {
			problems[name] = reason
			continue
		}
		if l.st.Quarantined(name) {
			// The controller does not know what the node holds: an
			// event now could hand its subnet to another or add it
			// twice. It waits for the value to be fixed.
			problems[name] = fmt.Sprintf("no event for this node while %s is quarantined (see its problem)", l.opt.Layout.Node(name))
			continue
		}
		reg, ok := l.wanted[name]
		if !ok {
			// A source that says why a node is gone (outside the
			// Kubernetes node selector) has the reason recorded.
			problems[name] = l.goneWhy[name]
			switch {
			case proj == nil:
				delete(l.lost, name)
			case l.goneNow[name]:
			default:
				if _, ok := l.lost[name]; !ok {
					l.lost[name] = now
				}
			}
			continue
		}
		delete(l.lost, name)
		n, reason := l.admit(cfg, name, reg, owners)
		problems[name] = reason
		if n == nil {
			continue
		}
		switch {
		case proj == nil:
			events = append(events, &weftv1.Event{Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{Node: n}}})
		case !sameNode(proj, n):
			e := &weftv1.Event{Kind: &weftv1.Event_NodeUpdated{NodeUpdated: &weftv1.NodeUpdated{Node: n}}}
			// Only a change the node's registration made is held: one
			// the controller makes of its own (its registration is the
			// one the projection was judged or appended from) is
			// bounded by the operator's config changes, not the node.
			if !proto.Equal(l.judged[name], reg) {
				if ok, until := l.hold.allow(name, clock); !ok {
					// Its new addresses are not its own until they are in
					// the log: another node may take them meanwhile.
					l.m.UpdatesHeld.Inc()
					problems[name] = heldReason(name, until)
					if reason != "" {
						problems[name] += "; " + reason
					}
					continue
				}
				charged[e] = true
			}
			releasing[e] = releases(proj, n)
			events = append(events, e)
		default:
			l.judged[name] = reg
		}
		for _, a := range validate.UnderlayAddrs(n) {
			owners[a.String()] = name
		}
	}
	clear(l.dirty)
	refused, released := false, false
	if len(events) > 0 {
		done, err := l.commit(ctx, events)
		refused = len(done) < len(events)
		l.refundUnwritten(events, done, charged)
		for _, e := range done {
			if name := eventNodeName(e); l.wanted[name] != nil {
				l.judged[name] = l.wanted[name]
			}
			released = released || releasing[e]
		}
		if err != nil {
			return err
		}
		for _, e := range events {
			if name := eventNodeName(e); l.refused[name] != "" {
				problems[name] = l.refused[name]
			}
		}
	}
	removed, err := l.removeDeparted(ctx, now)
	if err != nil {
		return err
	}
	if err := l.writeProblems(ctx, problems); err != nil {
		return err
	}
	if refused {
		// The allocator handed out subnets for events etcd refused.
		if err := l.rebuild(ctx); err != nil {
			return err
		}
	}
	if !l.swept {
		l.swept = true
		if err := l.sweepProblems(ctx); err != nil {
			return err
		}
	}
	if removed > 0 || refused || released {
		// Freed subnets or underlay addresses: try again the nodes that
		// are waiting for one.
		retry := false
		for name := range l.problems {
			if l.wanted[name] != nil && l.refused[name] == "" {
				l.dirty[name], retry = true, true
			}
		}
		if retry {
			return l.reconcile(ctx)
		}
	}
	return nil
}

// admit decides the node a valid registration asks for: it must not
// have its underlay address inside a cluster CIDR, nor take the address
// of another node in the projection (owners: address → node), must have
// what the backend in force needs, and gets its pod CIDRs. It returns
// the node, or nil and why not; a node that keeps the pod CIDRs it holds
// when a family added to the config has no free subnet for it is
// returned with the problem that says what it lacks, so its other
// changes still reach the log.
func (l *leader) admit(cfg *weftv1.ClusterConfig, name string, reg *weftv1.Registration, owners map[string]string) (*weftv1.Node, string) {
	if err := overlap(cfg, reg); err != nil {
		return nil, fmt.Sprintf("registration skipped: %v", err)
	}
	for _, f := range []struct{ field, ip string }{{"underlay_ip", reg.UnderlayIp}, {"underlay_ip_v6", reg.UnderlayIpV6}} {
		if f.ip == "" {
			continue
		}
		ip := netip.MustParseAddr(f.ip).Unmap().String() // validated by the source
		if owner, ok := owners[ip]; ok && owner != name {
			why := "which is registered"
			if !l.present[owner] {
				why = "which keeps it until it is removed (its registration is gone; the grace period runs)"
			}
			return nil, fmt.Sprintf("registration skipped: %v: %s: %s is node %q's, %s", validate.ErrInvalid, f.field, ip, owner, why)
		}
	}
	if missing := lacks(cfg.Backend, reg.Capabilities); missing != "" {
		return nil, fmt.Sprintf("registration skipped: %v: capabilities: %s, which backend %s needs, is not among %v", validate.ErrInvalid, missing, cfg.Backend, reg.Capabilities)
	}
	var pins, previous []netip.Prefix
	for _, s := range reg.PinnedPodCidrs {
		pins = append(pins, netip.MustParsePrefix(s)) // validated by the source
	}
	for _, s := range reg.PreviousPodCidrs {
		previous = append(previous, netip.MustParsePrefix(s)) // validated by the source
	}
	held := l.alloc.Holding(name) != nil
	cidrs, err := l.alloc.Allocate(name, pins, previous)
	lack := ""
	if err != nil {
		lack = fmt.Sprintf("no pod CIDR: %v", err)
		if !held || len(cidrs) == 0 {
			return nil, lack
		}
	}
	n := nodeFrom(reg, cidrs)
	if err := validate.Node(cfg, n); err != nil {
		if !held {
			l.alloc.Release(name)
		}
		return nil, fmt.Sprintf("registration skipped: %v", err)
	}
	return n, lack
}

// releases reports whether node n, replacing was, gives up one of was's
// underlay addresses.
func releases(was, n *weftv1.Node) bool {
	now := validate.UnderlayAddrs(n)
	return slices.ContainsFunc(validate.UnderlayAddrs(was), func(a netip.Addr) bool { return !slices.Contains(now, a) })
}

// ownedAddresses maps the underlay addresses (both families) of every
// projected node to its name. A node owns its addresses until its
// NodeRemoved is in the log, also while its registration is gone and its
// grace period runs: its peers still send its pods' traffic there, and
// another node that took them meanwhile (one node's credentials are
// enough to write a registration) would have it, and lock the node out
// when it came back.
func (l *leader) ownedAddresses() map[string]string {
	out := map[string]string{}
	for name, n := range l.st.State().Nodes {
		for _, a := range validate.UnderlayAddrs(n) {
			out[a.String()] = name
		}
	}
	return out
}

// backendNeeds names the capability a node must report to run a backend.
var backendNeeds = map[string]string{"vxlan": "vxlan", "geneve": "geneve", "hybrid": "vxlan"}

// lacks returns the capability backend needs that caps does not hold, or
// "". A node that reports no capabilities at all (a Kubernetes node, an
// agent whose datapath cannot tell) is not judged.
func lacks(backend string, caps []string) string {
	need := backendNeeds[backend]
	if need == "" || len(caps) == 0 || slices.Contains(caps, need) {
		return ""
	}
	return need
}

// removeDeparted appends NodeRemoved for every node whose removal is
// due: deleted from a Kubernetes-style source, or gone from the source
// for the grace period counted by the removal rule (removal.go). It
// returns how many it removed.
func (l *leader) removeDeparted(ctx context.Context, now time.Time) (int, error) {
	nodes := l.st.State().Nodes
	down, since := l.contact.state()
	var events []*weftv1.Event
	var names []string
	for _, name := range slices.Sorted(maps.Keys(l.goneNow)) {
		if nodes[name] != nil && !l.present[name] {
			reason := "deleted from the node source"
			if why := l.goneWhy[name]; why != "" {
				reason = why
			}
			events = append(events, removedEvent(name, reason))
			names = append(names, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(l.lost)) {
		at := l.lost[name]
		switch {
		case l.present[name] || nodes[name] == nil || l.goneNow[name]:
			delete(l.lost, name)
		case down || now.Before(deadline(at, since, l.grace())):
		default:
			gone := now.Sub(at).Round(time.Millisecond)
			events = append(events, removedEvent(name, fmt.Sprintf("registration gone for %s, at least the grace period of %s with etcd answering", gone, l.grace())))
			names = append(names, name)
		}
	}
	if len(events) == 0 {
		return 0, nil
	}
	// A removal decided before an outage must not commit long after it:
	// it waits for etcd no longer than a contact check does.
	rctx, cancel := context.WithTimeout(ctx, 2*l.opt.ContactInterval)
	defer cancel()
	done, err := l.commit(rctx, events)
	for _, e := range done {
		name := e.GetNodeRemoved().GetName()
		l.alloc.Release(name)
		delete(l.goneNow, name)
		delete(l.lost, name)
		l.hold.forget(name)
		delete(l.judged, name)
	}
	return len(done), err
}

// commit appends events. When etcd refuses the request itself (too
// large, too many operations) it appends the rest one by one and refuses
// the nodes whose events etcd refuses alone (recorded in l.refused), so
// one bad value never stops the others. It returns the events committed.
func (l *leader) commit(ctx context.Context, events []*weftv1.Event) ([]*weftv1.Event, error) {
	start := l.st.Head()
	n, err := l.st.Append(ctx, events...)
	done := events[:n]
	if err != nil && dataError(err) {
		l.log.Warn("etcd refused an append; appending its events one by one", "events", len(events)-n, "error", err)
		err = nil
		for _, e := range events[n:] {
			if _, aerr := l.st.Append(ctx, e); aerr != nil {
				if !dataError(aerr) {
					err = aerr
					break
				}
				name := eventNodeName(e)
				l.refused[name] = fmt.Sprintf("event refused by etcd: %v", aerr)
				l.m.Refused.Inc()
				l.log.Error("event refused by etcd; node skipped until its registration changes", "node", name, "error", aerr)
				continue
			}
			done = append(done, e)
		}
	}
	if len(done) > 0 {
		l.log.Debug("appended", "events", len(done), "from", start+1, "head", l.st.Head())
	}
	for _, e := range done {
		l.logEvent(e)
	}
	if err != nil {
		l.log.Warn("append failed", "committed", len(done), "of", len(events), "error", err)
	}
	return done, err
}

// refundUnwritten gives back the hold-off tokens of the charged
// NodeUpdated events among events that are not in done: the node is
// tried again.
func (l *leader) refundUnwritten(events, done []*weftv1.Event, charged map[*weftv1.Event]bool) {
	if len(done) == len(events) {
		return
	}
	written := map[*weftv1.Event]bool{}
	for _, e := range done {
		written[e] = true
	}
	for _, e := range events {
		if u := e.GetNodeUpdated(); u != nil && charged[e] && !written[e] {
			l.hold.refund(u.GetNode().GetName())
		}
	}
}

// dataError reports whether etcd refused a request for what it holds
// (its size, its number of operations) rather than for its own state.
func dataError(err error) bool {
	if errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrTooManyOps) {
		return true
	}
	var code codes.Code
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	} else if s, ok := status.FromError(err); ok {
		code = s.Code()
	}
	return code == codes.InvalidArgument || code == codes.ResourceExhausted
}

func eventNodeName(e *weftv1.Event) string {
	switch k := e.Kind.(type) {
	case *weftv1.Event_NodeAdded:
		return k.NodeAdded.GetNode().GetName()
	case *weftv1.Event_NodeUpdated:
		return k.NodeUpdated.GetNode().GetName()
	case *weftv1.Event_NodeRemoved:
		return k.NodeRemoved.GetName()
	}
	return ""
}

func (l *leader) logEvent(e *weftv1.Event) {
	switch k := e.Kind.(type) {
	case *weftv1.Event_NodeAdded:
		l.log.Info("node added", "seq", e.Seq, "node", k.NodeAdded.Node.Name, "pod_cidrs", k.NodeAdded.Node.PodCidrs)
	case *weftv1.Event_NodeUpdated:
		l.log.Info("node updated", "seq", e.Seq, "node", k.NodeUpdated.Node.Name, "underlay_ip", k.NodeUpdated.Node.UnderlayIp)
	case *weftv1.Event_NodeRemoved:
		l.log.Info("node removed", "seq", e.Seq, "node", k.NodeRemoved.Name, "reason", k.NodeRemoved.Reason)
	}
}

// overlap refuses a node whose underlay address lies inside a cluster
// CIDR: its tunnel packets would be routed into the overlay itself.
func overlap(cfg *weftv1.ClusterConfig, r *weftv1.Registration) error {
	for _, f := range []struct{ field, ip string }{{"underlay_ip", r.UnderlayIp}, {"underlay_ip_v6", r.UnderlayIpV6}} {
		a, err := netip.ParseAddr(f.ip)
		if err != nil {
			continue // validated by the source; underlay_ip_v6 may be empty
		}
		a = a.Unmap()
		for _, s := range []string{cfg.ClusterCidr, cfg.ClusterCidrV6} {
			if p, err := netip.ParsePrefix(s); err == nil && p.Contains(a) {
				return fmt.Errorf("%w: %s: %s is inside the cluster CIDR %s", validate.ErrInvalid, f.field, a, p)
			}
		}
	}
	return nil
}

func nodeFrom(r *weftv1.Registration, cidrs []netip.Prefix) *weftv1.Node {
	n := &weftv1.Node{
		Name:         r.Name,
		UnderlayIp:   netip.MustParseAddr(r.UnderlayIp).Unmap().String(),
		VtepMac:      r.VtepMac,
		Capabilities: slices.Clone(r.Capabilities),
		Asn:          r.Asn,
	}
	if a, err := netip.ParseAddr(r.UnderlayIpV6); err == nil {
		n.UnderlayIpV6 = a.String()
	}
	for _, p := range cidrs {
		n.PodCidrs = append(n.PodCidrs, p.String())
	}
	return n
}

func sameNode(a, b *weftv1.Node) bool {
	a = proto.Clone(a).(*weftv1.Node)
	b = proto.Clone(b).(*weftv1.Node)
	a.Seq, b.Seq = 0, 0
	return proto.Equal(a, b)
}

func removedEvent(name, reason string) *weftv1.Event {
	return &weftv1.Event{Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: name, Reason: reason}}}
}
