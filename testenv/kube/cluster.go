// Package kube builds a Kubernetes cluster of real components on top of a
// bare testenv cluster and deploys weft into it the way deploy/kubernetes/
// says: kube-apiserver, kube-controller-manager and kube-scheduler in the
// control namespace on the run's etcd (TLS), and in every node namespace a
// real containerd, kubelet and kube-proxy (nftables mode). weft's image is
// assembled locally (busybox plus the static weft binaries), imported into
// each containerd, and the manifests are applied with kubectl: the agent
// DaemonSet runs on every kubelet, the controller Deployment elects one
// leader, and pods created through the API are attached by weft-cni
// through containerd.
//
// It needs root, the binaries testenv/kube/build/build.sh builds (kube-*,
// kubelet, kube-proxy, kubectl, runc), Debian's containerd, busybox-static
// and containernetworking-plugins. Every process it starts is stopped by
// PID in Close, also when New fails halfway.
package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/etcdauth"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/testenv"
)

// Options describe a Kubernetes test cluster.
type Options struct {
	Prefix      string // testenv run prefix; default fresh
	Nodes       int    // default 2
	PodsPerNode int    // demo pods per node, default 2
	Backend     string // the ClusterConfig backend written into the weft-config ConfigMap (native with auto_direct_node_routes), default vxlan
	BinDir      string // weft binaries (testenv.Build), for weftctl and weft-testenv etcd-member
	ImageBinDir string // static weft binaries for the image (BuildStatic)
	KubeBinDir  string // kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl, runc
	DeployDir   string // the repository's deploy/ directory
	// AgentArgs are appended to the agent DaemonSet's container args in
	// the DaemonSet as first applied (e.g. a datapath switch under test).
	AgentArgs []string
	// FastProbes has the kubelet ask the agent DaemonSet's probes every
	// second, giving each 2 s to answer; liveness fails after 3 failures
	// and readiness after 2 (deploy/ ships every 10 s, 6 and 3 failures).
	// The paths stay the shipped ones. A test then sees in seconds what
	// the kubelet makes of them. Like AgentArgs it is in the DaemonSet as
	// first applied.
	FastProbes bool
	Logger     hclog.Logger
}

// Cluster is a running Kubernetes test cluster with weft deployed.
type Cluster struct {
	*testenv.Cluster
	Opts Options

	pki       *pki
	adminKC   string // admin kubeconfig (system:masters)
	apiserver *testenv.Proc
	kcm       *testenv.Proc
	scheduler *testenv.Proc
	// kubeProxyKC is the nodes' kube-proxy kubeconfig (system:kube-proxy),
	// clusterCIDR the weft ConfigMap's cluster_cidr, kube-proxy's
	// --cluster-cidr.
	kubeProxyKC string
	clusterCIDR string
	etcdClient  pair // the controller's etcd client certificate (the weft-etcd Secret's)
	// apiserverEtcd is the API server's etcd client certificate.
	apiserverEtcd pair
	images        []string
	dryRun        string

	csOnce     sync.Once
	cs         *kubernetes.Clientset
	csErr      error
	httpClient *http.Client
	log        hclog.Logger

	mu    sync.Mutex
	nodes []*Node
	pods  map[string]*Pod // by pod name
	// What the nodes' containerds held when they were stopped, for
	// Leftovers: the sandboxes' network namespaces and the sandboxes.
	netns     []NetNSMount
	sandboxes []Sandbox
}

// record adds sandbox namespaces and sandboxes found while stopping a
// node (a namespace may be seen twice: before and after the sandboxes
// are removed).
func (c *Cluster) record(netns []NetNSMount, sandboxes []Sandbox) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range netns {
		if !slices.Contains(c.netns, m) {
			c.netns = append(c.netns, m)
		}
	}
	c.sandboxes = append(c.sandboxes, sandboxes...)
}

