// Package spec is the plain-data description of what one node's datapath
// should hold. The agent's desired-state model produces a Desired; the
// kernel-facing datapath (package bpf) turns it into live objects. This
// package imports nothing that touches the kernel, so the model and its
// tests run without root.
package spec

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Mode is the datapath mode of a node, as named by ClusterConfig.backend.
type Mode string

// The modes. Overlay modes encapsulate in a flow-based device driven by the
// eBPF tunnel map; native modes route pod CIDRs without encapsulation.
const (
	ModeVXLAN   Mode = "vxlan"
	ModeGeneve  Mode = "geneve"
	ModeNative  Mode = "native"
	ModeHybrid  Mode = "hybrid"
	ModeGateway Mode = "gateway"
	ModeBGP     Mode = "bgp"
)

// Encapsulation overheads on an IPv4 underlay (outer IPv4 20 + UDP 8 +
// header 8 + inner Ethernet 14). IPv6 underlays add 20 more.
const (
	VXLANOverhead  = 50
	GeneveOverhead = 50
	IPv6Extra      = 20
)

// Device names weft creates on a node.
const (
	VXLANDevice  = "weft_vxlan"
	GeneveDevice = "weft_geneve"
)

// Overlay describes the flow-based tunnel device of a node.
type Overlay struct {
	// Kind is ModeVXLAN or ModeGeneve.
	Kind Mode
	// Port is the UDP destination port (default 8472).
	Port uint16
	// VNI is the default network identifier for tunnel entries.
	VNI uint32
	// MTU of the device: underlay MTU minus the encapsulation overhead.
	MTU int
	// MAC is the device's MAC address (VTEPMAC of the node's name); the
	// zero MAC leaves the choice to the kernel.
	MAC MAC
	// InProgram: the tc programs encapsulate and decapsulate VXLAN
	// themselves (docs/datapath.md, "VXLAN in the programs"); the device
	// stays for what they leave to it. Off when Desired.StackRouting is
	// set, and for Geneve (which keeps the device).
	InProgram bool
}

// MAC is an Ethernet address, comparable so an Overlay stays comparable.
type MAC [6]byte

// IsZero reports whether m is the zero address (no MAC asked for).
func (m MAC) IsZero() bool { return m == MAC{} }

func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// VTEPMAC is the MAC of node's overlay device: derived from the node's
// name (the first six bytes of a SHA-256 of it), made a locally
// administered unicast address. The agent registers it before the device
// exists and the datapath creates the device with it, so a joining node's
// one NodeAdded carries its MAC (no NodeUpdated once the device is made);
// it survives a change of the underlay address and a recreated device.
func VTEPMAC(node string) MAC {
	sum := sha256.Sum256([]byte("weft vtep mac\x00" + node))
	var m MAC
	copy(m[:], sum[:6])
	m[0] = m[0]&^0x01 | 0x02 // unicast, locally administered
	return m
}

// DeviceName is the name of the overlay device for o.Kind.
func (o Overlay) DeviceName() string {
	if o.Kind == ModeGeneve {
		return GeneveDevice
	}
	return VXLANDevice
}

// CapBigDecap is the node capability an agent registers unless its own
// flags keep its VXLAN out of its programs (--tunnel-datapath=device,
// --host-routing=stack): its programs take BIG packets out of the tunnel,
// for every destination, whenever the cluster config has them
// decapsulate. Peers set FlagBigDecap on their tunnels to it when the
// config says so (nodeagent/model, docs/DESIGN.md).
const CapBigDecap = "vxlan-big-decap"

// Tunnel flags carried in the tunnel map value.
const (
	// FlagIPv6Endpoint: the endpoint is an IPv6 underlay address.
	FlagIPv6Endpoint uint32 = 1 << 0
	// FlagBigDecap: the endpoint's programs take BIG VXLAN packets (BIG
	// TCP: outer IPv4 longer than 65,535, both length fields 0) out of
	// the tunnel themselves, whatever their destination; with
	// Overlay.InProgram this node's programs then send such packets
	// encapsulated straight out of the underlay, else through the device,
	// which segments them first (docs/datapath.md, "BIG TCP").
	FlagBigDecap uint32 = 1 << 1
)

// Tunnel is one entry of the eBPF tunnel map: traffic to Prefix is
// encapsulated towards Endpoint with VNI; traffic decapsulated from Prefix
// is accepted only when its outer source is Endpoint.
type Tunnel struct {
	Prefix   netip.Prefix
	Endpoint netip.Addr
	VNI      uint32
	Flags    uint32
}

// PodOwner is a remote node's pod CIDR and that node's underlay address.
type PodOwner struct {
	Prefix netip.Prefix
	Node   netip.Addr
}

