package object

// DropClass is the coarse counter a drop reason adds to (the Counters
// fields that predate per-reason counting).
type DropClass int

// The classes.
const (
	DropClassOther    DropClass = iota // Counters.DropOther
	DropClassNoTunnel                  // Counters.DropNoTunnel
	DropClassSpoofed                   // Counters.DropSpoofed
)

// DropReason is one reason of enum drop_reason (lib/stats.h) with the name
// Counters.Drops reports it under.
type DropReason struct {
	Key   WeftDropReason
	Name  string
	Class DropClass
}

// DropReasons lists every reason the programs count. TestDropReasonNames
// fails when the C enum has a reason this list lacks.
var DropReasons = []DropReason{
	{WeftDropReasonDROP_NOT_IP, "not_ip", DropClassOther},
	{WeftDropReasonDROP_IPV6MULTICAST, "ipv6_multicast", DropClassOther},
	{WeftDropReasonDROP_NO_TUNNEL, "no_tunnel", DropClassNoTunnel},
	{WeftDropReasonDROP_TUNNEL_KEY, "tunnel_key", DropClassOther},
	{WeftDropReasonDROP_NO_TUNNEL_INFO, "no_tunnel_info", DropClassOther},
	{WeftDropReasonDROP_UNKNOWN_SOURCE, "unknown_source", DropClassSpoofed},
	{WeftDropReasonDROP_WRONG_ENDPOINT, "wrong_endpoint", DropClassSpoofed},
	{WeftDropReasonDROP_WRONG_VNI, "wrong_vni", DropClassSpoofed},
	{WeftDropReasonDROP_POD_UNKNOWN, "pod_unknown", DropClassOther},
	{WeftDropReasonDROP_POD_SOURCE, "pod_source", DropClassSpoofed},
	{WeftDropReasonDROP_POD_MAC, "pod_mac", DropClassSpoofed},
	{WeftDropReasonDROP_POD_ARP, "pod_arp", DropClassSpoofed},
	{WeftDropReasonDROP_POD_ND, "pod_nd", DropClassSpoofed},
	{WeftDropReasonDROP_POD_PROTOCOL, "pod_protocol", DropClassOther},
	{WeftDropReasonDROP_IPV4MAPPED, "ipv4_mapped", DropClassSpoofed},
	{WeftDropReasonDROP_PLAIN_TO_POD, "plain_to_pod", DropClassSpoofed},
	{WeftDropReasonDROP_REVERSE_PATH, "reverse_path", DropClassSpoofed},
	{WeftDropReasonDROP_REVERSE_PATH_UNRESOLVED, "reverse_path_unresolved", DropClassOther},
}
