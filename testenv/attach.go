package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/testenv/netnstest"
)

// BridgeName is the per-node Linux bridge pods hang off, holding the
// gateway address (the agreed node wiring, like flannel's cni0).
const BridgeName = "weft0"

// PodAttacher connects a pod namespace to its node the way the CNI plugin
// does. Implementations: NetlinkAttacher (testenv's own) and the libcni
// one in cniattach.go.
type PodAttacher interface {
	// Attach wires podNS (an existing named netns) to nodeNS using the
	// node's lease in subnetFile and returns the pod's addresses, one per
	// family the lease has, IPv4 first.
	Attach(ctx context.Context, nodeNS, podNS, podName, subnetFile string) ([]netip.Addr, error)
	// Detach undoes Attach; detaching what is not attached is not an error.
	Detach(ctx context.Context, nodeNS, podNS, podName, subnetFile string) error
}

// SubnetEnv is the agent's subnet file (flannel's field names). An
// IPv6-only node's file has no IPv4 fields (Network and Subnet invalid).
type SubnetEnv struct {
	Network  netip.Prefix // FLANNEL_NETWORK
	Subnet   netip.Prefix // FLANNEL_SUBNET: gateway address with the pod CIDR's mask
	Network6 netip.Prefix // FLANNEL_IPV6_NETWORK
	Subnet6  netip.Prefix // FLANNEL_IPV6_SUBNET: gateway address with the pod CIDR's mask
	MTU      int          // FLANNEL_MTU
	IPMasq   bool         // FLANNEL_IPMASQ
	Backend  string       // WEFT_BACKEND
	Raw      map[string]string
}

// PodCIDRs returns the node's pod CIDRs, IPv4 first.
func (s SubnetEnv) PodCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{s.Subnet, s.Subnet6} {
		if p.IsValid() {
			out = append(out, p.Masked())
		}
	}
	return out
}

