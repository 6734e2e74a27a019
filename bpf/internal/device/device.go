// Package device manages weft's flow-based overlay device (weft_vxlan or
// weft_geneve) and reads the node's underlay.
package device

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/spec"
)

// ErrNoGeneve is returned (wrapped) when the kernel cannot create a Geneve
// device.
var ErrNoGeneve = errors.New("bpf: kernel lacks CONFIG_GENEVE (geneve devices unsupported)")

// State is a weft overlay device as the kernel holds it.
type State struct {
	Name      string
	Kind      spec.Mode
	Index     int
	Port      uint16
	MTU       int
	FlowBased bool
	Learning  bool
	NoARP     bool
	Up        bool
	MAC       spec.MAC
	// Addrs are the device's non-link-local addresses.
	Addrs map[netip.Prefix]bool
}

// Compatible reports whether d can serve o without being recreated (MTU,
// ARP and link state are adjusted in place).
func (d *State) Compatible(o *spec.Overlay) bool {
	return d.Kind == o.Kind && d.Port == o.Port && d.FlowBased && !d.Learning
}

// Read returns the device called name, nil when there is none.
func Read(nl *netlink.Handle, name string) (*State, error) {
	l, err := nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("read link %s: %w", name, err)
	}
	a := l.Attrs()
	d := &State{
		Name:  name,
		Index: a.Index,
		MTU:   a.MTU,
		NoARP: a.RawFlags&unix.IFF_NOARP != 0,
		Up:    a.Flags&net.FlagUp != 0,
	}
	copy(d.MAC[:], a.HardwareAddr)
	addrs, err := nl.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", name, err)
	}
	d.Addrs = map[netip.Prefix]bool{}
	for _, ad := range addrs {
		if a, ok := netip.AddrFromSlice(ad.IP); ok && !a.IsLinkLocalUnicast() {
			ones, _ := ad.Mask.Size()
			d.Addrs[netip.PrefixFrom(a.Unmap(), ones)] = true
		}
	}
	switch v := l.(type) {
	case *netlink.Vxlan:
		d.Kind, d.Port, d.FlowBased, d.Learning = spec.ModeVXLAN, uint16(v.Port), v.FlowBased, v.Learning
	case *netlink.Geneve:
		d.Kind, d.Port, d.FlowBased = spec.ModeGeneve, v.Dport, v.FlowBased
	default:
		d.Kind = spec.Mode(l.Type())
	}
	return d, nil
}

// Create creates the flow-based device for o (deleting old, a stale one
// of the same name, first), with o.MAC unless that is zero, and returns
// its state.
func Create(nl *netlink.Handle, o *spec.Overlay, old *State) (*State, error) {
	name := o.DeviceName()
	attrs := netlink.LinkAttrs{Name: name, MTU: o.MTU}
	if !o.MAC.IsZero() {
		attrs.HardwareAddr = net.HardwareAddr(o.MAC[:])
	}
	var l netlink.Link
	switch o.Kind {
	case spec.ModeVXLAN:
		l = &netlink.Vxlan{LinkAttrs: attrs, FlowBased: true, Learning: false, Port: int(o.Port)}
	case spec.ModeGeneve:
		l = &netlink.Geneve{LinkAttrs: attrs, FlowBased: true, Dport: o.Port}
	default:
		return nil, fmt.Errorf("create device: overlay kind %q is not vxlan or geneve", o.Kind)
	}
	if old != nil {
		if err := Delete(nl, old.Name); err != nil {
			return nil, err
		}
	}
	if err := nl.LinkAdd(l); err != nil {
		if o.Kind == spec.ModeGeneve && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP)) {
			return nil, fmt.Errorf("create device %s: %w: %w", name, ErrNoGeneve, err)
		}
		return nil, fmt.Errorf("create device %s: %w", name, err)
	}
	l, err := nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("read created device %s: %w", name, err)
	}
	if err := nl.LinkSetARPOff(l); err != nil {
		return nil, fmt.Errorf("set %s noarp: %w", name, err)
	}
	// No IPv6 link-local address: nothing should send router solicitations
	// or MLD reports into the tunnel (they would be dropped as misses).
	_ = nl.LinkSetIP6AddrGenMode(l, 1 /* IN6_ADDR_GEN_MODE_NONE */)
	if err := nl.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return Read(nl, name)
}

