package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// linkNames lists the calling thread's namespace's links as "name type".
func linkNames() (string, error) {
	ls, err := netlink.LinkList()
	if err != nil {
		return "", err
	}
	var out []string
	for _, l := range ls {
		out = append(out, l.Attrs().Name+" "+l.Type())
	}
	slices.Sort(out)
	return strings.Join(out, ", "), nil
}

// kernelAtLeast compares the running kernel's release with major.minor.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	var u unix.Utsname
	must(t, unix.Uname(&u))
	var ma, mi int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi); err != nil {
		t.Fatalf("parse kernel release %q: %v", u.Release, err)
	}
	return ma > major || (ma == major && mi >= minor)
}

func TestCapabilitiesAndVTEPMAC(t *testing.T) {
	netnstest.RequireRoot(t)
	prefix := netnstest.Prefix()
	ns := netnstest.New(t, prefix+"-caps")
	pinDir := "/sys/fs/bpf/" + prefix + "-caps"
	t.Cleanup(func() { os.RemoveAll(pinDir) })

	d, err := Open(Config{NetNS: ns.Path(), PinDir: pinDir})
	must(t, err)
	// A Host of the same namespace reads the same, with no programs.
	host, err := OpenHost(Config{NetNS: ns.Path()})
	must(t, err)
	t.Cleanup(func() { host.Close() })
	var before, after string
	var geneveErr error
	ns.MustDo(t, func() error { before, err = linkNames(); return err })
	// Probed from the test's own thread: the answers are the namespace's.
	caps := d.Capabilities()
	ns.MustDo(t, func() error {
		var err error
		if after, err = linkNames(); err != nil {
			return err
		}
		// What the kernel says to a direct request, independent of the
		// probe's code.
		g := &netlink.Geneve{LinkAttrs: netlink.LinkAttrs{Name: prefix + "g"}, FlowBased: true, Dport: 6081}
		if geneveErr = netlink.LinkAdd(g); geneveErr == nil {
			return netlink.LinkDel(g)
		}
		return nil
	})
	t.Cleanup(func() { d.Teardown() })
	t.Logf("capabilities %v; direct geneve LinkAdd: %v", caps, geneveErr)

	if hc := host.Capabilities(); !slices.Equal(hc, caps) {
		t.Errorf("host capabilities %v, datapath's %v", hc, caps)
	}
	du, derr := d.Underlay()
	hu, herr := host.Underlay()
	if fmt.Sprint(du, derr) != fmt.Sprint(hu, herr) {
		t.Errorf("host underlay %v, %v; datapath's %v, %v", hu, herr, du, derr)
	}
	if before != after {
		t.Fatalf("probe left links behind:\nbefore: %s\nafter:  %s", before, after)
	}
	if !slices.Contains(caps, CapVXLAN) {
		t.Errorf("capabilities %v lack %q", caps, CapVXLAN)
	}
	if want := kernelAtLeast(t, 6, 6); slices.Contains(caps, CapTCX) != want {
		t.Errorf("capabilities %v: tcx = %v, want %v (tcx links came with 6.6)", caps, !want, want)
	}
	if want := geneveErr == nil; slices.Contains(caps, CapGeneve) != want {
		t.Errorf("capabilities %v: geneve = %v, but a direct geneve LinkAdd says %v", caps, !want, geneveErr)
	}
	if geneveErr != nil && !errors.Is(geneveErr, unix.EOPNOTSUPP) {
		t.Errorf("direct geneve LinkAdd failed for another reason than a missing kind: %v", geneveErr)
	}
	_, statErr := os.Stat("/proc/sys/net/ipv6")
	if want := statErr == nil; slices.Contains(caps, CapIPv6) != want {
		t.Errorf("capabilities %v: ipv6 = %v, want %v in a fresh namespace", caps, !want, want)
	}

	if statErr == nil {
		t.Run("ipv6 disabled", func(t *testing.T) {
			must(t, ns.Sysctl("net.ipv6.conf.all.disable_ipv6", "1"))
			defer ns.Sysctl("net.ipv6.conf.all.disable_ipv6", "0")
			d.capsMu.Lock()
			d.caps = nil // probe afresh
			d.capsMu.Unlock()
			caps = d.Capabilities()
			if slices.Contains(caps, CapIPv6) || !slices.Contains(caps, CapVXLAN) {
				t.Fatalf("capabilities with disable_ipv6=1: %v", caps)
			}
		})
	}

	t.Run("vtep mac", func(t *testing.T) {
		mac0, err := d.VTEPMAC()
		must(t, err)
		want := (&spec.Desired{
			Mode:          spec.ModeVXLAN,
			Overlay:       &spec.Overlay{Kind: spec.ModeVXLAN, Port: 8472, VNI: 1, MTU: 1450},
			ClusterCIDRs:  []netip.Prefix{clusterCIDR},
			LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		}).Normalize()
		_, err = d.Sync(t.Context(), want)
		must(t, err)
		mac1, err := d.VTEPMAC()
		must(t, err)
		dev, err := ns.MAC(spec.VXLANDevice)
		must(t, err)
		if mac0 != nil {
			t.Fatalf("VTEPMAC before any device = %v, want none", mac0)
		}
		if len(mac1) != 6 || !bytes.Equal(mac1, dev) {
			t.Fatalf("VTEPMAC = %v, device %s has %v", mac1, spec.VXLANDevice, dev)
		}
		if hm, err := host.VTEPMAC(); err != nil || !bytes.Equal(hm, mac1) {
			t.Fatalf("host VTEPMAC = %v, %v; datapath's %v", hm, err, mac1)
		}

		// A spec with a MAC: the device gets it in place, and a MAC
		// changed behind weft's back is repaired and named.
		mac := spec.VTEPMAC("n1")
		want.Overlay.MAC = mac
		rep, err := d.Sync(t.Context(), want)
		must(t, err)
		if dev, _ = ns.MAC(spec.VXLANDevice); !bytes.Equal(dev, mac[:]) || rep.Updated != 1 {
			t.Fatalf("after a Sync with mac %s: device has %v (report %+v)", mac, dev, rep)
		}
		h, err := ns.NL()
		must(t, err)
		l, err := h.LinkByName(spec.VXLANDevice)
		must(t, err)
		must(t, h.LinkSetHardwareAddr(l, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}))
		rep, err = d.Reconcile(t.Context(), want)
		must(t, err)
		wantRepair := fmt.Sprintf("device %s mac 02:00:00:00:00:99 -> %s", spec.VXLANDevice, mac)
		if !slices.Contains(rep.Repaired, wantRepair) {
			t.Fatalf("repaired %q, want %q", rep.Repaired, wantRepair)
		}
		if mac2, err := d.VTEPMAC(); err != nil || !bytes.Equal(mac2, mac[:]) {
			t.Fatalf("VTEPMAC after the repair = %v, %v; want %s", mac2, err, mac)
		}
	})
}

// BenchmarkCapabilities is the probe an agent runs before it registers
// (the cache cleared each time), in a fresh namespace.
func BenchmarkCapabilities(b *testing.B) {
	netnstest.RequireRoot(b)
	prefix := netnstest.Prefix()
	ns := netnstest.New(b, prefix+"-capb")
	pinDir := "/sys/fs/bpf/" + prefix + "-capb"
	b.Cleanup(func() { os.RemoveAll(pinDir) })
	d, err := Open(Config{NetNS: ns.Path(), PinDir: pinDir})
	must(b, err)
	b.Cleanup(func() { d.Teardown() })
	for b.Loop() {
		d.capsMu.Lock()
		d.caps = nil
		d.capsMu.Unlock()
		if !slices.Contains(d.Capabilities(), CapVXLAN) {
			b.Fatal("no vxlan")
		}
	}
}
