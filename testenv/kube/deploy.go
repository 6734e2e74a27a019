package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftnet/weft/proto/configfile"
	"github.com/weftnet/weft/testenv"
)

// Namespace is where deploy/kubernetes/ puts weft.
const Namespace = "weft-system"

// Manifests are deploy/kubernetes/'s files in the order they are applied.
var Manifests = []string{"namespace.yaml", "rbac.yaml", "configmap.yaml", "etcd-secret.yaml", "agent-daemonset.yaml", "controller-deployment.yaml"}

// ControllerMetricsPort and AgentMetricsPort are the loopback ports the
// manifests give weft-controller and weft-agent (hostNetwork: the node
// namespace's loopback).
const (
	ControllerMetricsPort = 9470
	AgentMetricsPort      = 9471
)

// BuildStatic compiles the weft binaries that go into the image with
// CGO_ENABLED=0 (the image has no C library), with testenv's build
// settings so they share its compile cache.
func BuildStatic(ctx context.Context, dir string) error {
	return testenv.BuildCommands(ctx, dir, []string{"weft-controller", "weft-agent", "weft-bgp", "weftctl", "weft-cni"})
}

// WeftImage reads the image the agent DaemonSet runs (the one image of
// every manifest).
func WeftImage(deployDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(deployDir, "kubernetes", "agent-daemonset.yaml"))
	if err != nil {
		return "", fmt.Errorf("read agent manifest: %w", err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.Unmarshal(b, &ds); err != nil {
		return "", fmt.Errorf("decode agent manifest: %w", err)
	}
	if len(ds.Spec.Template.Spec.Containers) == 0 {
		return "", fmt.Errorf("agent manifest has no container")
	}
	return ds.Spec.Template.Spec.Containers[0].Image, nil
}

// ClusterCIDR reads the cluster_cidr of the ClusterConfig that
// deploy/kubernetes/configmap.yaml ships (decoded as the controller's
// --config reads it, configfile.Decode): the range of every pod address
// weft hands out, kube-proxy's --cluster-cidr (its traffic to a Service
// from outside that range is masqueraded).
func ClusterCIDR(deployDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(deployDir, "kubernetes", "configmap.yaml"))
	if err != nil {
		return "", fmt.Errorf("read weft-config: %w", err)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(b, &cm); err != nil {
		return "", fmt.Errorf("decode weft-config: %w", err)
	}
	cfg, err := configfile.Decode([]byte(cm.Data["cluster-config.json"]))
	if err != nil {
		return "", fmt.Errorf("decode weft-config cluster-config.json: %w", err)
	}
	if _, err := netip.ParsePrefix(cfg.GetClusterCidr()); err != nil {
		return "", fmt.Errorf("weft-config cluster_cidr: %w", err)
	}
	return cfg.GetClusterCidr(), nil
}

// importImagesPrepare writes the two image archives every node imports:
// the pod/sandbox image and weft's image under the name the manifests use.
func (c *Cluster) importImagesPrepare() error {
	dir := c.path("images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	bb, err := busyboxLayer()
	if err != nil {
		return err
	}
	pod := filepath.Join(dir, "busybox.tar")
	if err := writeImage(pod, PodImage, bb, nil, podCmd); err != nil {
		return err
	}
	ref, err := WeftImage(c.Opts.DeployDir)
	if err != nil {
		return err
	}
	files, err := weftLayer(c.Opts.ImageBinDir, filepath.Join(c.Opts.DeployDir, "10-weft.conflist"))
	if err != nil {
		return err
	}
	weft := filepath.Join(dir, "weft.tar")
	if err := writeImage(weft, ref, files, []string{"/usr/local/bin/weft-agent"}, nil); err != nil {
		return err
	}
	c.images = []string{pod, weft}
	return nil
}

// ManifestDryRun is the output of `kubectl apply --dry-run=server` of
// every manifest in deploy/kubernetes/ (after the namespace exists).
func (c *Cluster) ManifestDryRun() string { return c.dryRun }

// deployWeft applies deploy/kubernetes/ with kubectl: every manifest is
// first accepted by the API server in a server-side dry run; the etcd
// Secret's placeholders are replaced by the run's etcd endpoint and
// client certificate; then everything else is applied as shipped.
func (c *Cluster) deployWeft(ctx context.Context) error {
	dir := filepath.Join(c.Opts.DeployDir, "kubernetes")
	file := func(name string) string { return filepath.Join(dir, name) }
	if _, err := c.Kubectl(ctx, "apply", "-f", file("namespace.yaml")); err != nil {
		return err
	}
	args := []string{"apply", "--dry-run=server"}
	for _, m := range Manifests {
		args = append(args, "-f", file(m))
	}
	out, err := c.Kubectl(ctx, args...)
	if err != nil {
		return fmt.Errorf("the API server refuses deploy/kubernetes/: %w", err)
	}
	c.dryRun = out
	for _, m := range []string{"rbac.yaml", "configmap.yaml"} {
		if _, err := c.Kubectl(ctx, "apply", "-f", file(m)); err != nil {
			return err
		}
	}
	if err := c.setBackend(ctx); err != nil {
		return err
	}
	// The Secret as its comment says to make it, with this run's etcd.
	pemDir := c.path("etcd-secret")
	if err := os.MkdirAll(pemDir, 0o700); err != nil {
		return err
	}
	for src, dst := range map[string]string{c.pki.CAFile(): "ca.crt", c.etcdClient.Cert: "tls.crt", c.etcdClient.Key: "tls.key"} {
		if err := copyFile(src, filepath.Join(pemDir, dst), 0o600); err != nil {
			return err
		}
	}
	if _, err := c.Kubectl(ctx, "-n", Namespace, "create", "secret", "generic", "weft-etcd",
		"--from-literal=endpoints="+strings.Join(c.NodeEndpoints(), ","),
		"--from-file="+filepath.Join(pemDir, "ca.crt"),
		"--from-file="+filepath.Join(pemDir, "tls.crt"),
		"--from-file="+filepath.Join(pemDir, "tls.key")); err != nil {
		return err
	}
	agent, err := c.agentManifest(file("agent-daemonset.yaml"))
	if err != nil {
		return err
	}
	for _, m := range []string{agent, file("controller-deployment.yaml")} {
		if _, err := c.Kubectl(ctx, "apply", "-f", m); err != nil {
			return err
		}
	}
	return c.WaitWeft(ctx, 4*time.Minute)
}

// agentManifest returns the agent DaemonSet's manifest to apply: the
// shipped file, or with AgentArgs or FastProbes a copy in the run
// directory that has them, so the DaemonSet's first version has them and
// no rollout of the agents follows.
func (c *Cluster) agentManifest(shipped string) (string, error) {
	if len(c.Opts.AgentArgs) == 0 && !c.Opts.FastProbes {
		return shipped, nil
	}
	b, err := os.ReadFile(shipped)
	if err != nil {
		return "", err
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		return "", fmt.Errorf("decode %s: %w", shipped, err)
	}
	if len(ds.Spec.Template.Spec.Containers) == 0 {
		return "", fmt.Errorf("%s: no container", shipped)
	}
	ct := &ds.Spec.Template.Spec.Containers[0]
	ct.Args = append(ct.Args, c.Opts.AgentArgs...)
	if c.Opts.FastProbes {
		if ct.LivenessProbe == nil || ct.ReadinessProbe == nil {
			return "", fmt.Errorf("%s: the agent has no liveness or readiness probe to speed up", shipped)
		}
		for p, failures := range map[*corev1.Probe]int32{ct.LivenessProbe: 3, ct.ReadinessProbe: 2} {
			p.PeriodSeconds, p.TimeoutSeconds, p.FailureThreshold = 1, 2, failures
		}
	}
	out, err := yaml.Marshal(&ds)
	if err != nil {
		return "", err
	}
	path := c.path("agent-daemonset.yaml")
	return path, os.WriteFile(path, out, 0o644)
}

// setBackend writes Options.Backend into the ConfigMap's ClusterConfig
// (deploy/ ships vxlan) before the controller starts; with native also
// auto_direct_node_routes, as testenv does (every node is on one segment,
// and nothing else routes the pod CIDRs).
func (c *Cluster) setBackend(ctx context.Context) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	cm, err := cs.CoreV1().ConfigMaps(Namespace).Get(ctx, "weft-config", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get weft-config: %w", err)
	}
	cfg := map[string]any{}
	if err := json.Unmarshal([]byte(cm.Data["cluster-config.json"]), &cfg); err != nil {
		return fmt.Errorf("decode weft-config cluster-config.json: %w", err)
	}
	if cfg["backend"] == c.Opts.Backend {
		return nil
	}
	cfg["backend"] = c.Opts.Backend
	if _, set := cfg["auto_direct_node_routes"]; !set && c.Opts.Backend == "native" {
		cfg["auto_direct_node_routes"] = true
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	cm.Data["cluster-config.json"] = string(b)
	if _, err := cs.CoreV1().ConfigMaps(Namespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update weft-config: %w", err)
	}
	return nil
}

// WaitWeft waits until the agent DaemonSet is ready on every node (each
// node's agent wrote its subnet file), both controller replicas run and
// one of them leads.
func (c *Cluster) WaitWeft(ctx context.Context, d time.Duration) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	nodes := c.KubeNodes()
	return waitFor(ctx, d, "weft deployed (agents ready on every node, controller leading)", func() (bool, error) {
		for _, n := range nodes {
			if !n.Kubelet.Running() {
				return false, fmt.Errorf("kubelet of %s exited (log %s)", n.Name, n.Kubelet.Log)
			}
			if !n.Containerd.Running() {
				return false, fmt.Errorf("containerd of %s exited (log %s)", n.Name, n.Containerd.Log)
			}
		}
		ds, err := cs.AppsV1().DaemonSets(Namespace).Get(ctx, "weft-agent", metav1.GetOptions{})
		if err != nil || ds.Status.NumberReady != int32(len(nodes)) || ds.Status.UpdatedNumberScheduled != int32(len(nodes)) {
			return false, nil
		}
		dep, err := cs.AppsV1().Deployments(Namespace).Get(ctx, "weft-controller", metav1.GetOptions{})
		if err != nil || dep.Status.ReadyReplicas < 1 {
			return false, nil
		}
		for _, n := range nodes {
			if _, err := testenv.ReadSubnetEnv(n.SubnetFile); err != nil {
				return false, nil
			}
		}
		_, leaders, _ := c.ControllerLeaders(ctx)
		return leaders == 1, nil
	})
}

// ControllerLeaders scrapes weft-controller's metrics on every node (the
// Deployment's replicas run with hostNetwork) and returns the nodes
// where one runs and how many report themselves leader.
func (c *Cluster) ControllerLeaders(ctx context.Context) (running []string, leaders int, err error) {
	for _, n := range c.KubeNodes() {
		code, body, err := HTTPGet(ctx, n.NS, fmt.Sprintf("http://127.0.0.1:%d/metrics", ControllerMetricsPort))
		if err != nil || code != http.StatusOK {
			continue
		}
		running = append(running, n.Name)
		if testenv.ParseMetrics(body)["weft_controller_leader"] == 1 {
			leaders++
		}
	}
	return running, leaders, nil
}

// AgentGet fetches path from the agent on node n (its metrics address on
// the node's loopback).
func (c *Cluster) AgentGet(ctx context.Context, n *Node, path string) (int, string, error) {
	return HTTPGet(ctx, n.NS, fmt.Sprintf("http://127.0.0.1:%d%s", AgentMetricsPort, path))
}

// ControllerGet fetches path from the weft-controller replica on node n.
func (c *Cluster) ControllerGet(ctx context.Context, n *Node, path string) (int, string, error) {
	return HTTPGet(ctx, n.NS, fmt.Sprintf("http://127.0.0.1:%d%s", ControllerMetricsPort, path))
}

// HTTPGet fetches url with a connection made inside namespace ns.
func HTTPGet(ctx context.Context, ns, url string) (int, string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := testenv.InNS(ns, func() error {
				var d net.Dialer
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = io.Copy(&b, resp.Body)
	return resp.StatusCode, b.String(), err
}

// waitKubernetesService waits until a TCP connection from every node
// namespace to the `kubernetes` Service (ServiceIP:443) is made: the
// node's kube-proxy has DNATed it to the API server.
func (c *Cluster) waitKubernetesService(ctx context.Context, d time.Duration) error {
	addr := net.JoinHostPort(ServiceIP, "443")
	for _, n := range c.KubeNodes() {
		err := waitFor(ctx, d, "kube-proxy of "+n.Name+" to serve the kubernetes Service", func() (bool, error) {
			if !n.KubeProxy.Running() {
				return false, fmt.Errorf("kube-proxy exited (log %s)", n.KubeProxy.Log)
			}
			var conn net.Conn
			err := testenv.InNS(n.NS, func() error {
				var err error
				conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
				return err
			})
			if err != nil {
				return false, nil
			}
			conn.Close()
			return true, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// waitNodesRegistered waits until every kubelet has registered its Node.
func (c *Cluster) waitNodesRegistered(ctx context.Context, d time.Duration) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	nodes := c.KubeNodes()
	return waitFor(ctx, d, "kubelets to register their Nodes", func() (bool, error) {
		for _, n := range nodes {
			if !n.Kubelet.Running() {
				return false, fmt.Errorf("kubelet of %s exited (log %s)", n.Name, n.Kubelet.Log)
			}
			if _, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err != nil {
				return false, nil
			}
		}
		// The demo pods live in "default"; its ServiceAccount comes from
		// the controller-manager.
		if _, err := cs.CoreV1().ServiceAccounts(corev1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, nil
		}
		return true, nil
	})
}
