// Package validate checks weft's schema values before anyone acts on them.
// Every error names the field at fault, so an operator reading a refusal in
// weftctl, etcdctl or a log line knows what to fix. Both the controller
// (before it writes an event) and the agent (before it applies one) use it.
package validate

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Backends are the datapath modes a ClusterConfig may name.
var Backends = []string{"vxlan", "geneve", "native", "hybrid", "gateway", "bgp"}

// HostRoutings are the values ClusterConfig.host_routing (and the agent's
// --host-routing) may take: HostRoutingBPF forwards pod traffic in eBPF
// past the node's stack, HostRoutingStack through it.
var HostRoutings = []string{HostRoutingBPF, HostRoutingStack}

// The host routing modes.
const (
	HostRoutingBPF   = "bpf"
	HostRoutingStack = "stack"
)

// TunnelDatapaths are the values ClusterConfig.tunnel_datapath (and the
// agent's --tunnel-datapath) may take: TunnelDatapathDevice encapsulates in
// the kernel's VXLAN device, TunnelDatapathBPF in weft's tc programs.
var TunnelDatapaths = []string{TunnelDatapathDevice, TunnelDatapathBPF}

// The tunnel datapaths.
const (
	TunnelDatapathDevice = "device"
	TunnelDatapathBPF    = "bpf"
)

// Defaults of ClusterConfig fields left zero.
const (
	DefaultBackend        = "vxlan"
	DefaultVNI            = 1
	DefaultUDPPort        = 8472
	DefaultNodeMaskV4     = 24
	DefaultNodeMaskV6     = 64
	DefaultNodeGrace      = 40
	DefaultEventRetention = 10000
	DefaultBGPHold        = 9
	DefaultBGPKeepalive   = 3
	DefaultBGPRestart     = 120
	MinMTU                = 1280
	MaxVNI                = 1<<24 - 1
)

// Size limits. A value or field over one is refused (and, by the
// controller, quarantined) before it can reach a transaction: etcd refuses
// a request over 1.5 MiB, and the controller's append carries an event and
// the projection key it changes, so one oversized registration would
// otherwise fail every append of its batch. The field limits bound what a
// valid value can encode to; readers that hold a stored value check its
// length with Size, since unknown fields vanish in decoding.
// docs/DESIGN.md names them.
const (
	// MaxRegistrationBytes bounds a Registration value.
	MaxRegistrationBytes = 4 << 10
	// MaxNodeBytes bounds a Node value (projection or in an event).
	MaxNodeBytes = 4 << 10
	// MaxConfigBytes bounds a ClusterConfig value (config in force,
	// desired config) and an event carrying one.
	MaxConfigBytes = 64 << 10
	// MaxEventBytes bounds an Event value.
	MaxEventBytes = MaxConfigBytes + 1<<10
	// MaxProblemBytes bounds a Problem value.
	MaxProblemBytes = 16 << 10
	// MaxStatusBytes bounds an AgentStatus value (every peer may be
	// listed in it).
	MaxStatusBytes = 1 << 20
	// MaxCapabilities and MaxCapabilityLen bound a node's capabilities.
	MaxCapabilities  = 32
	MaxCapabilityLen = 64
	// MaxPinnedCIDRs bounds pinned_pod_cidrs and previous_pod_cidrs (one
	// per family).
	MaxPinnedCIDRs = 2
	// MaxReasonLen bounds a NodeRemoved reason.
	MaxReasonLen = 1024
	// MaxBGPPeers bounds bgp.peers; MaxPasswordLen is TCP MD5's limit.
	MaxBGPPeers    = 256
	MaxPasswordLen = 80
)

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid")

// Size checks that a value of n bytes fits the limit of its kind (what,
// e.g. "registration"); the error names the field "value".
func Size(what string, n, limit int) error {
	if n > limit {
		return fieldErr("value", "%d bytes is over the %d-byte limit of a %s", n, limit, what)
	}
	return nil
}

func fieldErr(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}

