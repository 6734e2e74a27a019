package testenv

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/weftnet/weft/testenv/netnstest"
)

// RoutePodsByRouter makes the network route the pod CIDRs of a running
// cluster that started without it, as the network of a gateway-mode user
// does (weft installs no per-node route; the network's router knows
// them): a router namespace on every segment, made unless the cluster has
// one, with forwarding on and a route to each node's pod CIDRs (from its
// subnet file) via the node, and on every node a route of its cluster
// CIDRs to the router of its segment. testenv/kube's clusters (Bare) get
// nothing of this at start; a test switches them to gateway mode after
// calling it. The returned function removes the routes and a router made
// here; Close removes that router too.
func (c *Cluster) RoutePodsByRouter() (remove func() error, err error) {
	made := false
	if c.RouterNS == "" {
		c.RouterNS = c.Prefix + "-rt"
		made = true
		if err := createNS(c.RouterNS); err != nil {
			return nil, err
		}
	}
	type viaRoute struct {
		ns  string
		dst netip.Prefix
	}
	var added []viaRoute
	remove = func() error {
		var errs []error
		for _, r := range added {
			errs = append(errs, DelRoute(r.ns, r.dst))
		}
		if made {
			errs = append(errs, deleteNS(c.RouterNS))
			c.RouterNS = ""
		}
		return errors.Join(errs...)
	}
	add := func(ns string, dst netip.Prefix, gw netip.Addr) error {
		if err := AddRoute(ns, dst, gw); err != nil {
			return err
		}
		added = append(added, viaRoute{ns, dst})
		return nil
	}
	err = func() error {
		if made {
			for s := 0; s < c.Opts.Segments; s++ {
				if err := c.plug(c.RouterNS, fmt.Sprintf("%s-r%d", c.Prefix, s), fmt.Sprintf("eth%d", s), s, c.routerAddrs(s)...); err != nil {
					return err
				}
			}
			if err := c.forwarding(c.RouterNS); err != nil {
				return err
			}
		}
		for _, n := range c.Nodes() {
			s, err := ReadSubnetEnv(n.SubnetFile)
			if err != nil {
				return err
			}
			for _, p := range s.PodCIDRs() {
				if err := add(c.RouterNS, p, n.Underlay(p.Addr().Is6())); err != nil {
					return err
				}
			}
			for _, network := range []netip.Prefix{s.Network, s.Network6} {
				if network.IsValid() {
					if err := add(n.NS, network.Masked(), routerOf(n.Segment, network.Addr().Is6())); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("route pods by a router: %w", err), remove())
	}
	return remove, nil
}

// Forwarded returns how many IPv4 packets namespace ns has forwarded
// (ForwDatagrams in its /proc/net/snmp), e.g. the router's.
func Forwarded(ns string) (uint64, error) {
	var b []byte
	err := InNS(ns, func() error {
		var err error
		// thread-self: /proc/self/net is the view of the process's
		// first thread, which is not in ns.
		b, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("forwarded packets in %s: %w", ns, err)
	}
	n, err := netnstest.SNMP(string(b), "Ip", "ForwDatagrams")
	if err != nil {
		return 0, fmt.Errorf("forwarded packets in %s: %w", ns, err)
	}
	return n, nil
}
