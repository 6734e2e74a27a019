package cni_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const subnetDual = subnetV4 + "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"

// oneProbe makes the pod's kernel send exactly one ARP request or
// neighbour solicitation per neighbour and give up 10 s later: a first
// probe that is lost is never retried, so the neighbour entry ends
// FAILED instead of being resolved by the retry a second later.
var oneProbe = map[string]string{"mcast_solicit": "1", "ucast_solicit": "0", "app_solicit": "0", "retrans_time_ms": "10000"}

func oneProbeKeys(ifName string) map[string]string {
	keys := map[string]string{}
	for _, fam := range []string{"ipv4", "ipv6"} {
		for k, v := range oneProbe {
			keys[fmt.Sprintf("net.%s.neigh.%s.%s", fam, ifName, k)] = v
		}
	}
	return keys
}

// firstPackets sends one UDP datagram from the pod to each target the
// moment it is called and reports, per target, whether the pod's single
// neighbour probe was answered (the entry resolved) or lost (FAILED).
// It waits for the kernel's verdict, not for a time: the verdict comes
// within the probe's 10 s on any load.
func firstPackets(podNS string, setSysctls bool, targets []netip.Addr) error {
	return inNS(podNS, func() error {
		if setSysctls {
			for k, v := range oneProbeKeys("eth0") {
				if err := os.WriteFile("/proc/sys/"+strings.ReplaceAll(k, ".", "/"), []byte(v), 0o644); err != nil {
					return err
				}
			}
		}
		for _, dst := range targets {
			c, err := net.Dial("udp", netip.AddrPortFrom(dst, 9).String())
			if err != nil {
				return fmt.Errorf("dial %s: %w", dst, err)
			}
			_, err = c.Write([]byte("first"))
			c.Close()
			if err != nil && !errors.Is(err, unix.ECONNREFUSED) {
				return fmt.Errorf("send to %s: %w", dst, err)
			}
		}
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		deadline := time.Now().Add(60 * time.Second)
		pending := map[netip.Addr]bool{}
		for _, dst := range targets {
			pending[dst] = true
		}
		for len(pending) > 0 {
			ns, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_ALL)
			if err != nil {
				return fmt.Errorf("list neighbours: %w", err)
			}
			seen := map[netip.Addr]bool{}
			for _, n := range ns {
				a, _ := netip.AddrFromSlice(n.IP)
				a = a.Unmap()
				if !pending[a] {
					continue
				}
				seen[a] = true
				switch {
				case n.State&netlink.NUD_FAILED != 0:
					return fmt.Errorf("the first neighbour probe for %s got no answer (entry FAILED): the pod's first packet was lost", a)
				case n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0:
					delete(pending, a)
				}
			}
			for a := range pending {
				// Sending made the entry; only the garbage collector
				// removes it, and only once it has FAILED.
				if !seen[a] {
					return fmt.Errorf("the first neighbour probe for %s got no answer (entry FAILED and collected): the pod's first packet was lost", a)
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("neighbours %v neither resolved nor failed in 60 s", pending)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	})
}

// TestFirstPacketAnswered: when ADD returns, the pod's network works: the
// first packets a fresh pod sends at once, to its gateways and to a peer
// pod (IPv4 and IPv6), are answered. Each pod may send a single
// neighbour probe (oneProbe), so a probe or answer dropped because a
// veth end was not yet carrying traffic, or because the pod's IPv6
// address was not yet local, fails the test instead of costing the usual
// one-second retry. Pods are added in parallel, so the kernel's
// link-state and addrconf work compete for the RTNL lock with the other
// ADDs, as on a busy node. The second case runs Debian's tuning plugin
// after weft-cni in the chain (it sets oneProbe's sysctls).
func TestFirstPacketAnswered(t *testing.T) {
	for _, tc := range []struct {
		name  string
		chain bool
	}{{"weft-cni", false}, {"weft-cni then tuning", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, subnetDual, "1.1.0")
			list := e.list
			if tc.chain {
				const debian = "/usr/lib/cni"
				if _, err := os.Stat(debian + "/tuning"); err != nil {
					t.Skipf("no tuning plugin in %s (Debian's containernetworking-plugins): %v", debian, err)
				}
				e.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir, debian}, t.TempDir(), newExec())
				var sys []string
				for k, v := range oneProbeKeys("eth0") {
					sys = append(sys, fmt.Sprintf("%q:%q", k, v))
				}
				l, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(
					`{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft-cni","subnetFile":%q,"dataDir":%q},{"type":"tuning","sysctl":{%s}}]}`,
					e.subnetFile, e.dataDir, strings.Join(sys, ","))))
				if err != nil {
					t.Fatal(err)
				}
				list = l
			}
			peerNS := newNS(t)
			peer, err := e.add(list, "peer", peerNS)
			if err != nil {
				t.Fatalf("ADD peer: %v", err)
			}
			targets := []netip.Addr{
				netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("fd00:10:244:1::1"),
				podIP(t, peer, true), podIP(t, peer, false),
			}
			const n = 32
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				pod := newNS(t)
				wg.Go(func() {
					if _, err := e.add(list, fmt.Sprint("ctr-", i), pod); err != nil {
						errs[i] = fmt.Errorf("ADD: %w", err)
						return
					}
					errs[i] = firstPackets(pod, !tc.chain, targets)
				})
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("pod %d: %v", i, err)
				}
			}
		})
	}
}
