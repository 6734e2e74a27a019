package bpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf/internal/device"
	"github.com/weftnet/weft/bpf/internal/nft"
	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/internal/route"
	"github.com/weftnet/weft/bpf/internal/tc"
	"github.com/weftnet/weft/bpf/spec"
)

// kstate is weft's part of the kernel: read from the kernel by Reconcile and
// after Open, remembered by Sync as what it last wrote.
type kstate struct {
	devs     map[string]*device.State // weft overlay devices by name
	attached bool                     // our programs run on the wanted device
	bridge   int                      // ifindex of the bridge our fast path runs on, 0: none
	cfg      object.WeftConfig        // content of the config map
	guard    object.WeftGuard         // content of the underlay check's map
	underlay int                      // ifindex the underlay check runs on, 0: none
	hops     map[netip.Addr]bool      // managed neighbour entries on the underlay
	local    map[netip.Prefix]object.WeftLocalValue
	tunnels  []spec.Tunnel         // sorted by prefix
	owners   []spec.Tunnel         // weft_owners, as tunnels to the owner (sorted)
	routed   map[netip.Prefix]bool // content of the host routing map
	routes   map[netip.Prefix]route.Route
	masq     []string // rule descriptions; nil: no table
	masqOn   bool     // the table exists
	forward  map[string]bool
	// bigTCP are the GSO/GRO sizes the underlay and the bridge were
	// raised to; zero after a read of the kernel, so a Reconcile checks
	// the devices again.
	bigTCP spec.BigTCP
}

func (d *Datapath) readKernel(want *spec.Desired) (*kstate, error) {
	nl := d.ns.NL
	s := &kstate{devs: map[string]*device.State{}, forward: map[string]bool{}}
	for _, name := range []string{spec.VXLANDevice, spec.GeneveDevice} {
		dev, err := device.Read(nl, name)
		if err != nil {
			return nil, err
		}
		if dev != nil {
			s.devs[name] = dev
		}
	}
	if want.Overlay != nil {
		if dev := s.devs[want.Overlay.DeviceName()]; dev != nil {
			ok, err := d.attached(dev.Index)
			if err != nil {
				return nil, err
			}
			s.attached = ok
		}
	}
	if d.useTCX {
		br, err := device.Index(nl, d.cfg.Bridge)
		if err != nil {
			return nil, err
		}
		if br != 0 {
			ok, err := tc.TCXAttached(d.cfg.PinDir, br, tc.Bridge, d.objs.WeftFromPods)
			if err != nil {
				return nil, err
			}
			if ok {
				s.bridge = br
			}
		}
	}
	if err := d.objs.WeftConfig.Lookup(uint32(0), &s.cfg); err != nil {
		return nil, fmt.Errorf("read config map: %w", err)
	}
	if err := d.objs.WeftGuard.Lookup(uint32(0), &s.guard); err != nil {
		return nil, fmt.Errorf("read guard map: %w", err)
	}
	s.hops = map[netip.Addr]bool{}
	if under, err := d.underlayIndex(); err == nil && under != 0 {
		ok, err := d.underlayAttached(under, d.objs.WeftFromUnderlay)
		if err != nil {
			return nil, err
		}
		if ok {
			s.underlay = under
		}
		if s.hops, _, err = route.Neighbours(nl, under); err != nil {
			return nil, err
		}
	}
	s.local = map[netip.Prefix]object.WeftLocalValue{}
	var lk object.WeftTunnelKey
	var lv object.WeftLocalValue
	it := d.objs.WeftLocal.Iterate()
	for it.Next(&lk, &lv) {
		s.local[object.Prefix(lk)] = lv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read local map: %w", err)
	}
	routed, err := d.readRouted()
	if err != nil {
		return nil, err
	}
	s.routed = routed
	if s.tunnels, err = readTrie(d.objs.WeftTunnels, "tunnel map", len(want.Tunnels)); err != nil {
		return nil, err
	}
	if s.owners, err = readTrie(d.objs.WeftOwners, "owner map", len(want.PodOwners)); err != nil {
		return nil, err
	}
	if s.routes, err = route.List(nl); err != nil {
		return nil, err
	}
	if s.masq, s.masqOn, err = d.readMasq(); err != nil {
		return nil, err
	}
	// A key that cannot be read counts as off (and is written).
	vals, _ := d.ns.Sysctls(forwardKeys...)
	for i, k := range forwardKeys {
		s.forward[k] = vals[i] == "1"
	}
	return s, nil
}

