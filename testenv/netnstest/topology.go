package netnstest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// link finds the link called name in n.
func (n *NS) link(name string) (*netlink.Handle, netlink.Link, error) {
	h, err := n.NL()
	if err != nil {
		return nil, nil, err
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, nil, fmt.Errorf("find %s in %s: %w", name, n.Name, err)
	}
	return h, l, nil
}

// Index is the ifindex of the link called name.
func (n *NS) Index(name string) (int, error) {
	_, l, err := n.link(name)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}

// MAC is the hardware address of the link called name.
func (n *NS) MAC(name string) (net.HardwareAddr, error) {
	_, l, err := n.link(name)
	if err != nil {
		return nil, err
	}
	return l.Attrs().HardwareAddr, nil
}

// Veth creates a veth pair: name in n and peerName in peer (which may be
// n itself).
func (n *NS) Veth(name string, peer *NS, peerName string) error {
	h, err := n.NL()
	if err != nil {
		return err
	}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peerName}
	if peer != n {
		v.PeerNamespace = netlink.NsFd(int(peer.ns.Fd()))
	}
	if err := h.LinkAdd(v); err != nil {
		return fmt.Errorf("add veth %s in %s: %w", name, n.Name, err)
	}
	return nil
}

// Bridge creates the bridge name in n (keeping one that exists), gives it
// addrs and sets it up.
func (n *NS) Bridge(name string, addrs ...netip.Prefix) error {
	h, err := n.NL()
	if err != nil {
		return err
	}
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("add bridge %s in %s: %w", name, n.Name, err)
	}
	if err := n.Addr(name, addrs...); err != nil {
		return err
	}
	return n.Up(name)
}

// Addr adds addrs (without duplicate address detection) to the link
// called name; an address it holds already is kept.
func (n *NS) Addr(name string, addrs ...netip.Prefix) error {
	h, l, err := n.link(name)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		na := &netlink.Addr{IPNet: IPNet(a), Flags: unix.IFA_F_NODAD}
		if err := h.AddrReplace(l, na); err != nil {
			return fmt.Errorf("address %s on %s in %s: %w", a, name, n.Name, err)
		}
	}
	return nil
}

// Up sets the links called names up.
func (n *NS) Up(names ...string) error {
	for _, name := range names {
		h, l, err := n.link(name)
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up in %s: %w", name, n.Name, err)
		}
	}
	return nil
}

// Master enslaves the link called name to bridge.
func (n *NS) Master(name, bridge string) error {
	h, l, err := n.link(name)
	if err != nil {
		return err
	}
	_, br, err := n.link(bridge)
	if err != nil {
		return err
	}
	if err := h.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("attach %s to %s in %s: %w", name, bridge, n.Name, err)
	}
	return nil
}

// MTU sets the MTU of the link called name.
func (n *NS) MTU(name string, mtu int) error {
	h, l, err := n.link(name)
	if err != nil {
		return err
	}
	if err := h.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("set %s mtu %d in %s: %w", name, mtu, n.Name, err)
	}
	return nil
}

// Route routes dst (the default route when dst is invalid) via gw out of
// the link called name, replacing a route to dst that exists.
func (n *NS) Route(name string, dst netip.Prefix, gw netip.Addr) error {
	h, l, err := n.link(name)
	if err != nil {
		return err
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}
	if dst.IsValid() {
		r.Dst = IPNet(dst)
	}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("route %v via %s in %s: %w", dst, gw, n.Name, err)
	}
	return nil
}

// Plug connects pod to bridge in n, the way a CNI bridge plugin does:
// a veth host (in n, on bridge, up) whose peer is ifName in pod with mtu
// (0: the default), addrs, and default routes via gws. It returns pod's
// end's MAC.
func (n *NS) Plug(bridge, host string, pod *NS, ifName string, mtu int, addrs []netip.Prefix, gws ...netip.Addr) (net.HardwareAddr, error) {
	if err := n.Veth(host, pod, ifName); err != nil {
		return nil, err
	}
	if err := n.Master(host, bridge); err != nil {
		return nil, err
	}
	if err := n.Up(host); err != nil {
		return nil, err
	}
	if mtu > 0 {
		if err := pod.MTU(ifName, mtu); err != nil {
			return nil, err
		}
	}
	if err := pod.Addr(ifName, addrs...); err != nil {
		return nil, err
	}
	if err := pod.Up(ifName); err != nil {
		return nil, err
	}
	for _, gw := range gws {
		if err := pod.Route(ifName, netip.Prefix{}, gw); err != nil {
			return nil, err
		}
	}
	return pod.MAC(ifName)
}

// IPNet converts p for netlink.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
