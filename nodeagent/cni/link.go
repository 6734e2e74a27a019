package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/bridgemac"
)

func ipNet(p netip.Prefix, a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// podGone reports whether a lease's pod no longer exists: its network
// namespace path is gone (the runtime removes it when it tears the sandbox
// down, even when DEL failed) and so is its host veth (which dies with
// the namespace). Leases without a recorded namespace are never judged.
func podGone(a Allocation) bool {
	if a.Netns == "" {
		return false
	}
	if _, err := os.Stat(a.Netns); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	_, err := netlink.LinkByName(HostVethName(a.ContainerID, a.IfName))
	return isNotFound(err)
}

// ensureBridge makes weft0 exist in the current netns as an up bridge
// holding the gateway address(es) with the pod CIDR's mask. An existing
// compatible bridge is kept as it is; a non-bridge named weft0 is an error.
func ensureBridge(sub Subnet) error {
	link, err := netlink.LinkByName(BridgeName)
	if isNotFound(err) {
		mac, merr := bridgemac.New()
		if merr != nil {
			return merr
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName, MTU: sub.MTU, HardwareAddr: mac}}
		err = netlink.LinkAdd(br)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge: %w", err)
		}
		// Concurrent ADDs race to create it; whoever lost reads it back.
		link, err = netlink.LinkByName(BridgeName)
	}
	if err != nil {
		return fmt.Errorf("find bridge: %w", err)
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("%s exists but is a %s, not a bridge", BridgeName, link.Type())
	}
	// The pods' gateway MAC must not move when a pod's veth goes.
	if err := bridgemac.Pin(&netlink.Handle{}, link); err != nil {
		return err
	}
	if link.Attrs().MTU != sub.MTU {
		if err := netlink.LinkSetMTU(link, sub.MTU); err != nil {
			return fmt.Errorf("set bridge mtu: %w", err)
		}
	}
	if sub.V6.IsValid() {
		if _, err := sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", BridgeName), "0"); err != nil {
			return fmt.Errorf("enable ipv6 on bridge: %w", err)
		}
	}
	have, err := addrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list bridge addresses: %w", err)
	}
	for _, gw := range []struct {
		p netip.Prefix
		a netip.Addr
	}{{sub.V4, sub.Gateway4}, {sub.V6, sub.Gateway6}} {
		if !gw.p.IsValid() {
			continue
		}
		want := ipNet(gw.p, gw.a)
		if slices.ContainsFunc(have, func(a netlink.Addr) bool { return a.IPNet.String() == want.String() }) {
			continue
		}
		addr := &netlink.Addr{IPNet: want}
		if gw.a.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("add gateway %s: %w", want, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("set bridge up: %w", err)
		}
	}
	return nil
}

type attachment struct {
	hostMAC, podMAC string
}

// attach creates the veth pair (pod side ifName in podNS, host side
// hostName in the current netns, enslaved to weft0) and configures the pod
// side. The caller has removed any earlier host veth hostName (examine
// says when). guard (if set) runs with the host side's ifindex and the
// pod's MAC before the host side is up, so the pod check is on before the
// pod's first frame. It returns once the pod can talk (see readiness), or
// with an error naming the link that is not ready after readyTimeout.
// On failure it deletes the pair again. An ifName already in podNS is an
// error naming it, and stays.
func attach(podNS ns.NetNS, ifName, hostName string, sub Subnet, ips []netip.Addr,
	guard func(hostIndex int, podMAC net.HardwareAddr) error) (att attachment, retErr error) {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return att, fmt.Errorf("open node netns: %w", err)
	}
	defer hostNS.Close()
	created := false
	var podMAC net.HardwareAddr
	podIndex := 0
	defer func() {
		if retErr == nil || !created {
			return
		}
		_ = podNS.Do(func(ns.NetNS) error {
			if l, err := netlink.LinkByName(ifName); err == nil {
				_ = netlink.LinkDel(l)
			}
			return nil
		})
		_ = deleteHostVeth(hostName)
	}()
	err = podNS.Do(func(ns.NetNS) error {
		if _, err := netlink.LinkByName(ifName); err == nil {
			return fmt.Errorf("interface %s already exists in pod netns %s and is not weft's (no host veth %s is its peer)", ifName, podNS.Path(), hostName)
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: ifName, MTU: sub.MTU},
			PeerName:      hostName,
			PeerNamespace: netlink.NsFd(int(hostNS.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s/%s: %w", ifName, hostName, err)
		}
		created = true
		pod, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("find pod interface: %w", err)
		}
		att.podMAC = pod.Attrs().HardwareAddr.String()
		podMAC = pod.Attrs().HardwareAddr
		podIndex = pod.Attrs().Index
		if err := raiseGSO(sub, ifName); err != nil {
			return err
		}
		return configurePod(ifName, sub, ips)
	})
	if err != nil {
		return att, err
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return att, fmt.Errorf("find host veth: %w", err)
	}
	br, err := netlink.LinkByName(BridgeName)
	if err != nil {
		return att, fmt.Errorf("find bridge: %w", err)
	}
	att.hostMAC = host.Attrs().HardwareAddr.String()
	if guard != nil {
		if err := guard(host.Attrs().Index, podMAC); err != nil {
			return att, err
		}
	}
	if err := netlink.LinkSetMaster(host, br); err != nil {
		return att, fmt.Errorf("attach %s to %s: %w", hostName, BridgeName, err)
	}
	if err := raiseGSO(sub, hostName, BridgeName); err != nil {
		return att, err
	}
	// Hairpin, as flannel's bridge delegate sets it: a pod that reaches
	// its own hostPort or service address is DNATed back to itself, and
	// the bridge must send the frame out of the port it came in on.
	if err := netlink.LinkSetHairpin(host, true); err != nil {
		return att, fmt.Errorf("set hairpin on %s: %w", hostName, err)
	}
	// Both veth ends get their carrier when the second one goes up: watch
	// from before that, and return only once the pod can talk.
	err = settle(podNS, ifName, hostName, ips, podIndex, host.Attrs().Index, br.Attrs().Index, func() error {
		if err := netlink.LinkSetUp(host); err != nil {
			return fmt.Errorf("set %s up: %w", hostName, err)
		}
		return nil
	})
	return att, err
}

