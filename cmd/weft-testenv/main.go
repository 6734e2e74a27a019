// Command weft-testenv runs a whole weft cluster on one Linux machine out
// of network namespaces (see package testenv). It needs root.
//
//	weft-testenv demo [--keep] [options]   build, bring up 3 nodes × 2 pods, show it works, tear down
//	weft-testenv up [options]              bring a cluster up and keep it until Ctrl-C
//	weft-testenv down [--prefix wt]        remove the leftovers of crashed runs
//	weft-testenv chaos --seed N --duration D   seeded faults under all-pairs pings, invariants checked
//	weft-testenv etcd-member ...           one member of an external etcd (used by testenv itself)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/weftnet/weft/nodeagent/reach"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "demo":
		err = demo(ctx, os.Args[2:])
	case "up":
		err = up(ctx, os.Args[2:])
	case "down":
		err = down(os.Args[2:])
	case "chaos":
		err = chaosCmd(ctx, os.Args[2:])
	case "etcd-member":
		err = etcdMember(ctx, os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "weft-testenv:", err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "weft-testenv:", err)
		os.Exit(1)
	}
}

type usageError struct{ error }

func usage() {
	fmt.Fprint(os.Stderr, `usage: weft-testenv demo|up|down|chaos|etcd-member [flags]
  demo         build the binaries, run 3 nodes x 2 pods, print nodes, events,
               convergence and an all-pairs connectivity matrix, tear down;
               exit 1 if any pair failed (--keep leaves it up)
  up           bring a cluster up, print how to reach it, keep it until Ctrl-C
               (demo and up with --kubernetes: real Kubernetes components,
               weft deployed from deploy/kubernetes/, pods created through
               the API)
  down         remove namespaces, pins, processes and run dirs of crashed runs
  chaos        --seed N --duration D: a secure 3-node cluster (3 etcd members,
               2 controllers), every pod pinging every other every 10 ms,
               faults drawn from the seed; prints the faults and the pings
               each lost; exit 1 on any invariant violation
  etcd-member  run one embedded etcd member (testenv starts these itself)
Needs root. Run demo and up from inside the weft source tree (they go build).
`)
}

// clusterFlags are the options up and demo share.
type clusterFlags struct {
	backend, etcd, binDir, prefix, logLevel string
	attacher, ipFamily                      string
	nodes, pods, segments, controllers      int
	grace                                   int
	kubernetes                              bool
	agentArgs                               string
	secure                                  bool
}

func (f *clusterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.backend, "backend", envOr("BACKEND", "vxlan"), "datapath backend: vxlan, geneve, native, hybrid, gateway, bgp, or kernel (no weft, plain routes)")
	fs.StringVar(&f.etcd, "etcd", envOr("ETCD", testenv.EtcdEmbedded), "etcd: embedded (in the controller) or external (3 members)")
	fs.StringVar(&f.binDir, "bin-dir", envOr("BIN_DIR", ""), "use the weft binaries in this directory instead of building them")
	fs.StringVar(&f.prefix, "prefix", envOr("PREFIX", ""), "run prefix (default: wt + 4 random hex digits)")
	fs.StringVar(&f.logLevel, "log-level", envOr("LOG_LEVEL", "debug"), "log level of the weft processes (their logs are in the run directory)")
	fs.StringVar(&f.ipFamily, "ip-family", envOr("IP_FAMILY", testenv.FamilyIPv4), "ipv4, ipv6 (underlay, etcd, pods and tunnels all IPv6) or dual (every pod gets an IPv4 and an IPv6 address; the matrix checks both)")
	fs.StringVar(&f.attacher, "attacher", envOr("ATTACHER", "cni"), "how pods are attached: cni (the weft-cni plugin through libcni, as a container runtime does) or netlink (testenv's own)")
	fs.IntVar(&f.nodes, "nodes", 3, "number of nodes")
	fs.IntVar(&f.pods, "pods-per-node", 2, "pods per node")
	fs.IntVar(&f.segments, "segments", 1, "underlay segments: 1, or 2 joined by a router namespace")
	fs.IntVar(&f.controllers, "controllers", 1, "controllers (more than 1 needs --etcd=external)")
	fs.IntVar(&f.grace, "node-grace", 0, "node_grace_seconds in the cluster config (0: controller default)")
	fs.BoolVar(&f.kubernetes, "kubernetes", false, "real Kubernetes (kube-apiserver, controller-manager, scheduler, a kubelet, containerd and kube-proxy per node) with weft deployed from deploy/kubernetes/; see docs/testenv.md")
	fs.StringVar(&f.agentArgs, "agent-args", envOr("AGENT_ARGS", ""), "extra weft-agent arguments, comma-separated, e.g. --host-routing=stack (with --kubernetes: added to the agent DaemonSet)")
	fs.BoolVar(&f.secure, "secure", envOr("SECURE", "true") == "true", "etcd with TLS, client certificates and auth on, one certificate per node (--secure=false: plain etcd, anyone who reaches it writes)")
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv("WEFT_TESTENV_" + name); ok {
		return v
	}
	return def
}