// RouteProto says who owns a route.
type RouteProto int

// Route owners. Direct routes are computed by the agent from the log; BGP
// routes were learned from a BGP peer.
const (
	ProtoDirect RouteProto = iota
	ProtoBGP
)

// Route is one unencapsulated route to a remote pod CIDR via a next hop.
type Route struct {
	Prefix netip.Prefix
	Via    netip.Addr
	Proto  RouteProto
}

// Masquerade describes source NAT for pod traffic leaving the pod network.
type Masquerade struct {
	// PodCIDRs are the node's own pod CIDRs (sources to masquerade).
	PodCIDRs []netip.Prefix
	// NativeCIDRs are destinations that keep the pod's source address.
	NativeCIDRs []netip.Prefix
}

// Desired is everything weft should hold in one node's datapath. The
// slices are sorted (see Normalize) so two equal Desired print and compare
// equal.
type Desired struct {
	Mode Mode
	// Overlay is nil when the mode uses no tunnel device (native, gateway,
	// bgp, or hybrid with every peer adjacent still keeps the device).
	Overlay *Overlay
	// ClusterCIDRs get one route each towards the overlay device.
	ClusterCIDRs []netip.Prefix
	// LocalPodCIDRs are the node's own pod CIDRs.
	LocalPodCIDRs []netip.Prefix
	// PodNetworks are the cluster's pod networks (at most 4; the cluster
	// CIDRs, in every mode). The underlay check protects them: a plain
	// packet from the underlay with a source in them is accepted only the
	// way this node routes to that source, and in overlay modes one for
	// them is dropped (docs/datapath.md, "Trust"). Empty: no check.
	PodNetworks []netip.Prefix
	// PodOwners are every remote node's pod CIDRs with the node's
	// underlay address, in the modes without an overlay (native, gateway,
	// bgp): where the network routes pods, a node on the same segment
	// answers this node's own address directly, so the underlay check
	// also accepts a pod source from its owner's next hop.
	PodOwners []PodOwner
	// Tunnels is the tunnel map content.
	Tunnels []Tunnel
	// Routes are direct (or BGP-learned) routes to remote pod CIDRs.
	Routes []Route
	// Masquerade is nil when masquerade is off.
	Masquerade *Masquerade
	// StackRouting sends pod traffic through the node's stack (routing,
	// netfilter FORWARD, neighbour layer) instead of forwarding it in eBPF
	// (the config's host_routing "stack"): for NetworkPolicy engines that
	// filter in the FORWARD chain. See docs/datapath.md, "Host routing".
	StackRouting bool
	// BigTCP is the GSO/GRO size (BIG TCP) of the node's underlay and pod
	// bridge per family; zero sizes leave the devices as they are.
	BigTCP BigTCP
}

// BigTCP holds GSO/GRO maximum sizes in bytes per family, for the
// devices of the pods' path (docs/datapath.md, "BIG TCP"). Zero is "not
// raised": the kernel's 64 KiB.
type BigTCP struct {
	IPv4, IPv6 int
}

// Normalize sorts every slice of d in place and returns d.
func (d *Desired) Normalize() *Desired {
	slices.SortFunc(d.ClusterCIDRs, comparePrefix)
	slices.SortFunc(d.LocalPodCIDRs, comparePrefix)
	slices.SortFunc(d.PodNetworks, comparePrefix)
	slices.SortFunc(d.PodOwners, func(a, b PodOwner) int { return comparePrefix(a.Prefix, b.Prefix) })
	slices.SortFunc(d.Tunnels, func(a, b Tunnel) int { return comparePrefix(a.Prefix, b.Prefix) })
	slices.SortFunc(d.Routes, func(a, b Route) int { return comparePrefix(a.Prefix, b.Prefix) })
	if d.Masquerade != nil {
		slices.SortFunc(d.Masquerade.PodCIDRs, comparePrefix)
		slices.SortFunc(d.Masquerade.NativeCIDRs, comparePrefix)
	}
	return d
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// String renders d for logs and test failures.
func (d *Desired) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mode=%s", d.Mode)
	if d.Overlay != nil {
		fmt.Fprintf(&b, " overlay=%s/port=%d/vni=%d/mtu=%d", d.Overlay.Kind, d.Overlay.Port, d.Overlay.VNI, d.Overlay.MTU)
		if !d.Overlay.MAC.IsZero() {
			fmt.Fprintf(&b, "/mac=%s", d.Overlay.MAC)
		}
		if d.Overlay.InProgram {
			b.WriteString("/in-program")
		}
	}
	fmt.Fprintf(&b, " cluster=%v local=%v pods=%v tunnels=%d routes=%d masq=%v",
		d.ClusterCIDRs, d.LocalPodCIDRs, d.PodNetworks, len(d.Tunnels), len(d.Routes), d.Masquerade != nil)
	if d.StackRouting {
		b.WriteString(" host-routing=stack")
	}
	if d.BigTCP != (BigTCP{}) {
		fmt.Fprintf(&b, " big-tcp=%d/%d", d.BigTCP.IPv4, d.BigTCP.IPv6)
	}
	return b.String()
}

