package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/internal/device"
	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/internal/route"
	"github.com/weftnet/weft/bpf/internal/tc"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// weftLeftovers lists what of the overlay mode is still in n's kernel.
func weftLeftovers(t *testing.T, n *testNode, wantBridge bool) (devs []string, devRoutes int, entries int, linkPins int) {
	t.Helper()
	n.ns.MustDo(t, func() error {
		for _, name := range []string{spec.VXLANDevice, spec.GeneveDevice} {
			if _, err := netlink.LinkByName(name); err == nil {
				devs = append(devs, name)
			}
		}
		rs, err := route.List(n.dp.ns.NL)
		if err != nil {
			return err
		}
		for _, r := range rs {
			if r.Dev != 0 {
				devRoutes++
			}
		}
		ts, err := readTrie(n.dp.objs.WeftTunnels, "tunnel map", 0)
		if err != nil {
			return err
		}
		entries = len(ts)
		for _, h := range []tc.Hook{tc.Egress, tc.Ingress} {
			if _, err := os.Stat(n.cfg.PinDir + "/" + h.Name); err == nil {
				linkPins++
			}
		}
		if !wantBridge {
			if _, err := os.Stat(n.cfg.PinDir + "/" + tc.Bridge.Name); err == nil {
				linkPins++
			}
			br, err := netlink.LinkByName("weft0")
			if err != nil {
				return err
			}
			r, err := link.QueryPrograms(link.QueryOptions{Target: br.Attrs().Index, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return err
			}
			linkPins += len(r.Programs)
		}
		return nil
	})
	return
}

func masqTable(t *testing.T, n *testNode) bool {
	t.Helper()
	_, on, err := n.dp.readMasq()
	must(t, err)
	return on
}

func TestModes(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a, b := c.nodes[0], c.nodes[1]
	for _, n := range c.nodes {
		n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
	}
	if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
		t.Fatal("vxlan: no path")
	}

	bgp := netip.MustParsePrefix("10.250.0.0/24")
	t.Run("vxlan to native with masquerade", func(t *testing.T) {
		for _, n := range c.nodes {
			w := c.nativeWant(n, true)
			w.Routes = append(w.Routes, spec.Route{Prefix: bgp, Via: c.peer(n).under, Proto: spec.ProtoBGP})
			rep := n.sync(w)
			t.Logf("node %d: %+v", n.idx, rep)
			// The bridge keeps its program: host routing in eBPF.
			devs, devRoutes, entries, pins := weftLeftovers(t, n, true)
			if len(devs)+devRoutes+entries+pins != 0 {
				t.Fatalf("node %d keeps overlay state: devices %v, device routes %d, map entries %d, link pins %d", n.idx, devs, devRoutes, entries, pins)
			}
			if !masqTable(t, n) {
				t.Fatalf("node %d: no nftables table %s", n.idx, NFTable)
			}
			rs, err := route.List(n.dp.ns.NL)
			must(t, err)
			p := c.peer(n)
			if r := rs[p.podCIDR]; r.Via != p.under || r.Proto != RouteProtocol {
				t.Fatalf("node %d: direct route %v", n.idx, rs)
			}
			if r := rs[bgp]; r.Via != p.under || r.Proto != RouteProtocolBGP {
				t.Fatalf("node %d: bgp route %v", n.idx, rs)
			}
		}
		c0 := a.counters()
		checkNative(t, c)
		if c1 := a.counters(); c1.TxPackets != c0.TxPackets || c1.RxPackets != c0.RxPackets {
			t.Fatalf("BPF counters moved in native mode: %+v -> %+v", c0, c1)
		}
		// Masquerade: a pod reaching a host on the underlay shows up with
		// the node's address; a pod reaching a pod keeps its own.
		if src := udpSource(t, a.pod, b.ns, b.under); src != a.under {
			t.Fatalf("pod to underlay host seen from %s, want the node's %s", src, a.under)
		}
		if src := udpSource(t, a.pod, b.pod, b.podIP); src != a.podIP {
			t.Fatalf("pod to pod seen from %s, want %s", src, a.podIP)
		}
		if src := udpSource(t, a.pod, b.ns, b.under6); src != a.under6 {
			t.Fatalf("pod to IPv6 underlay host seen from %s, want %s", src, a.under6)
		}
	})

	t.Run("reconcile restores a deleted nftables table", func(t *testing.T) {
		must(t, a.dp.writeMasq(nil, true))
		w := c.nativeWant(a, true)
		w.Routes = append(w.Routes, spec.Route{Prefix: bgp, Via: b.under, Proto: spec.ProtoBGP})
		rep, err := a.dp.Reconcile(t.Context(), w)
		must(t, err)
		if len(rep.Repaired) != 1 || !strings.Contains(rep.Repaired[0], "nftables table weft") || !masqTable(t, a) {
			t.Fatalf("repairs %q, table present %v", rep.Repaired, masqTable(t, a))
		}
	})

	t.Run("masquerade off", func(t *testing.T) {
		a.sync(c.nativeWant(a, false))
		if masqTable(t, a) {
			t.Fatal("nftables table still present")
		}
		// Without masquerade node 2 sees the pod address (and has a route back).
		if src := udpSource(t, a.pod, b.ns, b.under); src != a.podIP {
			t.Fatalf("seen from %s, want the pod's %s", src, a.podIP)
		}
	})

	t.Run("native back to vxlan", func(t *testing.T) {
		for _, n := range c.nodes {
			n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
			rs, err := route.List(n.dp.ns.NL)
			must(t, err)
			for _, r := range rs {
				if r.Via.IsValid() {
					t.Fatalf("node %d keeps direct route %s", n.idx, r)
				}
			}
			if masqTable(t, n) {
				t.Fatalf("node %d keeps the nftables table", n.idx)
			}
		}
		checkPath(t, c)
	})

	t.Run("hybrid", func(t *testing.T) {
		// Both nodes route IPv4 pods directly (adjacent) and tunnel IPv6.
		for _, n := range c.nodes {
			p := c.peer(n)
			w := c.overlayWant(n, spec.ModeHybrid, netip.Addr{})
			w.Overlay.Kind = spec.ModeVXLAN
			w.Tunnels = []spec.Tunnel{{Prefix: p.podCIDR6, Endpoint: p.under, VNI: 1}}
			w.Routes = []spec.Route{{Prefix: p.podCIDR, Via: p.under}}
			n.sync(w)
		}
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("hybrid: no direct IPv4 path")
		}
		// Direct routes carry plain traffic for pods (the peers' own
		// too): the underlay check does not drop it as tunnel-only.
		var g object.WeftGuard
		must(t, a.dp.objs.WeftGuard.Lookup(uint32(0), &g))
		if g.Flags&object.GuardTunnelOnly != 0 {
			t.Fatalf("hybrid with direct routes is tunnel-only: %+v", g)
		}
		if src := udpSource(t, a.ns, b.pod, b.podIP); src != a.under {
			t.Fatalf("node 1 to pod 2 over the direct route seen from %s, want %s", src, a.under)
		}
		// 50 IPv4 pings may meet a stray packet of an earlier connection in
		// the tunnel, not 50.
		c0 := a.counters()
		if lost := netnstest.Lost(t, a.pod, b.podIP, 50, 2*time.Millisecond); lost != 0 {
			t.Fatalf("hybrid: %d of 50 direct pings lost", lost)
		}
		c1 := a.counters()
		if c1.TxPackets-c0.TxPackets >= 10 {
			t.Fatalf("IPv4 took the tunnel: %+v -> %+v", c0, c1)
		}
		if !netnstest.Reach(t, a.pod, b.podIP6, reachTimeout) {
			t.Fatal("hybrid: no tunnelled IPv6 path")
		}
		if c2 := a.counters(); c2.TxPackets == c1.TxPackets {
			t.Fatalf("IPv6 did not take the tunnel: %+v -> %+v", c1, c2)
		}
		for _, n := range c.nodes {
			n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
		}
	})

	t.Run("vxlan to geneve fails cleanly", func(t *testing.T) {
		_, err := a.dp.Sync(t.Context(), c.overlayWant(a, spec.ModeGeneve, netip.Addr{}))
		if err == nil {
			t.Skip("kernel has CONFIG_GENEVE: the failure path cannot be exercised here")
		}
		if !errors.Is(err, ErrNoGeneve) {
			t.Fatalf("error %v does not wrap ErrNoGeneve", err)
		}
		t.Logf("error: %v", err)
		// The node keeps its VXLAN datapath intact.
		devs, devRoutes, entries, pins := weftLeftovers(t, a, true)
		if len(devs) != 1 || devs[0] != spec.VXLANDevice || devRoutes != 2 || entries != 2 || pins != 2 {
			t.Fatalf("after failed switch: devices %v, device routes %d, entries %d, link pins %d", devs, devRoutes, entries, pins)
		}
		if !netnstest.Reach(t, a.pod, b.podIP, reachTimeout) {
			t.Fatal("vxlan path broken by the failed switch")
		}
	})

	t.Run("teardown leaves nothing", func(t *testing.T) {
		a.sync(c.nativeWant(a, true)) // a table, direct routes
		for _, n := range c.nodes {
			must(t, n.dp.Teardown())
			var after string
			n.ns.MustDo(t, func() error { after = snapshot(); return nil })
			if after != n.before {
				t.Fatalf("node %d after teardown:\n%s\nbefore:\n%s", n.idx, after, n.before)
			}
			if _, err := os.Stat(n.cfg.PinDir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("pin dir %s still there: %v", n.cfg.PinDir, err)
			}
			n.dp = nil
		}
	})
}

