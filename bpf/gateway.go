package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/bridgemac"
)

// EnsurePodGateway makes the node's pod bridge (Config.Bridge) exist as an
// up bridge holding the gateway, the first address of each pod CIDR with
// the CIDR's mask: the layout the CNI plugin's first ADD makes. A new
// bridge gets MTU mtu; an existing one keeps its MTU, its other addresses
// and its ports; a link of another kind with the bridge's name is an
// error. Peers' reachability probes are sent to this address, so the
// agent calls it before its first Sync: a node answers for its pod
// network before any pod is attached (Cilium's agent makes cilium_host
// with the router IP for the same reason).
func (d *Datapath) EnsurePodGateway(podCIDRs []netip.Prefix, mtu int) error {
	d.nsMu.RLock()
	defer d.nsMu.RUnlock()
	if d.ns == nil {
		return errClosed
	}
	nl, name := d.ns.NL, d.cfg.Bridge
	l, err := nl.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		attrs := netlink.NewLinkAttrs()
		mac, merr := bridgemac.New()
		if merr != nil {
			return merr
		}
		attrs.Name, attrs.MTU, attrs.HardwareAddr = name, mtu, mac
		if err := nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		// A CNI ADD racing us may have made it first.
		l, err = nl.LinkByName(name)
	}
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", name, err)
	}
	if l.Type() != "bridge" {
		return fmt.Errorf("make pod gateway: %s exists but is a %s, not a bridge", name, l.Type())
	}
	// The pods' gateway MAC must not move when a pod's veth goes.
	if err := bridgemac.Pin(nl, l); err != nil {
		return err
	}
	have, err := nl.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	for _, p := range podCIDRs {
		p = p.Masked()
		want := &net.IPNet{IP: p.Addr().Next().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		if slices.ContainsFunc(have, func(a netlink.Addr) bool { return a.IPNet.String() == want.String() }) {
			continue
		}
		addr := &netlink.Addr{IPNet: want}
		if p.Addr().Is6() {
			if err := d.ns.SetSysctls("0", "net.ipv6.conf."+name+".disable_ipv6"); err != nil {
				return fmt.Errorf("enable ipv6 on %s: %w", name, err)
			}
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := nl.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("add pod gateway %s to %s: %w", want, name, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", name, err)
		}
	}
	return nil
}
