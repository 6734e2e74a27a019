package bpf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/internal/tc"
)

// The endpoint map lets weft_ingress deliver a packet for a local pod
// straight into the pod's namespace (bpf_redirect_peer on the host side of
// its veth). Endpoints are learned from the kernel, not from the CNI: the
// bridge's neighbour table gives pod IP → MAC, the bridge FDB gives MAC →
// port. An entry is written only when the port is a veth of the bridge
// whose peer is in another namespace and the MAC is learned on that port
// alone; anything else is left to the bridge path.

// endpointState is what refreshEndpoints needs from the last converge.
type endpointState struct {
	bridge int            // bridge ifindex; 0: fast path off, map empty
	local  []netip.Prefix // local pod CIDRs
}

// usableNeigh are the neighbour states whose MAC is trusted.
const usableNeigh = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY |
	netlink.NUD_PROBE | netlink.NUD_PERMANENT

// wantEndpoints reads the kernel and returns the endpoint map's content.
func wantEndpoints(h *netlink.Handle, st endpointState) (map[netip.Addr]object.WeftEndpointValue, error) {
	out := map[netip.Addr]object.WeftEndpointValue{}
	if st.bridge == 0 || len(st.local) == 0 {
		return out, nil
	}
	br, err := h.LinkByIndex(st.bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return out, nil
		}
		return nil, fmt.Errorf("read bridge #%d: %w", st.bridge, err)
	}
	gw := br.Attrs().HardwareAddr
	if len(gw) != 6 {
		return out, nil
	}
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	// Ports that can take redirect_peer: veths on the bridge, peer elsewhere.
	ports := map[int]net.HardwareAddr{}
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex != st.bridge || l.Type() != "veth" || a.NetNsID < 0 {
			continue
		}
		ports[a.Index] = a.HardwareAddr
	}
	fdb, err := h.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("list bridge fdb: %w", err)
	}
	portOf := map[string]int{} // learned MAC → port; -1: on several ports
	for _, f := range fdb {
		own, ok := ports[f.LinkIndex]
		if !ok || f.MasterIndex != st.bridge || len(f.HardwareAddr) != 6 ||
			bytes.Equal(f.HardwareAddr, own) || f.Vlan > 1 {
			continue
		}
		k := string(f.HardwareAddr)
		if p, seen := portOf[k]; seen && p != f.LinkIndex {
			portOf[k] = -1
			continue
		}
		portOf[k] = f.LinkIndex
	}
	var neighs []netlink.Neigh
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		ns, err := h.NeighList(st.bridge, fam)
		if err != nil {
			return nil, fmt.Errorf("list neighbours of bridge: %w", err)
		}
		neighs = append(neighs, ns...)
	}
	for _, n := range neighs {
		if n.State&usableNeigh == 0 || len(n.HardwareAddr) != 6 {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !podAddr(st.local, ip) {
			continue
		}
		port := portOf[string(n.HardwareAddr)]
		if port <= 0 {
			continue
		}
		v := object.WeftEndpointValue{Ifindex: uint32(port)}
		copy(v.PodMac[:], n.HardwareAddr)
		copy(v.GwMac[:], gw)
		out[ip] = v
	}
	return out, nil
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

// refreshEndpoints makes the endpoint map match the kernel. Callers hold
// d.mu. Entries are learned state: changes are logged, not reported.
func (d *Datapath) refreshEndpoints() error {
	if d.ns == nil {
		return nil // closed
	}
	want, err := wantEndpoints(d.ns.NL, d.eps)
	if err != nil {
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
	for ip, v := range want {
		k := object.EndpointKey(ip)
		wantKeys[k] = true
		if old, ok := have[k]; ok && old == v {
			continue
		}
		if err := d.objs.WeftEndpoints.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write endpoint %s: %w", ip, err)
		}
		d.log.Debug("endpoint learned", "ip", ip, "port", v.Ifindex, "mac", net.HardwareAddr(v.PodMac[:]))
	}
	for k := range have {
		if wantKeys[k] {
			continue
		}
		if err := d.objs.WeftEndpoints.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete endpoint: %w", err)
		}
		d.log.Debug("endpoint forgotten", "ip", object.EndpointAddr(k))
	}
	return d.convergePorts(want)
}

// convergePorts attaches weft_from_port to the port of every endpoint and
// detaches it from ports no longer learned. A failed attachment only costs
// the transmit shortcut (the bridge path stays), so it is logged.
func (d *Datapath) convergePorts(want map[netip.Addr]object.WeftEndpointValue) error {
	keep := map[int]bool{}
	for _, v := range want {
		keep[int(v.Ifindex)] = true
	}
	if d.ports == nil {
		d.ports = map[int]bool{}
	}
	for p := range keep {
		if d.ports[p] {
			continue
		}
		if err := tc.AttachTCX(d.ns, d.cfg.PinDir, p, tc.Attachment{Hook: tc.Port(p), Prog: d.objs.WeftFromPort}); err != nil {
			d.log.Warn("attach transmit fast path to pod port", "ifindex", p, "error", err)
			continue
		}
		d.ports[p] = true
	}
	return d.detachPorts(keep)
}

// detachPorts detaches weft_from_port from every pinned port not in keep.
func (d *Datapath) detachPorts(keep map[int]bool) error {
	ents, err := os.ReadDir(d.cfg.PinDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("read pin dir: %w", err)
	}
	var errs []error
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), tc.PortPinPrefix)
		if !ok {
			continue
		}
		p, err := strconv.Atoi(n)
		if err != nil || keep[p] {
			continue
		}
		errs = append(errs, tc.DetachTCX(d.cfg.PinDir, tc.Port(p)))
		delete(d.ports, p)
	}
	return errors.Join(errs...)
}

// RefreshEndpoints re-learns the local pod endpoints of the receive fast
// path from the kernel now (Sync and Reconcile do it too).
func (d *Datapath) RefreshEndpoints() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.refreshEndpoints()
}

// watchEndpoints keeps the endpoint map current until ctx ends: every
// neighbour or link change in the datapath's namespace triggers a refresh,
// so a new pod gets the direct path after its first packet and a removed
// pod's entry goes with its veth.
func (d *Datapath) watchEndpoints(ctx context.Context) error {
	done := make(chan struct{})
	neighs := make(chan netlink.NeighUpdate, 256)
	links := make(chan netlink.LinkUpdate, 64)
	subscribed := 0
	defer func() {
		// Closing done closes the sockets; the readers then close their
		// channels, which are drained so no reader stays blocked.
		close(done)
		if subscribed > 0 {
			for range neighs {
			}
		}
		if subscribed > 1 {
			for range links {
			}
		}
	}()
	errc := make(chan error, 2)
	onErr := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	ns := d.ns.Handle()
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{Namespace: ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to neighbour updates: %w", err)
	}
	subscribed++
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	subscribed++
	if err := d.RefreshEndpoints(); err != nil {
		d.log.Warn("refresh endpoints", "error", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("watch endpoints: %w", err)
		case _, ok := <-neighs:
			if !ok {
				return errors.New("watch endpoints: neighbour subscription closed")
			}
		case _, ok := <-links:
			if !ok {
				return errors.New("watch endpoints: link subscription closed")
			}
		}
		// Coalesce a burst of updates into one refresh.
		for drained := false; !drained; {
			select {
			case <-neighs:
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