// WithDefaults returns a copy of c with zero fields set to their defaults.
// Masquerade defaults to on only for a config that has not been defaulted
// before (proto3 cannot tell false from unset).
func WithDefaults(c *weftv1.ClusterConfig) *weftv1.ClusterConfig {
	c = proto.Clone(c).(*weftv1.ClusterConfig)
	if c.Backend == "" {
		c.Backend = DefaultBackend
	}
	if c.HostRouting == "" {
		c.HostRouting = HostRoutingBPF
	}
	if c.TunnelDatapath == "" {
		c.TunnelDatapath = TunnelDatapathDevice
	}
	if c.Vni == 0 {
		c.Vni = DefaultVNI
	}
	if c.UdpPort == 0 {
		c.UdpPort = DefaultUDPPort
	}
	if c.ClusterCidr != "" && c.NodeMaskSize == 0 {
		c.NodeMaskSize = DefaultNodeMaskV4
	}
	if c.ClusterCidrV6 != "" && c.NodeMaskSizeV6 == 0 {
		c.NodeMaskSizeV6 = DefaultNodeMaskV6
	}
	if c.NodeGraceSeconds == 0 {
		c.NodeGraceSeconds = DefaultNodeGrace
	}
	if c.EventRetention == 0 {
		c.EventRetention = DefaultEventRetention
	}
	if c.NativeRoutingCidr == "" {
		c.NativeRoutingCidr = c.ClusterCidr
	}
	if c.NativeRoutingCidrV6 == "" {
		c.NativeRoutingCidrV6 = c.ClusterCidrV6
	}
	if !c.DefaultsApplied {
		c.Masquerade = true
		c.DefaultsApplied = true
	}
	if c.Bgp != nil {
		if c.Bgp.HoldTimeSeconds == 0 {
			c.Bgp.HoldTimeSeconds = DefaultBGPHold
		}
		if c.Bgp.KeepaliveSeconds == 0 {
			c.Bgp.KeepaliveSeconds = DefaultBGPKeepalive
		}
		if c.Bgp.GracefulRestart && c.Bgp.GracefulRestartSeconds == 0 {
			c.Bgp.GracefulRestartSeconds = DefaultBGPRestart
		}
	}
	return c
}

