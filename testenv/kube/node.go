package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/internal/etcdauth"
	weftpki "github.com/weftnet/weft/internal/pki"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/testenv"
)

// Node is one Kubernetes node: a testenv node namespace plus a mount
// namespace of its own (a real node has its own filesystem: the hostPath
// directories the manifests use must not be shared between nodes), with
// containerd, a kubelet and kube-proxy running in both.
type Node struct {
	*testenv.Node
	c *Cluster

	// Root holds the node's private directories; in the node's mount
	// namespace Root/etc/cni/net.d is /etc/cni/net.d, and so on (see
	// nodeMounts), and /sys/fs/bpf is the node's pin directory.
	Root       string
	Sock       string // containerd's socket
	holder     *testenv.Proc
	Containerd *testenv.Proc
	Kubelet    *testenv.Proc
	KubeProxy  *testenv.Proc
}

// nodeMounts are the host paths the manifests and the runtime use that a
// node must have for itself: the CNI config and plugin directories (the
// DaemonSet's install-cni writes them), the CNI state (weft-cni's address
// store, containerd's result cache), /run/weft (the agent's subnet file,
// which weft-cni reads), /etc/weft/etcd (the node's own etcd
// certificate, which the agent DaemonSet mounts), /var/log/containers
// (the kubelet's links to its containers' logs, a path it does not let
// configure; the logs themselves are in PodLogsDir) and /run/containerd
// (the shims' sockets, /run/containerd/s/<hash>, whatever containerd's
// state directory is).
var nodeMounts = []string{"etc/cni/net.d", "opt/cni/bin", "var/lib/cni", "run/weft", "etc/weft/etcd", "var/log/containers", "run/containerd"}

// UserCNIPlugins are the standard plugins a node gets from the
// distribution (Debian's containernetworking-plugins in /usr/lib/cni):
// loopback for containerd's pod lo, portmap for the conflist's chain.
var UserCNIPlugins = []string{"loopback", "portmap"}

// HostPath returns where path (as the node sees it, e.g.
// "/run/weft/subnet.env") lives on the host.
func (n *Node) HostPath(path string) string {
	rel := strings.TrimPrefix(path, "/")
	for _, m := range nodeMounts {
		if rel == m || strings.HasPrefix(rel, m+"/") {
			return filepath.Join(n.Root, rel)
		}
	}
	if rel == "sys/fs/bpf" || strings.HasPrefix(rel, "sys/fs/bpf/") {
		return filepath.Join(n.BPFDir, strings.TrimPrefix(rel, "sys/fs/bpf"))
	}
	return path
}

