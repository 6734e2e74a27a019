package nodeagent

import (
	"testing"

	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// TestHostRoutingConfigChange: a ConfigChanged that only switches
// host_routing reaches the datapath (the spec comparison that decides
// whether to Sync must see it), and back.
func TestHostRoutingConfigChange(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.start()
	eventually(t, "first sync", func() (bool, string) {
		k := h.dp.Kernel()
		if k == nil {
			return false, "no sync yet"
		}
		return len(k.Tunnels) == 1 && !k.StackRouting, k.String()
	})
	for _, hr := range []string{"stack", "bpf"} {
		c := cfg()
		c.HostRouting = hr
		h.append(logtest.Config(c))
		eventually(t, "host routing "+hr, func() (bool, string) {
			k := h.dp.Kernel()
			return k.StackRouting == (hr == "stack"), k.String()
		})
	}
}

// TestTunnelDatapathConfigChange: a ConfigChanged that only switches
// tunnel_datapath reaches the datapath as Overlay.InProgram, and back.
func TestTunnelDatapathConfigChange(t *testing.T) {
	_, c := etcdtest.New(t)
	h := newHarness(t, c, c)
	h.append(logtest.Config(cfg()))
	h.append(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	h.append(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	h.start()
	eventually(t, "first sync", func() (bool, string) {
		k := h.dp.Kernel()
		if k == nil {
			return false, "no sync yet"
		}
		return len(k.Tunnels) == 1 && k.Overlay != nil && !k.Overlay.InProgram, k.String()
	})
	for _, td := range []string{"bpf", "device"} {
		c := cfg()
		c.TunnelDatapath = td
		h.append(logtest.Config(c))
		eventually(t, "tunnel datapath "+td, func() (bool, string) {
			k := h.dp.Kernel()
			return k.Overlay != nil && k.Overlay.InProgram == (td == "bpf"), k.String()
		})
	}
}
