package kube

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/testenv"
)

func (c *Cluster) kbin(name string) string { return filepath.Join(c.Opts.KubeBinDir, name) }

func (c *Cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.RunDir}, parts...)...)
}

// APIServer is the API server process (Stop/Start it to take the API away).
func (c *Cluster) APIServer() *testenv.Proc { return c.apiserver }

// AdminKubeconfig is a kubeconfig with an admin (system:masters) client
// certificate; the API server is reachable only from inside the run's
// namespaces (kubectl runs in the control namespace).
func (c *Cluster) AdminKubeconfig() string { return c.adminKC }

func (c *Cluster) startControlPlane(ctx context.Context) error {
	p := c.pki
	server := fmt.Sprintf("https://%s:%d", APIServerIP, APIServerPort)
	serving, err := p.issue("apiserver", "kube-apiserver", nil,
		APIServerIP, ServiceIP, "127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
	if err != nil {
		return err
	}
	kubeletClient, err := p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"})
	if err != nil {
		return err
	}
	sa, err := p.serviceAccountKey()
	if err != nil {
		return err
	}
	for _, u := range []struct{ name, cn, org string }{
		{"admin", "weft-testenv-admin", "system:masters"},
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
		// Every node's kube-proxy, as kubeadm's kube-proxy ServiceAccount
		// on every node: the bootstrap ClusterRoleBinding
		// system:node-proxier grants this user what kube-proxy reads.
		{"kube-proxy", "system:kube-proxy", ""},
	} {
		var orgs []string
		if u.org != "" {
			orgs = []string{u.org}
		}
		cert, err := p.issue(u.name, u.cn, orgs)
		if err != nil {
			return err
		}
		if err := writeKubeconfig(c.path(u.name+".kubeconfig"), server, p.CAFile(), cert); err != nil {
			return err
		}
	}
	c.adminKC = c.path("admin.kubeconfig")
	c.kubeProxyKC = c.path("kube-proxy.kubeconfig")

	c.apiserver = c.NewProc("kube-apiserver", c.CtlNS, []string{c.kbin("kube-apiserver"),
		"--etcd-servers=" + strings.Join(c.NodeEndpoints(), ","),
		"--etcd-cafile=" + p.CAFile(),
		"--etcd-certfile=" + c.apiserverEtcd.Cert,
		"--etcd-keyfile=" + c.apiserverEtcd.Key,
		"--bind-address=" + APIServerIP,
		"--advertise-address=" + APIServerIP,
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--tls-cert-file=" + serving.Cert,
		"--tls-private-key-file=" + serving.Key,
		"--client-ca-file=" + p.CAFile(),
		"--kubelet-client-certificate=" + kubeletClient.Cert,
		"--kubelet-client-key=" + kubeletClient.Key,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + sa.Cert,
		"--service-account-signing-key-file=" + sa.Key,
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		// The agent DaemonSet's init container is privileged.
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	})
	if err := c.apiserver.Start(); err != nil {
		return err
	}
	if err := c.WaitAPI(ctx, 2*time.Minute); err != nil {
		return err
	}
	c.kcm = c.NewProc("kube-controller-manager", c.CtlNS, []string{c.kbin("kube-controller-manager"),
		"--kubeconfig=" + c.path("controller-manager.kubeconfig"),
		"--use-service-account-credentials=true",
		"--root-ca-file=" + p.CAFile(),
		"--service-account-private-key-file=" + sa.Key,
		"--leader-elect=false",
		// No node IPAM: weft allocates pod CIDRs itself (Nodes carry none).
		"--allocate-node-cidrs=false",
		"--bind-address=127.0.0.1",
		"--secure-port=10257",
		"--authentication-skip-lookup=true",
		"--v=1",
	})
	if err := c.kcm.Start(); err != nil {
		return err
	}
	c.scheduler = c.NewProc("kube-scheduler", c.CtlNS, []string{c.kbin("kube-scheduler"),
		"--kubeconfig=" + c.path("scheduler.kubeconfig"),
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=10259",
		"--authentication-skip-lookup=true",
		"--v=1",
	})
	return c.scheduler.Start()
}

// dialInCtl dials from inside the control namespace: the root namespace
// has no route into the run's underlay.
func (c *Cluster) dialInCtl(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := testenv.InNS(c.CtlNS, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Clientset returns the admin client of the API server (connections made
// from inside the control namespace). It is made once per cluster, with
// the certificates in memory (file-based ones start a rotation goroutine
// per client that never ends), and its connections are closed by Close.
func (c *Cluster) Clientset() (*kubernetes.Clientset, error) {
	c.csOnce.Do(func() {
		rc, err := clientcmd.BuildConfigFromFlags("", c.adminKC)
		if err != nil {
			c.csErr = fmt.Errorf("load kubeconfig %s: %w", c.adminKC, err)
			return
		}
		for _, f := range []struct {
			path string
			dst  *[]byte
		}{{rc.CAFile, &rc.CAData}, {rc.CertFile, &rc.CertData}, {rc.KeyFile, &rc.KeyData}} {
			if *f.dst, err = os.ReadFile(f.path); err != nil {
				c.csErr = fmt.Errorf("read %s: %w", f.path, err)
				return
			}
		}
		rc.CAFile, rc.CertFile, rc.KeyFile = "", "", ""
		rc.Dial = c.dialInCtl
		rc.Timeout = 30 * time.Second
		hc, err := rest.HTTPClientFor(rc)
		if err != nil {
			c.csErr = fmt.Errorf("kubernetes http client: %w", err)
			return
		}
		c.httpClient = hc
		c.cs, c.csErr = kubernetes.NewForConfigAndClient(rc, hc)
	})
	return c.cs, c.csErr
}

// WaitAPI waits until the API server answers /readyz.
func (c *Cluster) WaitAPI(ctx context.Context, d time.Duration) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(d)
	for {
		var status int
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status).Raw()
		if err == nil && status == http.StatusOK {
			return nil
		}
		if !c.apiserver.Running() {
			return fmt.Errorf("start kube-apiserver: exited (log %s)", c.apiserver.Log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for kube-apiserver: %v %s", err, body)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Kubectl runs the real kubectl (as the admin) inside the control
// namespace and returns its combined output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return runIn(ctx, c.CtlNS, c.kbin("kubectl"), append([]string{"--kubeconfig", c.adminKC, "--cache-dir", c.path("kubectl-cache")}, args...)...)
}

// KubectlLine is the kubectl command line an operator types to use the
// cluster from the root namespace.
func (c *Cluster) KubectlLine() string {
	return fmt.Sprintf("nsenter --net=/run/netns/%s %s --kubeconfig %s", c.CtlNS, c.kbin("kubectl"), c.adminKC)
}

// ContainerLogs returns the log files of the containers of the pods in
// namespace whose names begin with prefix, found by pod UID in the pod
// logs directory of the node the pod was bound to (Node.PodLogsDir). A pod
// on a deleted Node is among them while the API still holds it: its log,
// which the API server no longer serves, is the one that tells why.
func (c *Cluster) ContainerLogs(ctx context.Context, namespace, prefix string) ([]string, error) {
	cs, err := c.Clientset()
	if err != nil {
		return nil, err
	}
	pods, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var files []string
	for _, p := range pods.Items {
		if !strings.HasPrefix(p.Name, prefix) {
			continue
		}
		for _, n := range c.KubeNodes() {
			if n.Name == p.Spec.NodeName {
				f, _ := filepath.Glob(filepath.Join(n.PodLogsDir(), fmt.Sprintf("%s_%s_%s", namespace, p.Name, p.UID), "*", "*.log"))
				files = append(files, f...)
			}
		}
	}
	return files, nil
}
