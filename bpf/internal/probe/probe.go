// Package probe finds out what the node's kernel supports, for the
// capabilities a node registers with.
package probe

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/internal/netns"
)

// LinkKind reports whether the kernel can hold a flow-based device of kind
// ("vxlan" or "geneve") in ns: true when one exists already, else when a
// throwaway one can be created (and is deleted at once, so the probe
// leaves nothing behind; the kernel may autoload the module). The error
// says why not.
func LinkKind(nl *netlink.Handle, kind string) (bool, error) {
	links, err := nl.LinkList()
	if err != nil {
		return false, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if l.Type() == kind {
			return true, nil
		}
	}
	// No device of this kind exists here, so a flow-based one on the
	// standard port cannot collide with another (only one external
	// device per UDP port is allowed).
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "weftprobe" + hex.EncodeToString(b) // 15 bytes, IFNAMSIZ-1
	attrs := netlink.LinkAttrs{Name: name}
	var l netlink.Link
	switch kind {
	case "vxlan":
		l = &netlink.Vxlan{LinkAttrs: attrs, FlowBased: true, Port: 4789}
	case "geneve":
		l = &netlink.Geneve{LinkAttrs: attrs, FlowBased: true, Dport: 6081}
	default:
		return false, fmt.Errorf("probe %s: unknown device kind", kind)
	}
	if err := nl.LinkAdd(l); err != nil {
		return false, fmt.Errorf("create %s device: %w", kind, err)
	}
	if err := nl.LinkDel(l); err != nil {
		return true, fmt.Errorf("delete probe device %s: %w", name, err)
	}
	return true, nil
}

// IPv6 reports whether IPv6 is on in ns: the stack is present (not
// ipv6.disable=1) and net.ipv6.conf.all.disable_ipv6 is 0.
func IPv6(ns *netns.NS) bool {
	v, err := ns.Sysctl("net.ipv6.conf.all.disable_ipv6")
	return err == nil && v == "0"
}
