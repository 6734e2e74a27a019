package bpf

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

// devState is a weft overlay device as the kernel holds it.
type devState struct {
	Name      string
	Kind      spec.Mode
	Index     int
	Port      uint16
	MTU       int
	FlowBased bool
	Learning  bool
	NoARP     bool
	Up        bool
	// Addrs are the device's non-link-local addresses.
	Addrs map[netip.Prefix]bool
}

// compatible reports whether d can serve o without being recreated (MTU,
// ARP and link state are adjusted in place).
func (d *devState) compatible(o *spec.Overlay) bool {
	return d.Kind == o.Kind && d.Port == o.Port && d.FlowBased && !d.Learning
}

func readDevice(name string) (*devState, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("read link %s: %w", name, err)
	}
	a := l.Attrs()
	d := &devState{
		Name:  name,
		Index: a.Index,
		MTU:   a.MTU,
		NoARP: a.RawFlags&unix.IFF_NOARP != 0,
		Up:    a.Flags&net.FlagUp != 0,
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
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

// createDevice creates the flow-based device for o (deleting a stale one of
// the same name first) and returns its state.
func createDevice(o *spec.Overlay, old *devState) (*devState, error) {
	name := o.DeviceName()
	attrs := netlink.LinkAttrs{Name: name, MTU: o.MTU}
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
		if err := deleteDevice(old.Name); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkAdd(l); err != nil {
		if o.Kind == spec.ModeGeneve && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP)) {
			return nil, fmt.Errorf("create device %s: %w: %w", name, ErrNoGeneve, err)
		}
		return nil, fmt.Errorf("create device %s: %w", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("read created device %s: %w", name, err)
	}
	if err := netlink.LinkSetARPOff(l); err != nil {
		return nil, fmt.Errorf("set %s noarp: %w", name, err)
	}
	// No IPv6 link-local address: nothing should send router solicitations
	// or MLD reports into the tunnel (they would be dropped as misses).
	_ = netlink.LinkSetIP6AddrGenMode(l, 1 /* IN6_ADDR_GEN_MODE_NONE */)
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return readDevice(name)
}

// adjustDevice fixes MTU, ARP and link state of a compatible device and
// names each change.
func adjustDevice(d *devState, o *spec.Overlay) ([]string, error) {
	var fixed []string
	if d.MTU == o.MTU && d.NoARP && d.Up {
		return nil, nil
	}
	l, err := netlink.LinkByIndex(d.Index)
	if err != nil {
		return nil, fmt.Errorf("read link %s: %w", d.Name, err)
	}
	if d.MTU != o.MTU {
		if err := netlink.LinkSetMTU(l, o.MTU); err != nil {
			return nil, fmt.Errorf("set %s mtu %d: %w", d.Name, o.MTU, err)
		}
		fixed = append(fixed, fmt.Sprintf("device %s mtu %d -> %d", d.Name, d.MTU, o.MTU))
		d.MTU = o.MTU
	}
	if !d.NoARP {
		if err := netlink.LinkSetARPOff(l); err != nil {
			return nil, fmt.Errorf("set %s noarp: %w", d.Name, err)
		}
		fixed = append(fixed, fmt.Sprintf("device %s arp off", d.Name))
		d.NoARP = true
	}
	if !d.Up {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", d.Name, err)
		}
		fixed = append(fixed, fmt.Sprintf("device %s up", d.Name))
		d.Up = true
	}
	return fixed, nil
}

func deleteDevice(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("read link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete device %s: %w", name, err)
	}
	return nil
}

// overlayMTU is the device MTU for an underlay of mtu bytes.
func overlayMTU(kind spec.Mode, u spec.Underlay) int {
	over := spec.VXLANOverhead
	if kind == spec.ModeGeneve {
		over = spec.GeneveOverhead
	}
	if u.IP.Is6() && !u.IP.Is4In6() {
		over += spec.IPv6Extra
	}
	return u.MTU - over
}