// Underlay is what the datapath reports about the node's underlay, for the
// model to decide adjacency and MTU.
type Underlay struct {
	// Interface is the underlay interface name.
	Interface string
	// IP is the node's underlay address: its first IPv4 address, else its
	// first global IPv6 one (or the address the agent was told to use).
	IP netip.Addr
	// IPv6 is the underlay's first global IPv6 address when IP is IPv4
	// (a dual-stack underlay); invalid otherwise. It is the node's
	// underlay_ip_v6.
	IPv6 netip.Addr
	// MTU of the underlay interface.
	MTU int
	// TSOMaxSize is the largest GSO packet the underlay interface can
	// segment (IFLA_TSO_MAX_SIZE, Linux >= 5.19's BIG TCP for IPv6); 0
	// when the kernel does not report it.
	TSOMaxSize int
	// BigTCPv4 is set when the kernel has IPv4 BIG TCP (Linux >= 6.3: it
	// reports IFLA_GSO_IPV4_MAX_SIZE).
	BigTCPv4 bool
	// Networks are the directly connected networks of the node.
	Networks []netip.Prefix
}

// Addr returns the node's underlay address of addr's family (IP or IPv6),
// invalid when it has none.
func (u Underlay) Addr(v6 bool) netip.Addr {
	switch {
	case u.IP.Is6() == v6:
		return u.IP
	case v6:
		return u.IPv6
	}
	return netip.Addr{}
}

// Adjacent reports whether addr is on one of u's directly connected networks.
func (u Underlay) Adjacent(addr netip.Addr) bool {
	for _, n := range u.Networks {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

// Report says what a Sync or Reconcile changed.
type Report struct {
	Added, Updated, Removed int
	// Repaired names each piece of drift Reconcile found and fixed, e.g.
	// "route 10.244.0.0/16 dev weft_vxlan".
	Repaired []string
}

// Changed reports whether anything was written to the kernel.
func (r Report) Changed() bool {
	return r.Added+r.Updated+r.Removed+len(r.Repaired) > 0
}

// Counters are the datapath statistics, summed over CPUs.
type Counters struct {
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
	// DropNoTunnel counts packets for a destination without a tunnel
	// entry (Drops["no_tunnel"]).
	DropNoTunnel uint64
	// DropSpoofed counts packets dropped for a forged origin: out of the
	// tunnel with an outer source, VNI or inner source that does not match
	// the inner source's tunnel entry, from a pod with addresses not its
	// own, from the underlay passing for pod traffic, or with an
	// IPv4-mapped IPv6 pod address (the reasons of class "spoofed" in
	// docs/datapath.md).
	DropSpoofed uint64
	// DropOther counts every other drop.
	DropOther uint64
	// Drops counts every drop by reason (names in docs/datapath.md).
	Drops map[string]uint64
	// RxDirect counts received packets delivered straight into a local
	// pod's namespace (the endpoint fast path); they are in RxPackets too.
	RxDirect uint64
	// TxDirect counts packets sent from a pod's veth straight into the
	// tunnel, skipping the bridge; they are in TxPackets too.
	TxDirect uint64
	// TxEncap counts packets the programs encapsulated themselves and
	// sent out of the underlay (Overlay.InProgram), skipping the overlay
	// device; they are in TxPackets too.
	TxEncap uint64
	// RoutedTx counts packets host routing sent from a local pod to a
	// natively routed remote pod past the node's stack (FIB lookup, then
	// straight to the egress device); RoutedRx those from such a pod
	// handed from the underlay straight to a local pod.
	RoutedTx, RoutedRx uint64
	// RxDecap counts VXLAN packets the underlay program took out of the
	// tunnel itself (Overlay.InProgram) and RxDecapBytes their length on
	// the underlay; they are in RxPackets and RxDirect too.
	RxDecap, RxDecapBytes uint64
	// TxEncapBig counts the BIG packets among TxEncap (outer IPv4 longer
	// than 65,535; FlagBigDecap); RxDecapBig those among RxDecap, and
	// RxDecapStack those of RxDecapBig handed to the overlay device's
	// receive (and the stack) because no learned local pod could take
	// them (docs/datapath.md, "BIG TCP").
	TxEncapBig, RxDecapBig, RxDecapStack uint64
}
