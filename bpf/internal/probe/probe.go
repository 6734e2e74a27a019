// Package probe finds out what the node's kernel supports, for the
// capabilities a node registers with.
package probe

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/netns"
)

// LinkKind reports whether the kernel can hold a flow-based device of kind
// ("vxlan" or "geneve") in the namespace of nl, without making one: it
// asks for a device with a one-byte MAC. A kernel that knows the kind
// (after loading its module if it must) hands the request to the kind's
// own validation, which refuses that address (EINVAL); one that does not
// answers EOPNOTSUPP. Nothing is registered, so the probe costs one
// netlink round trip instead of a device's creation and deletion (the
// deletion alone waits for an RCU grace period, ~20 ms). Should a kernel
// create the device anyway, it is deleted at once; any other answer falls
// back to creating and deleting a throwaway device. The error says why a
// kind is missing.
func LinkKind(nl *netlink.Handle, kind string) (bool, error) {
	if kind != "vxlan" && kind != "geneve" {
		return false, fmt.Errorf("probe %s: unknown device kind", kind)
	}
	err := nl.LinkAdd(probeLink(kind, net.HardwareAddr{0x02}))
	switch {
	case errors.Is(err, unix.EINVAL):
		return true, nil
	case errors.Is(err, unix.EOPNOTSUPP):
		return false, fmt.Errorf("create %s device: %w", kind, err)
	case err == nil:
		return deleteProbe(nl, kind)
	}
	// Another answer (a kernel that checks something else first): the
	// plain probe. No device of this kind may exist here, so a flow-based
	// one on the standard port cannot collide with another (only one
	// external device per UDP port is allowed).
	if err := nl.LinkAdd(probeLink(kind, nil)); err != nil {
		return false, fmt.Errorf("create %s device: %w", kind, err)
	}
	return deleteProbe(nl, kind)
}

// probeName is the name of the throwaway device: 15 bytes (IFNAMSIZ-1),
// the same for both kinds and all probes of one process.
var probeName = func() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return "weftprobe" + hex.EncodeToString(b)
}()

func probeLink(kind string, mac net.HardwareAddr) netlink.Link {
	attrs := netlink.LinkAttrs{Name: probeName, HardwareAddr: mac}
	if kind == "geneve" {
		return &netlink.Geneve{LinkAttrs: attrs, FlowBased: true, Dport: 6081}
	}
	return &netlink.Vxlan{LinkAttrs: attrs, FlowBased: true, Port: 4789}
}

func deleteProbe(nl *netlink.Handle, kind string) (bool, error) {
	l, err := nl.LinkByName(probeName)
	if err == nil {
		err = nl.LinkDel(l)
	}
	if err != nil {
		return true, fmt.Errorf("delete probe device %s: %w", probeName, err)
	}
	return true, nil
}

// IPv6 reports whether IPv6 is on in ns: the stack is present (not
// ipv6.disable=1) and net.ipv6.conf.all.disable_ipv6 is 0.
func IPv6(ns *netns.NS) bool {
	v, err := ns.Sysctl("net.ipv6.conf.all.disable_ipv6")
	return err == nil && v == "0"
}
