package model

import (
	"fmt"

	"github.com/weftnet/weft/bpf/spec"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// BigTCPSize is the GSO/GRO size BIG TCP asks for, 192 KiB (Cilium's
// default too): three times the kernel's 64 KiB.
const BigTCPSize = 192 << 10

// legacyGSOMax is the kernel's GSO limit without BIG TCP.
const legacyGSOMax = 64 << 10

// bigTCP is the GSO/GRO size per family for a node whose config asks for
// BIG TCP (big_tcp, big_tcp_v6), capped by what the underlay interface can
// segment (its tso_max_size): pods never build a packet the underlay
// would have to cut up in software, or a NIC without BIG TCP be handed.
// A family that stays at 64 KiB gets a note saying why. Callers leave
// encapsulating modes out unless the programs encapsulate VXLAN
// (Overlay.InProgram): the config refuses BIG TCP elsewhere.
func bigTCP(cfg *weftv1.ClusterConfig, u spec.Underlay) (spec.BigTCP, []string) {
	var out spec.BigTCP
	var notes []string
	size := min(BigTCPSize, u.TSOMaxSize)
	if cfg.BigTcp {
		switch {
		case !u.BigTCPv4:
			notes = append(notes, "big_tcp: this kernel has no IPv4 BIG TCP (Linux >= 6.3 reports gso_ipv4_max_size); IPv4 keeps 64 KiB")
		case size <= legacyGSOMax:
			notes = append(notes, fmt.Sprintf("big_tcp: underlay %s segments at most %d bytes (tso_max_size); IPv4 keeps 64 KiB", u.Interface, u.TSOMaxSize))
		default:
			out.IPv4 = size
		}
	}
	if cfg.BigTcpV6 {
		switch {
		case u.TSOMaxSize == 0:
			notes = append(notes, "big_tcp_v6: this kernel does not report tso_max_size (IPv6 BIG TCP needs Linux >= 5.19); IPv6 keeps 64 KiB")
		case size <= legacyGSOMax:
			notes = append(notes, fmt.Sprintf("big_tcp_v6: underlay %s segments at most %d bytes (tso_max_size); IPv6 keeps 64 KiB", u.Interface, u.TSOMaxSize))
		default:
			out.IPv6 = size
		}
	}
	return out, notes
}
