// Command weft-agent runs on every node (as root): it registers the node,
// follows the event log in etcd and programs the node's eBPF datapath.
// See docs/agent.md.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/nodeagent"
	"github.com/weftnet/weft/nodeagent/reach"
	"github.com/weftnet/weft/proto/keys"
)

var (
	_ nodeagent.Datapath = (*bpf.Datapath)(nil)
	// The registration carries what the node supports and the overlay
	// device's MAC, both read from the datapath.
	_ nodeagent.NodeInfo = (*bpf.Datapath)(nil)
	// Peers reach this node at its pod gateway before any pod is
	// attached: the datapath makes weft0 as the CNI plugin would.
	_ nodeagent.PodGateway = (*bpf.Datapath)(nil)
)

type options struct {
	etcdEndpoints     string
	etcdCA            string
	etcdCert          string
	etcdKey           string
	prefix            string
	nodeName          string
	underlay          string
	bpffsDir          string
	subnetFile        string
	metricsAddr       string
	leaseTTL          int
	reconcileInterval time.Duration
	logLevel          string
	asn               uint
	probe             bool
	probeGrace        time.Duration
	validate          bool
	teardown          bool
}

func parse(args []string) (*options, *flag.FlagSet, error) {
	host, _ := os.Hostname()
	o := &options{}
	fs := flag.NewFlagSet("weft-agent", flag.ContinueOnError)
	fs.StringVar(&o.etcdEndpoints, "etcd-endpoints", "http://127.0.0.1:2379", "comma-separated etcd client URLs")
	fs.StringVar(&o.etcdCA, "etcd-cafile", "", "CA bundle to verify etcd's certificate (enables TLS)")
	fs.StringVar(&o.etcdCert, "etcd-certfile", "", "client certificate for etcd")
	fs.StringVar(&o.etcdKey, "etcd-keyfile", "", "client key for etcd")
	fs.StringVar(&o.prefix, "prefix", keys.DefaultPrefix, "etcd key prefix of the cluster")
	fs.StringVar(&o.nodeName, "node-name", host, "this node's name")
	fs.StringVar(&o.underlay, "underlay", "", "underlay interface name or IP (default: the default route's interface)")
	fs.StringVar(&o.bpffsDir, "bpffs-dir", bpf.DefaultPinDir, "bpffs directory for this node's pinned maps and links")
	fs.StringVar(&o.subnetFile, "subnet-file", "/run/weft/subnet.env", "where to write the node's lease in flannel's subnet.env format")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9471", "address of /metrics and /healthz (empty: off)")
	fs.IntVar(&o.leaseTTL, "lease-ttl", 10, "TTL in seconds of the registration and status lease")
	fs.DurationVar(&o.reconcileInterval, "reconcile-interval", nodeagent.DefaultReconcileInterval, "how often to re-read the kernel and repair drift")
	fs.StringVar(&o.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.UintVar(&o.asn, "asn", 0, "this node's BGP AS number in bgp mode (0: the cluster's bgp.asn)")
	fs.BoolVar(&o.probe, "probe", true, "probe every peer's pod gateway through the datapath and report unreachable peers (degraded)")
	fs.DurationVar(&o.probeGrace, "probe-grace", reach.DefaultGrace, "how long a new (or changed) peer may fail probes before it counts as unreachable")
	fs.BoolVar(&o.validate, "validate", false, "check the flags and exit (dry run)")
	fs.BoolVar(&o.teardown, "teardown", false, "remove everything weft made on this node (device, routes, pins, nftables table, subnet file) and exit")
	if err := fs.Parse(args); err != nil {
		return nil, fs, err
	}
	if fs.NArg() > 0 {
		return nil, fs, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	// Environment overrides flags' defaults, explicit flags override the
	// environment: WEFT_ETCD_ENDPOINTS for --etcd-endpoints.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		env := "WEFT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !set[f.Name] {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
		}
	})
	return o, fs, errors.Join(errs...)
}

