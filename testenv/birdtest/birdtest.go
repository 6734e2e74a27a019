// Package birdtest runs BIRD 2 as a test network's BGP router: its
// configuration, its control socket (birdc) and what its `show` commands
// print. testenv's two-segment clusters and the BGP speaker's tests both
// use it.
package birdtest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// Path is where Debian's bird2 installs the daemon.
const Path = "/usr/sbin/bird"

// Config is one router's bird.conf.
type Config struct {
	// Log is BIRD's own log file ("all" classes).
	Log      string
	RouterID netip.Addr
	// ASN is the router's AS.
	ASN uint32
	// Kernel exports every BGP route into the router namespace's kernel,
	// so it forwards what it learned.
	Kernel bool
	// Channels are the address families of every session, "ipv4" and/or
	// "ipv6"; empty means IPv4 only. Both: multiprotocol sessions (IPv6
	// routes over an IPv4 session carry their IPv6 next hop).
	Channels []string
	Peers    []Peer
}

// Peer is one BGP protocol of the router: a fixed neighbour, or with
// Range any address of a network (dynamic BGP, eBGP), so nodes added
// later peer without a reconfiguration.
type Peer struct {
	Name string
	// Local is the router's address towards the peer; invalid: BIRD picks.
	Local netip.Addr
	// Neighbor and NeighborASN name a fixed neighbour.
	Neighbor    netip.Addr
	NeighborASN uint32
	// Range accepts any external neighbour in it; sessions are named
	// DynamicName followed by a number.
	Range       netip.Prefix
	DynamicName string
	// Password turns on TCP MD5 for the session.
	Password string
	// Export is the session's export filter ("where source = RTS_STATIC");
	// "" exports every route.
	Export string
}

// String renders bird.conf. Every session has hold 3 s and keepalive 1 s
// (the speakers' timers win when smaller), a session that failed is
// accepted again after 1–2 s (BIRD's default error wait is 60–300 s),
// graceful restart on (BIRD keeps the routes of peers that negotiated it)
// and imports every route and exports every route (or what Peer.Export
// lets through).
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "log %q all;\nrouter id %s;\nprotocol device { scan time 2; }\n", c.Log, c.RouterID)
	channels := c.Channels
	if len(channels) == 0 {
		channels = []string{"ipv4"}
	}
	if c.Kernel {
		for _, ch := range channels {
			fmt.Fprintf(&b, "protocol kernel kernel_%s { %s { export where source = RTS_BGP; }; }\n", ch, ch)
		}
	}
	for _, p := range c.Peers {
		fmt.Fprintf(&b, "protocol bgp %s {\n", p.Name)
		if p.Local.IsValid() {
			fmt.Fprintf(&b, "\tlocal %s as %d;\n", p.Local, c.ASN)
		} else {
			fmt.Fprintf(&b, "\tlocal as %d;\n", c.ASN)
		}
		if p.Range.IsValid() {
			fmt.Fprintf(&b, "\tneighbor range %s external;\n\tdynamic name %q;\n", p.Range, p.DynamicName)
		} else {
			fmt.Fprintf(&b, "\tneighbor %s as %d;\n", p.Neighbor, p.NeighborASN)
		}
		if p.Password != "" {
			fmt.Fprintf(&b, "\tpassword %q;\n", p.Password)
		}
		b.WriteString(`	hold time 3;
	keepalive time 1;
	connect delay time 1;
	connect retry time 2;
	error wait time 1, 2;
	graceful restart on;
`)
		export := "all"
		if p.Export != "" {
			export = p.Export
		}
		for _, ch := range channels {
			fmt.Fprintf(&b, "\t%s { import all; export %s; };\n", ch, export)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// CLI runs birdc against the daemon's control socket sock.
func CLI(ctx context.Context, sock string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "birdc", append([]string{"-s", sock}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Routes parses the output of `show route` into prefix → next hop of
// BIRD's best route.
func Routes(show string) map[netip.Prefix]netip.Addr {
	out := map[netip.Prefix]netip.Addr{}
	var cur netip.Prefix
	for _, line := range strings.Split(show, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if p, err := netip.ParsePrefix(f[0]); err == nil {
			cur = p
			continue
		}
		if f[0] == "via" && len(f) > 1 && cur.IsValid() {
			if _, seen := out[cur]; !seen {
				out[cur], _ = netip.ParseAddr(f[1])
			}
		}
	}
	return out
}

// Established parses the output of `show protocols` and reports whether
// the protocol called name is an established session.
func Established(show, name string) bool {
	for _, line := range strings.Split(show, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return strings.Contains(line, "Established")
		}
	}
	return false
}

// EstablishedNeighbors parses the output of `show protocols all` into the
// neighbour addresses of the established BGP sessions.
func EstablishedNeighbors(show string) ([]netip.Addr, error) {
	var out []netip.Addr
	state := ""
	for _, line := range strings.Split(show, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[1] == "BGP":
			state = ""
			if strings.Contains(line, "Established") {
				state = "Established"
			}
		case len(f) >= 2 && f[0] == "Neighbor" && f[1] == "address:" && state == "Established":
			if len(f) > 2 {
				if a, err := netip.ParseAddr(f[2]); err == nil {
					out = append(out, a)
				}
			}
		}
	}
	if len(out) == 0 && !strings.Contains(show, "BGP") {
		return nil, errors.New("birdc show protocols: no BGP protocol")
	}
	return out, nil
}