// Config checks a ClusterConfig that has had WithDefaults applied. The
// error names the first field at fault. A config needs cluster_cidr
// (IPv4), cluster_cidr_v6 (IPv6) or both (dual-stack).
func Config(c *weftv1.ClusterConfig) error {
	if c == nil {
		return fieldErr("config", "missing")
	}
	if c.ClusterCidr == "" && c.ClusterCidrV6 == "" {
		return fieldErr("cluster_cidr", "required (or cluster_cidr_v6 for an IPv6-only cluster)")
	}
	var v4, v6 netip.Prefix
	if c.ClusterCidr != "" {
		var err error
		v4, err = netip.ParsePrefix(c.ClusterCidr)
		switch {
		case err != nil:
			return fieldErr("cluster_cidr", "%q is not a CIDR: %v", c.ClusterCidr, err)
		case !v4.Addr().Is4():
			return fieldErr("cluster_cidr", "%q is not IPv4 (use cluster_cidr_v6 for IPv6)", c.ClusterCidr)
		case v4 != v4.Masked():
			return fieldErr("cluster_cidr", "%q has host bits set (did you mean %s?)", c.ClusterCidr, v4.Masked())
		}
		if err := outsideReserved("cluster_cidr", v4, reservedV4); err != nil {
			return err
		}
		if err := maskOK("node_mask_size", v4, c.NodeMaskSize); err != nil {
			return err
		}
	}
	if c.ClusterCidrV6 != "" {
		var err error
		v6, err = netip.ParsePrefix(c.ClusterCidrV6)
		switch {
		case err != nil:
			return fieldErr("cluster_cidr_v6", "%q is not a CIDR: %v", c.ClusterCidrV6, err)
		case !v6.Addr().Is6() || v6.Addr().Is4In6():
			return fieldErr("cluster_cidr_v6", "%q is not IPv6", c.ClusterCidrV6)
		case v6 != v6.Masked():
			return fieldErr("cluster_cidr_v6", "%q has host bits set (did you mean %s?)", c.ClusterCidrV6, v6.Masked())
		}
		if err := outsideReserved("cluster_cidr_v6", v6, reservedV6); err != nil {
			return err
		}
		if err := maskOK("node_mask_size_v6", v6, c.NodeMaskSizeV6); err != nil {
			return err
		}
	}
	if !slices.Contains(Backends, c.Backend) {
		return fieldErr("backend", "unknown backend %q (want one of %v)", c.Backend, Backends)
	}
	if !slices.Contains(HostRoutings, c.HostRouting) {
		return fieldErr("host_routing", "unknown host routing %q (want one of %v)", c.HostRouting, HostRoutings)
	}
	if !slices.Contains(TunnelDatapaths, c.TunnelDatapath) {
		return fieldErr("tunnel_datapath", "unknown tunnel datapath %q (want one of %v)", c.TunnelDatapath, TunnelDatapaths)
	}
	if c.Vni < 1 || c.Vni > MaxVNI {
		return fieldErr("vni", "%d is outside 1..%d", c.Vni, MaxVNI)
	}
	if c.UdpPort == 0 || c.UdpPort > 65535 {
		return fieldErr("udp_port", "%d is not a UDP port (1..65535)", c.UdpPort)
	}
	if c.Mtu != 0 && c.Mtu < MinMTU {
		return fieldErr("mtu", "%d is below the minimum %d", c.Mtu, MinMTU)
	}
	if c.Mtu > 65535 {
		return fieldErr("mtu", "%d is above 65535", c.Mtu)
	}
	if err := bigTCP(c); err != nil {
		return err
	}
	if err := nativeCIDR("native_routing_cidr", "cluster_cidr", c.NativeRoutingCidr, v4); err != nil {
		return err
	}
	if err := nativeCIDR("native_routing_cidr_v6", "cluster_cidr_v6", c.NativeRoutingCidrV6, v6); err != nil {
		return err
	}
	if c.Backend == "bgp" {
		if err := BGP(c.Bgp); err != nil {
			return err
		}
	}
	return nil
}

// bigTCP refuses BIG TCP for a family the cluster does not have and over
// encapsulation in a device: on Linux 6.18 a pod's packet over 64 KiB sent
// into a VXLAN device is segmented in software before the underlay (weft's
// device) or all but lost (a kernel VXLAN device): 0.61× and 0.03× the
// throughput without it (docs/bench/overlay-profile.md, "BIG TCP"). VXLAN
// encapsulated in weft's programs (tunnel_datapath "bpf", which host_routing
// "stack" turns off) sends IPv4 ones whole (docs/datapath.md, "BIG TCP");
// not IPv6 ones: inside a VXLAN tunnel they come out of software
// segmentation broken. Geneve is always the device's.
func bigTCP(c *weftv1.ClusterConfig) error {
	for _, f := range []struct {
		on           bool
		field, cidr  string
		clusterField string
	}{{c.BigTcp, "big_tcp", c.ClusterCidr, "cluster_cidr"}, {c.BigTcpV6, "big_tcp_v6", c.ClusterCidrV6, "cluster_cidr_v6"}} {
		if !f.on {
			continue
		}
		if f.cidr == "" {
			return fieldErr(f.field, "on, but the cluster has no pod network of that family (%s is empty)", f.clusterField)
		}
		if encapsulates(c.Backend) && f.field == "big_tcp_v6" {
			return fieldErr(f.field, "on with backend %q: IPv6 BIG TCP needs a backend without encapsulation (native, gateway, bgp); an IPv6 packet over 64 KiB inside a VXLAN tunnel comes out broken wherever the path segments it in software, and a tunnel device segments it before the underlay", c.Backend)
		}
		inProgram := (c.Backend == "vxlan" || c.Backend == "hybrid") && c.TunnelDatapath == TunnelDatapathBPF && c.HostRouting != HostRoutingStack
		if encapsulates(c.Backend) && !inProgram {
			return fieldErr(f.field, "on with backend %q, tunnel_datapath %q, host_routing %q: BIG TCP needs a backend without encapsulation (native, gateway, bgp) or VXLAN encapsulated in weft's programs (backend vxlan or hybrid with tunnel_datapath \"bpf\" and host_routing not \"stack\"); packets over 64 KiB into a tunnel device are segmented in software or lost", c.Backend, c.TunnelDatapath, c.HostRouting)
		}
	}
	return nil
}

