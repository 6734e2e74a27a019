// Package daemon wires weft-agent together: flags and environment, the
// datapath, the etcd client, the agent, and /metrics, /healthz and /livez.
// cmd/weft-agent only parses, handles signals and calls Run.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/internal/envflags"
	"github.com/weftnet/weft/internal/etcdauth"
	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/internal/pki"
	"github.com/weftnet/weft/nodeagent"
	"github.com/weftnet/weft/nodeagent/bgp/proc"
	"github.com/weftnet/weft/nodeagent/reach"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
)

var (
	_ nodeagent.Datapath = (*bpf.Datapath)(nil)
	// The registration carries what the node supports and the overlay
	// device's MAC, both read from the datapath.
	_ nodeagent.NodeInfo = (*bpf.Datapath)(nil)
	// Peers reach this node at its pod gateway before any pod is
	// attached: the datapath makes weft0 as the CNI plugin would.
	_ nodeagent.PodGateway = (*bpf.Datapath)(nil)
	// The subnet file names the pin directory, where weft-cni finds the
	// pod check.
	_ nodeagent.PinDirer = (*bpf.Datapath)(nil)
)

// Options are weft-agent's flags.
type Options struct {
	EtcdEndpoints     string
	EtcdCAFile        string
	EtcdCertFile      string
	EtcdKeyFile       string
	Prefix            string
	NodeName          string
	Underlay          string
	BPFFSDir          string
	SubnetFile        string
	MetricsAddr       string
	LeaseTTL          int
	ReconcileInterval time.Duration
	LogLevel          string
	ASN               uint
	BGPSpeaker        string
	HostRouting       string
	TunnelDatapath    string
	Probe             bool
	ProbeGrace        time.Duration
	Validate          bool
	Teardown          bool
}

// Parse parses args (without the program name) into Options. Every flag
// can also come from WEFT_<FLAG> in the environment (WEFT_ETCD_ENDPOINTS
// for --etcd-endpoints); an explicit flag wins over the environment.
// Check validates the result.
func Parse(args []string, getenv func(string) string) (*Options, error) {
	host, _ := os.Hostname()
	o := &Options{}
	fs := flag.NewFlagSet("weft-agent", flag.ContinueOnError)
	fs.StringVar(&o.EtcdEndpoints, "etcd-endpoints", "http://127.0.0.1:2379", "comma-separated etcd client URLs")
	fs.StringVar(&o.EtcdCAFile, "etcd-cafile", "", "CA bundle to verify etcd's certificate (enables TLS)")
	fs.StringVar(&o.EtcdCertFile, "etcd-certfile", "", "client certificate for etcd")
	fs.StringVar(&o.EtcdKeyFile, "etcd-keyfile", "", "client key for etcd")
	fs.StringVar(&o.Prefix, "prefix", keys.DefaultPrefix, "etcd key prefix of the cluster")
	fs.StringVar(&o.NodeName, "node-name", host, "this node's name")
	fs.StringVar(&o.Underlay, "underlay", "", "underlay interface name or IP (default: the default route's interface)")
	fs.StringVar(&o.BPFFSDir, "bpffs-dir", bpf.DefaultPinDir, "bpffs directory for this node's pinned maps and links")
	fs.StringVar(&o.SubnetFile, "subnet-file", "/run/weft/subnet.env", "where to write the node's lease in flannel's subnet.env format")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", "127.0.0.1:9471", "address of /metrics, /healthz and /livez (empty: off)")
	fs.IntVar(&o.LeaseTTL, "lease-ttl", 10, "TTL in seconds of the registration and status lease")
	fs.DurationVar(&o.ReconcileInterval, "reconcile-interval", nodeagent.DefaultReconcileInterval, "how often to re-read the kernel and repair drift")
	fs.StringVar(&o.LogLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.UintVar(&o.ASN, "asn", 0, "this node's BGP AS number in bgp mode (0: the cluster's bgp.asn)")
	fs.StringVar(&o.BGPSpeaker, "bgp-speaker", "", "the weft-bgp binary run in bgp mode (default: weft-bgp beside this binary, else on $PATH)")
	fs.StringVar(&o.HostRouting, "host-routing", "", `"stack": pod traffic goes through this node's stack, so netfilter FORWARD rules (iptables-based NetworkPolicy) see it; "bpf": forwarded in eBPF past it; "" (default): the cluster config's host_routing`)
	fs.StringVar(&o.TunnelDatapath, "tunnel-datapath", "", `"bpf": weft's tc programs encapsulate VXLAN themselves and send pod packets straight out of the underlay; "device": the kernel's VXLAN device does; "" (default): the cluster config's tunnel_datapath`)
	fs.BoolVar(&o.Probe, "probe", true, "probe every peer's pod gateway through the datapath and report unreachable peers (degraded)")
	fs.DurationVar(&o.ProbeGrace, "probe-grace", reach.DefaultGrace, "how long a new (or changed) peer may fail probes before it counts as unreachable")
	fs.BoolVar(&o.Validate, "validate", false, "check the flags and exit (dry run)")
	fs.BoolVar(&o.Teardown, "teardown", false, "remove everything weft made on this node (device, routes, pins, nftables table, subnet file) and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if _, err := envflags.Apply(fs, getenv); err != nil {
		return nil, err
	}
	return o, nil
}

// checkSubnetFile refuses a path that holds something other than a
// subnet file: the agent replaces the file at its first convergence and
// --teardown deletes it, so a slip (--subnet-file /etc/hosts) would lose
// that file. A missing or empty file is fine; one that is a subnet file
// has a FLANNEL_ or WEFT_ line among its first 64 KiB.
func checkSubnetFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is a %s, not a file", path, fi.Mode().Type())
	}
	buf := make([]byte, 64<<10)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	if n == 0 {
		return nil
	}
	for line := range strings.Lines(string(buf[:n])) {
		k, _, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && (strings.HasPrefix(k, "FLANNEL_") || strings.HasPrefix(k, "WEFT_")) {
			return nil
		}
	}
	return fmt.Errorf("%s exists and is no subnet file (no FLANNEL_ or WEFT_ line): the agent would replace it, and --teardown delete it", path)
}

