package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"time"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// What each backend needs from the network, and what testenv builds for
// it when the cluster starts in that mode (so `weft-testenv demo --backend
// X` works as a user first meets it):
//
//   - vxlan, geneve, hybrid: nothing; the overlay crosses any underlay.
//   - native: auto_direct_node_routes on (unless Options.Config sets it),
//     so adjacent nodes route each other's pod CIDRs; with two segments the
//     router also knows every pod CIDR and every node sends the cluster
//     CIDR to it, for the peers on the other segment.
//   - gateway: weft installs no per-node route; the router (on every
//     segment, also with one) holds a route per node's pod CIDR and every
//     node sends the cluster CIDR to it, as to a default gateway that
//     knows all routes.
//   - bgp: BIRD on the router with two segments, an iBGP full mesh with
//     one (see bird.go).
//   - geneve on a kernel without CONFIG_GENEVE: refused by CheckBackend
//     before anything starts.

// Backends are the backends testenv offers, in the order the demo lists
// them.
var Backends = []string{"vxlan", "geneve", "native", "hybrid", "gateway", "bgp", BackendKernel}

// ErrNoGeneve is CheckBackend's refusal of geneve on a kernel without it.
var ErrNoGeneve = errors.New("this kernel has no Geneve support (CONFIG_GENEVE)")

// CheckBackend says whether backend can run here before anything is built:
// an unknown name is refused, and geneve needs a kernel that can create a
// Geneve device (probed in a throwaway network namespace). It needs root
// for geneve.
func CheckBackend(backend string) error {
	if !slices.Contains(Backends, backend) {
		return fmt.Errorf("backend %q: want one of %s", backend, strings.Join(Backends, ", "))
	}
	if backend != "geneve" {
		return nil
	}
	ok, err := geneveInScratchNS()
	if err != nil {
		return err
	}
	if !ok {
		return ErrNoGeneve
	}
	return nil
}

// geneveInScratchNS tries to create a Geneve device in a new, unnamed
// network namespace that vanishes with the probe (nothing is left to
// clean up, the root namespace is never touched, no thread changes
// namespace).
func geneveInScratchNS() (bool, error) {
	scratch, err := cnins.TempNetNS()
	if err != nil {
		return false, fmt.Errorf("probe geneve: %w", err)
	}
	defer scratch.Close()
	h, err := netlink.NewHandleAt(netns.NsHandle(scratch.Fd()))
	if err != nil {
		return false, fmt.Errorf("probe geneve: %w", err)
	}
	defer h.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "geneveprobe"
	err = h.LinkAdd(&netlink.Geneve{LinkAttrs: attrs, FlowBased: true})
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOTSUP) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("probe geneve: %w", err)
	}
	return true, nil
}

// needsRouter reports whether the cluster has a router namespace: with
// two segments, and in gateway mode also with one.
func (c *Cluster) needsRouter() bool {
	return c.Opts.Segments == 2 || c.Opts.Backend == "gateway"
}

// networkRoutes reports whether the network (the router) routes pod
// CIDRs in this cluster: gateway mode always, native mode between
// segments.
func (c *Cluster) networkRoutes() bool {
	return c.Opts.Backend == "gateway" || (c.Opts.Backend == "native" && c.Opts.Segments == 2)
}

// pointAtRouter makes node n send the cluster CIDRs to the router of its
// segment (when the network routes pod CIDRs), each family to the
// router's address of that family.
func (c *Cluster) pointAtRouter(n *Node) error {
	if !c.networkRoutes() {
		return nil
	}
	for _, v6 := range c.families() {
		if err := route(n.NS, n.Iface, netip.MustParsePrefix(c.clusterCIDR(v6)), routerOf(n.Segment, v6)); err != nil {
			return err
		}
	}
	return nil
}

// routeOnRouter gives the router a route to each of node n's pod CIDRs
// (read from its subnet file) via the node's underlay address of that
// family, when the network routes pod CIDRs.
func (c *Cluster) routeOnRouter(n *Node) error {
	if !c.networkRoutes() {
		return nil
	}
	s, err := ReadSubnetEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	n.podCIDRs = s.PodCIDRs()
	for _, p := range n.podCIDRs {
		if err := AddRoute(c.RouterNS, p, n.Underlay(p.Addr().Is6())); err != nil {
			return err
		}
	}
	return nil
}

// unrouteOnRouter removes node n's pod CIDRs from the router.
func (c *Cluster) unrouteOnRouter(n *Node) error {
	if !c.networkRoutes() || c.RouterNS == "" {
		return nil
	}
	var errs []error
	for _, p := range n.podCIDRs {
		errs = append(errs, DelRoute(c.RouterNS, p))
	}
	return errors.Join(errs...)
}