// APIServerIP and APIServerPort are where kube-apiserver listens (the
// control namespace's underlay address). ServiceIP is the `kubernetes`
// Service's ClusterIP; each node's kube-proxy DNATs it to the API server.
// KubeProxyHealthPort is kube-proxy's health server on each node's
// loopback.
const (
	APIServerIP         = "10.99.0.250"
	APIServerPort       = 6443
	ServiceCIDR         = "10.96.0.0/16"
	ServiceIP           = "10.96.0.1"
	KubeProxyHealthPort = 10256
)

func (o *Options) defaults() error {
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.PodsPerNode == 0 {
		o.PodsPerNode = 2
	}
	if o.Backend == "" {
		o.Backend = "vxlan"
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "runc"} {
		if _, err := os.Stat(filepath.Join(o.KubeBinDir, b)); err != nil {
			return fmt.Errorf("find %s in KubeBinDir %q (run testenv/kube/build/build.sh): %w", b, o.KubeBinDir, err)
		}
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "nsenter", "unshare", "nft"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("find %s (apt-get install containerd util-linux nftables): %w", b, err)
		}
	}
	for _, p := range []string{"/usr/lib/cni/portmap", "/usr/lib/cni/loopback"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("find %s (apt-get install containernetworking-plugins): %w", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(o.DeployDir, "kubernetes", "agent-daemonset.yaml")); err != nil {
		return fmt.Errorf("find the manifests in DeployDir %q: %w", o.DeployDir, err)
	}
	return nil
}

