// Package daemon wires weft-controller together: flags and environment,
// the initial cluster config, the embedded or external etcd, metrics and
// health endpoints, and the controller. cmd/weft-controller only parses
// and calls Run.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/controlplane/source"
	"github.com/weftnet/weft/internal/envflags"
	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/proto/configfile"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Options are weft-controller's flags.
type Options struct {
	EtcdEndpoints    string
	EtcdCAFile       string
	EtcdCertFile     string
	EtcdKeyFile      string
	DataDir          string
	EtcdListenClient string
	EtcdListenPeer   string
	// EtcdServerCert and EtcdServerKey make the embedded etcd serve TLS on
	// its client URLs; EtcdClientCA makes it require client certificates
	// signed by that CA (their CN is the etcd user once auth is on).
	EtcdServerCert string
	EtcdServerKey  string
	EtcdClientCA   string
	Prefix         string
	ClusterCIDR    string
	ClusterCIDRv6  string
	NodeMaskSize   uint
	Backend        string
	ConfigFile     string
	MetricsAddr    string
	ElectionTTL    int
	LogLevel       string
	Validate       bool
	// NodeSource is where nodes come from: "registrations" (agents'
	// leased keys in etcd) or "kubernetes" (Node objects).
	NodeSource   string
	Kubeconfig   string // kubeconfig file; empty: in-cluster config
	NodeSelector string // label selector on Nodes (kubernetes source)
	// KubeClient, when set, is used by the kubernetes node source instead
	// of a clientset built from Kubeconfig (tests inject a fake).
	KubeClient kubernetes.Interface

	set map[string]bool // flags given on the command line or in the environment
}