// encapsulates reports whether backend carries (some) pod traffic in a
// tunnel: vxlan, geneve and hybrid do.
func encapsulates(backend string) bool {
	return backend == "vxlan" || backend == "geneve" || backend == "hybrid"
}

// reservedRange is a range a cluster CIDR must not overlap, and why.
type reservedRange struct {
	prefix netip.Prefix
	why    string
}

// outsideReserved refuses p, the value of field, when it overlaps one of
// rs.
func outsideReserved(field string, p netip.Prefix, rs []reservedRange) error {
	for _, r := range rs {
		if p.Overlaps(r.prefix) {
			return fieldErr(field, "%s overlaps %s (%s)", p, r.prefix, r.why)
		}
	}
	return nil
}

// reservedV4 are IPv4 ranges a pod network must not touch: never routed
// between hosts, so a pod address there is unreachable (or, for a
// cluster CIDR of 0.0.0.0/0, every destination would go into the
// tunnel). 240.0.0.0/4 apart from the broadcast address is allowed: some
// clusters use it for pods.
var reservedV4 = []reservedRange{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\" addresses"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback addresses"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local addresses"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast addresses"},
	{netip.MustParsePrefix("255.255.255.255/32"), "the broadcast address"},
}

// reservedV6 are IPv6 ranges a pod network must not touch: the datapath's
// single tunnel trie stores IPv4 prefixes IPv4-mapped, and link-local and
// multicast addresses are never routed.
var reservedV6 = []reservedRange{
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped addresses, which the datapath uses for IPv4"},
	{netip.MustParsePrefix("fe80::/10"), "link-local addresses"},
	{netip.MustParsePrefix("ff00::/8"), "multicast addresses"},
	{netip.MustParsePrefix("::/128"), "the unspecified address"},
	{netip.MustParsePrefix("::1/128"), "the loopback address"},
}

// nativeCIDR checks a native routing CIDR of one family: it must contain
// the cluster CIDR of that family (cluster, invalid when the family is
// not configured).
func nativeCIDR(field, clusterField, s string, cluster netip.Prefix) error {
	if s == "" {
		return nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fieldErr(field, "%q is not a CIDR: %v", s, err)
	}
	v6 := clusterField == "cluster_cidr_v6"
	if p.Addr().Is4() == v6 || p.Addr().Is4In6() {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return fieldErr(field, "%q is not %s", s, fam)
	}
	if !cluster.IsValid() {
		return fieldErr(field, "%q is set but %s is empty", s, clusterField)
	}
	if p.Bits() > cluster.Bits() || !p.Contains(cluster.Addr()) {
		return fieldErr(field, "%q does not contain %s %s", s, clusterField, cluster)
	}
	return nil
}

func maskOK(field string, cluster netip.Prefix, mask uint32) error {
	max := uint32(cluster.Addr().BitLen())
	if mask > max {
		return fieldErr(field, "/%d is longer than an address (%d bits)", mask, max)
	}
	if mask < uint32(cluster.Bits()) {
		return fieldErr(field, "/%d is shorter than %s: no room for node subnets", mask, cluster)
	}
	// Fewer than two subnets is no cluster: one node could never talk to
	// another. Each node also needs at least 2 pod addresses.
	if mask == uint32(cluster.Bits()) {
		return fieldErr(field, "/%d gives fewer than two subnets of %s", mask, cluster)
	}
	if cluster.Addr().Is4() && mask > 30 || mask > 126 {
		return fieldErr(field, "/%d leaves fewer than two pod addresses per node", mask)
	}
	return nil
}

