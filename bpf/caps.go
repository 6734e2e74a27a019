package bpf

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/internal/netns"
	"github.com/weftnet/weft/bpf/internal/probe"
	"github.com/weftnet/weft/bpf/internal/tc"
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
// Datapath's namespace, and returns the cached answer afterwards: a
// device kind counts as supported when a device of that kind exists or a
// throwaway flow-based one can be created (and is deleted at once, so the
// probe leaves nothing behind; the kernel may autoload the module). After
// Close it returns nil.
func (d *Datapath) Capabilities() []string {
	d.capsMu.Lock()
	defer d.capsMu.Unlock()
	if d.caps != nil {
		return append([]string(nil), d.caps...)
	}
	d.nsMu.RLock()
	defer d.nsMu.RUnlock()
	if d.ns == nil {
		d.log.Warn("probe capabilities", "error", errClosed)
		return nil
	}
	d.caps = probeCapabilities(d.ns, d.log)
	return append([]string(nil), d.caps...)
}

// VTEPMAC returns the MAC address of the node's overlay device (weft_vxlan
// or weft_geneve), or nil when neither exists (before the first Sync in an
// overlay mode, or in native modes). The kernel picks the address when
// Sync creates the device, so it changes when the device is recreated.
func (d *Datapath) VTEPMAC() (net.HardwareAddr, error) {
	d.nsMu.RLock()
	defer d.nsMu.RUnlock()
	if d.ns == nil {
		return nil, errClosed
	}
	return overlayMAC(d.ns)
}

// overlayMAC is the MAC of the overlay device in ns, nil without one.
func overlayMAC(ns *netns.NS) (net.HardwareAddr, error) {
	for _, name := range []string{spec.VXLANDevice, spec.GeneveDevice} {
		l, err := ns.NL.LinkByName(name)
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

// probeCapabilities probes what the kernel supports in ns (see
// Datapath.Capabilities) and logs it.
func probeCapabilities(ns *netns.NS, log hclog.Logger) []string {
	caps := []string{}
	if tc.TCXSupported() {
		caps = append(caps, CapTCX)
	}
	for _, c := range []struct{ name, kind string }{{CapVXLAN, "vxlan"}, {CapGeneve, "geneve"}} {
		ok, err := probe.LinkKind(ns.NL, c.kind)
		switch {
		case ok && err != nil:
			log.Warn("probe capabilities", "error", err)
		case err != nil:
			log.Debug("kernel lacks a device kind", "kind", c.kind, "error", err)
		}
		if ok {
			caps = append(caps, c.name)
		}
	}
	if probe.IPv6(ns) {
		caps = append(caps, CapIPv6)
	}
	log.Info("probed capabilities", "capabilities", strings.Join(caps, ","))
	return caps
}