// keep is ADD for an attachment that examine found complete, or that
// repair set right (a runtime repeating ADD after a timeout or a
// restart): the pair stays as it is, with its MACs and ifindexes. It
// makes sure of what does not change the links: the pod check (guard, if
// set: recorded and linked again, which replaces what is there), the BIG
// TCP sizes, and that the pod can talk.
func keep(podNS ns.NetNS, ifName, hostName string, sub Subnet, ips []netip.Addr, live pair,
	guard func(hostIndex int, podMAC net.HardwareAddr) error) (attachment, error) {
	att := attachment{hostMAC: live.hostMAC.String(), podMAC: live.podMAC.String()}
	if guard != nil {
		if err := guard(live.hostIndex, live.podMAC); err != nil {
			return att, err
		}
	}
	if err := podNS.Do(func(ns.NetNS) error { return raiseGSO(sub, ifName) }); err != nil {
		return att, err
	}
	if err := raiseGSO(sub, hostName, BridgeName); err != nil {
		return att, err
	}
	br, err := netlink.LinkByName(BridgeName)
	if err != nil {
		return att, fmt.Errorf("find bridge: %w", err)
	}
	return att, settle(podNS, ifName, hostName, ips, live.podIndex, live.hostIndex, br.Attrs().Index, nil)
}

// settle runs up (if set) once it watches the links' notifications, then
// waits until the pod side, the host side and the bridge can carry the
// pod's traffic (readiness), for at most readyTimeout.
func settle(podNS ns.NetNS, ifName, hostName string, ips []netip.Addr, podIndex, hostIndex, brIndex int, up func() error) error {
	ready, err := watchReady(podNS)
	if err != nil {
		return err
	}
	defer ready.Close()
	podH, err := ready.handle(podNS)
	if err != nil {
		return err
	}
	hostH, err := ready.handle(nil)
	if err != nil {
		return err
	}
	if up != nil {
		if err := up(); err != nil {
			return err
		}
	}
	return ready.wait([]readyLink{
		{h: podH, index: podIndex, what: fmt.Sprintf("pod interface %s in %s", ifName, podNS.Path()), ips: ips},
		{h: hostH, index: hostIndex, what: "host veth " + hostName},
		{h: hostH, index: brIndex, what: "bridge " + BridgeName},
	}, readyTimeout)
}