// BGP checks the BGP section of a config whose backend is "bgp".
func BGP(b *weftv1.BGPConfig) error {
	if b == nil {
		return fieldErr("bgp", "required when backend is \"bgp\"")
	}
	if err := ASN("bgp.asn", b.Asn); err != nil {
		return err
	}
	if !b.FullMesh && len(b.Peers) == 0 {
		return fieldErr("bgp.peers", "empty and full_mesh is off: nodes would learn no routes")
	}
	if b.KeepaliveSeconds != 0 && b.HoldTimeSeconds != 0 && b.KeepaliveSeconds*3 > b.HoldTimeSeconds {
		return fieldErr("bgp.keepalive_seconds", "%d is more than a third of hold_time_seconds %d", b.KeepaliveSeconds, b.HoldTimeSeconds)
	}
	if b.HoldTimeSeconds != 0 && b.HoldTimeSeconds < 3 {
		return fieldErr("bgp.hold_time_seconds", "%d is below 3", b.HoldTimeSeconds)
	}
	if len(b.Peers) > MaxBGPPeers {
		return fieldErr("bgp.peers", "%d peers, more than %d", len(b.Peers), MaxBGPPeers)
	}
	for i, p := range b.Peers {
		f := fmt.Sprintf("bgp.peers[%d]", i)
		if len(p.Password) > MaxPasswordLen {
			return fieldErr(f+".password", "longer than %d characters", MaxPasswordLen)
		}
		if _, err := netip.ParseAddr(p.Address); err != nil {
			return fieldErr(f+".address", "%q is not an IP address", p.Address)
		}
		if err := ASN(f+".asn", p.Asn); err != nil {
			return err
		}
		if p.MultihopTtl > 255 {
			return fieldErr(f+".multihop_ttl", "%d is above 255", p.MultihopTtl)
		}
	}
	return nil
}

// ASN checks that asn can be a BGP speaker's AS number, naming field when
// it cannot: 0 (RFC 7607), AS_TRANS 23456 (RFC 6793: it stands for a
// 4-byte AS towards a 2-byte speaker), 65535 and 4294967295 (RFC 7300:
// reserved, the last of each space). A speaker may be configured with
// one of them, but its peers refuse the session.
func ASN(field string, asn uint32) error {
	switch asn {
	case 0, 23456, 65535, 4294967295:
		return fieldErr(field, "%d is not a usable AS number", asn)
	}
	return nil
}

// Overlaps reports whether a and b share any address.
func Overlaps(a, b netip.Prefix) bool { return a.Overlaps(b) }

// UnderlayIP parses and checks a node's underlay address.
func UnderlayIP(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fieldErr(field, "%q is not an IP address", s)
	}
	if a.Zone() != "" {
		// A zone names an interface of one host: no other node can use
		// it (and it would leave the field's length unbounded).
		return netip.Addr{}, fieldErr(field, "%s has a zone", a.WithZone(""))
	}
	a = a.Unmap()
	switch {
	case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == limitedBroadcast:
		return netip.Addr{}, fieldErr(field, "%s cannot be a node address", a)
	case a.IsLinkLocalUnicast():
		// Not routed beyond one link (an IPv6 one needs a zone, which
		// is refused above): peers on another link could not reach it.
		return netip.Addr{}, fieldErr(field, "%s is link-local, which cannot be a node address", a)
	}
	return a, nil
}

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// underlayPair checks a node's underlay_ip and underlay_ip_v6: the second
// is optional, IPv6, and only beside an IPv4 underlay_ip.
func underlayPair(ip, ip6 string) error {
	a, err := UnderlayIP("underlay_ip", ip)
	if err != nil {
		return err
	}
	if ip6 == "" {
		return nil
	}
	b, err := UnderlayIP("underlay_ip_v6", ip6)
	if err != nil {
		return err
	}
	if !b.Is6() {
		return fieldErr("underlay_ip_v6", "%s is not IPv6", b)
	}
	if a.Is6() {
		return fieldErr("underlay_ip_v6", "set beside the IPv6 underlay_ip %s (only an IPv4 underlay_ip takes a second, IPv6 address)", a)
	}
	return nil
}