// minReconcileInterval is the shortest --reconcile-interval: each
// reconcile reads the node's datapath maps, devices and routes back.
const minReconcileInterval = time.Second

// Check validates the options without touching etcd or the kernel; the
// error names the flag at fault.
func (o *Options) Check() error {
	if err := keys.ValidName(o.NodeName); err != nil {
		return fmt.Errorf("--node-name: %w", err)
	}
	if err := keys.ValidPrefix(o.Prefix); err != nil {
		return fmt.Errorf("--prefix: %w", err)
	}
	if err := etcdconn.CheckEndpoints(o.Endpoints()); err != nil {
		return fmt.Errorf("--etcd-endpoints: %w", err)
	}
	if o.LeaseTTL < 2 {
		return fmt.Errorf("--lease-ttl: %d is below 2 seconds", o.LeaseTTL)
	}
	if o.LeaseTTL > etcdconn.MaxLeaseTTL {
		// etcd would refuse it at every grant, and the agent retry that
		// forever.
		return fmt.Errorf("--lease-ttl: %d is above %d seconds, the longest lease etcd grants", o.LeaseTTL, etcdconn.MaxLeaseTTL)
	}
	if o.SubnetFile != "" && !filepath.IsAbs(o.SubnetFile) {
		// weft-cni reads the file by the absolute path in its CNI
		// config; a relative one would be written wherever the agent
		// happened to be started.
		return fmt.Errorf("--subnet-file: %q is not an absolute path", o.SubnetFile)
	}
	if o.SubnetFile != "" {
		if err := checkSubnetFile(o.SubnetFile); err != nil {
			return fmt.Errorf("--subnet-file: %w", err)
		}
	}
	if o.ReconcileInterval < minReconcileInterval {
		// 0 would silently be the default (10s), and a few milliseconds
		// re-read the kernel's maps and routes in a hot loop.
		return fmt.Errorf("--reconcile-interval: %s is below %s", o.ReconcileInterval, minReconcileInterval)
	}
	if o.Underlay != "" {
		_, err := netip.ParseAddr(o.Underlay)
		if err != nil && (len(o.Underlay) > 15 || strings.ContainsAny(o.Underlay, "/ ")) {
			return fmt.Errorf("--underlay: %q is neither an IP nor an interface name", o.Underlay)
		}
		// An address the controller refuses as a node's (loopback,
		// unspecified, multicast, link-local, with a zone) would leave
		// the agent running, registered and never added.
		if err == nil {
			if _, err := validate.UnderlayIP("underlay", o.Underlay); err != nil {
				return fmt.Errorf("--underlay: %s", strings.TrimPrefix(err.Error(), validate.ErrInvalid.Error()+": underlay: "))
			}
		}
	}
	if o.BPFFSDir != "" && !filepath.IsAbs(o.BPFFSDir) {
		// It goes into the subnet file as WEFT_BPFFS_DIR, which
		// weft-cni refuses unless absolute: no pod could be attached.
		return fmt.Errorf("--bpffs-dir: %q is not an absolute path", o.BPFFSDir)
	}
	if o.MetricsAddr != "" {
		_, port, err := net.SplitHostPort(o.MetricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-addr: %w", err)
		}
		if _, err := net.LookupPort("tcp", port); err != nil {
			return fmt.Errorf("--metrics-addr: %w", err)
		}
	}
	if (o.EtcdCertFile == "") != (o.EtcdKeyFile == "") {
		return errors.New("--etcd-certfile and --etcd-keyfile go together")
	}
	// The TLS files are read now, not only when the client is made, so
	// --validate fails on a missing or unreadable one as the start does.
	if _, err := (etcdconn.Config{CA: o.EtcdCAFile, Cert: o.EtcdCertFile, Key: o.EtcdKeyFile}).TLS(); err != nil {
		return err
	}
	// 0 is no AS of the node's own: it speaks with the cluster's bgp.asn.
	if o.ASN > 1<<32-1 || o.ASN != 0 && validate.ASN("asn", uint32(o.ASN)) != nil {
		return fmt.Errorf("--asn: %d is not a usable AS number (0, 23456, 65535 and 4294967295 are reserved)", o.ASN)
	}
	if o.BGPSpeaker != "" {
		if _, err := proc.Find(o.BGPSpeaker); err != nil {
			return fmt.Errorf("--bgp-speaker: %w", errors.Unwrap(err))
		}
	}
	if o.HostRouting != "" && !slices.Contains(validate.HostRoutings, o.HostRouting) {
		return fmt.Errorf("--host-routing: unknown host routing %q (want one of %v, or empty for the cluster config's)", o.HostRouting, validate.HostRoutings)
	}
	if o.TunnelDatapath != "" && !slices.Contains(validate.TunnelDatapaths, o.TunnelDatapath) {
		return fmt.Errorf("--tunnel-datapath: unknown tunnel datapath %q (want one of %v, or empty for the cluster config's)", o.TunnelDatapath, validate.TunnelDatapaths)
	}
	if o.ProbeGrace <= 0 {
		return fmt.Errorf("--probe-grace: %s is not positive", o.ProbeGrace)
	}
	if hclog.LevelFromString(o.LogLevel) == hclog.NoLevel {
		return fmt.Errorf("--log-level: unknown level %q", o.LogLevel)
	}
	return nil
}