// readTrie reads a trie of tunnel values (weft_tunnels, weft_owners) into
// a slice sorted by prefix, the form diffTunnels works on. No map in
// between: Reconcile reads the whole tunnel map every interval, and at
// 5,000 entries a map was most of the agent's garbage (1.7 MB a read).
// expect is how many entries the caller expects (the desired count): the
// slice starts with that capacity instead of growing to it (at 5,000
// entries a read allocated 0.77 MB for a slice of 0.32 MB).
func readTrie(m *ebpf.Map, what string, expect int) ([]spec.Tunnel, error) {
	out := make([]spec.Tunnel, 0, expect)
	var k object.WeftTunnelKey
	var v object.WeftTunnelValue
	it := m.Iterate()
	for it.Next(&k, &v) {
		p := object.Prefix(k)
		out = append(out, object.Tunnel(p, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	slices.SortFunc(out, func(a, b spec.Tunnel) int { return cmpPrefix(a.Prefix, b.Prefix) })
	return out, nil
}

// ownerTunnels is want's PodOwners in weft_owners' form: a tunnel entry
// whose endpoint is the owner.
func ownerTunnels(want *spec.Desired) []spec.Tunnel {
	out := make([]spec.Tunnel, len(want.PodOwners))
	for i, o := range want.PodOwners {
		out[i] = spec.Tunnel{Prefix: o.Prefix, Endpoint: o.Node}
	}
	return out
}

// forwardKeys are the sysctls weft turns on: IPv4 forwarding always, IPv6
// forwarding when the node has IPv6 CIDRs.
var forwardKeys = []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"}

// Sync makes the kernel equal want: the overlay device and its programs,
// the tunnel map, weft's routes, the masquerade table and forwarding. It
// diffs against what it last applied (the first call after Open reads the
// kernel) and writes nothing when nothing changed.
//
// A Geneve overlay on a kernel without CONFIG_GENEVE fails with an error
// wrapping ErrNoGeneve before anything is changed, so the node keeps its
// previous mode.
func (d *Datapath) Sync(ctx context.Context, want *spec.Desired) (spec.Report, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ns == nil {
		return spec.Report{}, errClosed
	}
	return d.converge(ctx, want, false)
}

// Reconcile reads weft's state from the kernel, repairs any drift from want
// (deleted route, map entry, detached program, changed device, missing
// table) and names each repair in Report.Repaired.
func (d *Datapath) Reconcile(ctx context.Context, want *spec.Desired) (spec.Report, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ns == nil {
		return spec.Report{}, errClosed
	}
	d.applied = nil
	return d.converge(ctx, want, true)
}

type recorder struct {
	rep    spec.Report
	repair bool
}

func (r *recorder) note(kind *int, what string) {
	(*kind)++
	if r.repair {
		r.rep.Repaired = append(r.rep.Repaired, what)
	}
}

func (d *Datapath) converge(ctx context.Context, in *spec.Desired, repair bool) (spec.Report, error) {
	if in == nil {
		return spec.Report{}, errors.New("sync datapath: nil desired state")
	}
	want := *in
	// What the programs remember between packets follows the maps, routes
	// and neighbours a converge sets: forgotten after every Sync and
	// Reconcile, whatever they changed.
	defer d.forgetMemos()
	// Pods are reached only through the tunnel in overlay modes without
	// direct routes (vxlan, geneve; hybrid with no adjacent peer): there a
	// plain packet for a pod is dropped whatever its source.
	guard, err := object.GuardValue(want.PodNetworks, want.Overlay != nil && len(want.Routes) == 0)
	if err != nil {
		return spec.Report{}, fmt.Errorf("sync datapath: PodNetworks: %w", err)
	}
	if want.Overlay == nil {
		want.Tunnels = nil // no overlay: no tunnel entries
	} else {
		ov := *want.Overlay
		if ov.Port == 0 {
			ov.Port = 8472
		}
		want.Overlay = &ov
		if guard, err = d.decapGuard(guard, &want); err != nil {
			return spec.Report{}, fmt.Errorf("sync datapath: %w", err)
		}
	}
	if d.applied == nil {
		s, err := d.readKernel(&want)
		if err != nil {
			return spec.Report{}, fmt.Errorf("read kernel state: %w", err)
		}
		d.applied = s
	}
	have := d.applied
	rec := &recorder{repair: repair}
	if err := d.convergeDevice(&want, have, rec); err != nil {
		// The device step leaves have consistent with the kernel, but be
		// safe and re-read on the next call.
		d.applied = nil
		return rec.rep, err
	}
	if err := d.convergeBigTCP(&want, have, rec); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	if err := d.convergeFastPath(&want, have, rec); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	if guard.Flags&object.GuardDecap != 0 {
		// BIG packets the underlay program cannot hand to a local pod
		// go to the device's receive (lib/decap.h).
		guard.TunnelIfindex = uint32(have.devs[want.Overlay.DeviceName()].Index)
	}
	if err := d.convergeGuard(guard, have, rec); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	if err := ctx.Err(); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	if err := d.convergeTunnels(&want, have, rec); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	if err := d.convergeOwners(&want, have, rec); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	devIndex := 0
	if want.Overlay != nil {
		devIndex = have.devs[want.Overlay.DeviceName()].Index
	}
	if err := d.convergeRoutes(&want, devIndex, have, rec); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	if err := d.convergeHops(&want, have, rec); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	if err := d.convergeMasq(&want, have, rec); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	if err := d.convergeForward(&want, have, rec); err != nil {
		d.applied = nil
		return rec.rep, err
	}
	if rec.rep.Changed() {
		d.log.Info("datapath converged", "mode", want.Mode, "added", rec.rep.Added,
			"updated", rec.rep.Updated, "removed", rec.rep.Removed, "repaired", len(rec.rep.Repaired))
		for _, r := range rec.rep.Repaired {
			d.log.Warn("repaired drift", "what", r)
		}
	}
	return rec.rep, nil
}

func (d *Datapath) convergeDevice(want *spec.Desired, have *kstate, rec *recorder) error {
	nl := d.ns.NL
	var wantName string
	if ov := want.Overlay; ov != nil {
		wantName = ov.DeviceName()
		if ov.MTU == 0 {
			u, err := device.Underlay(nl, d.cfg.Underlay)
			if err != nil {
				return fmt.Errorf("compute overlay mtu: %w", err)
			}
			ov.MTU = device.OverlayMTU(ov.Kind, u)
		}
		dev := have.devs[wantName]
		if dev == nil || !dev.Compatible(ov) {
			what := "device " + wantName + " created"
			if dev != nil {
				what = fmt.Sprintf("device %s replaced (kind %s port %d)", wantName, dev.Kind, dev.Port)
			}
			nd, err := device.Create(nl, ov, dev)
			if err != nil {
				if dev != nil {
					delete(have.devs, wantName)
				}
				return err
			}
			have.devs[wantName] = nd
			have.attached = false
			rec.note(&rec.rep.Added, what)
			// Routes to a deleted device vanished with it.
			if err := d.refreshRoutes(have); err != nil {
				return err
			}
		} else {
			fixed, err := device.Adjust(nl, dev, ov)
			if err != nil {
				return err
			}
			for _, f := range fixed {
				rec.note(&rec.rep.Updated, f)
			}
		}
		fixed, err := device.SyncAddrs(nl, have.devs[wantName], device.Addrs(want))
		for _, f := range fixed {
			rec.note(&rec.rep.Updated, f)
		}
		if err != nil {
			return err
		}
		if !have.attached {
			if err := d.attach(have.devs[wantName].Index); err != nil {
				return err
			}
			have.attached = true
			rec.note(&rec.rep.Updated, fmt.Sprintf("programs attached to %s (%s)", wantName, d.attachName()))
		}
	}
	for name := range have.devs {
		if name == wantName {
			continue
		}
		if err := device.Delete(nl, name); err != nil {
			return err
		}
		delete(have.devs, name)
		rec.note(&rec.rep.Removed, "device "+name+" removed")
		if err := d.refreshRoutes(have); err != nil {
			return err
		}
	}
	if wantName == "" {
		// No overlay: drop the link pins (the links died with the device).
		for _, h := range []tc.Hook{tc.Egress, tc.Ingress} {
			if err := tc.DetachTCX(d.cfg.PinDir, h); err != nil {
				return err
			}
		}
		have.attached = false
	}
	return nil
}

// convergeFastPath points the config map at the overlay device and keeps
// the bridge program attached in overlay modes and where host routing has
// natively routed prefixes (tcx only), and removes both otherwise or when
// the cluster asks for routing through the stack. The config map's port
// fields follow the bridge's MAC, so the endpoint refresh writes the map.
func (d *Datapath) convergeFastPath(want *spec.Desired, have *kstate, rec *recorder) error {
	var tunnel uint32
	fast := want.Overlay != nil && masqSkipsTunnels(want) && !want.StackRouting
	if fast {
		tunnel = uint32(have.devs[want.Overlay.DeviceName()].Index)
	}
	br, err := device.Index(d.ns.NL, d.cfg.Bridge)
	if err != nil {
		return err
	}
	wantBridge := 0
	if (fast || len(routedPrefixes(want)) > 0) && d.useTCX && !d.cfg.NoBridgeFastPath {
		wantBridge = br
	}
	if err := d.convergeLocal(want, wantBridge, have, rec); err != nil {
		return err
	}
	if err := d.convergeRouted(want, wantBridge, have, rec); err != nil {
		return err
	}
	enc, err := d.wantEncap(want, fast, have)
	if err != nil {
		return err
	}
	d.eps = endpointState{known: true, bridge: wantBridge, local: slices.Clone(want.LocalPodCIDRs), tunnel: tunnel, port: wantBridge != 0, gw: br, encap: enc}
	if err := d.refreshEndpoints(); err != nil {
		return err
	}
	if tunnel != have.cfg.TunnelIfindex {
		have.cfg.TunnelIfindex = tunnel
		rec.note(&rec.rep.Updated, fmt.Sprintf("config tunnel device #%d", tunnel))
	}
	if on := enc.underlay != 0 && tunnel != 0; on != (have.cfg.Flags&object.ConfigEncap != 0) ||
		on && (have.cfg.UnderlayIfindex != uint32(enc.underlay) || have.cfg.UnderlayIpv4 != enc.src) {
		have.cfg.Flags &^= object.ConfigEncap
		if on {
			have.cfg.Flags |= object.ConfigEncap
		}
		have.cfg.UnderlayIfindex, have.cfg.UnderlayIpv4 = uint32(enc.underlay), enc.src
		rec.note(&rec.rep.Updated, fmt.Sprintf("config in-program encapsulation %t (underlay #%d, %s)",
			on, enc.underlay, netip.AddrFrom4(enc.src)))
	}
	if wantBridge == have.bridge {
		return nil
	}
	if wantBridge == 0 {
		if err := tc.DetachTCX(d.cfg.PinDir, tc.Bridge); err != nil {
			return err
		}
		have.bridge = 0
		rec.note(&rec.rep.Removed, "fast path detached from "+d.cfg.Bridge)
		return nil
	}
	if err := tc.AttachTCX(d.ns, d.cfg.PinDir, wantBridge, tc.Attachment{Hook: tc.Bridge, Prog: d.objs.WeftFromPods}); err != nil {
		return err
	}
	have.bridge = wantBridge
	rec.note(&rec.rep.Updated, "fast path attached to "+d.cfg.Bridge)
	return nil
}

// decapGuard is guard with the in-program VXLAN receive (lib/decap.h) on
// when want asks for it (Overlay.InProgram, VXLAN, not StackRouting): the
// underlay program then needs this node's underlay addresses and the
// overlay port.
func (d *Datapath) decapGuard(guard object.WeftGuard, want *spec.Desired) (object.WeftGuard, error) {
	if !inProgramRx(want) || guard.Nets == 0 {
		return guard, nil
	}
	u, err := device.Underlay(d.ns.NL, d.cfg.Underlay)
	if err != nil {
		return guard, fmt.Errorf("underlay for the in-program vxlan receive: %w", err)
	}
	return object.WithDecap(guard, u.Addr(false), u.Addr(true), want.Overlay.Port)
}

// inProgramRx reports whether want has the underlay program decapsulate
// VXLAN itself: Overlay.InProgram, for VXLAN (Geneve keeps the device),
// and not where the cluster asks for routing through the stack.
func inProgramRx(want *spec.Desired) bool {
	ov := want.Overlay
	return ov != nil && ov.InProgram && ov.Kind == spec.ModeVXLAN && !want.StackRouting
}

// wantEncap is the in-program encapsulation's configuration: on for a
// VXLAN overlay with InProgram whose transmit fast path is on (fast), from
// the underlay interface and its IPv4 address (an underlay without one
// leaves every endpoint to the device: the programs encapsulate only
// towards IPv4 endpoints) and the device's MAC.
func (d *Datapath) wantEncap(want *spec.Desired, fast bool, have *kstate) (encapState, error) {
	ov := want.Overlay
	if !fast || !ov.InProgram || ov.Kind != spec.ModeVXLAN {
		return encapState{}, nil
	}
	u, err := device.Underlay(d.ns.NL, d.cfg.Underlay)
	if err != nil {
		return encapState{}, fmt.Errorf("find underlay for encapsulation: %w", err)
	}
	if !u.IP.Is4() {
		return encapState{}, nil
	}
	idx, err := device.Index(d.ns.NL, u.Interface)
	if err != nil {
		return encapState{}, fmt.Errorf("find underlay %s for encapsulation: %w", u.Interface, err)
	}
	if idx == 0 {
		return encapState{}, fmt.Errorf("find underlay %s for encapsulation: gone", u.Interface)
	}
	return encapState{underlay: idx, src: u.IP.As4(), mac: have.devs[ov.DeviceName()].MAC, port: ov.Port}, nil
}

// convergeGuard writes the underlay check's configuration and keeps its
// program on the underlay interface while there are pod networks to
// protect (every mode), and off otherwise.
func (d *Datapath) convergeGuard(guard object.WeftGuard, have *kstate, rec *recorder) error {
	if guard != have.guard {
		if err := d.objs.WeftGuard.Put(uint32(0), &guard); err != nil {
			return fmt.Errorf("write guard map: %w", err)
		}
		have.guard = guard
		rec.note(&rec.rep.Updated, fmt.Sprintf("underlay check: %d pod networks, tunnel only %t, vxlan receive in program %t",
			guard.Nets, guard.Flags&object.GuardTunnelOnly != 0, guard.Flags&object.GuardDecap != 0))
	}
	want := 0
	if guard.Nets != 0 {
		under, err := d.underlayIndex()
		if err != nil {
			return fmt.Errorf("find underlay for its check: %w", err)
		}
		want = under
	}
	if want == have.underlay {
		return nil
	}
	if have.underlay != 0 {
		if err := d.detachUnderlay(have.underlay); err != nil {
			return err
		}
		have.underlay = 0
		rec.note(&rec.rep.Removed, "underlay check detached")
	}
	if want == 0 {
		return nil
	}
	if err := d.attachUnderlay(want); err != nil {
		return err
	}
	have.underlay = want
	rec.note(&rec.rep.Updated, fmt.Sprintf("underlay check attached to #%d (%s)", want, d.attachName()))
	return nil
}

// localEntries is the content of the local-pod map: the node's pod CIDRs
// behind bridge (none when the fast path is off).
func localEntries(want *spec.Desired, bridge int) map[netip.Prefix]object.WeftLocalValue {
	out := map[netip.Prefix]object.WeftLocalValue{}
	if bridge == 0 {
		return out
	}
	for _, p := range want.LocalPodCIDRs {
		out[p.Masked()] = object.LocalValue(p, bridge)
	}
	return out
}

func (d *Datapath) convergeLocal(want *spec.Desired, bridge int, have *kstate, rec *recorder) error {
	wantLocal := localEntries(want, bridge)
	for p := range have.local {
		if _, ok := wantLocal[p]; ok {
			continue
		}
		k := object.TunnelKey(p)
		if err := d.objs.WeftLocal.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete local pod cidr %s: %w", p, err)
		}
		delete(have.local, p)
		rec.note(&rec.rep.Removed, fmt.Sprintf("local pod cidr %s removed", p))
	}
	for p, v := range wantLocal {
		if old, ok := have.local[p]; ok && old == v {
			continue
		}
		k := object.TunnelKey(p)
		if err := d.objs.WeftLocal.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write local pod cidr %s: %w", p, err)
		}
		have.local[p] = v
		rec.note(&rec.rep.Updated, fmt.Sprintf("local pod cidr %s via %s", p, d.cfg.Bridge))
	}
	return nil
}

// masqSkipsTunnels reports whether no tunnelled prefix would be
// masqueraded: the fast path bypasses netfilter, so it is only used when
// every tunnel prefix lies inside a native (non-masqueraded) CIDR.
func masqSkipsTunnels(want *spec.Desired) bool {
	if want.Masquerade == nil {
		return true
	}
	for _, t := range want.Tunnels {
		inside := false
		for _, n := range want.Masquerade.NativeCIDRs {
			if n.Bits() <= t.Prefix.Bits() && n.Contains(t.Prefix.Addr()) {
				inside = true
				break
			}
		}
		if !inside {
			return false
		}
	}
	return true
}

func (d *Datapath) refreshRoutes(have *kstate) error {
	rs, err := route.List(d.ns.NL)
	if err != nil {
		return err
	}
	have.routes = rs
	return nil
}

func (d *Datapath) convergeTunnels(want *spec.Desired, have *kstate, rec *recorder) error {
	diff, next := diffTunnels(have.tunnels, want.Tunnels)
	if diff.empty() {
		return nil
	}
	upserts := append(slices.Clip(diff.Add), diff.Update...)
	if err := d.putEntries(d.objs.WeftTunnels, "tunnel", upserts); err != nil {
		return err
	}
	if err := d.deleteEntries(d.objs.WeftTunnels, "tunnel", diff.Delete); err != nil {
		return err
	}
	if !rec.repair {
		// Counted, not named: naming 5,000 new entries costs a few ms
		// of a node's cold start for a report nobody reads.
		have.tunnels = next
		rec.rep.Added += len(diff.Add)
		rec.rep.Updated += len(diff.Update)
		rec.rep.Removed += len(diff.Delete)
		return nil
	}
	for _, t := range diff.Add {
		rec.note(&rec.rep.Added, fmt.Sprintf("tunnel %s -> %s vni %d", t.Prefix, t.Endpoint, t.VNI))
	}
	for _, t := range diff.Update {
		rec.note(&rec.rep.Updated, fmt.Sprintf("tunnel %s -> %s vni %d", t.Prefix, t.Endpoint, t.VNI))
	}
	for _, p := range diff.Delete {
		rec.note(&rec.rep.Removed, fmt.Sprintf("tunnel %s removed", p))
	}
	have.tunnels = next
	return nil
}

// convergeOwners writes weft_owners: every remote pod CIDR's owner, in the
// modes without an overlay (for the underlay check).
func (d *Datapath) convergeOwners(want *spec.Desired, have *kstate, rec *recorder) error {
	diff, next := diffTunnels(have.owners, ownerTunnels(want))
	if diff.empty() {
		return nil
	}
	if err := d.putEntries(d.objs.WeftOwners, "owner", append(slices.Clip(diff.Add), diff.Update...)); err != nil {
		return err
	}
	if err := d.deleteEntries(d.objs.WeftOwners, "owner", diff.Delete); err != nil {
		return err
	}
	for _, t := range slices.Concat(diff.Add, diff.Update) {
		rec.note(&rec.rep.Updated, fmt.Sprintf("owner of %s is %s", t.Prefix, t.Endpoint))
	}
	for _, p := range diff.Delete {
		rec.note(&rec.rep.Removed, fmt.Sprintf("owner of %s removed", p))
	}
	have.owners = next
	return nil
}

// putEntries writes tunnel values into m (weft_tunnels, weft_owners; what
// names it in errors).
func (d *Datapath) putEntries(m *ebpf.Map, what string, ts []spec.Tunnel) error {
	if len(ts) == 0 {
		return nil
	}
	keys := make([]object.WeftTunnelKey, len(ts))
	vals := make([]object.WeftTunnelValue, len(ts))
	for i, t := range ts {
		keys[i], vals[i] = object.TunnelKey(t.Prefix), object.TunnelValue(t)
	}
	if d.batch {
		_, err := m.BatchUpdate(keys, vals, nil)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("update %s map: %w", what, err)
		}
		d.batch = false
		d.log.Debug("tries have no batch operations, writing per entry")
	}
	for i := range keys {
		if err := m.Update(&keys[i], &vals[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("update %s %s: %w", what, ts[i].Prefix, err)
		}
	}
	return nil
}

// deleteEntries deletes prefixes from m (weft_tunnels, weft_owners).
func (d *Datapath) deleteEntries(m *ebpf.Map, what string, ps []netip.Prefix) error {
	if len(ps) == 0 {
		return nil
	}
	keys := make([]object.WeftTunnelKey, len(ps))
	for i, p := range ps {
		keys[i] = object.TunnelKey(p)
	}
	if d.batch {
		_, err := m.BatchDelete(keys, nil)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("delete from %s map: %w", what, err)
		}
		d.batch = false
	}
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s %s: %w", what, ps[i], err)
		}
	}
	return nil
}