// Adjust fixes MTU, MAC (unless o.MAC is zero), ARP and link state of a
// compatible device and names each change. The MAC changes in place:
// weft's programs do not look at inner Ethernet addresses.
func Adjust(nl *netlink.Handle, d *State, o *spec.Overlay) ([]string, error) {
	var fixed []string
	macOK := o.MAC.IsZero() || d.MAC == o.MAC
	if d.MTU == o.MTU && macOK && d.NoARP && d.Up {
		return nil, nil
	}
	l, err := nl.LinkByIndex(d.Index)
	if err != nil {
		return nil, fmt.Errorf("read link %s: %w", d.Name, err)
	}
	if d.MTU != o.MTU {
		if err := nl.LinkSetMTU(l, o.MTU); err != nil {
			return nil, fmt.Errorf("set %s mtu %d: %w", d.Name, o.MTU, err)
		}
		fixed = append(fixed, fmt.Sprintf("device %s mtu %d -> %d", d.Name, d.MTU, o.MTU))
		d.MTU = o.MTU
	}
	if !macOK {
		if err := nl.LinkSetHardwareAddr(l, net.HardwareAddr(o.MAC[:])); err != nil {
			return nil, fmt.Errorf("set %s address %s: %w", d.Name, o.MAC, err)
		}
		fixed = append(fixed, fmt.Sprintf("device %s mac %s -> %s", d.Name, d.MAC, o.MAC))
		d.MAC = o.MAC
	}
	if !d.NoARP {
		if err := nl.LinkSetARPOff(l); err != nil {
			return nil, fmt.Errorf("set %s noarp: %w", d.Name, err)
		}
		fixed = append(fixed, fmt.Sprintf("device %s arp off", d.Name))
		d.NoARP = true
	}
	if !d.Up {
		if err := nl.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", d.Name, err)
		}
		fixed = append(fixed, fmt.Sprintf("device %s up", d.Name))
		d.Up = true
	}
	return fixed, nil
}

// Delete deletes the device called name; a missing one is not an error.
func Delete(nl *netlink.Handle, name string) error {
	l, err := nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("read link %s: %w", name, err)
	}
	if err := nl.LinkDel(l); err != nil {
		return fmt.Errorf("delete device %s: %w", name, err)
	}
	return nil
}

// OverlayMTU is the device MTU of an overlay of kind on underlay u.
func OverlayMTU(kind spec.Mode, u spec.Underlay) int {
	over := spec.VXLANOverhead
	if kind == spec.ModeGeneve {
		over = spec.GeneveOverhead
	}
	if u.IP.Is6() && !u.IP.Is4In6() {
		over += spec.IPv6Extra
	}
	return u.MTU - over
}

// Index returns the ifindex of the link called name, 0 when there is none.
func Index(nl *netlink.Handle, name string) (int, error) {
	l, err := nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return 0, nil
		}
		return 0, fmt.Errorf("read link %s: %w", name, err)
	}
	return l.Attrs().Index, nil
}

// Addrs are the addresses weft puts on the overlay device: the network
// address of each local pod CIDR as a host address (as flannel does), so
// traffic the node itself sends into the overlay has a source the remote
// nodes' tunnel maps know.
func Addrs(want *spec.Desired) map[netip.Prefix]bool {
	out := map[netip.Prefix]bool{}
	for _, p := range want.LocalPodCIDRs {
		a := p.Masked().Addr()
		out[netip.PrefixFrom(a, a.BitLen())] = true
	}
	return out
}

// SyncAddrs makes d's addresses equal want and names each change.
func SyncAddrs(nl *netlink.Handle, d *State, want map[netip.Prefix]bool) ([]string, error) {
	if maps.Equal(d.Addrs, want) {
		return nil, nil
	}
	var changed []string
	l, err := nl.LinkByIndex(d.Index)
	if err != nil {
		return nil, fmt.Errorf("read link %s: %w", d.Name, err)
	}
	for p := range d.Addrs {
		if want[p] {
			continue
		}
		if err := nl.AddrDel(l, &netlink.Addr{IPNet: IPNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return changed, fmt.Errorf("delete address %s from %s: %w", p, d.Name, err)
		}
		delete(d.Addrs, p)
		changed = append(changed, fmt.Sprintf("address %s removed from %s", p, d.Name))
	}
	for p := range want {
		if d.Addrs[p] {
			continue
		}
		a := &netlink.Addr{IPNet: IPNet(p), Flags: unix.IFA_F_NODAD}
		if err := nl.AddrReplace(l, a); err != nil {
			return changed, fmt.Errorf("add address %s to %s: %w", p, d.Name, err)
		}
		d.Addrs[p] = true
		changed = append(changed, fmt.Sprintf("address %s on %s", p, d.Name))
	}
	return changed, nil
}

// IPNet converts p for netlink.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
