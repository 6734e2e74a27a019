package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/nodeagent/cni"
	"github.com/weftnet/weft/testenv"
)

// Pod is a pod created through the API server with nodeName set (no
// scheduling needed) and attached by containerd through weft-cni. Once it
// runs, its network namespace (the sandbox's) is given a name in
// /run/netns so testenv's checks can enter it, and an echo server runs
// there.
type Pod struct {
	Name string
	Node *Node
	UID  string
	IP   netip.Addr // from the pod's status, as the API sees it
	NS   string     // named handle of the pod's network namespace ("" before it runs)
	echo *testenv.Echo
}

// Target is the pod as a connectivity-check endpoint.
func (p *Pod) Target() testenv.Target { return testenv.Target{Name: p.Name, NS: p.NS, Addr: p.IP} }

// Pods returns the pods created through the cluster, by node and name.
func (c *Cluster) Pods() []*Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Pod, 0, len(c.pods))
	for _, p := range c.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node.Index != out[j].Node.Index {
			return out[i].Node.Index < out[j].Node.Index
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Targets returns every running pod as a check target.
func (c *Cluster) Targets() []testenv.Target {
	var out []testenv.Target
	for _, p := range c.Pods() {
		if p.NS != "" {
			out = append(out, p.Target())
		}
	}
	return out
}

// CrossNode is a skip function for testenv.CheckAll keeping pairs of pods
// on different nodes.
func (c *Cluster) CrossNode() func(from, to testenv.Target) bool {
	node := map[string]string{}
	for _, p := range c.Pods() {
		node[p.NS] = p.Node.Name
	}
	return func(from, to testenv.Target) bool { return node[from.NS] == node[to.NS] }
}

// PodSpec is the spec of the demo's pods: PodImage (never pulled) on node,
// exiting quickly on SIGTERM.
func PodSpec(node string) corev1.PodSpec {
	grace := int64(2)
	return corev1.PodSpec{
		NodeName:                      node,
		TerminationGracePeriodSeconds: &grace,
		AutomountServiceAccountToken:  new(bool),
		Containers: []corev1.Container{{
			Name:            "main",
			Image:           PodImage,
			ImagePullPolicy: corev1.PullNever,
		}},
	}
}

// CreatePod creates pod name on node n through the API (mutate may change
// it first, e.g. to add a hostPort). It does not wait: see WaitPod.
func (c *Cluster) CreatePod(ctx context.Context, n *Node, name string, mutate func(*corev1.Pod)) (*Pod, error) {
	cs, err := c.Clientset()
	if err != nil {
		return nil, err
	}
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: corev1.NamespaceDefault, Labels: map[string]string{"app": "weft-testenv"}},
		Spec:       PodSpec(n.Name),
	}
	if mutate != nil {
		mutate(obj)
	}
	got, err := cs.CoreV1().Pods(corev1.NamespaceDefault).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	p := &Pod{Name: name, Node: n, UID: string(got.UID)}
	c.mu.Lock()
	c.pods[name] = p
	c.mu.Unlock()
	return p, nil
}

// PodPhase reads the pod from the API: its phase, IP and the reason of
// the last sandbox failure event, if any.
func (c *Cluster) getPod(ctx context.Context, name string) (*corev1.Pod, error) {
	cs, err := c.Clientset()
	if err != nil {
		return nil, err
	}
	return cs.CoreV1().Pods(corev1.NamespaceDefault).Get(ctx, name, metav1.GetOptions{})
}

// WaitPod waits until the pod runs with an IP in its status, names its
// network namespace and starts its echo server. A pod that does not come
// up is reported with the last events about it (e.g. a CNI error).
func (c *Cluster) WaitPod(ctx context.Context, p *Pod, d time.Duration) error {
	if _, err := c.WaitPodIP(ctx, p, d); err != nil {
		return err
	}
	if err := c.namePodNS(ctx, p); err != nil {
		return err
	}
	var err error
	if p.echo, err = testenv.StartEcho(p.NS); err != nil {
		return err
	}
	return nil
}