// configurePod runs inside the pod netns: addresses, link up, default
// routes via the gateways.
func configurePod(ifName string, sub Subnet, ips []netip.Addr) error {
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find pod interface: %w", err)
	}
	for _, a := range ips {
		if a.Is6() {
			for _, dev := range []string{"lo", ifName} {
				if _, err := sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", dev), "0"); err != nil {
					return fmt.Errorf("enable ipv6 on %s: %w", dev, err)
				}
			}
		}
	}
	// The pod check accepts the link-local address of the pod's MAC
	// (EUI-64): make sure the kernel makes that one, whatever the
	// namespace's default.
	mode := fmt.Sprintf("net/ipv6/conf/%s/addr_gen_mode", ifName)
	if _, err := os.Stat(filepath.Join("/proc/sys", mode)); err == nil {
		if _, err := sysctl.Sysctl(mode, "0"); err != nil {
			return fmt.Errorf("set eui64 link-local address on %s: %w", ifName, err)
		}
	}
	for _, a := range ips {
		addr := podAddr(sub, a)
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s: %w", addr.IPNet, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", ifName, err)
	}
	for _, a := range ips {
		_, gw := prefixFor(sub, a)
		if err := netlink.RouteAdd(podRoute(link, gw)); err != nil {
			return fmt.Errorf("add default route via %s: %w", gw, err)
		}
	}
	return nil
}

// podAddr is leased address a as ADD puts it on the pod interface.
func podAddr(sub Subnet, a netip.Addr) *netlink.Addr {
	p, _ := prefixFor(sub, a)
	addr := &netlink.Addr{IPNet: ipNet(p, a)}
	if a.Is6() {
		// The address is ours alone (the store says so): skip DAD so
		// the pod can talk at once.
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr
}

// podRoute is the pod's default route via gateway gw on link.
func podRoute(link netlink.Link, gw netip.Addr) *netlink.Route {
	dst := defaultRoute(gw)
	return &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &dst, Gw: gw.AsSlice()}
}

func prefixFor(sub Subnet, a netip.Addr) (netip.Prefix, netip.Addr) {
	if a.Is4() {
		return sub.V4, sub.Gateway4
	}
	return sub.V6, sub.Gateway6
}

// detach deletes the host veth of an attachment, which takes its pod end
// with it. It never deletes a link by the pod's interface name: DEL of a
// container weft never attached (or a runtime that names the wrong
// netns) would otherwise delete whatever link has that name there, such
// as another pod's eth0 or a node's underlay veth. A missing link is
// fine.
func detach(hostName string) error {
	return deleteHostVeth(hostName)
}

func deleteHostVeth(name string) error {
	l, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find host veth %s: %w", name, err)
	}
	if l.Type() != "veth" {
		return fmt.Errorf("delete host veth %s: it is a %s, not a veth weft made", name, l.Type())
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete host veth %s: %w", name, err)
	}
	return nil
}

// errNoHostVeth means an attachment's host veth does not exist: nothing
// of it is left in the node netns (its pod side dies with it).
var errNoHostVeth = errors.New("cni: host veth not found")

// mismatch says why a live attachment is not the one ADD makes, in a way
// only a new pair undoes: ADD replaces it, CHECK fails with it.
type mismatch struct{ msg string }

func (m *mismatch) Error() string { return m.msg }

func mismatchf(format string, args ...any) error {
	return &mismatch{msg: fmt.Sprintf(format, args...)}
}

// pair is an attachment's live veth pair, and how it drifted from what
// ADD makes.
type pair struct {
	hostIndex, podIndex int
	hostMAC, podMAC     net.HardwareAddr
	drift               drift
}

// leased is what ADD configures on the pod interface for ips: each
// address with its pod CIDR's mask.
func leased(sub Subnet, ips []netip.Addr) []netip.Prefix {
	want := make([]netip.Prefix, 0, len(ips))
	for _, a := range ips {
		p, _ := prefixFor(sub, a)
		want = append(want, netip.PrefixFrom(a, p.Bits()))
	}
	return want
}

// drift is how a live pair differs from what ADD makes in ways ADD undoes
// in place (repair), keeping both links with their ifindexes and MACs and
// so the pod's connections: plain data, made by examine. CHECK reports it
// as an error; it never repairs.
type drift struct {
	// reasons names each difference, in the order examine found them.
	reasons           []string
	hostMTU, podMTU   bool // not sub.MTU
	hostDown, podDown bool
	hairpinOff        bool
	addrs             []netip.Prefix // leased, missing on the pod interface
	gateways          []netip.Addr   // without the pod's default route via them
}

func (d *drift) add(format string, args ...any) {
	d.reasons = append(d.reasons, fmt.Sprintf(format, args...))
}

// String is the differences for a log or an error, "" for none.
func (d drift) String() string { return strings.Join(d.reasons, "; ") }

