package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/weftnet/weft/internal/etcdauth"
	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Ports inside the control namespace: external member m serves clients on
// ctlIP:2379+2m and peers on 127.0.0.1:2380+2m; controller k serves
// metrics on 127.0.0.1:9470+k... (9470, 9472, 9474).
func memberClientPort(m int) int { return 2379 + 2*m }
func memberPeerPort(m int) int   { return 2380 + 2*m }

// EtcdSocket is the unix socket of member m (embedded: m = 0) in the run
// directory; the root namespace reaches etcd through it.
func (c *Cluster) EtcdSocket(m int) string {
	return filepath.Join(c.RunDir, fmt.Sprintf("etcd%d.sock", m))
}

// ClientEndpoints are the etcd endpoints for processes in the root
// namespace (unix sockets): weftctl, etcdctl, the tests.
func (c *Cluster) ClientEndpoints() []string {
	n := 1
	if c.Opts.Etcd == EtcdExternal {
		n = c.Opts.EtcdMembers
	}
	scheme := "unix"
	if c.Opts.Secure {
		scheme = "unixs"
	}
	var out []string
	for m := 0; m < n; m++ {
		out = append(out, scheme+"://"+c.EtcdSocket(m))
	}
	return out
}

// NodeEndpoints are the etcd endpoints for agents and controllers (TCP on
// the control namespace's underlay address).
func (c *Cluster) NodeEndpoints() []string {
	n := 1
	if c.Opts.Etcd == EtcdExternal {
		n = c.Opts.EtcdMembers
	}
	scheme := "http"
	if c.Opts.EtcdTLS != nil || c.Opts.Secure {
		scheme = "https"
	}
	var out []string
	for m := 0; m < n; m++ {
		out = append(out, fmt.Sprintf("%s://%s:%d", scheme, c.ctlEndpointHost(), memberClientPort(m)))
	}
	return out
}

func (c *Cluster) bin(name string) string { return filepath.Join(c.Opts.BinDir, name) }

func (c *Cluster) initialCluster() string {
	var parts []string
	for m := 0; m < c.Opts.EtcdMembers; m++ {
		parts = append(parts, fmt.Sprintf("e%d=http://127.0.0.1:%d", m, memberPeerPort(m)))
	}
	return strings.Join(parts, ",")
}

