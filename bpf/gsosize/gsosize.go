// Package gsosize raises a device's GSO and GRO limits for BIG TCP.
//
// TCP builds its packets (TSO/GSO) up to the gso_max_size of the device
// its route leaves by, 64 KiB unless raised; every device a packet then
// crosses checks it against its own limit and, when the packet is larger,
// segments it in software into MTU-sized packets (gso_features_check).
// BIG TCP raises the limits on the whole path, so each packet carries
// ~3 times more data and the per-packet work of the stack, the veths and
// weft's programs is paid ~3 times less often. The agent raises the
// underlay and the pod bridge, weft-cni both ends of each pod's veth
// (docs/datapath.md, "BIG TCP").
package gsosize

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/spec"
)

// Raise raises link's GSO and GRO maximum sizes to want's per family
// (IPv6: gso_max_size and gro_max_size, which bound non-IP packets too;
// IPv4: gso_ipv4_max_size and gro_ipv4_max_size, Linux >= 6.3), each
// capped by the device's tso_max_size (the kernel refuses more). A limit
// already at or above the size is left, so an operator's larger setting
// stands; a zero size asks for nothing. It returns what it changed, e.g.
// "eth0 gso_ipv4_max_size 65536 -> 196608", also when it fails part way.
func Raise(nl *netlink.Handle, link netlink.Link, want spec.BigTCP) ([]string, error) {
	a := link.Attrs()
	limit := func(size int) int {
		if a.TSOMaxSize > 0 && size > int(a.TSOMaxSize) {
			return int(a.TSOMaxSize)
		}
		return size
	}
	// IPv6's limit first: setting gso_max_size to 64 KiB or less sets
	// gso_ipv4_max_size to it as well.
	steps := []struct {
		name string
		have uint32
		want int
		set  func(netlink.Link, int) error
	}{
		{"gso_max_size", a.GSOMaxSize, limit(want.IPv6), nl.LinkSetGSOMaxSize},
		{"gro_max_size", a.GROMaxSize, limit(want.IPv6), nl.LinkSetGROMaxSize},
		{"gso_ipv4_max_size", a.GSOIPv4MaxSize, limit(want.IPv4), nl.LinkSetGSOIPv4MaxSize},
		{"gro_ipv4_max_size", a.GROIPv4MaxSize, limit(want.IPv4), nl.LinkSetGROIPv4MaxSize},
	}
	var changed []string
	for _, s := range steps {
		if s.want == 0 || int(s.have) >= s.want {
			continue
		}
		if err := s.set(link, s.want); err != nil {
			return changed, fmt.Errorf("set %s %s to %d: %w", a.Name, s.name, s.want, err)
		}
		changed = append(changed, fmt.Sprintf("%s %s %d -> %d", a.Name, s.name, s.have, s.want))
	}
	return changed, nil
}