// examine reads the attachment whose host side is hostName (in the
// current netns) and whose pod side is ifName in podNS, as ADD makes it:
// the host side is a veth on weft0, up, in hairpin mode, with MTU
// sub.MTU; its peer is ifName in podNS (by ifindex and netns id, so
// another plugin's ifName never passes); that one is up, has MTU
// sub.MTU, every address of want and a default route via the gateway of
// each one's family.
//
// It returns the pair when the links are the attachment's, with in
// pair.drift what repair can set right in place (empty when complete):
// an MTU, a link down, hairpin off, a leased address or a default route
// missing. Otherwise the error wraps errNoHostVeth when there is no
// hostName, is a *mismatch naming the first difference that only a new
// pair undoes (not a veth, not on weft0, not the peer, an address of the
// pod CIDR that is not the lease, a default route via another gateway),
// or says what could not be read. ADD (to keep or repair a repeated
// ADD's pair) and CHECK (which fails on any drift) use it.
func examine(podNS ns.NetNS, ifName, hostName string, sub Subnet, want []netip.Prefix) (pair, error) {
	var live pair
	host, err := netlink.LinkByName(hostName)
	if isNotFound(err) {
		return live, fmt.Errorf("%w: %s", errNoHostVeth, hostName)
	}
	if err != nil {
		return live, fmt.Errorf("find host veth %s: %w", hostName, err)
	}
	ha := host.Attrs()
	if host.Type() != "veth" {
		return live, mismatchf("host veth %s is a %s, not a veth", hostName, host.Type())
	}
	br, err := netlink.LinkByName(BridgeName)
	if err != nil {
		return live, fmt.Errorf("find bridge %s: %w", BridgeName, err)
	}
	if ha.MasterIndex != br.Attrs().Index {
		return live, mismatchf("host veth %s is not attached to %s", hostName, BridgeName)
	}
	var d drift
	if hairpin, err := Hairpin(hostName); err != nil {
		return live, err
	} else if !hairpin {
		d.hairpinOff = true
		d.add("host veth %s has hairpin mode off", hostName)
	}
	if ha.MTU != sub.MTU {
		d.hostMTU = true
		d.add("host veth %s has mtu %d, want %d", hostName, ha.MTU, sub.MTU)
	}
	if ha.Flags&net.FlagUp == 0 {
		d.hostDown = true
		d.add("host veth %s is down", hostName)
	}
	// The id the node netns gives the pod netns: a link's peer netns is
	// reported as one (the dump of host above has allocated it).
	podNSID, err := netlink.GetNetNsIdByFd(int(podNS.Fd()))
	if err != nil {
		return live, fmt.Errorf("read the id of pod netns %s: %w", podNS.Path(), err)
	}
	err = podNS.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifName)
		if isNotFound(err) {
			return mismatchf("host veth %s has no pod interface %s in %s", hostName, ifName, podNS.Path())
		}
		if err != nil {
			return fmt.Errorf("find pod interface %s: %w", ifName, err)
		}
		a := link.Attrs()
		if link.Type() != "veth" || ha.NetNsID != podNSID || ha.ParentIndex != a.Index {
			return mismatchf("pod interface %s in %s (a %s) is not the peer of host veth %s", ifName, podNS.Path(), link.Type(), hostName)
		}
		if a.MTU != sub.MTU {
			d.podMTU = true
			d.add("pod interface %s has mtu %d, want %d", ifName, a.MTU, sub.MTU)
		}
		if a.Flags&net.FlagUp == 0 {
			d.podDown = true
			d.add("pod interface %s is down", ifName)
		}
		addrs, err := addrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", ifName, err)
		}
		for _, w := range want {
			p, gw := prefixFor(sub, w.Addr())
			if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IPNet.String() == ipNet(w, w.Addr()).String() }) {
				// Another address of the pod CIDR is a lease this pod no
				// longer has (the store was lost): adding this one beside
				// it would leave the pod sending as someone else.
				for _, have := range addrs {
					if h, ok := netip.AddrFromSlice(have.IP); ok && p.Contains(h.Unmap()) {
						return mismatchf("pod interface %s has address %s, not its lease %s", ifName, have.IPNet, w)
					}
				}
				d.addrs = append(d.addrs, w)
				d.add("pod interface %s lacks address %s", ifName, w)
			}
			fam := netlink.FAMILY_V4
			if w.Addr().Is6() {
				fam = netlink.FAMILY_V6
			}
			routes, err := routeList(link, fam)
			if err != nil {
				return fmt.Errorf("list routes of %s: %w", ifName, err)
			}
			var other net.IP
			found := false
			for _, r := range routes {
				ones := 0
				if r.Dst != nil {
					ones, _ = r.Dst.Mask.Size()
				}
				if ones != 0 {
					continue
				}
				if r.Gw.Equal(gw.AsSlice()) {
					found = true
				} else {
					other = r.Gw
				}
			}
			if !found {
				// Adding ours beside another default route would fail or
				// leave two.
				if other != nil {
					return mismatchf("pod interface %s has a default route via %s, not via %s", ifName, other, gw)
				}
				d.gateways = append(d.gateways, gw)
				d.add("pod interface %s has no default route via %s", ifName, gw)
			}
		}
		live = pair{hostIndex: ha.Index, podIndex: a.Index, hostMAC: ha.HardwareAddr, podMAC: a.HardwareAddr, drift: d}
		return nil
	})
	return live, err
}