// UnderlayAddrs returns a node's parsed underlay addresses: underlay_ip
// and, when set and valid, underlay_ip_v6. Invalid values are left out.
func UnderlayAddrs(n *weftv1.Node) []netip.Addr {
	var out []netip.Addr
	for _, s := range []string{n.GetUnderlayIp(), n.GetUnderlayIpV6()} {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Registration checks an agent's registration. Its fields are bounded, so
// a registration that passes encodes within MaxRegistrationBytes; the
// stored value's own size is the reader's to check (Size), since unknown
// fields are dropped when it decodes.
func Registration(r *weftv1.Registration) error {
	if err := keys.ValidName(r.Name); err != nil {
		return fieldErr("name", "%v", err)
	}
	if err := underlayPair(r.UnderlayIp, r.UnderlayIpV6); err != nil {
		return err
	}
	if len(r.PinnedPodCidrs) > MaxPinnedCIDRs {
		return fieldErr("pinned_pod_cidrs", "%d pins, more than one per family", len(r.PinnedPodCidrs))
	}
	for i, s := range r.PinnedPodCidrs {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fieldErr(fmt.Sprintf("pinned_pod_cidrs[%d]", i), "%q is not a CIDR", s)
		}
	}
	if len(r.PreviousPodCidrs) > MaxPinnedCIDRs {
		return fieldErr("previous_pod_cidrs", "%d CIDRs, more than one per family", len(r.PreviousPodCidrs))
	}
	for i, s := range r.PreviousPodCidrs {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fieldErr(fmt.Sprintf("previous_pod_cidrs[%d]", i), "%q is not a CIDR", s)
		}
	}
	// 0 is no AS of the node's own: it speaks with the cluster's bgp.asn.
	if r.Asn != 0 {
		if err := ASN("asn", r.Asn); err != nil {
			return err
		}
	}
	return attributes(r.VtepMac, r.Capabilities)
}

// Status checks an agent's status as stored at the key of node name: it
// names that node (an empty name means the key's), and the pod CIDRs,
// peer names and peer addresses it reports are CIDRs, names and addresses. A node writes its
// own status, so weftctl believes none that fails. Free text (errors,
// reasons) is the printer's to escape.
func Status(name string, s *weftv1.AgentStatus) error {
	if s.Name != "" && s.Name != name {
		return fieldErr("name", "%q reported under key of %q", s.Name, name)
	}
	if len(s.PodCidrs) > 2 {
		return fieldErr("pod_cidrs", "%d CIDRs, more than one per family", len(s.PodCidrs))
	}
	for i, c := range s.PodCidrs {
		if _, err := netip.ParsePrefix(c); err != nil {
			return fieldErr(fmt.Sprintf("pod_cidrs[%d]", i), "%q is not a CIDR", c)
		}
	}
	for i, u := range s.UnreachablePeers {
		if err := keys.ValidName(u.Node); err != nil {
			return fieldErr(fmt.Sprintf("unreachable_peers[%d].node", i), "%v", err)
		}
		if _, err := netip.ParseAddr(u.Address); u.Address != "" && err != nil {
			return fieldErr(fmt.Sprintf("unreachable_peers[%d].address", i), "%q is not an IP address", u.Address)
		}
	}
	return nil
}

// attributes checks the fields a node and its registration share besides
// name and addresses: the overlay device's MAC and the capabilities.
func attributes(mac string, caps []string) error {
	if mac != "" {
		if len(mac) > 64 {
			return fieldErr("vtep_mac", "%d characters is not a MAC address", len(mac))
		}
		if _, err := net.ParseMAC(mac); err != nil {
			return fieldErr("vtep_mac", "%q is not a MAC address", mac)
		}
	}
	if len(caps) > MaxCapabilities {
		return fieldErr("capabilities", "%d entries, more than %d", len(caps), MaxCapabilities)
	}
	for i, c := range caps {
		// Named only on a refusal: this runs for every node of a list.
		f := func() string { return fmt.Sprintf("capabilities[%d]", i) }
		if len(c) == 0 || len(c) > MaxCapabilityLen {
			return fieldErr(f(), "%d characters, want 1..%d", len(c), MaxCapabilityLen)
		}
		for _, r := range c {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
				return fieldErr(f(), "%q contains %q", c, r)
			}
		}
	}
	return nil
}