// New builds the cluster, deploys weft and creates the demo pods; it
// returns once every pod runs with an address that every other pod
// reaches is not checked here (that is the caller's check). On error
// everything made so far is removed.
func New(ctx context.Context, o Options) (*Cluster, error) {
	if err := o.defaults(); err != nil {
		return nil, fmt.Errorf("kube options: %w", err)
	}
	c := &Cluster{Opts: o, log: o.Logger.Named("kube"), pods: map[string]*Pod{}}
	if err := c.start(ctx); err != nil {
		// Say which component failed and why before Close removes the
		// run directory with the logs.
		if c.Cluster != nil {
			err = fmt.Errorf("%w\n%s", err, c.LogTails(25))
		}
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// LogTails returns the last n lines of every process log of the run.
func (c *Cluster) LogTails(n int) string {
	dir := filepath.Join(c.RunDir, "logs")
	ents, _ := os.ReadDir(dir)
	var b strings.Builder
	for _, e := range ents {
		p := &testenv.Proc{Name: e.Name(), Log: filepath.Join(dir, e.Name())}
		fmt.Fprintf(&b, "--- %s\n%s\n", e.Name(), testenv.LogTail(p, n))
	}
	return b.String()
}

func (c *Cluster) start(ctx context.Context) error {
	prefix := c.Opts.Prefix
	if prefix == "" {
		prefix = testenv.NewPrefix()
	}
	// The PKI lives in the run directory (removed with it), written once
	// testenv has made it and before etcd starts.
	pkiDir := filepath.Join(testenv.RunDirOf(prefix), "pki")
	etcdSrv := pair{Cert: filepath.Join(pkiDir, "etcd-server.crt"), Key: filepath.Join(pkiDir, "etcd-server.key")}
	prepare := func(string) error {
		p, err := newPKI(pkiDir)
		if err != nil {
			return err
		}
		c.pki = p
		if _, err := p.issue("etcd-server", "etcd", nil, APIServerIP, "127.0.0.1", "localhost"); err != nil {
			return err
		}
		// The API server's own etcd identity, and the controller's (the
		// weft-etcd Secret's); each agent has its node's (startNode).
		if c.apiserverEtcd, err = p.issue("apiserver-etcd-client", "kube-apiserver", nil); err != nil {
			return err
		}
		c.etcdClient, err = p.issue("etcd-client", etcdauth.NamesFor(keys.New(keys.DefaultPrefix)).Controller(), nil)
		return err
	}
	tc, err := testenv.New(ctx, testenv.Options{
		Prefix:      prefix,
		Nodes:       c.Opts.Nodes,
		Etcd:        testenv.EtcdExternal,
		EtcdMembers: 1,
		BinDir:      c.Opts.BinDir,
		Bare:        true,
		EtcdTLS:     &testenv.EtcdTLS{CertFile: etcdSrv.Cert, KeyFile: etcdSrv.Key, CAFile: filepath.Join(pkiDir, "ca.crt")},
		Prepare:     prepare,
		Backend:     c.Opts.Backend,
		Logger:      c.Opts.Logger,
	})
	if err != nil {
		return err
	}
	c.Cluster = tc
	if err := c.waitEtcd(ctx); err != nil {
		return err
	}
	if err := c.startControlPlane(ctx); err != nil {
		return err
	}
	if err := c.importImagesPrepare(); err != nil {
		return err
	}
	if c.clusterCIDR, err = ClusterCIDR(c.Opts.DeployDir); err != nil {
		return err
	}
	for _, tn := range tc.Nodes() {
		n, err := c.startNode(ctx, tn)
		c.mu.Lock()
		c.nodes = append(c.nodes, n)
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
	if err := c.waitNodesRegistered(ctx, 3*time.Minute); err != nil {
		return err
	}
	// The weft controller's in-cluster config dials the `kubernetes`
	// Service, which kube-proxy serves: wait for it on every node before
	// weft is deployed (kube-proxy needs no pod network, it reaches the
	// API server over the underlay), so a controller replica never starts
	// on a node that cannot reach the API yet.
	if err := c.waitKubernetesService(ctx, 3*time.Minute); err != nil {
		return err
	}
	if err := c.deployWeft(ctx); err != nil {
		return err
	}
	for _, n := range c.KubeNodes() {
		for j := 0; j < c.Opts.PodsPerNode; j++ {
			if _, err := c.CreatePod(ctx, n, fmt.Sprintf("%s-p%d", n.Name, j), nil); err != nil {
				return err
			}
		}
	}
	for _, pod := range c.Pods() {
		if err := c.WaitPod(ctx, pod, 3*time.Minute); err != nil {
			return err
		}
	}
	return nil
}

// waitEtcd waits until the run's etcd answers over its unix socket.
func (c *Cluster) waitEtcd(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		cl, err := c.Client()
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = cl.Get(pctx, "health")
			cancel()
			cl.Close()
			if err == nil {
				return nil
			}
		}
		for _, p := range c.Etcd {
			if !p.Running() {
				return fmt.Errorf("start etcd: %s exited (log %s)", p.Name, p.Log)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start etcd: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// KubeNodes returns the cluster's Kubernetes nodes in index order.
func (c *Cluster) KubeNodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Close deletes the pods' namespace handles, stops each node (kubelet, its
// pod sandboxes through the CRI, containerd: see Node.stop), the control
// plane and etcd, and removes every namespace, mount and file of the run.
// Network namespaces containerd still held after its sandboxes were
// removed are released and named in the returned error. Safe to call
// twice; Leftovers says what is still there afterwards.
func (c *Cluster) Close() error {
	var errs []error
	c.mu.Lock()
	pods := c.pods
	c.pods = map[string]*Pod{}
	nodes := c.nodes
	c.nodes = nil
	c.mu.Unlock()
	for _, p := range pods {
		p.closeHandles()
	}
	for _, n := range nodes {
		errs = append(errs, n.stop())
	}
	for _, p := range []*testenv.Proc{c.scheduler, c.kcm, c.apiserver} {
		if p != nil {
			errs = append(errs, p.Stop(10*time.Second))
		}
	}
	if c.httpClient != nil {
		c.httpClient.CloseIdleConnections()
	}
	if c.Cluster != nil {
		errs = append(errs, c.Cluster.Close())
	}
	return errors.Join(errs...)
}

// runIn runs a short command inside namespace ns and returns its output.
func runIn(ctx context.Context, ns string, name string, args ...string) (string, error) {
	var out []byte
	var err error
	ferr := testenv.InNS(ns, func() error {
		cmd := exec.CommandContext(ctx, name, args...)
		out, err = cmd.CombinedOutput()
		return nil
	})
	if ferr != nil {
		return "", ferr
	}
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