// repair sets right in place what examine found drifted on live: the
// MTUs, hairpin mode, the links up, then the pod's missing addresses and
// default routes (the kernel drops a link's routes, and IPv6 addresses,
// when it goes down). The links keep their ifindexes and MACs. It is
// ADD's step, never CHECK's.
func repair(podNS ns.NetNS, ifName, hostName string, sub Subnet, live pair) error {
	d := live.drift
	host, err := netlink.LinkByIndex(live.hostIndex)
	if err != nil {
		return fmt.Errorf("find host veth %s: %w", hostName, err)
	}
	if d.hostMTU {
		if err := netlink.LinkSetMTU(host, sub.MTU); err != nil {
			return fmt.Errorf("set mtu of %s: %w", hostName, err)
		}
	}
	if d.hairpinOff {
		if err := netlink.LinkSetHairpin(host, true); err != nil {
			return fmt.Errorf("set hairpin on %s: %w", hostName, err)
		}
	}
	if d.hostDown {
		if err := netlink.LinkSetUp(host); err != nil {
			return fmt.Errorf("set %s up: %w", hostName, err)
		}
	}
	return podNS.Do(func(ns.NetNS) error {
		pod, err := netlink.LinkByIndex(live.podIndex)
		if err != nil {
			return fmt.Errorf("find pod interface %s: %w", ifName, err)
		}
		if d.podMTU {
			if err := netlink.LinkSetMTU(pod, sub.MTU); err != nil {
				return fmt.Errorf("set mtu of %s: %w", ifName, err)
			}
		}
		if d.podDown {
			if err := netlink.LinkSetUp(pod); err != nil {
				return fmt.Errorf("set %s up: %w", ifName, err)
			}
		}
		for _, w := range d.addrs {
			addr := podAddr(sub, w.Addr())
			if err := netlink.AddrAdd(pod, addr); err != nil {
				return fmt.Errorf("add address %s: %w", addr.IPNet, err)
			}
		}
		for _, gw := range d.gateways {
			if err := netlink.RouteAdd(podRoute(pod, gw)); err != nil {
				return fmt.Errorf("add default route via %s: %w", gw, err)
			}
		}
		return nil
	})
}

// verify checks the attachment Add made (for CHECK): see examine. Drift
// ADD would repair is an error naming each difference.
func verify(podNS ns.NetNS, ifName, hostName string, sub Subnet, want []netip.Prefix) error {
	live, err := examine(podNS, ifName, hostName, sub, want)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	if len(live.drift.reasons) > 0 {
		return fmt.Errorf("check: %s", live.drift)
	}
	return nil
}

// Hairpin reports whether bridge port name (in the current netns) sends
// frames back out of the port they arrived on.
func Hairpin(name string) (bool, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return false, fmt.Errorf("find %s: %w", name, err)
	}
	info, err := netlink.LinkGetProtinfo(link)
	if err != nil {
		return false, fmt.Errorf("read bridge port flags of %s: %w", name, err)
	}
	return info.Hairpin, nil
}

// addrList and routeList retry dumps the kernel interrupted because the
// table changed meanwhile (likely with many concurrent ADDs on one node).
func addrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	for i := 0; ; i++ {
		as, err := netlink.AddrList(link, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 5 {
			return as, err
		}
	}
}

func routeList(link netlink.Link, family int) ([]netlink.Route, error) {
	for i := 0; ; i++ {
		rs, err := netlink.RouteList(link, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 5 {
			return rs, err
		}
	}
}

// forgetNeighbors deletes the bridge's neighbor entries for ips. An
// address freed by one pod and given to the next keeps the old pod's MAC
// in the node's neighbor table for up to a minute otherwise, and traffic
// to the new pod (including the datapath's redirect to the bridge) goes
// to a MAC nobody has.
func forgetNeighbors(ips []netip.Addr) error {
	br, err := netlink.LinkByName(BridgeName)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find bridge: %w", err)
	}
	for _, ip := range ips {
		fam := netlink.FAMILY_V4
		if ip.Is6() {
			fam = netlink.FAMILY_V6
		}
		n := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: fam, IP: ip.AsSlice()}
		if err := netlink.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("forget neighbor %s: %w", ip, err)
		}
	}
	return nil
}