// PodCIDRs parses a node's pod CIDRs and checks each lies inside the
// config's cluster CIDR of its family, with the node mask size.
func PodCIDRs(c *weftv1.ClusterConfig, cidrs []string) ([]netip.Prefix, error) {
	return appendPodCIDRs(nil, c, cidrs)
}

// appendPodCIDRs is PodCIDRs appending to out, so a caller that only
// checks can pass a buffer on its stack.
func appendPodCIDRs(out []netip.Prefix, c *weftv1.ClusterConfig, cidrs []string) ([]netip.Prefix, error) {
	var v4, v6 netip.Prefix
	if c.ClusterCidr != "" {
		v4, _ = netip.ParsePrefix(c.ClusterCidr)
	}
	if c.ClusterCidrV6 != "" {
		v6, _ = netip.ParsePrefix(c.ClusterCidrV6)
	}
	seen4, seen6 := false, false
	for i, s := range cidrs {
		// Named only on a refusal: this runs for every node of a list.
		f := func() string { return fmt.Sprintf("pod_cidrs[%d]", i) }
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fieldErr(f(), "%q is not a CIDR", s)
		}
		if p != p.Masked() {
			return nil, fieldErr(f(), "%q has host bits set", s)
		}
		cl := v4
		if p.Addr().Is6() {
			cl = v6
			if seen6 {
				return nil, fieldErr(f(), "a second IPv6 pod CIDR %s", p)
			}
			seen6 = true
		} else {
			if seen4 {
				return nil, fieldErr(f(), "a second IPv4 pod CIDR %s", p)
			}
			seen4 = true
		}
		if !cl.IsValid() {
			return nil, fieldErr(f(), "%s: the cluster has no %s CIDR", p, family(p.Addr()))
		}
		if p.Bits() < cl.Bits() || !cl.Contains(p.Addr()) {
			return nil, fieldErr(f(), "%s is outside the cluster CIDR", p)
		}
		// Every pod CIDR weft hands out (or takes as a pin) has the node
		// mask: a larger one would claim other nodes' subnets, a smaller
		// one addresses pods hold elsewhere.
		if mask := nodeMask(c, p.Addr().Is6()); p.Bits() != mask {
			return nil, fieldErr(f(), "%s is not a /%d, the node mask of its family", p, mask)
		}
		out = append(out, p)
	}
	return out, nil
}

// nodeMask is the config's node mask of a family, defaulted when unset.
func nodeMask(c *weftv1.ClusterConfig, v6 bool) int {
	switch {
	case v6 && c.NodeMaskSizeV6 != 0:
		return int(c.NodeMaskSizeV6)
	case v6:
		return DefaultNodeMaskV6
	case c.NodeMaskSize != 0:
		return int(c.NodeMaskSize)
	}
	return DefaultNodeMaskV4
}

// Node checks a node value against the config in force. Its fields are
// bounded, so a node that passes encodes within MaxNodeBytes.
func Node(c *weftv1.ClusterConfig, n *weftv1.Node) error {
	if n == nil {
		return fieldErr("node", "missing")
	}
	if err := keys.ValidName(n.Name); err != nil {
		return fieldErr("name", "%v", err)
	}
	if err := underlayPair(n.UnderlayIp, n.UnderlayIpV6); err != nil {
		return err
	}
	if len(n.PodCidrs) > 2 {
		return fieldErr("pod_cidrs", "%d CIDRs, more than one per family", len(n.PodCidrs))
	}
	if c != nil {
		// Checked, not kept: at most two CIDRs (above), parsed into a
		// buffer that does not escape, as Node runs for every node of a
		// list.
		var buf [2]netip.Prefix
		if _, err := appendPodCIDRs(buf[:0], c, n.PodCidrs); err != nil {
			return err
		}
		if err := underlayOutsidePods(c, n); err != nil {
			return err
		}
	}
	return attributes(n.VtepMac, n.Capabilities)
}

