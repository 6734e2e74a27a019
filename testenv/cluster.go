// Package testenv builds real weft clusters on one Linux machine out of
// network namespaces: an underlay (one L2 segment, or two joined by a
// router), a control namespace running etcd and weft-controller, node
// namespaces each running a real weft-agent process, and pod namespaces
// behind every node. Everything it creates carries a per-run prefix and is
// removed by Close; Down removes the leftovers of a crashed run.
//
// It needs root. Addresses exist only inside the namespaces it creates;
// the root namespace gets no address and no link (the test process reaches
// etcd over a unix socket in the run directory).
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/etcdauth"
	"github.com/weftnet/weft/testenv/netnstest"
)

// Etcd modes.
const (
	EtcdEmbedded = "embedded" // etcd embedded in the (single) controller
	EtcdExternal = "external" // N weft-testenv etcd-member processes
)

// BackendKernel is a testenv-only backend: no weft at all; testenv writes
// each node's subnet file and plain kernel routes itself. It proves the
// framework and is the baseline for benchmarks.
const BackendKernel = "kernel"

// Address plan (only inside the run's namespaces): underlay segment s is
// 10.99.s.0/24, node i has 10.99.s.(i+1), the control namespace
// 10.99.0.250 and the router 10.99.s.254. Pods get the cluster CIDR
// (10.244.0.0/16 unless set).
const (
	ctlIP         = "10.99.0.250"
	underlayBits  = 24
	defaultPodNet = "10.244.0.0/16"
	weftPrefix    = "/weft"
)

func segmentNet(s int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(s), 0}), underlayBits)
}

func routerIP(s int) netip.Addr { return netip.AddrFrom4([4]byte{10, 99, byte(s), 254}) }

// Options describe a cluster. Zero values take the documented defaults.
type Options struct {
	Prefix        string        // per-run prefix; default "wt" + 4 random hex digits (interface names are ≤ 15 chars)
	Nodes         int           // default 3
	PodsPerNode   int           // default 2
	Backend       string        // vxlan (default), geneve, native, hybrid, gateway, bgp, or BackendKernel
	Segments      int           // 1 (default): one L2 underlay; 2: two segments joined by a router namespace
	Etcd          string        // EtcdEmbedded (default) or EtcdExternal
	EtcdMembers   int           // members of the external etcd, default 3
	Controllers   int           // weft-controller processes, 1..3; more than 1 needs EtcdExternal
	BinDir        string        // directory holding weft-controller, weft-agent, weftctl, weft-testenv
	IPFamily      string        // FamilyIPv4 (default), FamilyIPv6 or FamilyDual (see family.go)
	ClusterCIDR   string        // default 10.244.0.0/16 (ipv4 and dual)
	ClusterCIDRv6 string        // default fd00:10:244::/56 (ipv6 and dual)
	NodeGrace     int           // node_grace_seconds in the cluster config; 0 = controller default
	LeaseTTL      int           // agent --lease-ttl seconds; 0 = agent default
	ElectionTTL   int           // controller --election-ttl seconds; 0 = controller default
	Reconcile     string        // agent --reconcile-interval; "" = agent default
	ProbeGrace    time.Duration // agent --probe-grace; 0 = agent default
	AgentArgs     []string      // appended to every weft-agent's arguments, e.g. --host-routing=stack
	Config        string        // extra ClusterConfig JSON fields merged into the controller's config file, e.g. `"mtu": 1400`
	Attacher      PodAttacher   // default: CNIAttacher when BinDir has weft-cni, else NetlinkAttacher
	LogLevel      string        // weft processes' --log-level, default debug
	Logger        hclog.Logger

	// Bare builds the underlay, the control namespace with the external
	// etcd, and the node namespaces only: no controller, no agents, no
	// pods. testenv/kube runs weft on top of it through Kubernetes.
	Bare bool
	// EtcdTLS, when set, makes the external etcd serve its TCP client URL
	// over TLS with client certificates (NodeEndpoints are then https).
	EtcdTLS *EtcdTLS
	// Prepare, when set, runs once the run directory exists and before
	// anything starts (e.g. to write EtcdTLS's files into it).
	Prepare func(runDir string) error
	// Secure runs etcd (embedded or external) with TLS on every client
	// URL, client certificates required and etcd auth on, and gives every
	// process its own certificate: the agent of each node its node's etcd
	// user, the controller the controller's, Weftctl the operator's,
	// Client root's (see secure.go and docs/testenv.md).
	Secure bool
}

// EtcdTLS is the server side of the external etcd's TLS.
type EtcdTLS struct {
	CertFile, KeyFile string // the members' serving certificate
	CAFile            string // CA of the client certificates
}