// readUnderlay resolves the underlay named by iface-or-IP ("" = the
// interface of the default route).
func readUnderlay(name string) (spec.Underlay, error) {
	var link netlink.Link
	var ip netip.Addr
	switch {
	case name == "":
		l, err := defaultRouteLink()
		if err != nil {
			return spec.Underlay{}, err
		}
		link = l
	default:
		if a, err := netip.ParseAddr(name); err == nil {
			ip = a.Unmap()
			addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
			if err != nil {
				return spec.Underlay{}, fmt.Errorf("list addresses: %w", err)
			}
			for _, ad := range addrs {
				if x, ok := netip.AddrFromSlice(ad.IP); ok && x.Unmap() == ip {
					link, _ = netlink.LinkByIndex(ad.LinkIndex)
				}
			}
			if link == nil {
				return spec.Underlay{}, fmt.Errorf("find underlay: no interface holds %s", ip)
			}
		} else {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return spec.Underlay{}, fmt.Errorf("find underlay %s: %w", name, err)
			}
			link = l
		}
	}
	fixedIP := ip.IsValid()
	u := spec.Underlay{Interface: link.Attrs().Name, MTU: link.Attrs().MTU, IP: ip}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return spec.Underlay{}, fmt.Errorf("list addresses of %s: %w", u.Interface, err)
	}
	for _, ad := range addrs {
		a, ok := netip.AddrFromSlice(ad.IP)
		if !ok || a.IsLinkLocalUnicast() {
			continue
		}
		a = a.Unmap()
		ones, _ := ad.Mask.Size()
		u.Networks = append(u.Networks, netip.PrefixFrom(a, ones).Masked())
		// Prefer the first IPv4 address, else the first global IPv6 one.
		if !fixedIP && (!u.IP.IsValid() || (u.IP.Is6() && a.Is4())) {
			u.IP = a
		}
	}
	if !u.IP.IsValid() {
		return spec.Underlay{}, fmt.Errorf("find underlay %s: no address", u.Interface)
	}
	return u, nil
}

func defaultRouteLink() (netlink.Link, error) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				return l, nil
			}
		}
	}
	return nil, errors.New("find underlay: no default route")
}

// readLinkIndex returns the ifindex of name, 0 when it does not exist.
func readLinkIndex(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return 0, nil
		}
		return 0, fmt.Errorf("read link %s: %w", name, err)
	}
	return l.Attrs().Index, nil
}

// deviceAddrs are the addresses weft puts on the overlay device: the
// network address of each local pod CIDR as a host address (as flannel
// does), so traffic the node itself sends into the overlay has a source
// the remote nodes' tunnel maps know.
func deviceAddrs(want *spec.Desired) map[netip.Prefix]bool {
	out := map[netip.Prefix]bool{}
	for _, p := range want.LocalPodCIDRs {
		a := p.Masked().Addr()
		out[netip.PrefixFrom(a, a.BitLen())] = true
	}
	return out
}

// syncDeviceAddrs makes d's addresses equal want and names each change.
func syncDeviceAddrs(d *devState, want map[netip.Prefix]bool) ([]string, error) {
	if maps.Equal(d.Addrs, want) {
		return nil, nil
	}
	var changed []string
	l, err := netlink.LinkByIndex(d.Index)
	if err != nil {
		return nil, fmt.Errorf("read link %s: %w", d.Name, err)
	}
	for p := range d.Addrs {
		if want[p] {
			continue
		}
		if err := netlink.AddrDel(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return changed, fmt.Errorf("delete address %s from %s: %w", p, d.Name, err)
		}
		delete(d.Addrs, p)
		changed = append(changed, fmt.Sprintf("address %s removed from %s", p, d.Name))
	}
	for p := range want {
		if d.Addrs[p] {
			continue
		}
		a := &netlink.Addr{IPNet: ipNet(p), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrReplace(l, a); err != nil {
			return changed, fmt.Errorf("add address %s to %s: %w", p, d.Name, err)
		}
		d.Addrs[p] = true
		changed = append(changed, fmt.Sprintf("address %s on %s", p, d.Name))
	}
	return changed, nil
}