// Endpoints is --etcd-endpoints split at commas.
func (o *Options) Endpoints() []string { return etcdconn.Split(o.EtcdEndpoints) }

// Logger returns the process logger at the level of --log-level.
func Logger(level string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "weft-agent", Level: hclog.LevelFromString(level)})
}

// Run opens the datapath and, with --teardown, removes it and returns;
// otherwise it runs the agent until ctx ends. The datapath opens (loads
// its programs) while the agent already reads the log; a datapath that
// cannot open stops the agent and is Run's error. The datapath is closed
// without teardown when Run returns (file descriptors only: the device,
// routes and pinned maps stay, so the node keeps forwarding while the
// agent is away), and the agent's lease is not revoked.
func Run(ctx context.Context, o *Options, log hclog.Logger) error {
	dpCfg := bpf.Config{PinDir: o.BPFFSDir, Underlay: o.Underlay, Logger: log}
	if o.Teardown {
		dp, err := bpf.Open(dpCfg)
		if err != nil {
			return fmt.Errorf("open datapath: %w", err)
		}
		err = dp.Teardown()
		if rerr := os.Remove(o.SubnetFile); rerr != nil && !os.IsNotExist(rerr) {
			err = errors.Join(err, rerr)
		}
		if err == nil {
			log.Info("torn down")
		}
		return err
	}

	// A higher GC goal while the agent starts, and its heap in huge
	// pages; the rest's once the node converged (gc.go).
	gcRest := startGC(os.Getenv("GOGC") == "", startGCPercent, restGCPercent, startHugeBytes, startGCWindow)

	// The client does not dial yet: an unreachable etcd is retried by the
	// agent, never fatal.
	conn := etcdconn.Config{Endpoints: o.Endpoints(), CA: o.EtcdCAFile, Cert: o.EtcdCertFile, Key: o.EtcdKeyFile}
	client, err := etcdconn.New(conn)
	if err != nil {
		return err
	}
	defer client.Close()
	checkIdentity(o, log)
	// ctx is passed, not captured: Run replaces it below.
	go func(ctx context.Context) {
		// gRPC says only "context deadline exceeded" when TLS fails. A
		// connection that comes up needs no probe of its own.
		if err := conn.Unreachable(ctx, client.ActiveConnection()); err != nil && ctx.Err() == nil {
			log.Error("etcd does not answer", "error", err)
		}
	}(ctx)

	dp := openDatapath(dpCfg)
	defer dp.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		if _, err := dp.wait(); err != nil {
			cancel()
		}
	}()

	cfg := nodeagent.Config{
		Client:            client,
		Prefix:            o.Prefix,
		NodeName:          o.NodeName,
		Datapath:          dp,
		SubnetFile:        o.SubnetFile,
		LeaseTTL:          time.Duration(o.LeaseTTL) * time.Second,
		ReconcileInterval: o.ReconcileInterval,
		ASN:               uint32(o.ASN),
		HostRouting:       o.HostRouting,
		TunnelDatapath:    o.TunnelDatapath,
		// weft-bgp, a process of its own so that this binary does not
		// carry GoBGP (docs/bgp.md, "Two processes").
		BGP:    proc.New(proc.Options{Path: o.BGPSpeaker, Logger: log}),
		Logger: log,
		// The cold start's garbage goes back to the kernel and the GC
		// goal to the rest's.
		Converged: gcRest,
	}
	if o.Probe {
		// The agent runs in the node's namespace, so the probe sockets do.
		cfg.Probe = &reach.Config{Open: reach.ListenICMP, Grace: o.ProbeGrace}
	}
	a, err := nodeagent.New(cfg)
	if err != nil {
		return err
	}
	if o.MetricsAddr != "" {
		ln, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", o.MetricsAddr, err)
		}
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving metrics", "addr", ln.Addr().String())
	}
	err = a.Run(ctx)
	if _, oerr := dp.wait(); oerr != nil {
		return fmt.Errorf("open datapath: %w", oerr)
	}
	return err
}

// checkIdentity warns when the client certificate is not this node's
// etcd user: with etcd auth on, etcd then refuses the agent's
// registration and status (docs/controlplane.md, "Secure cluster").
func checkIdentity(o *Options, log hclog.Logger) {
	if o.EtcdCertFile == "" {
		return
	}
	want := etcdauth.NamesFor(keys.New(o.Prefix)).Node(o.NodeName)
	cn, err := pki.ReadCommonName(o.EtcdCertFile)
	switch {
	case err != nil:
		log.Warn("cannot read the etcd client certificate's name", "error", err)
	case cn != want:
		log.Warn("the etcd client certificate is not this node's: with etcd auth on, etcd refuses its registration and status",
			"cn", cn, "want_cn", want, "fix", "weftctl certs issue node "+o.NodeName+"; weftctl auth add-node "+o.NodeName)
	default:
		log.Info("etcd identity", "user", cn)
	}
}