// Cluster is a running test cluster.
type Cluster struct {
	Opts   Options
	Prefix string
	RunDir string // holds logs, pidfiles, data dirs, subnet files, the etcd sockets

	UnderlayNS string // bridges of the underlay segments
	CtlNS      string // etcd and controllers
	RouterNS   string // "" unless Segments == 2

	Controllers []*Proc
	Etcd        []*Proc // external members; empty in embedded mode

	log hclog.Logger
	pki *securePKI // nil unless Opts.Secure

	mu    sync.Mutex
	nodes []*Node // index = node number; removed nodes stay as nil
}

// Node is one node namespace with its agent and pods.
type Node struct {
	Index      int
	Name       string // node name = namespace name, e.g. wt1a2b-n0
	NS         string
	Segment    int
	UnderlayIP netip.Addr // the agent's underlay_ip: IPv4, or IPv6 in an IPv6 cluster
	// UnderlayIP6 is the node's IPv6 underlay address (dual and IPv6
	// clusters; in an IPv6 cluster it equals UnderlayIP).
	UnderlayIP6 netip.Addr
	Iface       string // underlay interface inside NS
	BPFDir      string // --bpffs-dir
	SubnetFile  string // --subnet-file
	Agent       *Proc  // nil with BackendKernel
	Pods        []*Pod
	podCIDRs    []netip.Prefix // routed by the router when the network routes pod CIDRs
}

// Pod is a pod namespace attached to a node.
type Pod struct {
	Name string // = namespace name, e.g. wt1a2b-n0-p1
	NS   string
	Node *Node
	// Addr is the pod's first address (IPv4 unless the cluster is
	// IPv6-only); Addrs has one per family, IPv4 first.
	Addr  netip.Addr
	Addrs []netip.Addr
	echo  *Echo
}

// Target returns the pod as a connectivity-check endpoint.
func (p *Pod) Target() Target {
	return Target{Name: p.Name, NS: p.NS, Addr: p.Addr, Addrs: slices.Clone(p.Addrs)}
}

// MetricsAddr is where every agent serves metrics and health, inside its
// node namespace.
const MetricsAddr = "127.0.0.1:9471"

// NewPrefix returns a fresh run prefix "wt" + 4 hex digits.
func NewPrefix() string {
	b := make([]byte, 2)
	rand.Read(b)
	return "wt" + hex.EncodeToString(b)
}