func (d *Datapath) convergeRoutes(want *spec.Desired, devIndex int, have *kstate, rec *recorder) error {
	nl := d.ns.NL
	diff := route.Compare(have.routes, route.Desired(want, devIndex))
	for _, r := range diff.Delete {
		if err := route.Delete(nl, r); err != nil {
			return err
		}
		delete(have.routes, r.Prefix)
		rec.note(&rec.rep.Removed, r.String()+" removed")
	}
	for _, r := range diff.Add {
		if err := route.Replace(nl, r); err != nil {
			return err
		}
		have.routes[r.Prefix] = r
		rec.note(&rec.rep.Added, r.String())
	}
	for _, r := range diff.Update {
		if err := route.Replace(nl, r); err != nil {
			return err
		}
		have.routes[r.Prefix] = r
		rec.note(&rec.rep.Updated, r.String())
	}
	return nil
}

// convergeHops keeps a managed neighbour entry for every next hop through
// which this node routes pod networks over the underlay, so the underlay
// check finds its MAC from the first packet on (see route.NextHops). A
// permanent entry is left as it is, and so is an entry that is no longer
// managed.
func (d *Datapath) convergeHops(want *spec.Desired, have *kstate, rec *recorder) error {
	wantHops := map[netip.Addr]bool{}
	if have.underlay != 0 {
		hops, err := route.NextHops(d.ns.NL, have.underlay, want)
		if err != nil {
			return err
		}
		wantHops = hops
	}
	changed := len(wantHops) != len(have.hops)
	for h := range wantHops {
		changed = changed || !have.hops[h]
	}
	if !changed {
		return nil
	}
	managed, permanent := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	if have.underlay != 0 {
		var err error
		if managed, permanent, err = route.Neighbours(d.ns.NL, have.underlay); err != nil {
			return err
		}
	}
	for h := range have.hops {
		if wantHops[h] && !permanent[h] {
			continue
		}
		if managed[h] {
			if err := route.DeleteNeigh(d.ns.NL, have.underlay, h); err != nil {
				return err
			}
			rec.note(&rec.rep.Removed, fmt.Sprintf("managed neighbour %s removed", h))
		}
		delete(have.hops, h)
	}
	for h := range wantHops {
		if have.hops[h] || permanent[h] || !route.OnUnderlay(d.ns.NL, have.underlay, h) {
			continue
		}
		if !managed[h] {
			if err := route.SetManaged(d.ns.NL, have.underlay, h); err != nil {
				return err
			}
			rec.note(&rec.rep.Added, fmt.Sprintf("managed neighbour %s", h))
		}
		have.hops[h] = true
	}
	return nil
}