// startNode makes node tn a Kubernetes node. It returns the node also when
// starting it failed halfway, so Close stops what did start.
func (c *Cluster) startNode(ctx context.Context, tn *testenv.Node) (*Node, error) {
	n := &Node{Node: tn, c: c, Root: c.path(fmt.Sprintf("n%d", tn.Index), "root")}
	n.Sock = c.path(fmt.Sprintf("n%d", tn.Index), "containerd.sock")
	n.SubnetFile = n.HostPath("/run/weft/subnet.env")
	for _, m := range nodeMounts {
		if err := os.MkdirAll(filepath.Join(n.Root, m), 0o755); err != nil {
			return n, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := os.MkdirAll(n.BPFDir, 0o700); err != nil {
		return n, fmt.Errorf("node %s: pin dir: %w", n.Name, err)
	}
	if err := c.provisionEtcdIdentity(n); err != nil {
		return n, err
	}
	for _, p := range UserCNIPlugins {
		if err := copyFile(filepath.Join("/usr/lib/cni", p), filepath.Join(n.Root, "opt/cni/bin", p), 0o755); err != nil {
			return n, fmt.Errorf("node %s: install CNI plugin %s: %w", n.Name, p, err)
		}
	}
	if err := n.serviceRoute(ctx); err != nil {
		return n, err
	}
	// As kubeadm requires of a node: bridged traffic passes iptables (so a
	// DNAT back into the bridge needs hairpin on the pod's port).
	err := testenv.InNS(n.NS, func() error {
		return os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("1"), 0o644)
	})
	if err != nil {
		return n, fmt.Errorf("node %s: bridge-nf-call-iptables: %w", n.Name, err)
	}
	if err := n.startHolder(ctx); err != nil {
		return n, err
	}
	if err := n.startContainerd(ctx); err != nil {
		return n, err
	}
	for _, img := range c.images {
		if _, err := n.Ctr(ctx, "images", "import", img); err != nil {
			return n, fmt.Errorf("node %s: import image: %w", n.Name, err)
		}
	}
	if err := n.startKubelet(); err != nil {
		return n, err
	}
	if err := n.startKubeProxy(); err != nil {
		return n, err
	}
	c.log.Info("node started", "node", n.Name, "containerd", n.Containerd.PID(), "kubelet", n.Kubelet.PID(), "kube-proxy", n.KubeProxy.PID())
	return n, nil
}

// serviceRoute routes the Service range out of the node's underlay
// interface, as a host's default route would: a node's own connection to
// a ClusterIP (the weft controller's in-cluster config dials the
// `kubernetes` Service) is routed before kube-proxy's nat output hook
// DNATs it, and fails for lack of a route without one. Pods' connections
// need no route here: they are DNATed in prerouting.
func (n *Node) serviceRoute(ctx context.Context) error {
	if _, err := runIn(ctx, n.NS, "ip", "route", "replace", ServiceCIDR, "dev", n.Iface); err != nil {
		return fmt.Errorf("node %s: service route: %w", n.Name, err)
	}
	return nil
}

// startKubeProxy runs the real kube-proxy of the node in nftables mode,
// in the node's network and mount namespaces (as the kubelet), with the
// identity kubeadm gives it: the API server's bootstrap RBAC binds the
// ClusterRole system:node-proxier to the user system:kube-proxy, the
// common name of its client certificate (Cluster.kubeProxyKC). It serves
// every Service on the node, the `kubernetes` one the weft controller
// dials included.
//
// It touches only the node's network namespace: its conntrack table size
// is left alone (maxPerCore 0 and min 0: nf_conntrack_max goes with the
// nf_conntrack module's hashsize, which is the machine's, not the
// namespace's), its per-namespace conntrack timeouts are written in the
// node's /proc/sys/net, and its health and metrics servers listen on the
// node's loopback. oomScoreAdj 0: a test's process is not to outlive the
// machine's others under memory pressure.
func (n *Node) startKubeProxy() error {
	c := n.c
	dir := filepath.Dir(n.Root)
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
bindAddress: %s
healthzBindAddress: 127.0.0.1:%d
metricsBindAddress: 127.0.0.1:10249
mode: nftables
clusterCIDR: %s
detectLocalMode: ClusterCIDR
nodePortAddresses: [%s/32]
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
`, c.kubeProxyKC, n.Name, n.UnderlayIP, KubeProxyHealthPort, c.clusterCIDR, n.UnderlayIP)
	path := filepath.Join(dir, "kube-proxy.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	n.KubeProxy = c.NewProc(fmt.Sprintf("kube-proxy-%d", n.Index), n.NS, n.inNode(c.kbin("kube-proxy"),
		"--config="+path,
		"--v=1",
	))
	return n.KubeProxy.Start()
}

// startHolder starts the process that owns the node's mount namespace:
// private propagation from the host, the node's directories bound over
// the host paths, then everything made shared again (inside the node
// only) so Bidirectional and HostToContainer mounts work as on a host.
func (n *Node) startHolder(ctx context.Context) error {
	ready := filepath.Join(n.Root, ".mounted")
	var script strings.Builder
	script.WriteString("set -e\n")
	// The new namespace starts with copies of the host's mounts, among
	// them every named network namespace on the machine (other tests' and
	// other runs' too): drop those copies, so the node neither keeps
	// namespaces alive that their owners delete nor takes them for its
	// own (SandboxNetNS lists what is bound in the node).
	// A copy may be gone by the time its umount runs (a path listed
	// twice, a namespace its owner deleted as the copy was made), so one
	// umount's failure is not the script's; the check after the loop is:
	// the namespace is private, so no new copies arrive after unshare.
	script.WriteString(`for m in $(sed -n 's/^\([^ ]* \)\{4\}\([^ ]*\) .* - nsfs .*/\2/p' /proc/self/mountinfo); do umount "$(printf '%b' "$m")" 2>/dev/null || true; done` + "\n")
	// A copy whose path no longer resolves to it (stat shows the file
	// under it, not nsfs) cannot be named to umount (EINVAL, "not
	// mounted") in any namespace, the host's included: such mounts were
	// seen on a shared machine after runs whose processes had exited.
	// Nothing in the node can reach it by path, and SandboxNetNS skips
	// what the host holds too, so it is named and left; a reachable copy
	// fails the start.
	script.WriteString(`left=0; for m in $(sed -n 's/^\([^ ]* \)\{4\}\([^ ]*\) .* - nsfs .*/\2/p' /proc/self/mountinfo); do p="$(printf '%b' "$m")"; if [ "$(stat -f -c %T "$p" 2>/dev/null)" = nsfs ]; then echo "copy of $p" >&2; left=1; else echo "unreachable network namespace mount at $p left (its path resolves to another file system)" >&2; fi; done` + "\n")
	script.WriteString(`if [ "$left" != 0 ]; then echo "network namespace copies left in the node's mount namespace" >&2; exit 1; fi` + "\n")
	for _, m := range nodeMounts {
		fmt.Fprintf(&script, "mkdir -p /%s\nmount --bind %s /%s\n", m, filepath.Join(n.Root, m), m)
	}
	fmt.Fprintf(&script, "mount --bind %s /sys/fs/bpf\n", n.BPFDir)
	script.WriteString("mount --make-rshared /\n")
	fmt.Fprintf(&script, "echo ok > %s\n", ready)
	// tail keeps the namespace alive; its command line carries the run
	// prefix, so testenv.Down finds it after a crash.
	fmt.Fprintf(&script, "exec tail -f %s\n", ready)
	n.holder = n.c.NewProc(fmt.Sprintf("mountns-%d", n.Index), n.NS,
		[]string{"unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script.String()})
	if err := n.holder.Start(); err != nil {
		return err
	}
	return waitFor(ctx, 20*time.Second, "mount namespace of "+n.Name, func() (bool, error) {
		if !n.holder.Running() {
			return false, fmt.Errorf("exited (log %s)", n.holder.Log)
		}
		_, err := os.Stat(ready)
		return err == nil, nil
	})
}

// inNode is argv run inside the node's mount namespace (testenv starts it
// in the node's network namespace).
func (n *Node) inNode(argv ...string) []string {
	return append([]string{"nsenter", "--target", strconv.Itoa(n.holder.PID()), "--mount", "--"}, argv...)
}

func (n *Node) startContainerd(ctx context.Context) error {
	dir := filepath.Dir(n.Root)
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %[7]q
        Root = %[8]q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
`, filepath.Join(dir, "containerd", "root"), filepath.Join(dir, "containerd", "state"), n.Sock, n.Sock+".ttrpc",
		filepath.Join(dir, "containerd", "opt"), PodImage, n.c.kbin("runc"), filepath.Join(dir, "runc"))
	path := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	n.Containerd = n.c.NewProc(fmt.Sprintf("containerd-%d", n.Index), n.NS, n.inNode("containerd", "--config", path))
	if err := n.Containerd.Start(); err != nil {
		return err
	}
	return waitFor(ctx, 30*time.Second, "containerd of "+n.Name, func() (bool, error) {
		if !n.Containerd.Running() {
			return false, fmt.Errorf("exited (log %s)", n.Containerd.Log)
		}
		_, err := n.Ctr(ctx, "version")
		return err == nil, nil
	})
}