// subnets returns the gateway-with-mask of each family the file has.
func (s SubnetEnv) subnets() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{s.Subnet, s.Subnet6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// ReadSubnetEnv parses a subnet file: FLANNEL_MTU and the fields of at
// least one family.
func ReadSubnetEnv(path string) (SubnetEnv, error) {
	f, err := os.Open(path)
	if err != nil {
		return SubnetEnv{}, fmt.Errorf("read subnet file: %w", err)
	}
	defer f.Close()
	s := SubnetEnv{Raw: map[string]string{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		s.Raw[k] = strings.Trim(v, `"`)
	}
	if err := sc.Err(); err != nil {
		return SubnetEnv{}, fmt.Errorf("read subnet file: %w", err)
	}
	for _, f := range []struct {
		key string
		dst *netip.Prefix
	}{
		{"FLANNEL_NETWORK", &s.Network}, {"FLANNEL_SUBNET", &s.Subnet},
		{"FLANNEL_IPV6_NETWORK", &s.Network6}, {"FLANNEL_IPV6_SUBNET", &s.Subnet6},
	} {
		v, ok := s.Raw[f.key]
		if !ok {
			continue
		}
		if *f.dst, err = netip.ParsePrefix(v); err != nil {
			return SubnetEnv{}, fmt.Errorf("parse %s in %s: %w", f.key, path, err)
		}
	}
	if !s.Subnet.IsValid() && !s.Subnet6.IsValid() {
		return SubnetEnv{}, fmt.Errorf("parse %s: neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET", path)
	}
	if s.MTU, err = strconv.Atoi(s.Raw["FLANNEL_MTU"]); err != nil {
		return SubnetEnv{}, fmt.Errorf("parse FLANNEL_MTU in %s: %w", path, err)
	}
	s.IPMasq = s.Raw["FLANNEL_IPMASQ"] == "true"
	s.Backend = s.Raw["WEFT_BACKEND"]
	return s, nil
}

// WriteSubnetEnv writes s atomically (used by the plain-routing backend,
// where no agent writes it).
func WriteSubnetEnv(path string, s SubnetEnv) error {
	var body string
	if s.Subnet.IsValid() {
		body += fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\n", s.Network, s.Subnet)
	}
	if s.Subnet6.IsValid() {
		body += fmt.Sprintf("FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s\n", s.Network6, s.Subnet6)
	}
	body += fmt.Sprintf("FLANNEL_MTU=%d\nFLANNEL_IPMASQ=%t\n", s.MTU, s.IPMasq)
	if s.Backend != "" {
		body += "WEFT_BACKEND=" + s.Backend + "\n"
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	return os.Rename(tmp, path)
}

// NetlinkAttacher attaches pods with netlink directly: bridge weft0 with the
// gateway address in the node namespace, a veth whose peer is eth0 in the
// pod, an address from the node's pod CIDR, a default route via the
// gateway and FLANNEL_MTU on both ends, for each family of the lease.
// Addresses are handed out from files in a "pods" directory beside the
// subnet file (like host-local IPAM).
type NetlinkAttacher struct{}

// hostVeth is the node-side name of a pod's veth: short and unique per
// node (pod names carry the run prefix, so the node side can be compact).
func hostVeth(podName string) string {
	sum := uint32(2166136261)
	for i := 0; i < len(podName); i++ {
		sum = (sum ^ uint32(podName[i])) * 16777619
	}
	return fmt.Sprintf("wv%08x", sum)
}

func ipamDir(subnetFile string) string { return filepath.Join(filepath.Dir(subnetFile), "pods") }

// allocate reserves the lowest free address of the pod CIDR subnet (the
// gateway with the pod CIDR's mask) for podName (returning the one it
// already holds there, if any).
func allocate(subnetFile, podName string, subnet netip.Prefix) (netip.Addr, error) {
	dir := ipamDir(subnetFile)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return netip.Addr{}, fmt.Errorf("allocate pod address: %w", err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil && string(b) == podName {
			if a, err := netip.ParseAddr(e.Name()); err == nil && subnet.Contains(a) {
				return a, nil
			}
		}
	}
	gw := subnet.Addr()
	for a := subnet.Masked().Addr().Next(); subnet.Contains(a); a = a.Next() {
		if a == gw || !subnet.Contains(a.Next()) { // skip the gateway and the last address (IPv4 broadcast)
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, a.String()), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return netip.Addr{}, fmt.Errorf("allocate pod address: %w", err)
		}
		_, err = f.WriteString(podName)
		f.Close()
		return a, err
	}
	return netip.Addr{}, fmt.Errorf("allocate pod address: %s is full", subnet)
}

func release(subnetFile, podName string) {
	dir := ipamDir(subnetFile)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil && string(b) == podName {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// ensureBridge makes weft0 exist and hold the gateway addresses.
func ensureBridge(h *netlink.Handle, s SubnetEnv) (netlink.Link, error) {
	br, err := h.LinkByName(BridgeName)
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = BridgeName
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("add bridge %s: %w", BridgeName, err)
		}
		if br, err = h.LinkByName(BridgeName); err != nil {
			return nil, fmt.Errorf("find bridge %s: %w", BridgeName, err)
		}
	}
	for _, sub := range s.subnets() {
		gw := &netlink.Addr{IPNet: netnstest.IPNet(sub), Flags: unix.IFA_F_NODAD}
		if err := h.AddrReplace(br, gw); err != nil {
			return nil, fmt.Errorf("set gateway %s on %s: %w", sub, BridgeName, err)
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("set %s up: %w", BridgeName, err)
	}
	return br, nil
}

// Attach implements PodAttacher.
func (NetlinkAttacher) Attach(ctx context.Context, nodeNS, podNS, podName, subnetFile string) ([]netip.Addr, error) {
	s, err := ReadSubnetEnv(subnetFile)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", podName, err)
	}
	var addrs, gws []netip.Addr
	var prefixes []netip.Prefix
	for _, sub := range s.subnets() {
		a, err := allocate(subnetFile, podName, sub)
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", podName, err)
		}
		addrs, gws = append(addrs, a), append(gws, sub.Addr())
		prefixes = append(prefixes, netip.PrefixFrom(a, sub.Bits()))
	}
	host := hostVeth(podName)
	err = withNS(nodeNS, func(node *netnstest.NS) error {
		h, err := node.NL()
		if err != nil {
			return err
		}
		if _, err := ensureBridge(h, s); err != nil {
			return err
		}
		if old, err := h.LinkByName(host); err == nil {
			h.LinkDel(old)
		}
		return withNS(podNS, func(pod *netnstest.NS) error {
			_, err := node.Plug(BridgeName, host, pod, "eth0", s.MTU, prefixes, gws...)
			if err != nil {
				return err
			}
			return node.MTU(host, s.MTU)
		})
	})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", podName, err)
	}
	return addrs, nil
}

// Detach implements PodAttacher.
func (NetlinkAttacher) Detach(ctx context.Context, nodeNS, podNS, podName, subnetFile string) error {
	release(subnetFile, podName)
	if _, err := os.Stat(nsPath(nodeNS)); errors.Is(err, os.ErrNotExist) {
		return nil // the node is gone, and its links with it
	}
	err := withHandle(nodeNS, func(h *netlink.Handle) error {
		if l, err := h.LinkByName(hostVeth(podName)); err == nil {
			return h.LinkDel(l)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("detach %s: %w", podName, err)
	}
	return nil
}

// SetMTU applies a new FLANNEL_MTU to a pod already attached (what a pod
// restart would do after a live MTU change): eth0 and its node-side peer,
// found through the veth's peer index so it works for pods attached by any
// PodAttacher.
func SetPodMTU(nodeNS, podNS string, mtu int) error {
	var peerIndex int
	err := withHandle(podNS, func(h *netlink.Handle) error {
		l, err := h.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("find eth0: %w", err)
		}
		peerIndex = l.Attrs().ParentIndex
		return h.LinkSetMTU(l, mtu)
	})
	if err != nil {
		return err
	}
	return withHandle(nodeNS, func(h *netlink.Handle) error {
		l, err := h.LinkByIndex(peerIndex)
		if err != nil {
			return fmt.Errorf("find the node side of %s's eth0 (index %d): %w", podNS, peerIndex, err)
		}
		return h.LinkSetMTU(l, mtu)
	})
}

// SetMTU is SetPodMTU; kept for callers holding a NetlinkAttacher.
func (NetlinkAttacher) SetMTU(nodeNS, podNS, podName string, mtu int) error {
	return SetPodMTU(nodeNS, podNS, mtu)
}