func (d *Datapath) convergeMasq(want *spec.Desired, have *kstate, rec *recorder) error {
	rules := nft.Rules(want.Masquerade)
	sig := nft.Signature(rules)
	if want.Masquerade == nil {
		if !have.masqOn {
			return nil
		}
		if err := d.writeMasq(nil, true); err != nil {
			return err
		}
		have.masq, have.masqOn = nil, false
		rec.note(&rec.rep.Removed, "nftables table "+NFTable+" removed")
		return nil
	}
	if have.masqOn && slices.Equal(have.masq, sig) {
		return nil
	}
	if err := d.writeMasq(rules, have.masqOn); err != nil {
		return err
	}
	what := fmt.Sprintf("nftables table %s masquerade %d rules", NFTable, len(rules))
	if have.masqOn {
		rec.note(&rec.rep.Updated, what)
	} else {
		rec.note(&rec.rep.Added, what)
	}
	have.masq, have.masqOn = sig, true
	return nil
}

func (d *Datapath) convergeForward(want *spec.Desired, have *kstate, rec *recorder) error {
	keys := forwardKeys[:1]
	if hasV6(want) {
		keys = forwardKeys
	}
	var off []string
	for _, k := range keys {
		if !have.forward[k] {
			off = append(off, k)
		}
	}
	if len(off) == 0 {
		return nil
	}
	if err := d.ns.SetSysctls("1", off...); err != nil {
		return fmt.Errorf("enable forwarding: %w", err)
	}
	for _, k := range off {
		have.forward[k] = true
		rec.note(&rec.rep.Updated, k+" = 1")
	}
	return nil
}

