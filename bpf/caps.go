package bpf

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/spec"
)

// Capability names reported by Datapath.Capabilities and carried in the
// node's registration.
const (
	CapTCX    = "tcx"    // tcx links (kernel 6.6+); without it programs attach through tc
	CapVXLAN  = "vxlan"  // the kernel can create a flow-based VXLAN device
	CapGeneve = "geneve" // the kernel can create a flow-based Geneve device (CONFIG_GENEVE)
	CapIPv6   = "ipv6"   // IPv6 is enabled in the node's network namespace
)

// Capabilities reports what this node's kernel supports, in the order
// tcx, vxlan, geneve, ipv6 (missing ones left out). It probes once, in the
// namespace Open ran in, and returns the cached answer afterwards: a
// device kind counts as supported when a device of that kind exists or a
// throwaway flow-based one can be created (and is deleted at once, so the
// probe leaves nothing behind; the kernel may autoload the module). A call
// from another network namespace returns nil.
func (d *Datapath) Capabilities() []string {
	d.capsMu.Lock()
	defer d.capsMu.Unlock()
	if d.caps != nil {
		return append([]string(nil), d.caps...)
	}
	// Stay on this thread: every probe must see Open's namespace.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := d.checkNetns(); err != nil {
		d.log.Warn("probe capabilities", "error", err)
		return nil
	}
	caps := []string{}
	if tcxSupported() {
		caps = append(caps, CapTCX)
	}
	for _, c := range []struct{ name, kind string }{{CapVXLAN, "vxlan"}, {CapGeneve, "geneve"}} {
		ok, err := probeLinkKind(c.kind)
		switch {
		case ok && err != nil:
			d.log.Warn("probe capabilities", "error", err)
		case err != nil:
			d.log.Debug("kernel lacks a device kind", "kind", c.kind, "error", err)
		}
		if ok {
			caps = append(caps, c.name)
		}
	}
	if ipv6Enabled() {
		caps = append(caps, CapIPv6)
	}
	d.caps = caps
	d.log.Info("probed capabilities", "capabilities", strings.Join(caps, ","))
	return append([]string(nil), caps...)
}

// probeLinkKind reports whether the kernel can hold a flow-based device of
// kind ("vxlan" or "geneve"): true when one exists already, else when a
// throwaway one can be created. The error says why not.
func probeLinkKind(kind string) (bool, error) {
	links, err := netlink.LinkList()
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
	if err := netlink.LinkAdd(l); err != nil {
		return false, fmt.Errorf("create %s device: %w", kind, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return true, fmt.Errorf("delete probe device %s: %w", name, err)
	}
	return true, nil
}

// ipv6Enabled reports whether IPv6 is on in the calling thread's network
// namespace: the stack is present (not ipv6.disable=1) and
// net.ipv6.conf.all.disable_ipv6 is 0. /proc/sys/net shows the namespace
// of the thread that opens it.
func ipv6Enabled() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

// VTEPMAC returns the MAC address of the node's overlay device (weft_vxlan
// or weft_geneve), or nil when neither exists (before the first Sync in an
// overlay mode, or in native modes). The kernel picks the address when
// Sync creates the device, so it changes when the device is recreated.
func (d *Datapath) VTEPMAC() (net.HardwareAddr, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := d.checkNetns(); err != nil {
		return nil, err
	}
	for _, name := range []string{spec.VXLANDevice, spec.GeneveDevice} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				continue
			}
			return nil, fmt.Errorf("read link %s: %w", name, err)
		}
		return l.Attrs().HardwareAddr, nil
	}
	return nil, nil
}
