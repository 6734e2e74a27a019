package bpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/internal/device"
	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/internal/pods"
)

// The endpoint map lets weft_ingress deliver a packet for a local pod
// straight into the pod's namespace (bpf_redirect_peer on the host side of
// its veth). Its content is derived from the pods weft-cni recorded at ADD
// (weft_pods: host veth → the pod's MAC and addresses), never from the
// kernel's neighbour table, which a pod could poison with a gratuitous ARP
// for a neighbour's address. An entry is written only for a port that is a
// veth of the bridge whose peer is in another namespace; anything else is
// left to the bridge path.

// endpointState is what refreshEndpoints needs from the last converge.
type endpointState struct {
	known  bool           // set by a converge; before it the maps are left as they are
	bridge int            // bridge ifindex; 0: fast path off, map empty
	local  []netip.Prefix // local pod CIDRs
	tunnel uint32         // overlay device of the transmit fast path; 0: off
	port   bool           // pods' ports send straight into the tunnel or the underlay
	gw     int            // the pod bridge (its MAC goes into the config slot); 0: none
	encap  encapState     // in-program VXLAN encapsulation; zero: off
}

// encapState is what the programs write into the outer headers when they
// encapsulate VXLAN themselves (CONFIG_ENCAP, lib/encap.h).
type encapState struct {
	underlay int     // ifindex of the underlay interface; 0: off
	src      [4]byte // this node's IPv4 underlay address (outer source)
	mac      [6]byte // the overlay device's MAC (inner source)
	port     uint16  // UDP destination port
}

// wantEndpoints returns the endpoint map's content for the recorded pods
// and the bridge MAC (nil when the fast path is off or the bridge gone).
func wantEndpoints(h *netlink.Handle, st endpointState, recorded map[int]object.WeftPodValue) (map[netip.Addr]object.WeftEndpointValue, net.HardwareAddr, error) {
	out := map[netip.Addr]object.WeftEndpointValue{}
	if st.bridge == 0 || len(st.local) == 0 {
		return out, nil, nil
	}
	br, err := h.LinkByIndex(st.bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return out, nil, nil
		}
		return nil, nil, fmt.Errorf("read bridge #%d: %w", st.bridge, err)
	}
	gw := br.Attrs().HardwareAddr
	if len(gw) != 6 {
		return out, nil, nil
	}
	for port, pod := range recorded {
		l, err := h.LinkByIndex(port)
		if err != nil {
			continue // gone; the sweep forgets it
		}
		// redirect_peer needs a veth whose peer is in another namespace.
		a := l.Attrs()
		if a.MasterIndex != st.bridge || l.Type() != "veth" || a.NetNsID < 0 {
			continue
		}
		var ips []netip.Addr
		if pod.Flags&object.PodIPv4 != 0 {
			ips = append(ips, netip.AddrFrom4(pod.Ipv4))
		}
		if pod.Flags&object.PodIPv6 != 0 {
			ips = append(ips, netip.AddrFrom16(pod.Ipv6))
		}
		for _, ip := range ips {
			if !podAddr(st.local, ip) {
				continue
			}
			v := object.WeftEndpointValue{Ifindex: uint32(port), PodMac: pod.Mac}
			copy(v.GwMac[:], gw)
			out[ip] = v
		}
	}
	return out, gw, nil
}

// podAddr reports whether ip is a pod address of one of the local CIDRs
// (not the network, gateway or IPv4 broadcast address).
func podAddr(local []netip.Prefix, ip netip.Addr) bool {
	for _, p := range local {
		p = p.Masked()
		if !p.Contains(ip) {
			continue
		}
		if ip == p.Addr() || ip == p.Addr().Next() {
			return false
		}
		if ip.Is4() {
			a := ip.As4()
			n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
			host := uint32(1)<<(32-p.Bits()) - 1
			if n&host == host {
				return false
			}
		}
		return true
	}
	return false
}

// refreshEndpoints makes the endpoint map and the port fast path's
// configuration match the recorded pods and the bridge, after forgetting
// the pods whose veth is gone. Callers hold d.mu. Entries are derived
// state: changes are logged, not reported.
func (d *Datapath) refreshEndpoints() error {
	if d.ns == nil {
		return nil // closed
	}
	gone, err := pods.Sweep(d.ns.NL, d.cfg.PinDir, d.objs.WeftPods)
	for _, p := range gone {
		d.log.Debug("pod port gone, its check removed", "ifindex", p)
	}
	if err != nil {
		return err
	}
	recorded, err := pods.Entries(d.objs.WeftPods)
	if err != nil {
		return err
	}
	d.warnUnguarded(recorded)
	if !d.eps.known {
		// Opened, not converged yet: what the last agent wrote keeps
		// forwarding until the first Sync says what is wanted.
		return nil
	}
	want, gw, err := wantEndpoints(d.ns.NL, d.eps, recorded)
	if err != nil {
		return err
	}
	if gw == nil && d.eps.gw != 0 {
		if l, err := d.ns.NL.LinkByIndex(d.eps.gw); err == nil {
			gw = l.Attrs().HardwareAddr
		}
	}
	if err := d.writeConfig(gw); err != nil {
		return err
	}
	var k object.WeftEndpointKey
	var v object.WeftEndpointValue
	have := map[object.WeftEndpointKey]object.WeftEndpointValue{}
	it := d.objs.WeftEndpoints.Iterate()
	for it.Next(&k, &v) {
		have[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read endpoint map: %w", err)
	}
	wantKeys := map[object.WeftEndpointKey]bool{}
	changed := false
	// The underlay check and the in-program VXLAN receive remember the
	// endpoint of a flow (weft_rp_accepted, lib/underlay.h, lib/decap.h):
	// a changed or removed endpoint empties the memories, so the next
	// packet for the pod takes the new one, not the one remembered for up
	// to 100 ms.
	defer func() {
		if changed {
			d.forgetMemos()
		}
	}()
	for ip, v := range want {
		k := object.EndpointKey(ip)
		wantKeys[k] = true
		if old, ok := have[k]; ok && old == v {
			continue
		}
		changed = true
		if err := d.objs.WeftEndpoints.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write endpoint %s: %w", ip, err)
		}
		d.log.Debug("endpoint learned", "ip", ip, "port", v.Ifindex, "mac", net.HardwareAddr(v.PodMac[:]))
	}
	for k := range have {
		if wantKeys[k] {
			continue
		}
		changed = true
		if err := d.objs.WeftEndpoints.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete endpoint: %w", err)
		}
		d.log.Debug("endpoint forgotten", "ip", object.EndpointAddr(k))
	}
	return nil
}

