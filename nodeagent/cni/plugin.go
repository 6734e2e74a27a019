package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/podguard"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// Plugin implements the CNI commands. The zero value is usable.
type Plugin struct {
	Logger hclog.Logger
}

func (p *Plugin) log() hclog.Logger {
	if p.Logger == nil {
		return hclog.NewNullLogger()
	}
	return p.Logger
}

// Funcs returns the plugin's commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// Main runs the plugin as a process (the body of cmd/weft-cni). It logs
// to stderr, which runtimes pass on to their own log (libcni's default
// executor does); stdout carries only the result.
func Main(about string) {
	p := &Plugin{Logger: hclog.New(&hclog.LoggerOptions{Name: "weft-cni", Output: os.Stderr, Level: hclog.Info})}
	skel.PluginMainFuncs(p.Funcs(), SupportedVersions, about)
}

// HostVethName is the node-side veth name of an attachment: "weft" plus a
// hash of container ID and interface name, so DEL and GC find it even when
// the pod's namespace is gone.
func HostVethName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "weft" + hex.EncodeToString(h[:])[:11]
}

func storeFor(conf *NetConf) (*Store, error) {
	return OpenStore(filepath.Join(conf.DataDir, conf.Name))
}

func pools(sub Subnet) []Pool {
	var ps []Pool
	if sub.V4.IsValid() {
		ps = append(ps, Pool{Prefix: sub.V4, Gateway: sub.Gateway4})
	}
	if sub.V6.IsValid() {
		ps = append(ps, Pool{Prefix: sub.V6, Gateway: sub.Gateway6})
	}
	return ps
}

// subnetError turns a subnet file problem into a CNI error: a missing file
// is code 11 (try again later: the agent writes it once the node has a pod
// CIDR), a malformed one code 999.
func subnetError(path string, err error) error {
	if errors.Is(err, ErrNoSubnetFile) {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("weft agent has not written the node's subnet file %s yet (is weft-agent running and has the node a pod CIDR?)", path), "")
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("bad weft subnet file: %v", err), "")
}