// bring builds the binaries if needed and starts a cluster. The returned
// cleanup closes the cluster and removes the built binaries.
func bring(ctx context.Context, f clusterFlags, log hclog.Logger) (*testenv.Cluster, func(), error) {
	// Refuse a backend this machine cannot run before building anything.
	if err := testenv.CheckBackend(f.backend); err != nil {
		return nil, nil, err
	}
	binDir := f.binDir
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	if binDir == "" && (f.backend != testenv.BackendKernel || f.attacher == "cni") {
		dir, err := os.MkdirTemp("", "weft-bin-")
		if err != nil {
			return nil, nil, err
		}
		cleanups = append(cleanups, func() { os.RemoveAll(dir) })
		fmt.Println("building weft binaries (go build) ...")
		if err := testenv.Build(ctx, dir); err != nil {
			cleanup()
			return nil, nil, err
		}
		binDir = dir
	}
	var att testenv.PodAttacher
	switch f.attacher {
	case "netlink":
		att = testenv.NetlinkAttacher{}
	case "cni":
		att = testenv.NewCNIAttacher(binDir)
	default:
		cleanup()
		return nil, nil, usageError{fmt.Errorf("--attacher %q: want netlink or cni", f.attacher)}
	}
	secure := f.secure && f.backend != testenv.BackendKernel
	how := "plain (--secure=false)"
	if secure {
		how = "TLS, client certificates, auth on"
	}
	fmt.Printf("starting %d nodes x %d pods, backend %s, ip family %s, etcd %s (%s) ...\n", f.nodes, f.pods, f.backend, f.ipFamily, f.etcd, how)
	c, err := testenv.New(ctx, testenv.Options{
		Prefix:      f.prefix,
		Nodes:       f.nodes,
		PodsPerNode: f.pods,
		Backend:     f.backend,
		Segments:    f.segments,
		Etcd:        f.etcd,
		Controllers: f.controllers,
		IPFamily:    f.ipFamily,
		NodeGrace:   f.grace,
		BinDir:      binDir,
		Attacher:    att,
		LogLevel:    f.logLevel,
		Logger:      log,
		Secure:      secure,
		AgentArgs:   splitArgs(f.agentArgs),
	})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	fmt.Println("between nodes:", c.Carrier())
	cleanups = append(cleanups, func() {
		fmt.Println("tearing down", c.Prefix, "...")
		if err := c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "teardown:", err)
		}
		if left := testenv.Leftovers(c.Prefix); len(left) > 0 {
			fmt.Fprintln(os.Stderr, "left behind:", strings.Join(left, ", "))
		}
	})
	return c, cleanup, nil
}

func printAccess(c *testenv.Cluster) {
	fmt.Printf("\ncluster %s is up; run directory (logs, subnet files) %s\n", c.Prefix, c.RunDir)
	if c.CAFile() != "" {
		fmt.Printf("etcd: TLS and auth on; certificates (one per node, CN = etcd user) in %s\n", filepath.Dir(c.CAFile()))
	}
	if c.Opts.Backend != testenv.BackendKernel {
		fmt.Println("inspect it:")
		fmt.Printf("  %s nodes | events | status | check | config get\n", c.WeftctlLine())
		fmt.Printf("  %s get --prefix /weft/\n", c.EtcdctlLine())
	}
	fmt.Println("enter a namespace:")
	for _, n := range c.Nodes() {
		under := n.UnderlayIP.String()
		if n.UnderlayIP6.IsValid() && n.UnderlayIP6 != n.UnderlayIP {
			under += ", " + n.UnderlayIP6.String()
		}
		fmt.Printf("  ip netns exec %s ip route    # node %s, underlay %s", n.NS, n.Name, under)
		if n.Agent != nil {
			fmt.Printf(", agent log %s", n.Agent.Log)
		}
		fmt.Println()
		for _, p := range n.Pods {
			fmt.Printf("  ip netns exec %s ping %s    # pod %s\n", p.NS, podPeer(c, p), strings.Trim(fmt.Sprint(p.Addrs), "[]"))
		}
	}
	fmt.Printf("remove it: Ctrl-C here (or, after a crash, weft-testenv down --prefix %s)\n", c.Prefix)
}

// podPeer picks a pod on another node to suggest pinging.
func podPeer(c *testenv.Cluster, p *testenv.Pod) string {
	for _, q := range c.Pods() {
		if q.Node != p.Node {
			return q.Addr.String()
		}
	}
	return p.Addr.String()
}

func up(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	var f clusterFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if f.kubernetes {
		return kubeUp(ctx, f)
	}
	c, cleanup, err := bring(ctx, f, stderrLogger())
	if err != nil {
		return err
	}
	defer cleanup()
	if f.backend != testenv.BackendKernel {
		if err := c.WaitConverged(ctx, 60*time.Second); err != nil {
			return err
		}
		if err := c.WaitReachable(ctx, reachWait); err != nil {
			fmt.Println("warning:", err)
		}
	}
	printAccess(c)
	<-ctx.Done()
	return nil
}

