package testenv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/testenv/birdtest"
)

// BGP in testenv: with two segments every agent gets --asn NodeASN(i)
// (eBGP to the router, one AS per node, as Calico and Cilium deployments
// do), and a cluster whose backend is "bgp" runs BIRD 2 in the router
// namespace as the network's router (AS RouterASN), started before the
// agents. BIRD accepts a session from any address of each segment
// (dynamic BGP, "neighbor range"), so nodes added later peer without a
// reconfiguration, and it installs what it learns into the router's kernel
// so pod traffic between the segments is forwarded.
const (
	RouterASN = 65000
	// BIRDPath is where Debian's bird2 installs the daemon.
	BIRDPath = birdtest.Path
)

// defaultBGP is the bgp section of a bgp cluster whose Options.Config has
// none: with two segments the router's address on each (every node dials
// the one on its segment), with one an iBGP full mesh (AS 64512); hold
// 3 s, keepalive 1 s.
func (c *Cluster) defaultBGP() map[string]any {
	b := map[string]any{"asn": 64512, "hold_time_seconds": 3, "keepalive_seconds": 1}
	if c.Opts.Segments == 2 {
		// Sessions over the cluster's first family: in a dual-stack
		// cluster IPv4 sessions carry both families.
		v6 := !c.IPv4()
		b["peers"] = []map[string]any{
			{"address": routerOf(0, v6).String(), "asn": RouterASN},
			{"address": routerOf(1, v6).String(), "asn": RouterASN},
		}
	} else {
		b["full_mesh"] = true
	}
	return b
}

// NodeASN is node i's AS number on a two-segment cluster.
func NodeASN(i int) uint32 { return 65001 + uint32(i) }

// BIRD is the BIRD 2 daemon of a cluster's router namespace.
type BIRD struct {
	Proc *Proc
	Conf string // path of bird.conf
	Sock string // control socket for birdc
	pidf string
}

var birds sync.Map // *Cluster -> *BIRD

// BIRD returns the cluster's router daemon, nil when it runs none.
func (c *Cluster) BIRD() *BIRD {
	b, _ := birds.Load(c)
	bb, _ := b.(*BIRD)
	return bb
}

// birdConf is BIRD's configuration for the router of c: one dynamic BGP
// protocol per segment (sessions are named s<segment>n<k> as they come),
// the timers and graceful restart of birdtest.Config, and every BGP route into
// the router's kernel. Sessions run over the cluster's first family (the
// agents dial the router there) with a channel per family the cluster
// runs: a dual-stack cluster's IPv4 sessions are multiprotocol.
func (c *Cluster) birdConf(log string) string {
	conf := birdtest.Config{Log: log, RouterID: routerIP(0), ASN: RouterASN, Kernel: true}
	if c.IPv4() {
		conf.Channels = append(conf.Channels, "ipv4")
	}
	if c.IPv6() {
		conf.Channels = append(conf.Channels, "ipv6")
	}
	v6 := !c.IPv4()
	for s := 0; s < c.Opts.Segments; s++ {
		rng := segmentNet(s)
		if v6 {
			rng = segmentNet6(s)
		}
		conf.Peers = append(conf.Peers, birdtest.Peer{Name: fmt.Sprintf("seg%d", s), Local: routerOf(s, v6),
			Range: rng, DynamicName: fmt.Sprintf("s%dn", s)})
	}
	return conf.String()
}

// startBIRD runs BIRD in the router namespace when the cluster is a
// two-segment bgp cluster; BIRD missing is an error there.
func (c *Cluster) startBIRD() error {
	if c.RouterNS == "" || c.Opts.Backend != "bgp" {
		return nil
	}
	if _, err := os.Stat(birdtest.Path); err != nil {
		return fmt.Errorf("start bird: %w (install the Debian package bird2)", err)
	}
	dir := filepath.Join(c.RunDir, "bird")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("start bird: %w", err)
	}
	b := &BIRD{Conf: filepath.Join(dir, "bird.conf"), Sock: filepath.Join(dir, "bird.ctl"), pidf: filepath.Join(dir, "bird.pid")}
	if err := os.WriteFile(b.Conf, []byte(c.birdConf(filepath.Join(dir, "bird.log"))), 0o600); err != nil {
		return fmt.Errorf("write bird.conf: %w", err)
	}
	// -f keeps BIRD in the foreground, so it is a child like every other
	// process: its PID (the one in its pidfile) is the only one signalled.
	b.Proc = c.newProc("bird", c.RouterNS, []string{BIRDPath, "-f", "-c", b.Conf, "-s", b.Sock, "-P", b.pidf})
	if err := b.Proc.start(); err != nil {
		return err
	}
	birds.Store(c, b)
	for range 100 {
		if _, err := b.CLI(context.Background(), "show", "status"); err == nil {
			return nil
		}
		if !b.Proc.Running() {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("start bird: no control socket (log %s)", b.Proc.Log)
}

// StopBIRD stops the cluster's BIRD (by the PID in its pidfile) if it
// runs one. Tests register it with t.Cleanup after the cluster's Close.
func (c *Cluster) StopBIRD() error {
	b := c.BIRD()
	if b == nil {
		return nil
	}
	birds.Delete(c)
	if raw, err := os.ReadFile(b.pidf); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && pid > 0 && pid == b.Proc.PID() {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	if b.Proc.Wait(5 * time.Second) {
		return nil
	}
	return b.Proc.Kill()
}

// CLI runs birdc against the daemon.
func (b *BIRD) CLI(ctx context.Context, args ...string) (string, error) {
	return birdtest.CLI(ctx, b.Sock, args...)
}

// Routes parses `birdc show route` into prefix → next hop of BIRD's best
// route.
func (b *BIRD) Routes(ctx context.Context) (map[netip.Prefix]netip.Addr, error) {
	text, err := b.CLI(ctx, "show", "route")
	if err != nil {
		return nil, err
	}
	return birdtest.Routes(text), nil
}

// Established returns the neighbor addresses of the BGP sessions BIRD has
// established.
func (b *BIRD) Established(ctx context.Context) ([]netip.Addr, error) {
	text, err := b.CLI(ctx, "show", "protocols", "all")
	if err != nil {
		return nil, err
	}
	return birdtest.EstablishedNeighbors(text)
}

// ProtoRoutes lists the routes (both families) of the main table in ns that carry the
// route protocol proto (e.g. 0x58 for weft's BGP routes), as prefix → next
// hop.
func ProtoRoutes(ns string, proto int) (map[netip.Prefix]netip.Addr, error) {
	out := map[netip.Prefix]netip.Addr{}
	err := withHandle(ns, func(h *netlink.Handle) error {
		rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: netlink.RouteProtocol(proto), Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes in %s: %w", ns, err)
		}
		for _, r := range rs {
			if r.Dst == nil {
				continue
			}
			p, ok := netipx(r.Dst)
			if !ok {
				continue
			}
			gw, _ := netip.AddrFromSlice(r.Gw)
			out[p] = gw.Unmap()
		}
		return nil
	})
	return out, err
}

func netipx(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

// CheckTCPPort connects from ns to dst:port and closes the connection; it
// fails when nothing accepts there.
func CheckTCPPort(ctx context.Context, ns string, dst netip.Addr, port uint16) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := dialIn(cctx, ns, "tcp", netip.AddrPortFrom(dst, port).String())
	if err != nil {
		return err
	}
	return conn.Close()
}
