package nodeagent

import (
	"testing"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// TestDatapathSwitchConfigChange: a ConfigChanged that only flips one of
// the datapath switches (host_routing, tunnel_datapath) reaches the
// datapath's desired state (the spec comparison that decides whether to
// Sync must see it), and back.
func TestDatapathSwitchConfigChange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []string // away from the default, then back to it
		set    func(c *weftv1.ClusterConfig, v string)
		// applied reports whether the desired state shows v; with v ""
		// it must show the default.
		applied func(k *spec.Desired, v string) bool
	}{{
		name:   "host_routing",
		values: []string{"stack", "bpf"},
		set:    func(c *weftv1.ClusterConfig, v string) { c.HostRouting = v },
		applied: func(k *spec.Desired, v string) bool {
			return k.StackRouting == (v == "stack")
		},
	}, {
		name:   "tunnel_datapath",
		values: []string{"bpf", "device"},
		set:    func(c *weftv1.ClusterConfig, v string) { c.TunnelDatapath = v },
		applied: func(k *spec.Desired, v string) bool {
			return k.Overlay != nil && k.Overlay.InProgram == (v == "bpf")
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
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
				return len(k.Tunnels) == 1 && tc.applied(k, ""), k.String()
			})
			for _, v := range tc.values {
				c := cfg()
				tc.set(c, v)
				h.append(logtest.Config(c))
				eventually(t, tc.name+" "+v, func() (bool, string) {
					k := h.dp.Kernel()
					return tc.applied(k, v), k.String()
				})
			}
		})
	}
}