// writeConfig writes the config slot for the current endpoint state and
// bridge MAC gw (nil: no bridge) when it differs.
func (d *Datapath) writeConfig(gw net.HardwareAddr) error {
	cfg := object.WeftConfig{TunnelIfindex: d.eps.tunnel}
	if len(gw) == 6 {
		copy(cfg.GwMac[:], gw)
		// The ports' fast path: into the tunnel, or host routing in
		// native modes (the bridge fast path is on for either).
		if d.eps.port {
			cfg.Flags |= object.ConfigPortFast
		}
	}
	if e := d.eps.encap; e.underlay != 0 && cfg.TunnelIfindex != 0 {
		cfg.Flags |= object.ConfigEncap
		cfg.UnderlayIfindex = uint32(e.underlay)
		cfg.UnderlayIpv4 = e.src
		cfg.VtepMac = e.mac
		// The programs compare and write it in network order.
		cfg.Port = e.port<<8 | e.port>>8
	}
	var have object.WeftConfig
	if err := d.objs.WeftConfig.Lookup(uint32(0), &have); err != nil {
		return fmt.Errorf("read config map: %w", err)
	}
	if have == cfg {
		return nil
	}
	if err := d.objs.WeftConfig.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	d.log.Debug("config written", "tunnel", cfg.TunnelIfindex, "port_fast", cfg.Flags&object.ConfigPortFast != 0,
		"gateway_mac", net.HardwareAddr(cfg.GwMac[:]), "encap", cfg.Flags&object.ConfigEncap != 0,
		"underlay", cfg.UnderlayIfindex)
	return nil
}

// warnUnguarded logs, once per port, a veth on the bridge without the pod
// check: a pod attached by something else than weft-cni, or before the
// check existed. It can send with any address.
func (d *Datapath) warnUnguarded(recorded map[int]object.WeftPodValue) {
	br, err := device.Index(d.ns.NL, d.cfg.Bridge)
	if err != nil || br == 0 {
		return
	}
	links, err := d.ns.NL.LinkList()
	if err != nil {
		return
	}
	if d.unguarded == nil {
		d.unguarded = map[int]bool{}
	}
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex != br || l.Type() != "veth" {
			continue
		}
		if _, ok := recorded[a.Index]; ok || d.unguarded[a.Index] {
			continue
		}
		d.unguarded[a.Index] = true
		d.log.Warn("pod port without the pod check (not attached by weft-cni, or before it had one): the pod can send with any address",
			"port", a.Name, "ifindex", a.Index)
	}
}

// RefreshEndpoints derives the local pod endpoints of the receive fast
// path from the recorded pods now, after forgetting pods whose veth is
// gone (Sync and Reconcile do it too).
func (d *Datapath) RefreshEndpoints() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.refreshEndpoints()
}

// watchEndpoints keeps the endpoint map current until ctx ends: every
// link change in the datapath's namespace triggers a refresh, so a new pod
// gets the direct path once weft-cni has put its veth on the bridge and a
// removed pod's entry goes with its veth.
func (d *Datapath) watchEndpoints(ctx context.Context) error {
	done := make(chan struct{})
	links := make(chan netlink.LinkUpdate, 64)
	subscribed := false
	defer func() {
		// Closing done closes the socket; the reader then closes its
		// channel, which is drained so the reader never stays blocked.
		close(done)
		if subscribed {
			for range links {
			}
		}
	}()
	errc := make(chan error, 1)
	onErr := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	ns := d.ns.Handle()
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	subscribed = true
	if err := d.RefreshEndpoints(); err != nil {
		d.log.Warn("refresh endpoints", "error", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("watch endpoints: %w", err)
		case _, ok := <-links:
			if !ok {
				return errors.New("watch endpoints: link subscription closed")
			}
		}
		// Coalesce a burst of updates into one refresh.
		for drained := false; !drained; {
			select {
			case <-links:
			default:
				drained = true
			}
		}
		if err := d.RefreshEndpoints(); err != nil {
			d.log.Warn("refresh endpoints", "error", err)
		}
	}
}

// startWatch runs watchEndpoints until stopWatch (Close, Teardown),
// resubscribing after an error (e.g. a socket overrun).
func (d *Datapath) startWatch() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	d.watchStop = func() {
		cancel()
		<-done
	}
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := d.watchEndpoints(ctx); err != nil {
				d.log.Warn("endpoint watch failed, resubscribing", "error", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
	}()
}

// stopWatch ends the endpoint watch and waits for it; callers do not hold
// d.mu (the watch takes it).
func (d *Datapath) stopWatch() {
	d.watchOnce.Do(func() {
		if d.watchStop != nil {
			d.watchStop()
		}
	})
}