// Parse parses args (without the program name) into Options. Every flag
// can also come from WEFT_<FLAG> in the environment (WEFT_CLUSTER_CIDR
// for --cluster-cidr); an explicit flag wins over the environment.
func Parse(args []string, getenv func(string) string) (*Options, error) {
	o := &Options{}
	fs := flag.NewFlagSet("weft-controller", flag.ContinueOnError)
	fs.StringVar(&o.EtcdEndpoints, "etcd-endpoints", "", "comma-separated etcd client URLs; empty: run an embedded single-member etcd")
	fs.StringVar(&o.EtcdCAFile, "etcd-cafile", "", "CA bundle to verify the external etcd's certificate (enables TLS)")
	fs.StringVar(&o.EtcdCertFile, "etcd-certfile", "", "client certificate for the external etcd")
	fs.StringVar(&o.EtcdKeyFile, "etcd-keyfile", "", "client key for the external etcd")
	fs.StringVar(&o.DataDir, "data-dir", "/var/lib/weft", "data directory of the embedded etcd")
	fs.StringVar(&o.EtcdListenClient, "etcd-listen-client", "http://127.0.0.1:2379", "comma-separated client URLs the embedded etcd listens on")
	fs.StringVar(&o.EtcdListenPeer, "etcd-listen-peer", "http://127.0.0.1:2380", "peer URL of the embedded etcd")
	fs.StringVar(&o.EtcdServerCert, "etcd-server-cert", "", "serving certificate of the embedded etcd (TLS on its https:// and unixs:// client URLs)")
	fs.StringVar(&o.EtcdServerKey, "etcd-server-key", "", "key of --etcd-server-cert")
	fs.StringVar(&o.EtcdClientCA, "etcd-client-ca", "", "CA whose client certificates the embedded etcd requires (their CN is the etcd user; see weftctl auth setup)")
	fs.StringVar(&o.Prefix, "prefix", keys.DefaultPrefix, "etcd key prefix of the cluster")
	fs.StringVar(&o.ClusterCIDR, "cluster-cidr", "", "IPv4 pod network of the cluster (default 10.244.0.0/16 when neither flag nor file sets a cluster CIDR of either family)")
	fs.StringVar(&o.ClusterCIDRv6, "cluster-cidr-v6", "", "IPv6 pod network of the cluster (with --cluster-cidr: dual-stack; alone: IPv6-only)")
	fs.UintVar(&o.NodeMaskSize, "node-mask-size", 0, "prefix length of each node's IPv4 pod CIDR (default 24)")
	fs.StringVar(&o.Backend, "backend", "", "datapath backend: vxlan, geneve, native, hybrid, gateway or bgp (default vxlan)")
	fs.StringVar(&o.ConfigFile, "config", "", "ClusterConfig file (JSON or YAML, proto field names); flags override it")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", "127.0.0.1:9470", "address of /metrics, /healthz and /livez (empty: off)")
	fs.IntVar(&o.ElectionTTL, "election-ttl", 10, "leader election session TTL in seconds")
	fs.StringVar(&o.LogLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.BoolVar(&o.Validate, "validate", false, "validate the config, print it with defaults and exit (dry run)")
	fs.StringVar(&o.NodeSource, "node-source", SourceRegistrations, "where nodes come from: registrations (agents register in etcd) or kubernetes (Node objects)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file of the kubernetes node source (empty: in-cluster config)")
	fs.StringVar(&o.NodeSelector, "node-selector", "", "label selector of the Nodes the kubernetes node source takes (e.g. weft.io/enabled=true; empty: all)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set, err := envflags.Apply(fs, getenv)
	if err != nil {
		return nil, err
	}
	o.set = set
	if o.EtcdEndpoints != "" {
		if err := etcdconn.CheckEndpoints(etcdconn.Split(o.EtcdEndpoints)); err != nil {
			return nil, fmt.Errorf("--etcd-endpoints: %w", err)
		}
	}
	if o.ElectionTTL < 1 {
		return nil, errors.New("--election-ttl must be at least 1")
	}
	if o.ElectionTTL > etcdconn.MaxLeaseTTL {
		// etcd refuses the session's lease at every campaign (the
		// controller would never lead), and beyond ~9.2e9 the seconds
		// wrap in a time.Duration into another TTL than the one asked.
		return nil, fmt.Errorf("--election-ttl: %d is above %d seconds, the longest lease etcd grants", o.ElectionTTL, etcdconn.MaxLeaseTTL)
	}
	if err := o.checkFlags(); err != nil {
		return nil, err
	}
	if err := o.checkSource(); err != nil {
		return nil, err
	}
	if err := o.checkEtcdTLS(); err != nil {
		return nil, err
	}
	if err := o.loadEtcdTLS(); err != nil {
		return nil, err
	}
	return o, nil
}

// loadEtcdTLS reads the TLS files the flags name, so a missing or
// unreadable one fails --validate and the start alike, naming its flag,
// rather than when the client is made or the embedded etcd starts.
func (o *Options) loadEtcdTLS() error {
	if (o.EtcdCertFile == "") != (o.EtcdKeyFile == "") {
		return errors.New("--etcd-certfile and --etcd-keyfile go together")
	}
	if _, err := (etcdconn.Config{CA: o.EtcdCAFile, Cert: o.EtcdCertFile, Key: o.EtcdKeyFile}).TLS(); err != nil {
		return err
	}
	if o.EtcdServerCert != "" {
		if _, err := tls.LoadX509KeyPair(o.EtcdServerCert, o.EtcdServerKey); err != nil {
			return fmt.Errorf("--etcd-server-cert/--etcd-server-key: %w", err)
		}
	}
	if o.EtcdClientCA != "" {
		b, err := os.ReadFile(o.EtcdClientCA)
		if err != nil {
			return fmt.Errorf("--etcd-client-ca: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			return fmt.Errorf("--etcd-client-ca: %s holds no certificate", o.EtcdClientCA)
		}
	}
	return nil
}

// checkFlags checks the flags that are not the config's and not TLS: a
// wrong one is a usage error at start, naming it, rather than a default
// taken silently (an unknown log level) or a failure later (a metrics
// address or an embedded etcd's URL that cannot be listened on).
func (o *Options) checkFlags() error {
	if err := keys.ValidPrefix(o.Prefix); err != nil {
		return fmt.Errorf("--prefix: %w", err)
	}
	if hclog.LevelFromString(o.LogLevel) == hclog.NoLevel {
		return fmt.Errorf("--log-level: unknown level %q", o.LogLevel)
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
	if o.EtcdEndpoints != "" {
		return nil
	}
	if o.DataDir == "" {
		return errors.New("--data-dir: empty (the embedded etcd keeps its data there)")
	}
	clients := etcdconn.Split(o.EtcdListenClient)
	if len(clients) == 0 {
		return errors.New("--etcd-listen-client: empty")
	}
	for _, s := range clients {
		if err := listenURL(s, "http", "https", "unix", "unixs"); err != nil {
			return fmt.Errorf("--etcd-listen-client: %w", err)
		}
	}
	if err := listenURL(o.EtcdListenPeer, "http", "https"); err != nil {
		return fmt.Errorf("--etcd-listen-peer: %w", err)
	}
	return nil
}

// listenURL checks a URL the embedded etcd is to listen on: one of
// schemes, and a host:port (a path for unix sockets).
func listenURL(s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	if !slices.Contains(schemes, u.Scheme) {
		return fmt.Errorf("%q: scheme %q is none of %s", s, u.Scheme, strings.Join(schemes, ", "))
	}
	if strings.HasPrefix(u.Scheme, "unix") {
		if u.Host == "" && u.Path == "" {
			return fmt.Errorf("%q: no socket path", s)
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	return nil
}

// checkEtcdTLS checks the embedded etcd's TLS flags against its client
// URLs and the controller's own client certificate.
func (o *Options) checkEtcdTLS() error {
	if o.EtcdEndpoints != "" {
		// Given with an external etcd they would be ignored: the
		// operator who set them expects an etcd listening there.
		for _, f := range []string{"etcd-listen-client", "etcd-listen-peer"} {
			if o.set[f] {
				return fmt.Errorf("--%s is for the embedded etcd; with --etcd-endpoints the controller runs none", f)
			}
		}
	}
	server := o.EtcdServerCert != "" || o.EtcdServerKey != "" || o.EtcdClientCA != ""
	if !server {
		for _, s := range etcdconn.Split(o.EtcdListenClient) {
			if strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "unixs://") {
				return fmt.Errorf("--etcd-listen-client %s: TLS needs --etcd-server-cert and --etcd-server-key", s)
			}
		}
		return nil
	}
	if o.EtcdEndpoints != "" {
		return errors.New("--etcd-server-cert, --etcd-server-key and --etcd-client-ca are for the embedded etcd; an external etcd (--etcd-endpoints) has its own")
	}
	if o.EtcdServerCert == "" || o.EtcdServerKey == "" {
		return errors.New("--etcd-server-cert and --etcd-server-key go together (and --etcd-client-ca needs them)")
	}
	for _, s := range etcdconn.Split(o.EtcdListenClient) {
		if !strings.HasPrefix(s, "https://") && !strings.HasPrefix(s, "unixs://") {
			return fmt.Errorf("--etcd-listen-client %s: with --etcd-server-cert every client URL is https:// or unixs://", s)
		}
	}
	if o.EtcdCAFile == "" {
		return errors.New("--etcd-cafile: the controller verifies its embedded etcd's certificate with it (the CA of --etcd-server-cert)")
	}
	if o.EtcdClientCA != "" && (o.EtcdCertFile == "" || o.EtcdKeyFile == "") {
		return errors.New("--etcd-certfile and --etcd-keyfile: the embedded etcd requires client certificates (--etcd-client-ca), the controller's too")
	}
	return nil
}

// ClusterConfig is the initial config: the file (when given), overridden
// by the flags that were set, with defaults applied and validated.
func (o *Options) ClusterConfig() (*weftv1.ClusterConfig, error) {
	cfg := &weftv1.ClusterConfig{}
	if o.ConfigFile != "" {
		b, err := os.ReadFile(o.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if cfg, err = configfile.Decode(b); err != nil {
			return nil, fmt.Errorf("config %s: %w", o.ConfigFile, err)
		}
	}
	if o.set["cluster-cidr"] {
		cfg.ClusterCidr = o.ClusterCIDR
	}
	if o.set["cluster-cidr-v6"] {
		cfg.ClusterCidrV6 = o.ClusterCIDRv6
	}
	if o.set["node-mask-size"] {
		cfg.NodeMaskSize = uint32(o.NodeMaskSize)
	}
	if o.set["backend"] {
		cfg.Backend = o.Backend
	}
	if cfg.ClusterCidr == "" && cfg.ClusterCidrV6 == "" {
		cfg.ClusterCidr = "10.244.0.0/16"
	}
	cfg = validate.WithDefaults(cfg)
	if err := validate.Config(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Logger returns the process logger at level.
func Logger(level string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "weft-controller", Level: hclog.LevelFromString(level)})
}

// Run runs the controller until ctx ends: it builds the node source
// (--node-source), starts the embedded etcd (or connects to
// EtcdEndpoints), serves metrics and health, and campaigns.
// It resigns and closes etcd before it returns.
func Run(ctx context.Context, o *Options, log hclog.Logger) error {
	cfg, err := o.ClusterConfig()
	if err != nil {
		return err
	}
	// Before etcd starts, so a missing in-cluster config fails at once.
	src, err := o.Source(log)
	if err != nil {
		return err
	}
	log.Info("node source", "source", o.NodeSource, "kubeconfig", o.Kubeconfig, "node_selector", o.NodeSelector)
	endpoints := etcdconn.Split(o.EtcdEndpoints)
	if len(endpoints) == 0 {
		e, err := StartEtcd(o.DataDir, o.EtcdListenClient, o.EtcdListenPeer,
			EtcdTLS{CertFile: o.EtcdServerCert, KeyFile: o.EtcdServerKey, ClientCAFile: o.EtcdClientCA})
		if err != nil {
			return err
		}
		defer func() {
			e.Close()
			log.Info("embedded etcd stopped")
		}()
		endpoints = EmbeddedEndpoints(e)
		log.Info("embedded etcd serving", "clients", o.EtcdListenClient, "data_dir", o.DataDir,
			"tls", o.EtcdServerCert != "", "client_certificates", o.EtcdClientCA != "")
	}
	conn := etcdconn.Config{Endpoints: endpoints, CA: o.EtcdCAFile, Cert: o.EtcdCertFile, Key: o.EtcdKeyFile}
	cli, err := etcdconn.New(conn)
	if err != nil {
		return err
	}
	defer cli.Close()
	go diagnose(ctx, conn, cli.ActiveConnection(), log)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ctl := controller.New(controller.Options{
		Client: cli, Layout: keys.New(o.Prefix), Initial: cfg, Source: src,
		ElectionTTL: time.Duration(o.ElectionTTL) * time.Second,
		Logger:      log, Metrics: controller.NewMetrics(reg),
	})
	if o.MetricsAddr != "" {
		srv, err := serveMetrics(o.MetricsAddr, reg, cli, keys.New(o.Prefix), ctl, src, log)
		if err != nil {
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	err = ctl.Run(ctx)
	log.Info("controller stopped")
	return err
}

// sourceHealth is implemented by node sources that can be out of touch
// with what they follow (kubesource: the Kubernetes API).
type sourceHealth interface{ Health() error }

// serveMetrics serves /metrics, /healthz and /livez. /healthz (the
// readiness probe's): 503 when etcd does not answer; else 200 "ok <role>",
// or 200 "degraded <role>: node source: ..." when the node source cannot
// reach what it follows (a follower cannot take over without the node
// source either, but it is not the one to be taken out of service for
// it). /livez (the liveness probe's): 200 "ok" whenever the process
// serves. Everything the controller does waits on etcd or the node
// source, so no loop of it is stuck that a restart would cure: etcd or
// the API server being away is not (a restart brings neither back, and
// the log is kept as it is meanwhile), and a term that etcd ends is
// campaigned again by Run itself.
func serveMetrics(addr string, reg *prometheus.Registry, cli *clientv3.Client, layout keys.Layout, ctl *controller.Controller, src source.Source, log hclog.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/livez", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		// A key of the cluster: with etcd auth on, the controller's role
		// covers its prefix and nothing else.
		if _, err := cli.Get(ctx, layout.Head(), clientv3.WithCountOnly()); err != nil {
			http.Error(w, "etcd unreachable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		role := "follower"
		if ctl.IsLeader() {
			role = "leader"
		}
		if h, ok := src.(sourceHealth); ok {
			if err := h.Health(); err != nil {
				fmt.Fprintf(w, "degraded %s: node source: %v\n", role, err)
				return
			}
		}
		fmt.Fprintf(w, "ok %s\n", role)
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen metrics: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "error", err)
		}
	}()
	return srv, nil
}

// EtcdTLS is the client side TLS of the embedded etcd: its serving
// certificate and key, and the CA of the client certificates it requires
// (empty: none required).
type EtcdTLS struct {
	CertFile, KeyFile, ClientCAFile string
}

// StartEtcd starts a single-member embedded etcd with its data under
// dataDir/etcd, listening for clients on every URL of the comma-separated
// clientURLs (so agents in other namespaces or hosts can reach it); with
// t's certificate its https:// and unixs:// URLs serve TLS.
func StartEtcd(dataDir, clientURLs, peerURL string, t EtcdTLS) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dataDir + "/etcd"
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	var clients []url.URL
	for _, s := range etcdconn.Split(clientURLs) {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("--etcd-listen-client %q: %w", s, err)
		}
		clients = append(clients, *u)
	}
	if len(clients) == 0 {
		return nil, errors.New("--etcd-listen-client is empty")
	}
	peer, err := url.Parse(peerURL)
	if err != nil {
		return nil, fmt.Errorf("--etcd-listen-peer %q: %w", peerURL, err)
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = clients, clients
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	if t.CertFile != "" {
		cfg.ClientTLSInfo.CertFile = t.CertFile
		cfg.ClientTLSInfo.KeyFile = t.KeyFile
		if t.ClientCAFile != "" {
			cfg.ClientTLSInfo.TrustedCAFile = t.ClientCAFile
			cfg.ClientTLSInfo.ClientCertAuth = true
		}
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("start embedded etcd: not ready after 60s")
	}
}

// EmbeddedEndpoints are the client URLs e listens on, as the etcd client
// spells them: http(s)://addr, or unix(s):///path for a socket.
func EmbeddedEndpoints(e *embed.Etcd) []string {
	secure := !e.Config().ClientTLSInfo.Empty()
	var out []string
	for _, l := range e.Clients {
		scheme := "http"
		if l.Addr().Network() == "unix" {
			scheme = "unix"
		}
		if secure {
			scheme += "s"
		}
		out = append(out, scheme+"://"+l.Addr().String())
	}
	return out
}

// diagnose logs, once at start, why etcd does not answer when it does
// not: gRPC's own error is "context deadline exceeded" whatever the cause.
// cc is the client's connection: one that comes up needs no probe of its
// own (etcdconn.Unreachable), so a controller that starts does not pay a
// second connection and request for it.
func diagnose(ctx context.Context, c etcdconn.Config, cc *grpc.ClientConn, log hclog.Logger) {
	if err := c.Unreachable(ctx, cc); err != nil && ctx.Err() == nil {
		log.Error("etcd does not answer", "error", err)
	}
}