// checkNative asserts pod-to-pod ICMP both ways and TCP without the tunnel.
func checkNative(t *testing.T, c *testCluster) {
	t.Helper()
	a, b := c.nodes[0], c.nodes[1]
	for _, pair := range [][2]*testNode{{a, b}, {b, a}} {
		for _, dst := range []netip.Addr{pair[1].podIP, pair[1].podIP6} {
			if !netnstest.Reach(t, pair[0].pod, dst, reachTimeout) {
				t.Fatalf("native: pod %d cannot reach %s; drops %v / %v", pair[0].idx, dst, a.counters().Drops, b.counters().Drops)
			}
		}
	}
	tcpEcho(t, a.pod, b.pod, b.podIP, 256<<10)
	_ = time.Second
}

func TestGeneve(t *testing.T) {
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	a := c.nodes[0]
	_, err := a.dp.Sync(t.Context(), c.overlayWant(a, spec.ModeGeneve, netip.Addr{}))
	if errors.Is(err, ErrNoGeneve) {
		t.Skipf("kernel lacks CONFIG_GENEVE: %v", err)
	}
	must(t, err)
	c.nodes[1].sync(c.overlayWant(c.nodes[1], spec.ModeGeneve, netip.Addr{}))
	checkPath(t, c)
}

func TestAttachTCFallback(t *testing.T) {
	c := newTestCluster(t, AttachTC)
	c.openAll(t)
	for _, n := range c.nodes {
		n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
	}
	checkPath(t, c)
	a := c.nodes[0]
	// Attach twice, and reopen: still one filter per direction.
	dev, err := device.Read(a.dp.ns.NL, spec.VXLANDevice)
	must(t, err)
	must(t, a.dp.attach(dev.Index))
	must(t, a.dp.Close())
	a.open()
	a.ns.MustDo(t, func() error {
		l, err := netlink.LinkByIndex(dev.Index)
		if err != nil {
			return err
		}
		for _, h := range []tc.Hook{tc.Egress, tc.Ingress} {
			fs, err := netlink.FilterList(l, h.Parent)
			if err != nil {
				return err
			}
			if len(fs) != 1 {
				t.Errorf("%s: %d filters", h.Name, len(fs))
			}
			if ok, err := a.dp.attached(dev.Index); err != nil || !ok {
				t.Errorf("reopened programs not attached: %v", err)
			}
		}
		return nil
	})
	// No tcx programs were used.
	if _, err := os.Stat(a.cfg.PinDir + "/" + tc.Egress.Name); err == nil {
		t.Error("tc mode pinned a tcx link")
	}
	checkPath(t, c)
}

