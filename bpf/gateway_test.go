package bpf

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/testenv/netnstest"
)

// TestEnsurePodGateway: the datapath makes weft0 with the pod gateways
// before any pod (a second call with another MTU changes nothing) with a
// MAC that stays when ports come and go, and a link of another kind under
// the bridge's name is refused.
func TestEnsurePodGateway(t *testing.T) {
	netnstest.RequireRoot(t)
	prefix := netnstest.Prefix()
	ns := netnstest.New(t, prefix+"-gw")
	pinDir := "/sys/fs/bpf/" + prefix + "-gw"
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	d, err := Open(Config{NetNS: ns.Path(), PinDir: pinDir})
	must(t, err)
	defer d.Close()
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}
	for i, mtu := range []int{1450, 1400} {
		must(t, d.EnsurePodGateway(cidrs, mtu))
		nl, err := ns.NL()
		must(t, err)
		br, err := nl.LinkByName(DefaultBridge)
		must(t, err)
		as, err := nl.AddrList(br, netlink.FAMILY_ALL)
		must(t, err)
		var addrs []string
		for _, a := range as {
			if a.IP.IsGlobalUnicast() {
				addrs = append(addrs, a.IPNet.String())
			}
		}
		if br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 || br.Attrs().MTU != 1450 ||
			len(addrs) != 2 || addrs[0] != "10.244.1.1/24" || addrs[1] != "fd00:244:1::1/64" {
			t.Fatalf("after call %d: %s %v mtu %d addresses %v; want an up bridge, mtu 1450 (kept), 10.244.1.1/24 and fd00:244:1::1/64",
				i, br.Type(), br.Attrs().Flags, br.Attrs().MTU, addrs)
		}
	}
	// The bridge keeps its MAC, the pods' gateway MAC, when a port comes
	// and goes (a bridge without an address of its own takes its lowest
	// port's).
	nl, err := ns.NL()
	must(t, err)
	br, err := nl.LinkByName(DefaultBridge)
	must(t, err)
	mac := br.Attrs().HardwareAddr.String()
	port := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "gwport0", MasterIndex: br.Attrs().Index,
		HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, 1}}, PeerName: "gwport1"}
	must(t, nl.LinkAdd(port))
	for _, step := range []string{"port added", "port deleted"} {
		br, err := nl.LinkByName(DefaultBridge)
		must(t, err)
		if have := br.Attrs().HardwareAddr.String(); have != mac {
			t.Errorf("bridge MAC %s with %s, was %s", have, step, mac)
		}
		if step == "port added" {
			must(t, nl.LinkDel(port))
		}
	}
	d2, err := Open(Config{NetNS: ns.Path(), PinDir: pinDir, Bridge: "lo"})
	must(t, err)
	defer d2.Close()
	if err := d2.EnsurePodGateway(cidrs, 1500); err == nil {
		t.Error("a pod gateway on lo (not a bridge) was accepted")
	}
}