// Add attaches the pod: address from the store, veth into the pod netns,
// host side on weft0, default route via the gateway. It returns once the
// pod's first packet goes through: both veth ends and the bridge
// operationally up, the pod's addresses local (bounded by readyTimeout).
// On any failure everything this call made is removed again.
//
// A repeated ADD of a complete attachment (what CHECK accepts) keeps the
// veth pair as it is and prints the same result; one that only drifted
// (a link down, hairpin off, an MTU, a leased address or default route
// missing: see examine) is repaired in place, keeping its ifindexes and
// MACs; one whose links are not what ADD makes (an ADD that crashed
// half-way, a host veth off weft0) is deleted and made again, and an
// ifName in the pod netns that is not the host veth's peer is an error
// naming it.
func (p *Plugin) Add(args *skel.CmdArgs) (retErr error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	sub, err := ReadSubnetFile(conf.SubnetFile)
	if err != nil {
		return subnetError(conf.SubnetFile, err)
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open pod netns %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	store, err := storeFor(conf)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	unlock, err := store.LockAttachment(args.ContainerID, args.IfName)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer unlock()
	ps := pools(sub)
	ips, fresh, freed, err := store.ReserveIn(args.ContainerID, args.IfName, args.Netns, ps, podGone)
	if errors.Is(err, ErrExhausted) {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("no free pod address on this node: %v", err), "")
	}
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	log := p.log().With("container", args.ContainerID, "ifname", args.IfName)
	for _, a := range freed {
		log.Info("freed the lease of a pod that is gone (its DEL never reached weft-cni)", "stale_container", a.ContainerID, "ips", a.IPs, "netns", a.Netns)
		if err := forgetNeighbors(a.IPs); err != nil {
			return err
		}
	}
	defer func() {
		// A repeated ADD keeps the lease the first one made.
		if retErr != nil && fresh {
			if _, err := store.Release(args.ContainerID, args.IfName); err != nil {
				log.Warn("release address after failed add", "error", err)
			}
		}
	}()
	if err := ensureBridge(sub); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", BridgeName, err)
	}
	guard, err := openGuard(sub, log)
	if err != nil {
		return err
	}
	if guard != nil {
		defer guard.Close()
	}
	pod := podguard.Pod{}
	for _, ip := range ips {
		if ip.Is4() {
			pod.IPv4 = ip
		} else {
			pod.IPv6 = ip
		}
	}
	var check func(int, net.HardwareAddr) error
	if guard != nil {
		check = func(hostIndex int, podMAC net.HardwareAddr) error {
			pod.MAC = podMAC
			return guard.Attach(hostIndex, pod)
		}
		defer func() {
			// The veth is gone again: so must be its check.
			if retErr != nil {
				if _, err := guard.Sweep(); err != nil {
					log.Warn("remove pod check after failed add", "error", err)
				}
			}
		}()
	}
	hostName := HostVethName(args.ContainerID, args.IfName)
	var att attachment
	live, err := examine(podNS, args.IfName, hostName, sub, leased(sub, ips))
	var mis *mismatch
	switch {
	case err == nil:
		// A repeated ADD (the runtime timed out or restarted): the pod
		// keeps its link, MACs and neighbours, set right in place where
		// it drifted.
		if d := live.drift.String(); d != "" {
			if err := repair(podNS, args.IfName, hostName, sub, live); err != nil {
				return fmt.Errorf("repair the attachment in place: %w", err)
			}
			log.Info("pod already attached: repaired its veth pair in place", "host_veth", hostName, "repaired", d)
		}
		if att, err = keep(podNS, args.IfName, hostName, sub, ips, live, check); err != nil {
			return err
		}
		log.Info("pod already attached: kept its veth pair", "host_veth", hostName, "ips", ips)
	case errors.Is(err, errNoHostVeth), errors.As(err, &mis):
		if mis != nil {
			// What an ADD that crashed or failed half-way left (or a
			// pair that no longer matches the lease or the subnet file).
			log.Info("replacing an incomplete attachment", "host_veth", hostName, "reason", mis.Error())
			if err := deleteHostVeth(hostName); err != nil {
				return err
			}
		}
		// The address may have belonged to a pod with another MAC.
		if err := forgetNeighbors(ips); err != nil {
			return err
		}
		if att, err = attach(podNS, args.IfName, hostName, sub, ips, check); err != nil {
			return err
		}
		log.Info("attached pod", "ips", ips)
	default:
		return err
	}
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostName, Mac: att.hostMAC},
			{Name: args.IfName, Mac: att.podMAC, Sandbox: args.Netns},
		},
	}
	podIdx := 1
	for i, ip := range ips {
		pool := ps[i]
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: &podIdx,
			Address:   net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(pool.Prefix.Bits(), ip.BitLen())},
			Gateway:   pool.Gateway.AsSlice(),
		})
		res.Routes = append(res.Routes, &types.Route{Dst: defaultRoute(ip), GW: pool.Gateway.AsSlice()})
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// openGuard opens the pod check the agent pinned where the subnet file
// says. An agent that predates it names no directory, and a kernel without
// tcx cannot link it: the pod is attached without it, with a warning. An
// agent that has not loaded it yet is "try again later", so no pod starts
// unchecked on a node that has the check.
func openGuard(sub Subnet, log hclog.Logger) (*podguard.Guard, error) {
	if sub.BPFFSDir == "" {
		log.Warn("the subnet file names no WEFT_BPFFS_DIR (agent without the pod check): pod attached without it, it can send with any address")
		return nil, nil
	}
	g, err := podguard.Open("", sub.BPFFSDir)
	switch {
	case err == nil:
		return g, nil
	case errors.Is(err, podguard.ErrNoTCX):
		log.Warn("kernel without tcx (Linux 6.6+): pod attached without the pod check, it can send with any address")
		return nil, nil
	case errors.Is(err, podguard.ErrNotLoaded):
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("weft agent has not loaded the pod check in %s yet (is weft-agent running?)", sub.BPFFSDir), "")
	}
	return nil, types.NewError(types.ErrInternal, fmt.Sprintf("open pod check: %v", err), "")
}

// sweepGuard removes the pod checks of veths that are gone, if the subnet
// file names the agent's pins. DEL and GC succeed without it: the agent
// sweeps as well, on every link change.
func (p *Plugin) sweepGuard(conf *NetConf) {
	sub, err := ReadSubnetFile(conf.SubnetFile)
	if err != nil || sub.BPFFSDir == "" {
		return
	}
	g, err := podguard.Open("", sub.BPFFSDir)
	if err != nil {
		p.log().Debug("pod check not swept", "error", err)
		return
	}
	defer g.Close()
	if gone, err := g.Sweep(); err != nil {
		p.log().Warn("sweep pod checks", "error", err)
	} else if len(gone) > 0 {
		p.log().Info("pod checks removed", "ports", gone)
	}
}

func defaultRoute(ip netip.Addr) net.IPNet {
	if ip.Is4() {
		return net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	}
	return net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
}

// Del detaches the pod and frees its address. It succeeds for an unknown
// container, a repeated call and a netns that no longer exists; it needs
// neither the subnet file nor the netns.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	store, err := storeFor(conf)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	unlock, err := store.LockAttachment(args.ContainerID, args.IfName)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer unlock()
	if err := detach(HostVethName(args.ContainerID, args.IfName)); err != nil {
		return err
	}
	if alloc, ok, err := store.Get(args.ContainerID, args.IfName); err == nil && ok {
		if err := forgetNeighbors(alloc.IPs); err != nil {
			return err
		}
	}
	p.sweepGuard(conf)
	// Free the address only after the interface holding it is gone, so it
	// cannot be handed out while still configured.
	if _, err := store.Release(args.ContainerID, args.IfName); err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	p.log().Info("detached pod", "container", args.ContainerID, "ifname", args.IfName)
	return nil
}