// check validates the options without touching etcd or the kernel.
func (o *options) check() error {
	if err := keys.ValidName(o.nodeName); err != nil {
		return fmt.Errorf("--node-name: %w", err)
	}
	for _, e := range o.endpoints() {
		if u, err := url.Parse(e); err != nil || u.Host == "" {
			return fmt.Errorf("--etcd-endpoints: %q is not a URL", e)
		}
	}
	if len(o.endpoints()) == 0 {
		return errors.New("--etcd-endpoints: empty")
	}
	if o.leaseTTL < 2 {
		return fmt.Errorf("--lease-ttl: %d is below 2 seconds", o.leaseTTL)
	}
	if o.reconcileInterval < 0 {
		return fmt.Errorf("--reconcile-interval: %s is negative", o.reconcileInterval)
	}
	if o.underlay != "" {
		if _, err := netip.ParseAddr(o.underlay); err != nil && (len(o.underlay) > 15 || strings.ContainsAny(o.underlay, "/ ")) {
			return fmt.Errorf("--underlay: %q is neither an IP nor an interface name", o.underlay)
		}
	}
	if o.metricsAddr != "" {
		if _, _, err := net.SplitHostPort(o.metricsAddr); err != nil {
			return fmt.Errorf("--metrics-addr: %w", err)
		}
	}
	if (o.etcdCert == "") != (o.etcdKey == "") {
		return errors.New("--etcd-certfile and --etcd-keyfile go together")
	}
	if o.asn > 1<<32-1 || o.asn == 23456 {
		return fmt.Errorf("--asn: %d is not a usable AS number", o.asn)
	}
	if o.probeGrace <= 0 {
		return fmt.Errorf("--probe-grace: %s is not positive", o.probeGrace)
	}
	if hclog.LevelFromString(o.logLevel) == hclog.NoLevel {
		return fmt.Errorf("--log-level: unknown level %q", o.logLevel)
	}
	return nil
}

func (o *options) endpoints() []string {
	var out []string
	for _, e := range strings.Split(o.etcdEndpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func (o *options) tls() (*tls.Config, error) {
	if o.etcdCA == "" && o.etcdCert == "" {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.etcdCA != "" {
		pem, err := os.ReadFile(o.etcdCA)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read etcd CA %s: no certificates", o.etcdCA)
		}
	}
	if o.etcdCert != "" {
		cert, err := tls.LoadX509KeyPair(o.etcdCert, o.etcdKey)
		if err != nil {
			return nil, fmt.Errorf("load etcd client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func main() {
	o, _, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err == nil {
		err = o.check()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "weft-agent:", err)
		os.Exit(2)
	}
	if o.validate {
		fmt.Println("weft-agent: flags ok")
		return
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "weft-agent", Level: hclog.LevelFromString(o.logLevel)})
	if err := run(o, log); err != nil {
		log.Error("exiting", "error", err)
		os.Exit(1)
	}
}

func run(o *options, log hclog.Logger) error {
	// SIGTERM stops the agent; the datapath stays (see Close below).
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	dp, err := bpf.Open(bpf.Config{PinDir: o.bpffsDir, Underlay: o.underlay, Logger: log})
	if err != nil {
		return fmt.Errorf("open datapath: %w", err)
	}
	if o.teardown {
		err := dp.Teardown()
		if rerr := os.Remove(o.subnetFile); rerr != nil && !os.IsNotExist(rerr) {
			err = errors.Join(err, rerr)
		}
		if err == nil {
			log.Info("torn down")
		}
		return err
	}
	// Close releases file descriptors only: the device, routes and pinned
	// maps stay, so the node keeps forwarding while the agent is away.
	defer dp.Close()

	tc, err := o.tls()
	if err != nil {
		return err
	}
	// clientv3.New does not dial eagerly: an unreachable etcd is retried
	// by the agent, never fatal.
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   o.endpoints(),
		DialTimeout: 5 * time.Second,
		TLS:         tc,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("create etcd client: %w", err)
	}
	defer client.Close()

	cfg := nodeagent.Config{
		Client:            client,
		Prefix:            o.prefix,
		NodeName:          o.nodeName,
		Datapath:          dp,
		SubnetFile:        o.subnetFile,
		LeaseTTL:          time.Duration(o.leaseTTL) * time.Second,
		ReconcileInterval: o.reconcileInterval,
		ASN:               uint32(o.asn),
		Logger:            log,
	}
	if o.probe {
		// The agent runs in the node's namespace, so the probe sockets do.
		cfg.Probe = &reach.Config{Open: reach.ListenICMP, Grace: o.probeGrace}
	}
	a, err := nodeagent.New(cfg)
	if err != nil {
		return err
	}

	if o.metricsAddr != "" {
		srv := &http.Server{Addr: o.metricsAddr, Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", o.metricsAddr, err)
		}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving metrics", "addr", ln.Addr().String())
	}
	return a.Run(ctx)
}