// WaitPodIP waits until the API reports the pod Running with an IP, and
// returns (and records) that IP.
func (c *Cluster) WaitPodIP(ctx context.Context, p *Pod, d time.Duration) (netip.Addr, error) {
	cs, err := c.Clientset()
	if err != nil {
		return netip.Addr{}, err
	}
	err = waitFor(ctx, d, "pod "+p.Name+" running with an IP", func() (bool, error) {
		got, err := cs.CoreV1().Pods(corev1.NamespaceDefault).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if got.Status.Phase != corev1.PodRunning || got.Status.PodIP == "" {
			return false, nil
		}
		ip, err := netip.ParseAddr(got.Status.PodIP)
		if err != nil {
			return false, fmt.Errorf("pod %s: status podIP %q: %w", p.Name, got.Status.PodIP, err)
		}
		p.IP = ip
		return true, nil
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w; events: %s", err, c.PodEvents(ctx, p.Name))
	}
	return p.IP, nil
}

// PodEvents returns the API's events about pod name, oldest first, one
// per line ("reason: message").
func (c *Cluster) PodEvents(ctx context.Context, name string) string {
	cs, err := c.Clientset()
	if err != nil {
		return err.Error()
	}
	evs, err := cs.CoreV1().Events(corev1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, e := range evs.Items {
		lines = append(lines, fmt.Sprintf("%s: %s", e.Reason, e.Message))
	}
	return strings.Join(lines, "\n")
}

// SandboxPID finds the PID of the pod's sandbox (its network namespace
// owner) in the node's containerd by the pod's UID label.
func (n *Node) SandboxPID(ctx context.Context, uid string) (int, error) {
	ids, err := n.Ctr(ctx, "containers", "list", "-q",
		fmt.Sprintf(`labels."io.kubernetes.pod.uid"==%s,labels."io.cri-containerd.kind"==sandbox`, uid))
	if err != nil {
		return 0, err
	}
	want := map[string]bool{}
	for _, id := range strings.Fields(ids) {
		want[id] = true
	}
	tasks, err := n.Ctr(ctx, "tasks", "list")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(tasks, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && want[f[0]] && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no running sandbox for pod uid %s on %s", uid, n.Name)
}

// namePodNS bind-mounts the pod sandbox's network namespace at
// /run/netns/<pod name> (the pod names follow testenv's <prefix>-n<i>-p<j>
// so testenv.Down removes a crashed run's handles).
func (c *Cluster) namePodNS(ctx context.Context, p *Pod) error {
	pid, err := p.Node.SandboxPID(ctx, p.UID)
	if err != nil {
		return err
	}
	path := filepath.Join("/run/netns", p.Name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("name netns of pod %s: %w", p.Name, err)
	}
	f.Close()
	if err := unix.Mount(fmt.Sprintf("/proc/%d/ns/net", pid), path, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return fmt.Errorf("name netns of pod %s: %w", p.Name, err)
	}
	p.NS = p.Name
	return nil
}

// closeHandles stops the pod's echo server and drops the name of its
// network namespace (the namespace itself belongs to containerd).
func (p *Pod) closeHandles() {
	if p.echo != nil {
		p.echo.Close()
		p.echo = nil
	}
	if p.NS != "" {
		path := filepath.Join("/run/netns", p.NS)
		unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		p.NS = ""
	}
}

// DeletePod deletes the pod through the API and waits until the object is
// gone (the kubelet has stopped it and containerd has run CNI DEL).
func (c *Cluster) DeletePod(ctx context.Context, p *Pod, d time.Duration) error {
	if err := c.DeletePodNoWait(ctx, p); err != nil {
		return err
	}
	return c.WaitPodGone(ctx, p.Name, d)
}

// DeletePodNoWait asks the API to delete the pod and forgets it.
func (c *Cluster) DeletePodNoWait(ctx context.Context, p *Pod) error {
	p.closeHandles()
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	if err := cs.CoreV1().Pods(corev1.NamespaceDefault).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s: %w", p.Name, err)
	}
	c.mu.Lock()
	delete(c.pods, p.Name)
	c.mu.Unlock()
	return nil
}

// WaitPodGone waits until the API no longer has pod name.
func (c *Cluster) WaitPodGone(ctx context.Context, name string, d time.Duration) error {
	return waitFor(ctx, d, "pod "+name+" gone", func() (bool, error) {
		_, err := c.getPod(ctx, name)
		return apierrors.IsNotFound(err), nil
	})
}

// Leases reads weft-cni's address store on node n (the node's
// /var/lib/cni/weft/weft, as the conflist's dataDir and network name make
// it) and returns the leased addresses by container ID.
func (n *Node) Leases() (map[string][]netip.Addr, error) {
	dir := n.HostPath("/var/lib/cni/weft/weft")
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return map[string][]netip.Addr{}, nil
	}
	st, err := cni.OpenStore(dir)
	if err != nil {
		return nil, err
	}
	all, err := st.List()
	if err != nil {
		return nil, err
	}
	out := map[string][]netip.Addr{}
	for _, a := range all {
		out[a.ContainerID] = append(out[a.ContainerID], a.IPs...)
	}
	return out, nil
}