// Check verifies what Add made against prevResult: the lease in the store,
// the pod interface with its addresses, MTU and default routes, and the
// host side on weft0 (see examine). It reports what a repeated ADD would
// repair in place as an error naming each difference; it never repairs.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.RawPrevResult == nil {
		return configError("prevResult", "missing (CHECK needs the result of ADD)")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return configError("prevResult", "%v", err)
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return configError("prevResult", "%v", err)
	}
	sub, err := ReadSubnetFile(conf.SubnetFile)
	if err != nil {
		return subnetError(conf.SubnetFile, err)
	}
	store, err := storeFor(conf)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	unlock, err := store.LockAttachment(args.ContainerID, args.IfName)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer unlock()
	alloc, ok, err := store.Get(args.ContainerID, args.IfName)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	if !ok {
		return fmt.Errorf("check: no address lease for container %s %s in %s", args.ContainerID, args.IfName, conf.DataDir)
	}
	var want []netip.Prefix
	for _, ipc := range prev.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		ones, _ := ipc.Address.Mask.Size()
		pfx := netip.PrefixFrom(a.Unmap(), ones)
		if !containsAddr(alloc.IPs, pfx.Addr()) {
			return fmt.Errorf("check: address %s of prevResult is not leased to the container (lease: %v)", pfx, alloc.IPs)
		}
		want = append(want, pfx)
	}
	if len(want) != len(alloc.IPs) {
		return fmt.Errorf("check: prevResult has %d addresses, the lease %d", len(want), len(alloc.IPs))
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open pod netns %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	hostName := HostVethName(args.ContainerID, args.IfName)
	if err := verify(podNS, args.IfName, hostName, sub, want); err != nil {
		return err
	}
	return checkGuard(sub, prev, args.IfName, hostName, want)
}

// checkGuard verifies that the pod check is on the host veth with what
// ADD recorded, when the agent has one.
func checkGuard(sub Subnet, prev *current.Result, ifName, hostName string, want []netip.Prefix) error {
	if sub.BPFFSDir == "" {
		return nil
	}
	g, err := podguard.Open("", sub.BPFFSDir)
	if errors.Is(err, podguard.ErrNoTCX) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check: open pod check: %w", err)
	}
	defer g.Close()
	pod := podguard.Pod{}
	for _, itf := range prev.Interfaces {
		if itf.Name == ifName && itf.Sandbox != "" {
			mac, err := net.ParseMAC(itf.Mac)
			if err != nil {
				return fmt.Errorf("check: prevResult interface %s: mac %q: %w", ifName, itf.Mac, err)
			}
			pod.MAC = mac
		}
	}
	for _, w := range want {
		if w.Addr().Is4() {
			pod.IPv4 = w.Addr()
		} else {
			pod.IPv6 = w.Addr()
		}
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("check: host veth %s: %w", hostName, err)
	}
	if err := g.Check(host.Attrs().Index, pod); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	return nil
}

func containsAddr(ips []netip.Addr, a netip.Addr) bool {
	for _, ip := range ips {
		if ip == a {
			return true
		}
	}
	return false
}

// Status reports whether the plugin can attach pods now: not ready (code
// 50) until the agent has written a valid subnet file.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if _, err := ReadSubnetFile(conf.SubnetFile); err != nil {
		msg := fmt.Sprintf("weft is not ready: %v", err)
		if errors.Is(err, ErrNoSubnetFile) {
			msg = fmt.Sprintf("weft is not ready: the agent has not written %s yet", conf.SubnetFile)
		}
		return types.NewError(types.ErrPluginNotAvailable, msg, "")
	}
	if _, err := storeFor(conf); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("weft is not ready: %v", err), "")
	}
	return nil
}

// GC frees the addresses (and removes leftover host veths) of every
// attachment not listed in cni.dev/valid-attachments.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[types.GCAttachment]bool{}
	for _, a := range conf.ValidAttachments {
		valid[a] = true
	}
	store, err := storeFor(conf)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	// Remove leftover host veths first, then free their addresses.
	all, err := store.List()
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	var errs []error
	gone := map[types.GCAttachment]bool{}
	for _, a := range all {
		key := types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}
		if valid[key] {
			continue
		}
		if err := deleteHostVeth(HostVethName(a.ContainerID, a.IfName)); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := forgetNeighbors(a.IPs); err != nil {
			errs = append(errs, err)
		}
		gone[key] = true
	}
	if len(gone) > 0 {
		p.sweepGuard(conf)
	}
	freed, err := store.Retain(func(id, ifName string) bool {
		return !gone[types.GCAttachment{ContainerID: id, IfName: ifName}]
	})
	if err != nil {
		errs = append(errs, err)
	}
	for _, a := range freed {
		p.log().Info("gc freed address", "container", a.ContainerID, "ifname", a.IfName, "ips", a.IPs)
	}
	return errors.Join(errs...)
}
