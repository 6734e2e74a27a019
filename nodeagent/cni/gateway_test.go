package cni_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/nodeagent/cni"
)

// TestPodGatewayBeforeFirstPod: the agent makes weft0 with the gateway
// before any pod (a second call with another MTU changes nothing), and
// the plugin's first ADD then uses that bridge as it is.
func TestPodGatewayBeforeFirstPod(t *testing.T) {
	e := newEnv(t, subnetV4, "1.1.0")
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}
	bridge := func() (mtu int, addrs []string, err error) {
		err = inNS(e.nodeNS, func() error {
			br, err := netlink.LinkByName(cni.BridgeName)
			if err != nil {
				return err
			}
			if br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 {
				return fmt.Errorf("%s is a %s, flags %v; want an up bridge", cni.BridgeName, br.Type(), br.Attrs().Flags)
			}
			as, err := netlink.AddrList(br, netlink.FAMILY_ALL)
			for _, a := range as {
				if a.IP.IsGlobalUnicast() {
					addrs = append(addrs, a.IPNet.String())
				}
			}
			mtu = br.Attrs().MTU
			return err
		})
		return mtu, addrs, err
	}
	for i, mtu := range []int{1450, 1400} {
		if err := inNS(e.nodeNS, func() error { return cni.EnsurePodGateway(cidrs, mtu) }); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		got, addrs, err := bridge()
		if err != nil {
			t.Fatal(err)
		}
		if got != 1450 || len(addrs) != 2 || addrs[0] != "10.244.1.1/24" || addrs[1] != "fd00:244:1::1/64" {
			t.Fatalf("after call %d: mtu %d, addresses %v; want 1450 (kept), 10.244.1.1/24 and fd00:244:1::1/64", i, got, addrs)
		}
	}
	pod := newNS(t)
	if _, err := e.add(e.list, "ctr-1", pod); err != nil {
		t.Fatalf("ADD on the agent's bridge: %v", err)
	}
	if _, addrs, err := bridge(); err != nil || len(addrs) != 2 {
		t.Fatalf("bridge after ADD: %v %v", addrs, err)
	}
}
