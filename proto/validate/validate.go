// Package validate checks weft's schema values before anyone acts on them.
// Every error names the field at fault, so an operator reading a refusal in
// weftctl, etcdctl or a log line knows what to fix. Both the controller
// (before it writes an event) and the agent (before it applies one) use it.
package validate

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Backends are the datapath modes a ClusterConfig may name.
var Backends = []string{"vxlan", "geneve", "native", "hybrid", "gateway", "bgp"}

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

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid")

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
	if c.Vni == 0 {
		c.Vni = DefaultVNI
	}
	if c.UdpPort == 0 {
		c.UdpPort = DefaultUDPPort
	}
	if c.NodeMaskSize == 0 {
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
// error names the first field at fault.
func Config(c *weftv1.ClusterConfig) error {
	if c == nil {
		return fieldErr("config", "missing")
	}
	v4, err := netip.ParsePrefix(c.ClusterCidr)
	switch {
	case c.ClusterCidr == "":
		return fieldErr("cluster_cidr", "required")
	case err != nil:
		return fieldErr("cluster_cidr", "%q is not a CIDR: %v", c.ClusterCidr, err)
	case !v4.Addr().Is4():
		return fieldErr("cluster_cidr", "%q is not IPv4 (use cluster_cidr_v6 for IPv6)", c.ClusterCidr)
	case v4 != v4.Masked():
		return fieldErr("cluster_cidr", "%q has host bits set (did you mean %s?)", c.ClusterCidr, v4.Masked())
	}
	if err := maskOK("node_mask_size", v4, c.NodeMaskSize); err != nil {
		return err
	}
	if c.ClusterCidrV6 != "" {
		v6, err := netip.ParsePrefix(c.ClusterCidrV6)
		switch {
		case err != nil:
			return fieldErr("cluster_cidr_v6", "%q is not a CIDR: %v", c.ClusterCidrV6, err)
		case !v6.Addr().Is6() || v6.Addr().Is4In6():
			return fieldErr("cluster_cidr_v6", "%q is not IPv6", c.ClusterCidrV6)
		case v6 != v6.Masked():
			return fieldErr("cluster_cidr_v6", "%q has host bits set (did you mean %s?)", c.ClusterCidrV6, v6.Masked())
		}
		if err := maskOK("node_mask_size_v6", v6, c.NodeMaskSizeV6); err != nil {
			return err
		}
	}
	if !slices.Contains(Backends, c.Backend) {
		return fieldErr("backend", "unknown backend %q (want one of %v)", c.Backend, Backends)
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
	if c.NativeRoutingCidr != "" {
		p, err := netip.ParsePrefix(c.NativeRoutingCidr)
		if err != nil {
			return fieldErr("native_routing_cidr", "%q is not a CIDR: %v", c.NativeRoutingCidr, err)
		}
		if !p.Addr().Is4() {
			return fieldErr("native_routing_cidr", "%q is not IPv4", c.NativeRoutingCidr)
		}
		if p.Bits() > v4.Bits() || !p.Contains(v4.Addr()) {
			return fieldErr("native_routing_cidr", "%q does not contain cluster_cidr %s", c.NativeRoutingCidr, v4)
		}
	}
	if c.Backend == "bgp" {
		if err := BGP(c.Bgp); err != nil {
			return err
		}
	}
	return nil
}

func maskOK(field string, cluster netip.Prefix, mask uint32) error {
	max := uint32(cluster.Addr().BitLen())
	if mask > max {
		return fieldErr(field, "/%d is longer than an address (%d bits)", mask, max)
	}
	if mask <= uint32(cluster.Bits()) {
		return fieldErr(field, "/%d leaves no room for node subnets in %s", mask, cluster)
	}
	// Fewer than two subnets is no cluster: one node could never talk to
	// another. For IPv4 also leave at least 2 host addresses per node.
	if mask == uint32(cluster.Bits()) {
		return fieldErr(field, "/%d gives fewer than two subnets of %s", mask, cluster)
	}
	if cluster.Addr().Is4() && mask > 30 {
		return fieldErr(field, "/%d leaves fewer than two pod addresses per node", mask)
	}
	return nil
}

// BGP checks the BGP section of a config whose backend is "bgp".
func BGP(b *weftv1.BGPConfig) error {
	if b == nil {
		return fieldErr("bgp", "required when backend is \"bgp\"")
	}
	if b.Asn == 0 || b.Asn == 23456 {
		return fieldErr("bgp.asn", "%d is not a usable AS number", b.Asn)
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
	for i, p := range b.Peers {
		f := fmt.Sprintf("bgp.peers[%d]", i)
		if _, err := netip.ParseAddr(p.Address); err != nil {
			return fieldErr(f+".address", "%q is not an IP address", p.Address)
		}
		if p.Asn == 0 {
			return fieldErr(f+".asn", "required")
		}
		if p.MultihopTtl > 255 {
			return fieldErr(f+".multihop_ttl", "%d is above 255", p.MultihopTtl)
		}
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
	a = a.Unmap()
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return netip.Addr{}, fieldErr(field, "%s cannot be a node address", a)
	}
	return a, nil
}

// Registration checks an agent's registration.
func Registration(r *weftv1.Registration) error {
	if err := keys.ValidName(r.Name); err != nil {
		return fieldErr("name", "%v", err)
	}
	if _, err := UnderlayIP("underlay_ip", r.UnderlayIp); err != nil {
		return err
	}
	for i, s := range r.PinnedPodCidrs {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fieldErr(fmt.Sprintf("pinned_pod_cidrs[%d]", i), "%q is not a CIDR", s)
		}
	}
	return nil
}

// PodCIDRs parses a node's pod CIDRs and checks each lies inside the
// config's cluster CIDR of its family, with the node mask size.
func PodCIDRs(c *weftv1.ClusterConfig, cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var v4, v6 netip.Prefix
	v4, _ = netip.ParsePrefix(c.ClusterCidr)
	if c.ClusterCidrV6 != "" {
		v6, _ = netip.ParsePrefix(c.ClusterCidrV6)
	}
	seen4, seen6 := false, false
	for i, s := range cidrs {
		f := fmt.Sprintf("pod_cidrs[%d]", i)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fieldErr(f, "%q is not a CIDR", s)
		}
		if p != p.Masked() {
			return nil, fieldErr(f, "%q has host bits set", s)
		}
		cl := v4
		if p.Addr().Is6() {
			cl = v6
			if seen6 {
				return nil, fieldErr(f, "a second IPv6 pod CIDR %s", p)
			}
			seen6 = true
		} else {
			if seen4 {
				return nil, fieldErr(f, "a second IPv4 pod CIDR %s", p)
			}
			seen4 = true
		}
		if !cl.IsValid() || p.Bits() < cl.Bits() || !cl.Contains(p.Addr()) {
			return nil, fieldErr(f, "%s is outside the cluster CIDR", p)
		}
		out = append(out, p)
	}
	return out, nil
}

// Node checks a node value against the config in force.
func Node(c *weftv1.ClusterConfig, n *weftv1.Node) error {
	if n == nil {
		return fieldErr("node", "missing")
	}
	if err := keys.ValidName(n.Name); err != nil {
		return fieldErr("name", "%v", err)
	}
	if _, err := UnderlayIP("underlay_ip", n.UnderlayIp); err != nil {
		return err
	}
	if c != nil {
		if _, err := PodCIDRs(c, n.PodCidrs); err != nil {
			return err
		}
	}
	return nil
}

// Event checks the shape of an event: exactly one kind, and the payload the
// kind needs. Nodes are checked against cfg when it is non-nil.
func Event(cfg *weftv1.ClusterConfig, e *weftv1.Event) error {
	if e.Seq == 0 {
		return fieldErr("seq", "0 is not a seq")
	}
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
		return nil
	default:
		return fieldErr("kind", "event has no kind")
	}
}

// ConfigAgainstNodes checks a config against the nodes that exist: the pod
// networks must not overlap the underlay, or pod traffic would be routed
// into the tunnel instead of to the node.
func ConfigAgainstNodes(c *weftv1.ClusterConfig, nodes []*weftv1.Node) error {
	v4, _ := netip.ParsePrefix(c.ClusterCidr)
	var v6 netip.Prefix
	if c.ClusterCidrV6 != "" {
		v6, _ = netip.ParsePrefix(c.ClusterCidrV6)
	}
	for _, n := range nodes {
		a, err := netip.ParseAddr(n.UnderlayIp)
		if err != nil {
			continue
		}
		a = a.Unmap()
		if v4.IsValid() && v4.Contains(a) {
			return fieldErr("cluster_cidr", "%s overlaps node %s's underlay address %s", v4, n.Name, a)
		}
		if v6.IsValid() && v6.Contains(a) {
			return fieldErr("cluster_cidr_v6", "%s overlaps node %s's underlay address %s", v6, n.Name, a)
		}
	}
	return nil
}
