package bpf

import (
	"net"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/weftnet/weft/bpf/internal/device"
	"github.com/weftnet/weft/bpf/internal/netns"
	"github.com/weftnet/weft/bpf/spec"
)

// Host is a node's network namespace as an agent needs it before the
// programs are loaded: the underlay, what the kernel supports and the
// overlay device's MAC, which is all a node's registration carries.
// OpenHost loads nothing (it opens a namespace handle), so an agent can
// register while Open still loads and verifies the programs. A Host and a
// Datapath of the same namespace are independent: each holds its own
// handle, and closing one leaves the other working. Methods are safe for
// concurrent use; after Close they return errClosed (Capabilities: nil).
type Host struct {
	cfg Config
	log hclog.Logger

	mu sync.RWMutex // guards ns's lifetime: Close takes it exclusively
	ns *netns.NS    // nil once closed

	capsMu sync.Mutex
	caps   []string // probed once by Capabilities
}

// OpenHost binds a Host to cfg.NetNS; of cfg it uses NetNS, Underlay and
// Logger.
func OpenHost(cfg Config) (*Host, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	ns, err := netns.Open(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	return &Host{cfg: cfg, log: cfg.Logger.Named("datapath"), ns: ns}, nil
}

// Underlay is Datapath.Underlay, read through the Host's handle.
func (h *Host) Underlay() (spec.Underlay, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.ns == nil {
		return spec.Underlay{}, errClosed
	}
	return device.Underlay(h.ns.NL, h.cfg.Underlay)
}

// Capabilities is Datapath.Capabilities: probed once, then cached.
func (h *Host) Capabilities() []string {
	h.capsMu.Lock()
	defer h.capsMu.Unlock()
	if h.caps == nil {
		h.mu.RLock()
		defer h.mu.RUnlock()
		if h.ns == nil {
			h.log.Warn("probe capabilities", "error", errClosed)
			return nil
		}
		h.caps = probeCapabilities(h.ns, h.log)
	}
	return append([]string(nil), h.caps...)
}

// VTEPMAC is Datapath.VTEPMAC.
func (h *Host) VTEPMAC() (net.HardwareAddr, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.ns == nil {
		return nil, errClosed
	}
	return overlayMAC(h.ns)
}

// Close releases the namespace handle.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ns == nil {
		return nil
	}
	err := h.ns.Close()
	h.ns = nil
	return err
}