// nativeDefaults turns auto_direct_node_routes on in a cluster that starts
// in native mode, unless the config says otherwise.
func (c *Cluster) nativeDefaults(cfg map[string]any) {
	if _, set := cfg["auto_direct_node_routes"]; !set && c.Opts.Backend == "native" {
		cfg["auto_direct_node_routes"] = true
	}
}

// Carrier says in one line what carries packets between the nodes of this
// cluster in the mode it started in.
func (c *Cluster) Carrier() string {
	router := func() string {
		var ips []string
		for s := 0; s < c.Opts.Segments; s++ {
			for _, a := range c.routerAddrs(s) {
				ips = append(ips, a.Addr().String())
			}
		}
		return "the router " + strings.Join(ips, "/")
	}
	cfg := map[string]any{}
	_ = json.Unmarshal([]byte("{"+c.Opts.Config+"}"), &cfg)
	switch c.Opts.Backend {
	case "vxlan":
		return "the VXLAN tunnel: each node's weft_vxlan device encapsulates towards the peer's underlay IP, the eBPF tunnel map picks the peer"
	case "geneve":
		return "the Geneve tunnel: each node's weft_geneve device encapsulates towards the peer's underlay IP, the eBPF tunnel map picks the peer"
	case "hybrid":
		if c.Opts.Segments == 2 {
			return "direct routes between nodes on the same segment, the VXLAN tunnel between segments"
		}
		return "direct routes (every node is on one segment; the VXLAN tunnel would carry peers on other segments)"
	case "native":
		if on, _ := cfg["auto_direct_node_routes"].(bool); !on && cfg["auto_direct_node_routes"] != nil {
			return "nothing of weft's: auto_direct_node_routes is off, so the network must route every pod CIDR (and here it does not)"
		}
		if c.Opts.Segments == 2 {
			return "direct routes (auto_direct_node_routes) between nodes on the same segment; between segments " + router() + ", which holds a route per node's pod CIDR"
		}
		return "direct routes via each peer's underlay IP (auto_direct_node_routes; every node is on one segment)"
	case "gateway":
		return "the gateway: every node sends the cluster CIDR to " + router() + ", which holds a route per node's pod CIDR; weft installs no per-node route"
	case "bgp":
		if _, custom := cfg["bgp"]; custom {
			return "BGP routes learned from the configured peers"
		}
		if c.Opts.Segments == 2 {
			return fmt.Sprintf("BGP routes learned from the router (BIRD, AS %d), which learns every node's pod CIDR from its agent", RouterASN)
		}
		return "BGP routes learned from the other nodes (iBGP full mesh; with --segments 2, from a BIRD router)"
	case BackendKernel:
		return "plain kernel routes written by testenv (no weft)"
	}
	return "backend " + c.Opts.Backend
}

// Reachable reports whether every running agent reports every other node
// reachable through its datapath; the reason names what is missing: each
// unreachable peer with the agent's reason, and agents without a verdict
// on every peer yet.
func (c *Cluster) Reachable(ctx context.Context) (bool, string, error) {
	unreachable, pending, err := c.reachability(ctx)
	if err != nil {
		return false, "", err
	}
	why := append(unreachable, pending...)
	return len(why) == 0, strings.Join(why, "; "), nil
}

func (c *Cluster) reachability(ctx context.Context) (unreachable, pending []string, err error) {
	nodes := c.Nodes()
	for _, n := range nodes {
		if n.Agent == nil || !n.Agent.Running() {
			continue
		}
		st, err := c.Status(ctx, n.Name)
		if err != nil {
			return nil, nil, err
		}
		if st == nil {
			pending = append(pending, n.Name+" has no status")
			continue
		}
		// One entry per family a peer fails in; verdicts count peers.
		failing := map[string]bool{}
		for _, u := range st.GetUnreachablePeers() {
			unreachable = append(unreachable, fmt.Sprintf("%s cannot reach %s (%s): %s", n.Name, u.GetNode(), u.GetAddress(), u.GetReason()))
			failing[u.GetNode()] = true
		}
		verdicts, want := int(st.GetReachablePeers())+len(failing), len(nodes)-1
		if verdicts < want {
			pending = append(pending, fmt.Sprintf("%s has a verdict on %d of %d peers so far", n.Name, verdicts, want))
		}
	}
	return unreachable, pending, nil
}

// WaitReachable waits until every agent reaches every peer (nil), or
// until every agent has a verdict on every peer and some are unreachable
// (the error names them), or d passes.
func (c *Cluster) WaitReachable(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		unreachable, pending, err := c.reachability(ctx)
		why := ""
		switch {
		case err != nil:
			why = err.Error()
		case len(unreachable) == 0 && len(pending) == 0:
			return nil
		case len(pending) == 0:
			return fmt.Errorf("peers unreachable: %s", strings.Join(unreachable, "; "))
		default:
			why = strings.Join(append(unreachable, pending...), "; ")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for reachability: %s", why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