// underlayOutsidePods refuses a node whose underlay address lies inside a
// cluster CIDR of c: it is a tunnel endpoint and a route's next hop, and
// a pod address there would send the node's traffic into the pod network
// (the overlay device, which routes the cluster CIDR) instead of to it.
func underlayOutsidePods(c *weftv1.ClusterConfig, n *weftv1.Node) error {
	for _, f := range [2]struct{ field, ip string }{{"underlay_ip", n.UnderlayIp}, {"underlay_ip_v6", n.UnderlayIpV6}} {
		if f.ip == "" {
			continue // underlay_ip_v6 is optional; parsing "" would allocate its error
		}
		a, err := netip.ParseAddr(f.ip)
		if err != nil {
			continue // refused by underlayPair
		}
		a = a.Unmap()
		for _, s := range [2]string{c.ClusterCidr, c.ClusterCidrV6} {
			if s == "" {
				continue
			}
			if p, err := netip.ParsePrefix(s); err == nil && p.Contains(a) {
				return fieldErr(f.field, "%s is inside the cluster CIDR %s", a, p)
			}
		}
	}
	return nil
}

// Event checks the shape of an event: exactly one kind, and the payload the
// kind needs. Nodes are checked against cfg when it
// is non-nil.
func Event(cfg *weftv1.ClusterConfig, e *weftv1.Event) error {
	if e.Seq == 0 {
		return fieldErr("seq", "0 is not a seq")
	}
	return eventKind(cfg, e)
}

func eventKind(cfg *weftv1.ClusterConfig, e *weftv1.Event) error {
	switch k := e.Kind.(type) {
	case *weftv1.Event_ConfigChanged:
		if k.ConfigChanged.GetConfig() == nil {
			return fieldErr("config_changed.config", "missing")
		}
		return Config(WithDefaults(k.ConfigChanged.Config))
	case *weftv1.Event_NodeAdded:
		return Node(cfg, k.NodeAdded.GetNode())
	case *weftv1.Event_NodeUpdated:
		return Node(cfg, k.NodeUpdated.GetNode())
	case *weftv1.Event_NodeRemoved:
		if err := keys.ValidName(k.NodeRemoved.Name); err != nil {
			return fieldErr("node_removed.name", "%v", err)
		}
		if len(k.NodeRemoved.Reason) > MaxReasonLen {
			return fieldErr("node_removed.reason", "longer than %d characters", MaxReasonLen)
		}
		return nil
	default:
		return fieldErr("kind", "event has no kind")
	}
}

// ConfigAgainstNodes checks a config against the nodes that exist: the pod
// networks must not overlap the underlay (either of a node's addresses),
// or pod traffic would be routed into the tunnel instead of to the node.
func ConfigAgainstNodes(c *weftv1.ClusterConfig, nodes []*weftv1.Node) error {
	var v4, v6 netip.Prefix
	if c.ClusterCidr != "" {
		v4, _ = netip.ParsePrefix(c.ClusterCidr)
	}
	if c.ClusterCidrV6 != "" {
		v6, _ = netip.ParsePrefix(c.ClusterCidrV6)
	}
	for _, n := range nodes {
		for _, a := range UnderlayAddrs(n) {
			if v4.IsValid() && v4.Contains(a) {
				return fieldErr("cluster_cidr", "%s overlaps node %s's underlay address %s", v4, n.Name, a)
			}
			if v6.IsValid() && v6.Contains(a) {
				return fieldErr("cluster_cidr_v6", "%s overlaps node %s's underlay address %s", v6, n.Name, a)
			}
		}
	}
	return nil
}

// Family names an address's family: "IPv4" or "IPv6".
func Family(a netip.Addr) string { return family(a) }

func family(a netip.Addr) string {
	if a.Is4() || a.Is4In6() {
		return "IPv4"
	}
	return "IPv6"
}
