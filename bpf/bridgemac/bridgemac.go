// Package bridgemac gives the pod bridge a MAC address of its own.
//
// A Linux bridge whose address was never set takes the lowest MAC of its
// ports and moves whenever ports come and go (br_stp_recalculate_bridge_id;
// with no port left it is 00:00:00:00:00:00). The bridge is the pods'
// gateway: when a pod is deleted and its veth held the bridge's MAC, every
// other pod on the node keeps the old MAC in its neighbour entry for the
// gateway and sends its off-node traffic to a MAC nobody has until that
// entry expires, while traffic inside the node (no gateway) goes on. The
// kernel keeps an address that was set (NET_ADDR_SET), so whoever creates
// the bridge (the agent's EnsurePodGateway, weft-cni's ADD) sets one.
package bridgemac

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// New returns a random locally administered unicast MAC address.
func New() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("make bridge mac: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac, nil
}

// Pin makes the address of the bridge br (in h's namespace) one the
// kernel keeps, when br may still follow its ports: its address is zero
// or that of one of its ports (a bridge made without an address, e.g. by
// an older weft). It keeps the current address where it can, so pods'
// neighbour entries stay right; a bridge with an address of its own is
// left alone.
func Pin(h *netlink.Handle, br netlink.Link) error {
	have := br.Attrs().HardwareAddr
	zero := len(have) != 6 || bytes.Equal(have, make(net.HardwareAddr, 6))
	if !zero {
		own, err := own(h, br)
		if err != nil {
			return err
		}
		if own {
			return nil
		}
	}
	mac := have
	if zero || mac[0]&0x01 != 0 {
		var err error
		if mac, err = New(); err != nil {
			return err
		}
	}
	if err := h.LinkSetHardwareAddr(br, mac); err != nil {
		return fmt.Errorf("set mac of %s: %w", br.Attrs().Name, err)
	}
	return nil
}

// own reports whether no port of br has br's MAC. A dump that keeps
// being interrupted (links changing meanwhile) counts as "not own":
// pinning the current MAC again is harmless.
func own(h *netlink.Handle, br netlink.Link) (bool, error) {
	for range 3 {
		links, err := h.LinkList()
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("list ports of %s: %w", br.Attrs().Name, err)
		}
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index && bytes.Equal(l.Attrs().HardwareAddr, br.Attrs().HardwareAddr) {
				return false, nil
			}
		}
		return true, nil
	}
	return false, nil
}