// configFile writes the controller's ClusterConfig (protojson).
func (c *Cluster) configFile() (string, error) {
	cfg := map[string]any{"backend": c.Opts.Backend}
	if c.IPv4() {
		cfg["cluster_cidr"] = c.Opts.ClusterCIDR
	}
	if c.IPv6() {
		cfg["cluster_cidr_v6"] = c.Opts.ClusterCIDRv6
	}
	if c.Opts.NodeGrace > 0 {
		cfg["node_grace_seconds"] = c.Opts.NodeGrace
	}
	if c.Opts.Config != "" {
		extra := map[string]any{}
		if err := json.Unmarshal([]byte("{"+c.Opts.Config+"}"), &extra); err != nil {
			return "", fmt.Errorf("parse extra config: %w", err)
		}
		for k, v := range extra {
			cfg[k] = v
		}
	}
	c.nativeDefaults(cfg)
	if _, ok := cfg["bgp"]; !ok && c.Opts.Backend == "bgp" {
		cfg["bgp"] = c.defaultBGP()
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	// Check it is a ClusterConfig before any process reads it.
	if _, err := keys.DecodeConfig(b); err != nil {
		return "", fmt.Errorf("controller config: %w", err)
	}
	path := filepath.Join(c.RunDir, "config.json")
	return path, os.WriteFile(path, b, 0o644)
}

func (c *Cluster) startControl(ctx context.Context) error {
	if c.Opts.Bare {
		return c.startEtcd()
	}
	cfgPath, err := c.configFile()
	if err != nil {
		return err
	}
	if err := c.startEtcd(); err != nil {
		return err
	}
	for k := 0; k < c.Opts.Controllers; k++ {
		args := []string{c.bin("weft-controller"),
			"--prefix", weftPrefix,
			"--backend", c.Opts.Backend,
			"--config", cfgPath,
			"--metrics-addr", fmt.Sprintf("127.0.0.1:%d", 9470+2*k),
			"--log-level", c.Opts.LogLevel,
		}
		if c.IPv4() {
			args = append(args, "--cluster-cidr", c.Opts.ClusterCIDR)
		}
		if c.IPv6() {
			args = append(args, "--cluster-cidr-v6", c.Opts.ClusterCIDRv6)
		}
		if c.Opts.ElectionTTL > 0 {
			args = append(args, "--election-ttl", fmt.Sprint(c.Opts.ElectionTTL))
		}
		if c.Opts.Etcd == EtcdExternal {
			args = append(args, "--etcd-endpoints", strings.Join(c.NodeEndpoints(), ","))
		} else {
			args = append(args,
				"--data-dir", filepath.Join(c.RunDir, "ctl"),
				"--etcd-listen-client", c.ClientEndpoints()[0]+","+c.NodeEndpoints()[0])
			if c.pki != nil {
				args = append(args, "--etcd-server-cert", c.pki.server.Cert, "--etcd-server-key", c.pki.server.Key,
					"--etcd-client-ca", c.pki.CAFile)
			}
		}
		args = append(args, c.tlsFlags(c.Names().Controller())...)
		p := c.newProc(fmt.Sprintf("controller-%d", k), c.CtlNS, args)
		c.Controllers = append(c.Controllers, p)
		if err := p.start(); err != nil {
			return err
		}
	}
	// The store must answer, and the controller must have put the config
	// in force, before agents start.
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		err := c.probe(wctx)
		if err == nil {
			if c.pki != nil {
				// Before any agent: every node's user comes with it.
				if err := c.setupAuth(ctx); err != nil {
					return err
				}
			}
			// The router's BGP daemon before any agent dials it.
			return c.startBIRD()
		}
		for _, p := range append(append([]*Proc{}, c.Controllers...), c.Etcd...) {
			if !p.Running() {
				return fmt.Errorf("start control plane: %s exited (log %s)", p.Name, p.Log)
			}
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("start control plane: %w (last: %v)", wctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startEtcd starts the external etcd members (nothing in embedded mode:
// that etcd lives in the controller).
func (c *Cluster) startEtcd() error {
	if c.Opts.Etcd != EtcdExternal {
		return nil
	}
	tcp := c.NodeEndpoints()
	local := c.ClientEndpoints()
	for m := 0; m < c.Opts.EtcdMembers; m++ {
		args := []string{c.bin("weft-testenv"), "etcd-member",
			"--name", fmt.Sprintf("e%d", m),
			"--data-dir", filepath.Join(c.RunDir, fmt.Sprintf("etcd%d", m)),
			"--listen-client", local[m] + "," + tcp[m],
			"--listen-peer", fmt.Sprintf("http://127.0.0.1:%d", memberPeerPort(m)),
			"--initial-cluster", c.initialCluster(),
		}
		if t := c.Opts.EtcdTLS; t != nil {
			args = append(args, "--cert-file", t.CertFile, "--key-file", t.KeyFile, "--trusted-ca-file", t.CAFile)
		}
		p := c.newProc(fmt.Sprintf("etcd-%d", m), c.CtlNS, args)
		c.Etcd = append(c.Etcd, p)
		if err := p.start(); err != nil {
			return err
		}
	}
	return nil
}

// probe succeeds once etcd answers and /weft/config exists.
func (c *Cluster) probe(ctx context.Context) error {
	cl, err := c.Client()
	if err != nil {
		return err
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := cl.Get(pctx, keys.New(weftPrefix).Config())
	if err != nil {
		return err
	}
	if len(r.Kvs) == 0 {
		return errors.New("no config in force yet")
	}
	return nil
}

func (c *Cluster) agentArgs(n *Node) []string {
	args := []string{c.bin("weft-agent"),
		"--etcd-endpoints", strings.Join(c.NodeEndpoints(), ","),
		"--prefix", weftPrefix,
		"--node-name", n.Name,
		"--underlay", n.Iface,
		"--bpffs-dir", n.BPFDir,
		"--subnet-file", n.SubnetFile,
		"--metrics-addr", MetricsAddr,
		"--log-level", c.Opts.LogLevel,
	}
	args = append(args, c.tlsFlags(c.Names().Node(n.Name))...)
	if c.Opts.LeaseTTL > 0 {
		args = append(args, "--lease-ttl", fmt.Sprint(c.Opts.LeaseTTL))
	}
	if c.Opts.Reconcile != "" {
		args = append(args, "--reconcile-interval", c.Opts.Reconcile)
	}
	if c.Opts.ProbeGrace > 0 {
		args = append(args, "--probe-grace", c.Opts.ProbeGrace.String())
	}
	if c.Opts.Segments == 2 {
		args = append(args, "--asn", fmt.Sprint(NodeASN(n.Index)))
	}
	return append(args, c.Opts.AgentArgs...)
}

// Client returns an etcd client reaching the cluster's store from the root
// namespace (as etcd's root user in a secure cluster); the caller closes
// it.
func (c *Cluster) Client() (*clientv3.Client, error) { return c.ClientAs(etcdauth.Root) }

// ClientAs is Client authenticated as etcd user (secure clusters; others
// have no users).
func (c *Cluster) ClientAs(user string) (*clientv3.Client, error) {
	cfg := c.EtcdConfig(user)
	cfg.DialTimeout = 5 * time.Second
	cl, err := etcdconn.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return cl, nil
}

// StopEtcd stops every external etcd member (SIGTERM). Only in
// EtcdExternal mode: the embedded etcd lives in the controller.
func (c *Cluster) StopEtcd() error {
	if c.Opts.Etcd != EtcdExternal {
		return errors.New("stop etcd: the embedded etcd lives in the controller; use EtcdExternal")
	}
	var errs []error
	for _, p := range c.Etcd {
		errs = append(errs, p.Stop(10*time.Second))
	}
	return errors.Join(errs...)
}

// StartEtcd starts the stopped members again with their data.
func (c *Cluster) StartEtcd(ctx context.Context) error {
	for _, p := range c.Etcd {
		if !p.Running() {
			if err := p.start(); err != nil {
				return err
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		err := c.probe(wctx)
		if err == nil {
			// The router's BGP daemon before any agent dials it.
			return c.startBIRD()
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("start etcd: %w (last: %v)", wctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// KillController SIGKILLs controller k.
func (c *Cluster) KillController(k int) error {
	if k < 0 || k >= len(c.Controllers) {
		return fmt.Errorf("kill controller %d: no such controller", k)
	}
	return c.Controllers[k].Kill()
}

// StartController starts controller k again.
func (c *Cluster) StartController(k int) error {
	if k < 0 || k >= len(c.Controllers) {
		return fmt.Errorf("start controller %d: no such controller", k)
	}
	return c.Controllers[k].start()
}

// Weftctl runs weftctl against the cluster from the root namespace (as
// the operator in a secure cluster) and returns its combined output.
func (c *Cluster) Weftctl(ctx context.Context, args ...string) (string, error) {
	return c.WeftctlAs(ctx, c.Names().Operator(), args...)
}

// WeftctlAs is Weftctl as etcd user (secure clusters).
func (c *Cluster) WeftctlAs(ctx context.Context, user string, args ...string) (string, error) {
	full := append([]string{"--etcd-endpoints", strings.Join(c.ClientEndpoints(), ","), "--prefix", weftPrefix}, c.tlsFlags(user)...)
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, c.bin("weftctl"), full...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("weftctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// WeftctlLine is the weftctl command line an operator types to inspect the
// cluster.
func (c *Cluster) WeftctlLine() string {
	return strings.Join(append([]string{c.bin("weftctl"), "--etcd-endpoints", strings.Join(c.ClientEndpoints(), ","), "--prefix", weftPrefix},
		c.tlsFlags(c.Names().Operator())...), " ")
}

// EtcdctlLine is the etcdctl command line for the cluster's store (as the
// operator in a secure cluster).
func (c *Cluster) EtcdctlLine() string { return strings.Join(c.EtcdctlArgs(c.Names().Operator()), " ") }

// EtcdctlArgs is the etcdctl command (Debian's etcd-client) that reaches
// the store from the root namespace as etcd user.
func (c *Cluster) EtcdctlArgs(user string) []string {
	args := []string{"etcdctl", "--endpoints", strings.Join(c.ClientEndpoints(), ",")}
	if c.pki != nil {
		f := c.Identity(user)
		args = append(args, "--cacert", c.pki.CAFile, "--cert", f.Cert, "--key", f.Key)
	}
	return args
}

// Status reads node's AgentStatus from etcd (nil if the agent has none).
func (c *Cluster) Status(ctx context.Context, node string) (*weftv1.AgentStatus, error) {
	cl, err := c.Client()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	r, err := cl.Get(ctx, keys.New(weftPrefix).Status(node))
	if err != nil {
		return nil, fmt.Errorf("get status of %s: %w", node, err)
	}
	if len(r.Kvs) == 0 {
		return nil, nil
	}
	return keys.DecodeStatus(r.Kvs[0].Value)
}

// StoreNodes reads the node projection from etcd.
func (c *Cluster) StoreNodes(ctx context.Context) (map[string]*weftv1.Node, error) {
	cl, err := c.Client()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	l := keys.New(weftPrefix)
	r, err := cl.Get(ctx, l.Nodes(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := map[string]*weftv1.Node{}
	for _, kv := range r.Kvs {
		n, err := keys.DecodeNode(kv.Value)
		if err != nil {
			return nil, err
		}
		out[n.GetName()] = n
	}
	return out, nil
}

// Head reads the last event's seq.
func (c *Cluster) Head(ctx context.Context) (uint64, error) {
	cl, err := c.Client()
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	r, err := cl.Get(ctx, keys.New(weftPrefix).Head())
	if err != nil {
		return 0, fmt.Errorf("get head: %w", err)
	}
	if len(r.Kvs) == 0 {
		return 0, nil
	}
	return keys.ParseHead(r.Kvs[0].Value)
}

// Converged reports whether every node whose agent runs has a status that
// has applied the current head, is not degraded and does not say that the
// node's first convergence still waits (not_converged: for its NodeAdded,
// say); the reason names the first node that is not.
func (c *Cluster) Converged(ctx context.Context) (bool, string, error) {
	head, err := c.Head(ctx)
	if err != nil {
		return false, "", err
	}
	nodes := c.Nodes()
	for _, n := range nodes {
		if n.Agent != nil && !n.Agent.Running() {
			continue // a node whose agent is down is not expected to converge
		}
		st, err := c.Status(ctx, n.Name)
		if err != nil {
			return false, "", err
		}
		if why := notConverged(n.Name, st, head); why != "" {
			return false, why, nil
		}
	}
	return true, "", nil
}

// notConverged says why node's status st (nil when there is none) is not
// converged at head, "" when it is.
func notConverged(node string, st *weftv1.AgentStatus, head uint64) string {
	switch {
	case st == nil:
		return node + " has no status"
	case st.GetAppliedSeq() < head:
		return fmt.Sprintf("%s applied %d of head %d", node, st.GetAppliedSeq(), head)
	case st.GetDegraded() && len(st.GetUnreachablePeers()) > 0:
		u := st.GetUnreachablePeers()[0]
		return fmt.Sprintf("%s degraded: %d peers unreachable, e.g. %s: %s", node, st.GetUnreachableCount(), u.GetNode(), u.GetReason())
	case st.GetDegraded():
		return fmt.Sprintf("%s degraded: %s", node, st.GetLastError())
	case st.GetNotConverged() != "":
		return fmt.Sprintf("%s converging: %s", node, st.GetNotConverged())
	}
	return ""
}

// WaitConverged polls Converged until it holds or d passes.
func (c *Cluster) WaitConverged(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	why := ""
	for {
		ok, reason, err := c.Converged(ctx)
		if ok {
			return nil
		}
		if err != nil {
			why = err.Error()
		} else {
			why = reason
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for convergence: %s", why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// MemberConfig is one member of an external etcd (the etcd-member
// subcommand of weft-testenv).
type MemberConfig struct {
	Name           string
	DataDir        string
	ListenClient   string // comma-separated URLs (unix:// and http://)
	ListenPeer     string
	InitialCluster string
	// With CertFile and KeyFile the https:// client URLs serve TLS; with
	// TrustedCAFile they also require a client certificate signed by it.
	// unix:// URLs stay plain (only root on this machine reaches them).
	CertFile      string
	KeyFile       string
	TrustedCAFile string
}

// RunEtcdMember runs an embedded etcd member until ctx ends. A member
// started again on the same data directory rejoins its cluster.
func RunEtcdMember(ctx context.Context, m MemberConfig) error {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.DataDir
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	var err error
	if cfg.ListenClientUrls, err = parseURLs(m.ListenClient); err != nil {
		return err
	}
	// Advertise the TCP URLs only: other nodes cannot use our unix socket.
	cfg.AdvertiseClientUrls = nil
	for _, u := range cfg.ListenClientUrls {
		if u.Scheme == "http" || u.Scheme == "https" {
			cfg.AdvertiseClientUrls = append(cfg.AdvertiseClientUrls, u)
		}
	}
	if len(cfg.AdvertiseClientUrls) == 0 {
		cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	}
	if m.CertFile != "" {
		cfg.ClientTLSInfo.CertFile = m.CertFile
		cfg.ClientTLSInfo.KeyFile = m.KeyFile
		if m.TrustedCAFile != "" {
			cfg.ClientTLSInfo.TrustedCAFile = m.TrustedCAFile
			cfg.ClientTLSInfo.ClientCertAuth = true
			cfg.ClientAutoTLS = false
		}
	}
	if cfg.ListenPeerUrls, err = parseURLs(m.ListenPeer); err != nil {
		return err
	}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	cfg.InitialCluster = m.InitialCluster
	cfg.InitialClusterToken = "weft-testenv"
	// Short elections: tests stop and start the whole cluster.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	if _, err := os.Stat(filepath.Join(m.DataDir, "member")); err == nil {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd member %s: %w", m.Name, err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd member %s: %w", m.Name, err)
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd member %s: %w", m.Name, err)
	}
}

func parseURLs(s string) ([]url.URL, error) {
	var out []url.URL
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("parse url %q: %w", part, err)
		}
		out = append(out, *u)
	}
	return out, nil
}

// Config reads the cluster config in force.
func (c *Cluster) Config(ctx context.Context) (*weftv1.ClusterConfig, error) {
	cl, err := c.Client()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	r, err := cl.Get(ctx, keys.New(weftPrefix).Config())
	if err != nil {
		return nil, fmt.Errorf("get config: %w", err)
	}
	if len(r.Kvs) == 0 {
		return nil, errors.New("get config: none in force")
	}
	return keys.DecodeConfig(r.Kvs[0].Value)
}

// SetConfig changes the cluster config the way an operator does: it reads
// the config in force, lets mutate change it, and hands the result to
// `weftctl config set FILE`. It returns once the controller has put it in
// force (or refused it: the error then carries the reason).
func (c *Cluster) SetConfig(ctx context.Context, mutate func(*weftv1.ClusterConfig)) error {
	cfg, err := c.Config(ctx)
	if err != nil {
		return err
	}
	mutate(cfg)
	want := keys.Encode(cfg)
	f, err := os.CreateTemp(c.RunDir, "config-*.json")
	if err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(want); err != nil {
		f.Close()
		return fmt.Errorf("set config: %w", err)
	}
	f.Close()
	if out, err := c.Weftctl(ctx, "config", "set", f.Name()); err != nil {
		return fmt.Errorf("set config: %w (%s)", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := c.Config(ctx)
		if err == nil && matches(cfg, got) {
			return nil
		}
		if st, serr := c.desiredStatus(ctx); serr == nil && st != nil && !st.GetAccepted() && st.GetReason() != "" {
			return fmt.Errorf("set config: refused: %s", st.GetReason())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("set config: not in force after 30s (in force: %s)", keys.EncodeString(got))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// matches reports whether every field set in want has that value in got
// (the controller may fill defaults and bump bookkeeping fields).
func matches(want, got *weftv1.ClusterConfig) bool {
	if got == nil {
		return false
	}
	return want.GetBackend() == got.GetBackend() && want.GetMtu() == got.GetMtu() &&
		want.GetAutoDirectNodeRoutes() == got.GetAutoDirectNodeRoutes() &&
		want.GetMasquerade() == got.GetMasquerade() &&
		want.GetNativeRoutingCidr() == got.GetNativeRoutingCidr() &&
		want.GetNodeGraceSeconds() == got.GetNodeGraceSeconds() &&
		(want.GetHostRouting() == "" || want.GetHostRouting() == got.GetHostRouting())
}

func (c *Cluster) desiredStatus(ctx context.Context) (*weftv1.ConfigStatus, error) {
	cl, err := c.Client()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	r, err := cl.Get(ctx, keys.New(weftPrefix).DesiredStatus())
	if err != nil || len(r.Kvs) == 0 {
		return nil, err
	}
	return keys.DecodeConfigStatus(r.Kvs[0].Value)
}