func demo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var f clusterFlags
	f.register(fs)
	keep := fs.Bool("keep", false, "leave the cluster up after the demo (until Ctrl-C) and print how to reach it")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if f.kubernetes {
		return kubeDemo(ctx, f, *keep)
	}
	c, cleanup, err := bring(ctx, f, stderrLogger())
	if err != nil {
		return err
	}
	defer cleanup()
	var unreachable error
	if f.backend != testenv.BackendKernel {
		fmt.Println("waiting for every agent to converge and to reach its peers ...")
		if err := c.WaitConverged(ctx, 60*time.Second); err != nil {
			return err
		}
		// Converged is not connected: wait for each agent's verdict on
		// every peer, and show what is unreachable rather than stop.
		if unreachable = c.WaitReachable(ctx, reachWait); unreachable != nil {
			fmt.Println(unreachable)
		}
		for _, verb := range [][]string{{"nodes"}, {"events"}, {"status"}} {
			out, err := c.Weftctl(ctx, verb...)
			fmt.Printf("\n$ weftctl %s\n%s", strings.Join(verb, " "), out)
			if err != nil {
				return err
			}
		}
		if c.CAFile() != "" {
			if err := showRefusal(ctx, c); err != nil {
				return err
			}
		}
	}
	fmt.Println("\nall-pairs connectivity (I = ICMP echo, T = TCP echo, U = UDP echo; - = failed), per address family:")
	m := testenv.CheckAll(ctx, c.Targets(), nil)
	fmt.Print(m)
	failed := len(m.Failed())
	fmt.Print(m.Summary())
	if *keep {
		printAccess(c)
		<-ctx.Done()
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d pairs failed", failed, len(m.Results))
	}
	return unreachable
}

// showRefusal shows what etcd auth is for: one node's certificate tries
// to point another node's registration at itself, and etcd refuses. A
// write that goes through fails the demo.
func showRefusal(ctx context.Context, c *testenv.Cluster) error {
	nodes := c.Nodes()
	if len(nodes) < 2 {
		return nil
	}
	a, b := nodes[0], nodes[1]
	user := c.Names().Node(a.Name)
	cl, err := c.ClientAs(user)
	if err != nil {
		return err
	}
	defer cl.Close()
	key := keys.New(keys.DefaultPrefix).Registration(b.Name)
	val := keys.EncodeString(&weftv1.Registration{Name: b.Name, UnderlayIp: a.UnderlayIP.String()})
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = cl.Put(rctx, key, val)
	fmt.Printf("\n$ (as %s, %s's certificate) put %s %s\n", user, a.Name, key, val)
	if err == nil {
		return fmt.Errorf("etcd let %s write %s", user, key)
	}
	fmt.Printf("refused: %v\n", err)
	return nil
}

// reachWait bounds the wait for the agents' verdicts on their peers: a
// peer that does not answer counts as unreachable only after the agent's
// probe grace.
const reachWait = reach.DefaultGrace + 30*time.Second

func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	prefix := fs.String("prefix", "wt", "remove runs whose prefix starts with this")
	force := fs.Bool("force", false, "also remove runs whose owning process (a test, weft-testenv up) is still alive")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	down := testenv.Down
	if *force {
		down = testenv.DownForce
	}
	if err := down(*prefix); err != nil {
		return err
	}
	fmt.Println("removed leftovers of runs matching", *prefix)
	return nil
}

func etcdMember(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("etcd-member", flag.ContinueOnError)
	var m testenv.MemberConfig
	fs.StringVar(&m.Name, "name", "default", "member name")
	fs.StringVar(&m.DataDir, "data-dir", "", "data directory (restarting on the same one rejoins)")
	fs.StringVar(&m.ListenClient, "listen-client", "http://127.0.0.1:2379", "client URLs, comma-separated (unix:///path allowed)")
	fs.StringVar(&m.ListenPeer, "listen-peer", "http://127.0.0.1:2380", "peer URL")
	fs.StringVar(&m.InitialCluster, "initial-cluster", "", "name=peerURL,... of every member")
	fs.StringVar(&m.CertFile, "cert-file", "", "TLS certificate for the https:// client URLs")
	fs.StringVar(&m.KeyFile, "key-file", "", "TLS key for the https:// client URLs")
	fs.StringVar(&m.TrustedCAFile, "trusted-ca-file", "", "CA that client certificates must be signed by (turns on client certificate auth)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if m.DataDir == "" {
		return usageError{errors.New("etcd-member: --data-dir is required")}
	}
	if m.InitialCluster == "" {
		m.InitialCluster = m.Name + "=" + m.ListenPeer
	}
	return testenv.RunEtcdMember(ctx, m)
}

func stderrLogger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "weft-testenv", Level: hclog.Info, Output: os.Stderr})
}
