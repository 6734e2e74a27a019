// Package bgp holds what the agent tells its BGP speaker: the speaker's
// Config, derived from the cluster (FromCluster), and the rules every
// speaker applies to it. It does not import GoBGP: the speaker itself is
// package gobgp, which runs in its own process (cmd/weft-bgp), so the
// agent's binary does not carry GoBGP (docs/bgp.md).
package bgp

import (
	"errors"
	"fmt"
	"net/netip"
)

// Defaults used when Config and Peer leave a timer at zero.
const (
	DefaultHoldTime    = 9
	DefaultKeepalive   = 3
	DefaultRestartTime = 120
)

// Config is the speaker's whole configuration. The agent derives it from
// ClusterConfig.bgp and the node list.
type Config struct {
	// RouterID is the node's underlay IPv4 address (see FromCluster for
	// IPv6-only nodes).
	RouterID netip.Addr
	// ASN is this node's AS number.
	ASN uint32
	// ListenPort is the TCP port to accept sessions on: 179 in production,
	// 0 means 179, -1 means do not listen (connect out only).
	ListenPort int32
	// LocalAddress is the source address of outgoing sessions and the
	// address listened on; invalid means any.
	LocalAddress netip.Addr
	// Peers are the configured peers plus, in full mesh, every other node.
	// A peer whose address is RouterID or LocalAddress is ignored, so the
	// agent may pass the whole node list.
	Peers []Peer
	// GracefulRestart makes peers keep this node's routes for RestartTime
	// seconds (0: DefaultRestartTime) when the agent goes away without
	// withdrawing, and makes this speaker do the same for its peers.
	GracefulRestart bool
	RestartTime     uint32
	// HoldTime and Keepalive are the session timers in seconds for peers
	// that do not set their own (0: DefaultHoldTime, DefaultKeepalive).
	HoldTime, Keepalive uint32
}

// Peer is one BGP neighbour.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	// Password is the TCP MD5 (RFC 2385) key; empty means none. Never logged.
	Password            string
	HoldTime, Keepalive uint32
	// MultihopTTL > 0 enables eBGP multihop with this TTL.
	MultihopTTL uint32
}

// NextHopFor returns the next hop of p's family among nexthops, invalid
// when there is none.
func NextHopFor(p netip.Prefix, nexthops []netip.Addr) netip.Addr {
	for _, n := range nexthops {
		if n.Is4() == p.Addr().Is4() {
			return n
		}
	}
	return netip.Addr{}
}

// ErrInvalidConfig wraps every error Apply returns for a config it cannot use.
var ErrInvalidConfig = errors.New("bgp: invalid config")

// Check tells whether the speaker can use c; its errors wrap
// ErrInvalidConfig.
func (c *Config) Check() error {
	if !c.RouterID.Is4() {
		return fmt.Errorf("%w: router id %v is not an IPv4 address", ErrInvalidConfig, c.RouterID)
	}
	if c.ASN == 0 {
		return fmt.Errorf("%w: asn is 0", ErrInvalidConfig)
	}
	if c.ListenPort < -1 || c.ListenPort > 65535 {
		return fmt.Errorf("%w: listen port %d", ErrInvalidConfig, c.ListenPort)
	}
	return nil
}