func (o *Options) defaults() error {
	if o.Prefix == "" {
		o.Prefix = NewPrefix()
	}
	if len(o.Prefix) > 7 {
		return fmt.Errorf("prefix %q is longer than 7 characters (interface names must stay within 15)", o.Prefix)
	}
	// A negative count would build an empty cluster whose checks all
	// pass (nothing to reach): refused, naming the option.
	for _, f := range []struct {
		name string
		n    int
	}{{"nodes", o.Nodes}, {"pods per node", o.PodsPerNode}, {"segments", o.Segments}, {"controllers", o.Controllers}, {"etcd members", o.EtcdMembers}} {
		if f.n < 0 {
			return fmt.Errorf("%s %d: negative", f.name, f.n)
		}
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.PodsPerNode == 0 {
		o.PodsPerNode = 2
	}
	if o.Backend == "" {
		o.Backend = "vxlan"
	}
	if o.Segments == 0 {
		o.Segments = 1
	}
	if o.Segments > 2 {
		return fmt.Errorf("segments %d: only 1 or 2 are supported", o.Segments)
	}
	if o.Etcd == "" {
		o.Etcd = EtcdEmbedded
	}
	if o.Etcd != EtcdEmbedded && o.Etcd != EtcdExternal {
		return fmt.Errorf("etcd mode %q: want %s or %s", o.Etcd, EtcdEmbedded, EtcdExternal)
	}
	if o.EtcdMembers == 0 {
		o.EtcdMembers = 3
	}
	if o.Controllers == 0 {
		o.Controllers = 1
	}
	if o.Controllers > 1 && o.Etcd == EtcdEmbedded {
		return fmt.Errorf("%d controllers need an external etcd (the embedded one lives in a controller)", o.Controllers)
	}
	if o.IPFamily == "" {
		o.IPFamily = FamilyIPv4
	}
	if err := checkFamily(o.IPFamily); err != nil {
		return err
	}
	if o.ClusterCIDR == "" {
		o.ClusterCIDR = defaultPodNet
	}
	if o.ClusterCIDRv6 == "" {
		o.ClusterCIDRv6 = defaultPodNet6
	}
	if o.Bare && o.IPFamily != FamilyIPv4 {
		return fmt.Errorf("ip family %s: the Kubernetes test cluster (Bare) is IPv4 only", o.IPFamily)
	}
	if o.Attacher == nil {
		// Pods are attached the way a container runtime attaches them: by
		// running weft-cni through libcni, so every cluster test exercises
		// the plugin. Kernel-only clusters have no weft binaries.
		o.Attacher = NetlinkAttacher{}
		if o.Backend != BackendKernel {
			if _, err := os.Stat(filepath.Join(o.BinDir, "weft-cni")); err == nil {
				o.Attacher = NewCNIAttacher(o.BinDir)
			}
		}
	}
	if o.LogLevel == "" {
		o.LogLevel = "debug"
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Secure && (o.EtcdTLS != nil || o.Backend == BackendKernel) {
		return errors.New("Secure makes its own etcd TLS and needs weft (not EtcdTLS, not the kernel backend)")
	}
	if o.Bare && o.Etcd != EtcdExternal {
		return errors.New("a bare cluster runs only an external etcd (Etcd: EtcdExternal)")
	}
	if o.Bare {
		if _, err := os.Stat(filepath.Join(o.BinDir, "weft-testenv")); err != nil {
			return fmt.Errorf("find weft-testenv in BinDir %q: %w", o.BinDir, err)
		}
	} else if o.Backend != BackendKernel {
		// weft-bgp: the agents find it beside weft-agent.
		for _, b := range []string{"weft-controller", "weft-agent", "weft-bgp", "weftctl"} {
			if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
				return fmt.Errorf("find %s in BinDir %q: %w", b, o.BinDir, err)
			}
		}
		if o.Etcd == EtcdExternal {
			if _, err := os.Stat(filepath.Join(o.BinDir, "weft-testenv")); err != nil {
				return fmt.Errorf("find weft-testenv in BinDir %q: %w", o.BinDir, err)
			}
		}
	}
	return nil
}

// RunDirOf is the run directory of a prefix.
func RunDirOf(prefix string) string {
	return filepath.Join(os.TempDir(), "weft-testenv-"+prefix)
}

// New builds and starts a cluster and returns once every node has its
// lease (subnet file) and every pod is attached with its echo server
// running. On error everything already made is removed.
func New(ctx context.Context, o Options) (*Cluster, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("testenv needs root (network namespaces, bpffs, weft-agent)")
	}
	if err := o.defaults(); err != nil {
		return nil, fmt.Errorf("testenv options: %w", err)
	}
	if err := CheckBackend(o.Backend); err != nil {
		return nil, err
	}
	if err := EnsureBPFFS(); err != nil {
		return nil, err
	}
	c := &Cluster{
		Opts:       o,
		Prefix:     o.Prefix,
		RunDir:     RunDirOf(o.Prefix),
		UnderlayNS: o.Prefix + "-ul",
		CtlNS:      o.Prefix + "-ctl",
		log:        o.Logger.Named("testenv"),
	}
	if err := os.Mkdir(c.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("make run dir: %w", err)
	}
	for _, d := range []string{"pids", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.RunDir, d), 0o755); err != nil {
			c.Close()
			return nil, fmt.Errorf("make run dir: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(c.RunDir, ownerFile), []byte(procIDOf(os.Getpid()).String()), 0o644); err != nil {
		c.Close()
		return nil, fmt.Errorf("make run dir: %w", err)
	}
	if o.Prepare != nil {
		if err := o.Prepare(c.RunDir); err != nil {
			c.Close()
			return nil, err
		}
	}
	if o.Secure {
		if err := c.makePKI(); err != nil {
			c.Close()
			return nil, fmt.Errorf("make certificates: %w", err)
		}
		c.Opts.EtcdTLS = &EtcdTLS{CertFile: c.pki.server.Cert, KeyFile: c.pki.server.Key, CAFile: c.pki.CAFile}
	}
	if err := c.start(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context) error {
	if err := c.buildUnderlay(); err != nil {
		return err
	}
	if c.Opts.Backend != BackendKernel {
		if err := c.startControl(ctx); err != nil {
			return err
		}
	}
	for i := 0; i < c.Opts.Nodes; i++ {
		if _, err := c.addNode(ctx, false); err != nil {
			return err
		}
	}
	if c.Opts.Bare {
		return nil
	}
	if c.Opts.Backend == BackendKernel {
		if err := c.kernelRoutes(); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes() {
		if err := c.attachPods(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// buildUnderlay makes the underlay namespace with one bridge per segment,
// the control namespace on segment 0 and, with two segments, the router.
func (c *Cluster) buildUnderlay() error {
	if err := createNS(c.UnderlayNS); err != nil {
		return err
	}
	for s := 0; s < c.Opts.Segments; s++ {
		if err := withNS(c.UnderlayNS, func(n *netnstest.NS) error { return n.Bridge(c.bridgeName(s)) }); err != nil {
			return err
		}
	}
	if c.Opts.Backend != BackendKernel {
		if err := createNS(c.CtlNS); err != nil {
			return err
		}
		if err := c.plug(c.CtlNS, c.Prefix+"-c", "eth0", 0, c.ctlAddrs()...); err != nil {
			return err
		}
		if c.Opts.Segments == 2 {
			if err := c.routeVia(c.CtlNS, "eth0", 0); err != nil {
				return err
			}
		}
	}
	if c.needsRouter() {
		c.RouterNS = c.Prefix + "-rt"
		if err := createNS(c.RouterNS); err != nil {
			return err
		}
		for s := 0; s < c.Opts.Segments; s++ {
			if err := c.plug(c.RouterNS, fmt.Sprintf("%s-r%d", c.Prefix, s), fmt.Sprintf("eth%d", s), s,
				c.routerAddrs(s)...); err != nil {
				return err
			}
		}
		if err := c.forwarding(c.RouterNS); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) bridgeName(s int) string { return fmt.Sprintf("%s-b%d", c.Prefix, s) }

// forwarding turns on forwarding in ns for the cluster's families.
func (c *Cluster) forwarding(ns string) error {
	if c.IPv4() {
		if err := sysctl(ns, "net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
	}
	if c.IPv6() {
		if err := sysctl(ns, "net.ipv6.conf.all.forwarding", "1"); err != nil {
			return err
		}
	}
	return nil
}

// plug connects namespace ns to underlay segment seg by a veth (ulName on
// the bridge side, inName inside ns) and gives the inner end addrs.
func (c *Cluster) plug(ns, ulName, inName string, seg int, addrs ...netip.Prefix) error {
	return withNS(c.UnderlayNS, func(ul *netnstest.NS) error {
		return withNS(ns, func(n *netnstest.NS) error {
			if err := ul.Veth(ulName, n, inName); err != nil {
				return err
			}
			if err := ul.Master(ulName, c.bridgeName(seg)); err != nil {
				return err
			}
			if err := ul.Up(ulName); err != nil {
				return err
			}
			if err := n.Addr(inName, addrs...); err != nil {
				return err
			}
			return n.Up(inName)
		})
	})
}

// routeVia routes the whole underlay range (10.99.0.0/16, fd99::/16)
// through the router on segment seg: with two segments, nodes reach the
// other segment that way and nothing else (no default route, so nothing
// leaves the run's namespaces).
func (c *Cluster) routeVia(ns, dev string, seg int) error {
	if c.IPv4() {
		if err := route(ns, dev, underlayNet4, routerIP(seg)); err != nil {
			return err
		}
	}
	if c.IPv6() {
		return route(ns, dev, underlayNet6, routerIP6(seg))
	}
	return nil
}

// route routes dst via gw out of dev in the named namespace.
func route(ns, dev string, dst netip.Prefix, gw netip.Addr) error {
	return withNS(ns, func(n *netnstest.NS) error { return n.Route(dev, dst, gw) })
}

// Nodes returns the live nodes in index order.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Node
	for _, n := range c.nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// Node returns node i, or nil if it was removed or never existed.
func (c *Cluster) Node(i int) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.nodes) {
		return nil
	}
	return c.nodes[i]
}

// Pods returns every pod of every live node.
func (c *Cluster) Pods() []*Pod {
	var out []*Pod
	for _, n := range c.Nodes() {
		out = append(out, n.Pods...)
	}
	return out
}

// Targets returns every pod as a check target.
func (c *Cluster) Targets() []Target {
	var out []Target
	for _, p := range c.Pods() {
		out = append(out, p.Target())
	}
	return out
}

// CrossNode is a skip function for CheckAll that keeps only pairs of pods
// on different nodes.
func (c *Cluster) CrossNode() func(from, to Target) bool {
	node := map[string]string{}
	for _, p := range c.Pods() {
		node[p.NS] = p.Node.Name
	}
	return func(from, to Target) bool { return node[from.NS] == node[to.NS] }
}

// AddNode adds one node (namespace, agent, pods) to the running cluster and
// returns once its pods are attached.
func (c *Cluster) AddNode(ctx context.Context) (*Node, error) {
	return c.addNode(ctx, true)
}

// StartNode adds one node (namespace, agent) to the running cluster and
// returns as soon as its agent process is started: it waits neither for
// the node's lease nor attaches pods. Benchmarks time the join from there
// (Node.Agent.Started).
func (c *Cluster) StartNode(ctx context.Context) (*Node, error) {
	return c.addNode(ctx, false)
}

func (c *Cluster) addNode(ctx context.Context, withPods bool) (*Node, error) {
	c.mu.Lock()
	i := len(c.nodes)
	c.nodes = append(c.nodes, nil)
	c.mu.Unlock()
	if i > 200 {
		return nil, fmt.Errorf("add node %d: the underlay plan has room for 200 nodes", i)
	}
	seg := 0
	if c.Opts.Segments == 2 {
		seg = i % 2
	}
	name := fmt.Sprintf("%s-n%d", c.Prefix, i)
	n := &Node{
		Index:      i,
		Name:       name,
		NS:         name,
		Segment:    seg,
		Iface:      "eth0",
		BPFDir:     filepath.Join("/sys/fs/bpf", name),
		SubnetFile: filepath.Join(c.RunDir, fmt.Sprintf("n%d", i), "subnet.env"),
	}
	var addrs []netip.Prefix
	if c.IPv4() {
		n.UnderlayIP = netip.AddrFrom4([4]byte{10, 99, byte(seg), byte(i + 1)})
		addrs = append(addrs, netip.PrefixFrom(n.UnderlayIP, underlayBits))
	}
	if c.IPv6() {
		n.UnderlayIP6 = addr6(seg, i+1)
		addrs = append(addrs, netip.PrefixFrom(n.UnderlayIP6, underlayBits6))
		if !c.IPv4() {
			n.UnderlayIP = n.UnderlayIP6
		}
	}
	if err := os.MkdirAll(filepath.Dir(n.SubnetFile), 0o755); err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	if err := createNS(n.NS); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.nodes[i] = n
	c.mu.Unlock()
	if err := c.plug(n.NS, name, n.Iface, seg, addrs...); err != nil {
		return nil, err
	}
	if c.Opts.Segments == 2 {
		if err := c.routeVia(n.NS, n.Iface, seg); err != nil {
			return nil, err
		}
	}
	if err := c.pointAtRouter(n); err != nil {
		return nil, err
	}
	if c.Opts.Bare {
		return n, nil
	}
	if c.Opts.Backend == BackendKernel {
		// The subnet file an agent would write: the i+1st /24 of the
		// IPv4 cluster CIDR and /64 of the IPv6 one.
		env := SubnetEnv{MTU: 1500, Backend: BackendKernel}
		if c.IPv4() {
			net4 := netip.MustParsePrefix(c.Opts.ClusterCIDR)
			b := net4.Addr().As4()
			b[2], b[3] = byte(i+1), 1
			env.Network, env.Subnet = net4, netip.PrefixFrom(netip.AddrFrom4(b), 24)
		}
		if c.IPv6() {
			net6 := netip.MustParsePrefix(c.Opts.ClusterCIDRv6)
			b := net6.Addr().As16()
			b[7], b[15] = byte(i+1), 1
			env.Network6, env.Subnet6 = net6, netip.PrefixFrom(netip.AddrFrom16(b), 64)
		}
		if err := WriteSubnetEnv(n.SubnetFile, env); err != nil {
			return nil, err
		}
		if err := c.forwarding(n.NS); err != nil {
			return nil, err
		}
	} else {
		if c.pki != nil {
			if err := c.addNodeIdentity(ctx, n); err != nil {
				return nil, err
			}
		}
		n.Agent = c.newProc("agent-"+fmt.Sprint(i), n.NS, c.agentArgs(n))
		if err := n.Agent.start(); err != nil {
			return nil, err
		}
		c.log.Info("agent started", "node", name, "pid", n.Agent.PID())
	}
	if withPods {
		if c.Opts.Backend == BackendKernel {
			if err := c.kernelRoutes(); err != nil {
				return nil, err
			}
		}
		if err := c.attachPods(ctx, n); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// attachPods waits for the node's subnet file and attaches its pods.
func (c *Cluster) attachPods(ctx context.Context, n *Node) error {
	if err := c.WaitSubnetFile(ctx, n, 90*time.Second); err != nil {
		return err
	}
	if err := c.routeOnRouter(n); err != nil {
		return err
	}
	for j := 0; j < c.Opts.PodsPerNode; j++ {
		if _, err := c.attachPod(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// AddPod attaches one more pod to node n (its next pod number) with the
// node's lease as it is now: after an IPv6 cluster CIDR was added, a new
// pod gets an address of each family. It returns once the pod's echo
// server runs.
func (c *Cluster) AddPod(ctx context.Context, n *Node) (*Pod, error) {
	if _, err := ReadSubnetEnv(n.SubnetFile); err != nil {
		return nil, err
	}
	return c.attachPod(ctx, n)
}

func (c *Cluster) attachPod(ctx context.Context, n *Node) (*Pod, error) {
	name := fmt.Sprintf("%s-p%d", n.Name, len(n.Pods))
	if err := createNS(name); err != nil {
		return nil, err
	}
	p := &Pod{Name: name, NS: name, Node: n}
	n.Pods = append(n.Pods, p)
	addrs, err := c.Opts.Attacher.Attach(ctx, n.NS, p.NS, p.Name, n.SubnetFile)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("attach %s: no address", p.Name)
	}
	p.Addr, p.Addrs = addrs[0], addrs
	if p.echo, err = StartEcho(p.NS); err != nil {
		return nil, err
	}
	return p, nil
}

// WaitSubnetFile waits until the node's agent has written its subnet file.
func (c *Cluster) WaitSubnetFile(ctx context.Context, n *Node, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := ReadSubnetEnv(n.SubnetFile)
		if err == nil {
			return nil
		}
		if n.Agent != nil && !n.Agent.Running() {
			return fmt.Errorf("wait for subnet file of %s: agent exited (log %s)", n.Name, n.Agent.Log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for subnet file of %s: %w", n.Name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kernelRoutes installs plain routes between nodes (BackendKernel): each
// node routes every other node's pod CIDRs via that node's underlay
// address of their family, and with two segments via the router, which
// knows every pod CIDR.
func (c *Cluster) kernelRoutes() error {
	nodes := c.Nodes()
	lease := map[*Node][]netip.Prefix{}
	for _, n := range nodes {
		s, err := ReadSubnetEnv(n.SubnetFile)
		if err != nil {
			return err
		}
		lease[n] = s.PodCIDRs()
	}
	for _, n := range nodes {
		for _, m := range nodes {
			if n == m {
				continue
			}
			for _, p := range lease[m] {
				v6 := p.Addr().Is6()
				gw := m.Underlay(v6)
				if n.Segment != m.Segment {
					gw = routerOf(n.Segment, v6)
				}
				if err := route(n.NS, n.Iface, p, gw); err != nil {
					return err
				}
			}
		}
		if c.RouterNS != "" {
			for _, p := range lease[n] {
				if err := route(c.RouterNS, fmt.Sprintf("eth%d", n.Segment), p, n.Underlay(p.Addr().Is6())); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// RemoveNode takes node i out of the cluster the hard way, as a machine
// that goes away: its agent is killed, its pods and namespace deleted and
// its pins removed. The controller notices after the lease and grace;
// with auth on, `weftctl auth remove-node` deletes its registration at
// once and only the grace is left.
func (c *Cluster) RemoveNode(ctx context.Context, i int) error {
	c.mu.Lock()
	if i < 0 || i >= len(c.nodes) || c.nodes[i] == nil {
		c.mu.Unlock()
		return fmt.Errorf("remove node %d: no such node", i)
	}
	n := c.nodes[i]
	c.nodes[i] = nil
	c.mu.Unlock()
	err := c.destroyNode(ctx, n)
	if c.pki != nil && n.Agent != nil {
		// Decommissioned: its certificate opens nothing any more.
		if _, aerr := c.WeftctlAs(ctx, etcdauth.Root, "auth", "remove-node", n.Name); aerr != nil {
			err = errors.Join(err, aerr)
		}
	}
	return err
}

func (c *Cluster) destroyNode(ctx context.Context, n *Node) error {
	var errs []error
	if n.Agent != nil {
		errs = append(errs, n.Agent.Kill())
	}
	errs = append(errs, c.unrouteOnRouter(n))
	for _, p := range n.Pods {
		if p.echo != nil {
			p.echo.Close()
		}
		if len(p.Addrs) > 0 {
			errs = append(errs, c.Opts.Attacher.Detach(ctx, n.NS, p.NS, p.Name, n.SubnetFile))
		}
		errs = append(errs, deleteNS(p.NS))
	}
	errs = append(errs, deleteNS(n.NS))
	if err := os.RemoveAll(n.BPFDir); err != nil {
		errs = append(errs, fmt.Errorf("remove pins of %s: %w", n.Name, err))
	}
	return errors.Join(errs...)
}

// Kill sends sig to node i's agent (e.g. SIGKILL) and, for SIGKILL and
// SIGTERM, waits for it to end.
func (c *Cluster) Kill(i int, sig syscall.Signal) error {
	n := c.Node(i)
	if n == nil || n.Agent == nil {
		return fmt.Errorf("kill agent %d: no such agent", i)
	}
	if err := n.Agent.Signal(sig); err != nil {
		return err
	}
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM {
		if !n.Agent.Wait(15 * time.Second) {
			return fmt.Errorf("kill agent %d: still running after %v", i, sig)
		}
	}
	return nil
}

// RestartAgent starts node i's agent again (stopping it first with SIGTERM
// if it still runs).
func (c *Cluster) RestartAgent(i int) error {
	n := c.Node(i)
	if n == nil || n.Agent == nil {
		return fmt.Errorf("restart agent %d: no such agent", i)
	}
	if n.Agent.Running() {
		if err := n.Agent.Stop(10 * time.Second); err != nil {
			return err
		}
	}
	return n.Agent.start()
}

// NewProc describes a process that runs in namespace ns with its log and
// pidfile in the run directory (so Down finds it by PID after a crash);
// Start starts it. The caller stops it.
func (c *Cluster) NewProc(name, ns string, args []string) *Proc { return c.newProc(name, ns, args) }

func (c *Cluster) newProc(name, ns string, args []string) *Proc {
	return &Proc{
		Name:    name,
		NS:      ns,
		Args:    args,
		Log:     filepath.Join(c.RunDir, "logs", name+".log"),
		pidfile: filepath.Join(c.RunDir, "pids", name+".pid"),
	}
}

// Close stops every process and removes every namespace, link, pin and the
// run directory. It is safe to call more than once.
func (c *Cluster) Close() error {
	var errs []error
	c.mu.Lock()
	nodes := c.nodes
	c.nodes = nil
	c.mu.Unlock()
	// Agents first (they must not see etcd vanish and report it), then the
	// controllers, then etcd.
	for _, n := range nodes {
		if n != nil && n.Agent != nil {
			errs = append(errs, n.Agent.Stop(5*time.Second))
		}
	}
	// The router's BGP daemon after the agents (their sessions end with
	// them), before the namespaces go.
	errs = append(errs, c.StopBIRD())
	for _, p := range c.Controllers {
		errs = append(errs, p.Stop(5*time.Second))
	}
	for _, p := range c.Etcd {
		errs = append(errs, p.Stop(5*time.Second))
	}
	for _, n := range nodes {
		if n != nil {
			errs = append(errs, c.destroyNode(context.Background(), n))
		}
	}
	for _, ns := range []string{c.RouterNS, c.CtlNS, c.UnderlayNS} {
		if ns != "" {
			errs = append(errs, deleteNS(ns))
		}
	}
	// Leftovers of nodes removed earlier, and anything else of this run.
	errs = append(errs, Down(c.Prefix))
	return errors.Join(errs...)
}

// Leftovers lists everything on the machine that carries prefix: named
// namespaces, links in the root namespace, bpffs pins, live processes
// recorded in the run's pidfiles and the run directory. Empty means clean.
func Leftovers(prefix string) []string {
	var out []string
	if nss, err := listNS(prefix + "-"); err == nil {
		for _, ns := range nss {
			out = append(out, "netns "+ns)
		}
	} else {
		out = append(out, err.Error())
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, prefix) {
				out = append(out, "link "+l.Attrs().Name)
			}
		}
	}
	if pins, _ := filepath.Glob(filepath.Join("/sys/fs/bpf", prefix+"-*")); len(pins) > 0 {
		for _, p := range pins {
			out = append(out, "bpffs "+p)
		}
	}
	dir := RunDirOf(prefix)
	for file, id := range pidfilesIn(filepath.Join(dir, "pids")) {
		if id.alive() {
			out = append(out, fmt.Sprintf("process %d (%s): %s", id.pid, file, cmdlineOf(id.pid)))
		}
	}
	if _, err := os.Stat(dir); err == nil {
		out = append(out, "dir "+dir)
	}
	return out
}

// ownerFile in a run directory records the process that owns the run
// (a procID).
const ownerFile = "owner"

// ownerAlive reports whether the run in dir belongs to another process
// that is still running (the same PID with the same start time).
func ownerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return false
	}
	id, ok := parseProcID(string(b))
	return ok && id.pid != os.Getpid() && id.alive()
}

// Down removes the leftovers of runs whose prefix starts with pattern
// (e.g. "wt" for every run, "wt1a2b" for one): processes recorded in their
// pidfiles (only if PID and start time still match, so a recycled PID is
// never touched), named namespaces, bpffs pins and run
// directories. It never matches processes by name, and it leaves alone
// runs whose owning process is still alive (another test or `weft-testenv
// up` using them); use DownForce for those.
func Down(pattern string) error { return down(pattern, false) }

// DownForce is Down including runs whose owner is still alive.
func DownForce(pattern string) error { return down(pattern, true) }

func down(pattern string, force bool) error {
	var errs []error
	prefixes := map[string]bool{}
	dirs, _ := filepath.Glob(RunDirOf(pattern) + "*")
	for _, d := range dirs {
		prefixes[strings.TrimPrefix(filepath.Base(d), "weft-testenv-")] = true
	}
	nss, err := listNS(pattern)
	if err != nil {
		errs = append(errs, err)
	}
	for _, ns := range nss {
		if p, ok := runPrefixOf(ns); ok {
			prefixes[p] = true
		}
	}
	pins, _ := filepath.Glob(filepath.Join("/sys/fs/bpf", pattern+"*"))
	for _, pin := range pins {
		if p, ok := runPrefixOf(filepath.Base(pin)); ok {
			prefixes[p] = true
		}
	}
	for prefix := range prefixes {
		if !isRunPrefix(prefix) {
			continue
		}
		dir := RunDirOf(prefix)
		if !force && ownerAlive(dir) {
			continue
		}
		for _, id := range pidfilesIn(filepath.Join(dir, "pids")) {
			if id.alive() {
				if err := syscall.Kill(id.pid, syscall.SIGKILL); err == nil {
					waitGone(id, 10*time.Second)
				}
			}
		}
		mine, _ := listNS(prefix + "-")
		for _, ns := range mine {
			if _, ok := runPrefixOf(ns); ok {
				errs = append(errs, deleteNS(ns))
			}
		}
		pins, _ := filepath.Glob(filepath.Join("/sys/fs/bpf", prefix+"-*"))
		for _, p := range pins {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// isRunPrefix reports whether p looks like a prefix testenv makes: at most
// 7 characters of [a-z0-9], starting with a letter.
func isRunPrefix(p string) bool {
	if p == "" || len(p) > 7 || p[0] < 'a' || p[0] > 'z' {
		return false
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// runPrefixOf extracts the run prefix of a name testenv gives namespaces
// and pins: <prefix>-(ul|ctl|rt|n<i>|n<i>-p<j>).
func runPrefixOf(name string) (string, bool) {
	prefix, rest, ok := strings.Cut(name, "-")
	if !ok || !isRunPrefix(prefix) {
		return "", false
	}
	switch rest {
	case "ul", "ctl", "rt":
		return prefix, true
	}
	node, pod, hasPod := strings.Cut(rest, "-")
	if !strings.HasPrefix(node, "n") || !isNum(node[1:]) {
		return "", false
	}
	if hasPod && (!strings.HasPrefix(pod, "p") || !isNum(pod[1:])) {
		return "", false
	}
	return prefix, true
}

func isNum(s string) bool {
	_, err := strconv.Atoi(s)
	return s != "" && err == nil
}

func waitGone(id procID, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !id.alive() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// AddRoute adds (replaces) a route dst via gw in namespace ns, e.g. the
// pod CIDRs on the router in gateway mode.
func AddRoute(ns string, dst netip.Prefix, gw netip.Addr) error {
	return withHandle(ns, func(h *netlink.Handle) error {
		r := &netlink.Route{Dst: netnstest.IPNet(dst), Gw: net.IP(gw.AsSlice())}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s via %s in %s: %w", dst, gw, ns, err)
		}
		return nil
	})
}

// AddBlackhole adds (replaces) a blackhole route to dst in namespace ns:
// a host that swallows what it is sent for dst. DelRoute removes it.
func AddBlackhole(ns string, dst netip.Prefix) error {
	return withHandle(ns, func(h *netlink.Handle) error {
		if err := h.RouteReplace(&netlink.Route{Dst: netnstest.IPNet(dst), Type: syscall.RTN_BLACKHOLE}); err != nil {
			return fmt.Errorf("blackhole route %s in %s: %w", dst, ns, err)
		}
		return nil
	})
}

// DelRoute removes the route to dst in namespace ns (missing is fine).
func DelRoute(ns string, dst netip.Prefix) error {
	return withHandle(ns, func(h *netlink.Handle) error {
		err := h.RouteDel(&netlink.Route{Dst: netnstest.IPNet(dst)})
		if err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("delete route %s in %s: %w", dst, ns, err)
		}
		return nil
	})
}

// RouterIP is the router's address on segment s (two-segment underlays).
func RouterIP(s int) netip.Addr { return routerIP(s) }

// CtlIP is the control namespace's underlay address: a host on the
// underlay that is not a node (for masquerade checks).
func CtlIP() netip.Addr { return netip.MustParseAddr(ctlIP) }