func hasV6(want *spec.Desired) bool {
	for _, p := range slices.Concat(want.ClusterCIDRs, want.LocalPodCIDRs) {
		if p.Addr().Is6() {
			return true
		}
	}
	return false
}

// forgetMemos empties what the programs remember between packets
// (lib/underlay.h, lib/pairs.h): the sources the underlay check accepted
// from which neighbour MAC and the in-program VXLAN receive's inner flows
// (weft_rp_accepted), and the pairs host routing forwards and the flows
// sent into the tunnel, with the FIB's answer for them (weft_routed_pairs). The
// next packet of each looks the FIB and the maps up again. It runs at the end of every Sync and
// Reconcile and an LRU map keeps expired entries until they are evicted,
// so it empties a batch of entries per system call rather than two calls
// per entry. A failure is logged; entries expire on their own within
// 100 ms.
func (d *Datapath) forgetMemos() {
	err := errors.Join(
		emptyMap[object.WeftRpKey, object.WeftRpValue](d.objs.WeftRpAccepted),
		emptyMap[object.WeftRoutedPairKey, object.WeftRoutedPairValue](d.objs.WeftRoutedPairs))
	if err != nil {
		d.log.Warn("forget remembered lookups", "error", err)
	}
}

// emptyMap deletes every entry of the hash map m (key K, value V): by
// batch lookup-and-delete where the kernel has it, else key by key.
func emptyMap[K, V any](m *ebpf.Map) error {
	keys, vals := make([]K, 512), make([]V, 512)
	var cursor ebpf.MapBatchCursor
	for {
		_, err := m.BatchLookupAndDelete(&cursor, keys, vals, nil)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the last batch, deleted too
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return fmt.Errorf("empty %s: %w", m, err)
		}
	}
	var all []K
	var k K
	val := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, val) {
		all = append(all, k)
	}
	err := it.Err()
	for i := range all {
		if e := m.Delete(&all[i]); e != nil && !errors.Is(e, ebpf.ErrKeyNotExist) {
			err = errors.Join(err, e)
		}
	}
	if err != nil {
		return fmt.Errorf("empty %s: %w", m, err)
	}
	return nil
}