func TestOpenReplacesIncompatibleMap(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, netnstest.Prefix()+"-inc")
	pin := fmt.Sprintf("/sys/fs/bpf/%s-inc", ns.Name)
	t.Cleanup(func() { os.RemoveAll(pin) })
	must(t, ensureBPFFS(pin))
	// A map of an older layout under the tunnel map's name.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	must(t, err)
	defer old.Close()
	must(t, old.Pin(filepath.Join(pin, object.WeftMapWeftTunnels)))
	d, err := Open(Config{NetNS: ns.Path(), PinDir: pin})
	must(t, err)
	defer d.Close()
	if d.objs.WeftTunnels.Type() != ebpf.LPMTrie || int(d.objs.WeftTunnels.ValueSize()) != binary.Size(object.WeftTunnelValue{}) {
		t.Errorf("tunnel map not replaced: %v", d.objs.WeftTunnels)
	}
}

// TestOpenReplacesOnlyIncompatibleMaps: a pinned map whose layout changed
// (here the statistics) starts afresh alone; the tunnel map keeps its
// entries, so forwarding goes on until the next Sync.
func TestOpenReplacesOnlyIncompatibleMaps(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, netnstest.Prefix()+"-inc2")
	pin := fmt.Sprintf("/sys/fs/bpf/%s", ns.Name)
	t.Cleanup(func() { os.RemoveAll(pin) })
	d, err := Open(Config{NetNS: ns.Path(), PinDir: pin})
	must(t, err)
	k := object.TunnelKey(netip.MustParsePrefix("10.244.9.0/24"))
	v := object.TunnelValue(spec.Tunnel{Endpoint: netip.MustParseAddr("192.168.50.9"), VNI: 1})
	must(t, d.objs.WeftTunnels.Put(&k, &v))
	must(t, d.Close())

	// Statistics of an older layout (a value size this version does not
	// have) under weft_stats.
	statsPin := filepath.Join(pin, object.WeftMapWeftStats)
	must(t, os.Remove(statsPin))
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 72, MaxEntries: 1})
	must(t, err)
	defer old.Close()
	must(t, old.Pin(statsPin))

	d, err = Open(Config{NetNS: ns.Path(), PinDir: pin})
	must(t, err)
	defer d.Close()
	if got := int(d.objs.WeftStats.ValueSize()); got != binary.Size(object.WeftStats{}) {
		t.Errorf("statistics map value %d bytes, want it replaced (%d)", got, binary.Size(object.WeftStats{}))
	}
	var got object.WeftTunnelValue
	if err := d.objs.WeftTunnels.Lookup(&k, &got); err != nil || got != v {
		t.Errorf("tunnel entry after reopening: %+v, %v; want %+v kept", got, err, v)
	}
}