// Ctr runs containerd's ctr against the node's containerd in the CRI's
// namespace (k8s.io).
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", n.Sock, "--namespace", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s on %s: %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (n *Node) startKubelet() error {
	c := n.c
	dir := filepath.Dir(n.Root)
	cert, err := c.pki.issue("kubelet-"+n.Name, "system:node:"+n.Name, []string{"system:nodes"}, n.UnderlayIP.String())
	if err != nil {
		return err
	}
	kc := filepath.Join(dir, "kubelet.kubeconfig")
	if err := writeKubeconfig(kc, fmt.Sprintf("https://%s:%d", APIServerIP, APIServerPort), c.pki.CAFile(), cert); err != nil {
		return err
	}
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("options ndots:1\n"), 0o644); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
localStorageCapacityIsolation: false
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %s
authorization:
  mode: AlwaysAllow
podLogsDir: %s
resolvConf: %s
serializeImagePulls: false
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
`, n.Sock, n.UnderlayIP, cert.Cert, cert.Key, c.pki.CAFile(), n.PodLogsDir(), resolv)
	path := filepath.Join(dir, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	n.Kubelet = c.NewProc(fmt.Sprintf("kubelet-%d", n.Index), n.NS, n.inNode(c.kbin("kubelet"),
		"--config="+path,
		"--kubeconfig="+kc,
		"--hostname-override="+n.Name,
		"--node-ip="+n.UnderlayIP.String(),
		"--root-dir="+filepath.Join(dir, "kubelet"),
		"--cert-dir="+filepath.Join(dir, "kubelet-pki"),
		"--v=1",
	))
	return n.Kubelet.Start()
}

// RestartKubelet stops the kubelet (SIGTERM) and starts it again.
func (n *Node) RestartKubelet() error {
	if err := n.Kubelet.Stop(10 * time.Second); err != nil {
		return err
	}
	return n.Kubelet.Start()
}

// stop ends the node in the order a host would: kube-proxy, then the
// kubelet (so nothing starts sandboxes again), then every pod sandbox
// through the CRI (StopPodSandbox runs CNI DEL and removes the sandbox's
// network namespace, RemovePodSandbox its containers), then containerd,
// then whatever
// containerd left: network namespace files under its state directory
// (unmounted and removed, reported as an error), processes in the node's
// mount namespace (the shims), and the namespace's holder. The sandboxes
// and their namespaces are recorded for the cluster's Leftovers.
func (n *Node) stop() error {
	var errs []error
	if n.KubeProxy != nil {
		errs = append(errs, n.KubeProxy.Stop(10*time.Second))
	}
	if n.Kubelet != nil {
		errs = append(errs, n.Kubelet.Stop(10*time.Second))
	}
	if n.holder != nil && n.holder.Running() {
		held, err := n.SandboxNetNS()
		errs = append(errs, err)
		n.c.record(held, nil)
	}
	if n.Containerd != nil && n.Containerd.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		sbs, err := n.removeSandboxes(ctx)
		n.c.record(nil, sbs)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
		}
		// Best effort for anything not a pod's (nothing the CRI made is
		// left once its sandboxes are removed): a shim may close while its
		// last task is deleted ("ttrpc: closed"); whatever is left of it
		// dies with the mount namespace below, and the callers' leftover
		// checks see the rest.
		if err := n.removeContainers(ctx); err != nil {
			n.c.log.Info("remove containers", "node", n.Name, "error", err)
		}
		cancel()
		errs = append(errs, n.Containerd.Stop(10*time.Second))
	}
	if n.holder != nil && n.holder.Running() {
		left, err := n.SandboxNetNS()
		errs = append(errs, err)
		n.c.record(left, nil)
		errs = append(errs, n.releaseNetNS(left))
		errs = append(errs, n.killMountNS())
		errs = append(errs, n.holder.Stop(5*time.Second))
	}
	return errors.Join(errs...)
}

// removeContainers kills and deletes every task and container in the
// node's containerd, so the shims exit and the pod namespaces are freed.
func (n *Node) removeContainers(ctx context.Context) error {
	var errs []error
	out, err := n.Ctr(ctx, "tasks", "list", "-q")
	if err != nil {
		return err
	}
	for _, id := range strings.Fields(out) {
		// --force kills a running task before deleting it; one whose
		// process is gone already (an ended init container) is "not found".
		if _, err := n.Ctr(ctx, "tasks", "delete", "--force", id); err != nil && !strings.Contains(err.Error(), "not found") {
			errs = append(errs, err)
		}
	}
	ids, err := n.Ctr(ctx, "containers", "list", "-q")
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, id := range strings.Fields(ids) {
		if _, err := n.Ctr(ctx, "containers", "delete", id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killMountNS SIGKILLs every process (other than the holder) whose mount
// namespace is the node's: containerd's shims, which outlive containerd.
// They are found by namespace identity, not by name.
func (n *Node) killMountNS() error {
	holder := n.holder.PID()
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", holder))
	if err != nil {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var killed []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == holder {
			continue
		}
		if got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && got == want {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed = append(killed, pid)
			}
		}
	}
	if len(killed) > 0 {
		n.c.log.Info("killed processes left in the node's mount namespace", "node", n.Name, "pids", killed)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// waitFor polls cond every 200ms until it reports true, fails, or d
// passes.
func waitFor(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %s: not within %v %v", what, d, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// provisionEtcdIdentity puts the node's own etcd certificate where the
// agent DaemonSet mounts it from (/etc/weft/etcd: ca.crt, agent.crt,
// agent.key; CN weft-node-<node>), as an operator provisions a node with
// weftctl certs issue node NAME (docs/kubernetes.md, "etcd certificates").
func (c *Cluster) provisionEtcdIdentity(n *Node) error {
	dir := n.HostPath("/etc/weft/etcd")
	if err := copyFile(c.pki.CAFile(), filepath.Join(dir, "ca.crt"), 0o644); err != nil {
		return fmt.Errorf("node %s: etcd CA: %w", n.Name, err)
	}
	cn := etcdauth.NamesFor(keys.New(keys.DefaultPrefix)).Node(n.Name)
	if _, err := c.pki.issueTo(weftpki.FilesIn(dir, "agent"), cn, nil); err != nil {
		return fmt.Errorf("node %s: etcd certificate: %w", n.Name, err)
	}
	return nil
}
