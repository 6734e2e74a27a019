package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/spec"
)

// Host routing in eBPF for natively routed pod CIDRs (lib/hostroute.h):
// weft_routed holds the remote pod CIDRs the node routes without
// encapsulation, the bridge and pod-port programs send pod traffic for them
// straight to the FIB's egress device, and weft_from_underlay hands traffic
// from them that passed its check straight to local pods.

// routedPrefixes are the remote pod CIDRs host routing forwards in eBPF:
// the desired routes (direct or BGP) that masquerade spares, none when the
// cluster asks for routing through the stack. Forwarding in eBPF skips
// netfilter, so a prefix whose traffic would be masqueraded stays with the
// stack.
func routedPrefixes(want *spec.Desired) map[netip.Prefix]bool {
	out := map[netip.Prefix]bool{}
	if want.StackRouting {
		return out
	}
	for _, r := range want.Routes {
		if want.Masquerade != nil && !insideAny(r.Prefix, want.Masquerade.NativeCIDRs) {
			continue
		}
		out[r.Prefix.Masked()] = true
	}
	return out
}

func insideAny(p netip.Prefix, in []netip.Prefix) bool {
	for _, n := range in {
		if n.Bits() <= p.Bits() && n.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func (d *Datapath) readRouted() (map[netip.Prefix]bool, error) {
	out := map[netip.Prefix]bool{}
	var k object.WeftTunnelKey
	var v uint32
	it := d.objs.WeftRouted.Iterate()
	for it.Next(&k, &v) {
		out[object.Prefix(k)] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read routed map: %w", err)
	}
	return out, nil
}

// convergeRouted writes weft_routed while the bridge fast path runs (the
// receive side needs the local pod map it fills); the underlay check's
// program, on the underlay in every mode, hands what it accepts from those
// prefixes to local pods.
func (d *Datapath) convergeRouted(want *spec.Desired, bridge int, have *kstate, rec *recorder) error {
	wantRouted := routedPrefixes(want)
	if bridge == 0 {
		clear(wantRouted)
	}
	for p := range have.routed {
		if wantRouted[p] {
			continue
		}
		k := object.TunnelKey(p)
		if err := d.objs.WeftRouted.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete routed pod cidr %s: %w", p, err)
		}
		delete(have.routed, p)
		rec.note(&rec.rep.Removed, fmt.Sprintf("host routing %s removed", p))
	}
	for p := range wantRouted {
		if have.routed[p] {
			continue
		}
		k, v := object.TunnelKey(p), uint32(0)
		if err := d.objs.WeftRouted.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write routed pod cidr %s: %w", p, err)
		}
		have.routed[p] = true
		rec.note(&rec.rep.Added, fmt.Sprintf("host routing %s in eBPF", p))
	}
	return nil
}
