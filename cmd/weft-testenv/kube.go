package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/kube"
)

// bringKube builds what a Kubernetes cluster needs (weft binaries, the
// static ones for the image, the cached Kubernetes binaries) and starts it.
func bringKube(ctx context.Context, f clusterFlags) (*kube.Cluster, func(), error) {
	if f.ipFamily != testenv.FamilyIPv4 {
		return nil, nil, usageError{fmt.Errorf("--ip-family %s: the Kubernetes test cluster runs IPv4 only", f.ipFamily)}
	}
	if f.backend == testenv.BackendKernel {
		return nil, nil, usageError{fmt.Errorf("--backend %s: --kubernetes deploys weft", f.backend)}
	}
	repo, err := kube.RepoRoot()
	if err != nil {
		return nil, nil, err
	}
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	fail := func(err error) (*kube.Cluster, func(), error) { cleanup(); return nil, nil, err }
	tmp, err := os.MkdirTemp("", "weft-kube-bin-")
	if err != nil {
		return nil, nil, err
	}
	cleanups = append(cleanups, func() { os.RemoveAll(tmp) })
	binDir := f.binDir
	if binDir == "" {
		binDir = filepath.Join(tmp, "bin")
		fmt.Println("building weft binaries (go build) ...")
		if err := testenv.Build(ctx, binDir); err != nil {
			return fail(err)
		}
	}
	imageDir := filepath.Join(tmp, "image")
	fmt.Println("building the static weft binaries for the image ...")
	if err := kube.BuildStatic(ctx, imageDir); err != nil {
		return fail(err)
	}
	fmt.Println("finding or building the Kubernetes binaries (the first build takes 15-25 minutes; cached after) ...")
	kubeBin, err := kube.EnsureBinaries(ctx, repo)
	if err != nil {
		return fail(err)
	}
	agentArgs := splitArgs(f.agentArgs)
	fmt.Printf("starting Kubernetes: %d nodes x %d pods, backend %s ...\n", f.nodes, f.pods, f.backend)
	c, err := kube.New(ctx, kube.Options{
		Prefix: f.prefix, Nodes: f.nodes, PodsPerNode: f.pods, Backend: f.backend,
		BinDir: binDir, ImageBinDir: imageDir, KubeBinDir: kubeBin, DeployDir: filepath.Join(repo, "deploy"),
		AgentArgs: agentArgs, Logger: stderrLogger(),
	})
	if err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, func() {
		fmt.Println("tearing down", c.Prefix, "...")
		if err := c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "teardown:", err)
		}
		if left := c.Leftovers(); len(left) > 0 {
			fmt.Fprintln(os.Stderr, "left behind:", strings.Join(left, ", "))
		}
	})
	return c, cleanup, nil
}

func kubeUp(ctx context.Context, f clusterFlags) error {
	c, cleanup, err := bringKube(ctx, f)
	if err != nil {
		return err
	}
	defer cleanup()
	printKubeAccess(c)
	<-ctx.Done()
	return nil
}

func kubeDemo(ctx context.Context, f clusterFlags, keep bool) error {
	c, cleanup, err := bringKube(ctx, f)
	if err != nil {
		return err
	}
	defer cleanup()
	for _, args := range [][]string{{"get", "nodes", "-o", "wide"}, {"-n", kube.Namespace, "get", "pods", "-o", "wide"}} {
		out, err := c.Kubectl(ctx, args...)
		fmt.Printf("\n$ kubectl %s\n%s", strings.Join(args, " "), out)
		if err != nil {
			return err
		}
	}
	for _, verb := range [][]string{{"nodes"}, {"events"}, {"status"}} {
		out, err := c.Weftctl(ctx, verb...)
		fmt.Printf("\n$ weftctl %s\n%s", strings.Join(verb, " "), out)
		if err != nil {
			return err
		}
	}
	if err := printPods(ctx, c); err != nil {
		return err
	}
	fmt.Println("\nall-pairs connectivity (I = ICMP echo, T = TCP echo, U = UDP echo; - = failed):")
	m := testenv.CheckAll(ctx, c.Targets(), nil)
	fmt.Print(m)
	failed := len(m.Failed())
	fmt.Print(m.Summary())
	if keep {
		printKubeAccess(c)
		<-ctx.Done()
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d pairs failed", failed, len(m.Results))
	}
	return nil
}

// printPods prints the demo's pods as the API sees them.
func printPods(ctx context.Context, c *kube.Cluster) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	l, err := cs.CoreV1().Pods(corev1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: "app=weft-testenv"})
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	fmt.Println("\npods (from the API server):")
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tNODE\tPOD IP\tPHASE")
	for _, p := range l.Items {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", p.Name, p.Spec.NodeName, p.Status.PodIP, p.Status.Phase)
	}
	return w.Flush()
}

func printKubeAccess(c *kube.Cluster) {
	fmt.Printf("\nKubernetes cluster %s is up; run directory (logs, kubeconfigs, node roots) %s\n", c.Prefix, c.RunDir)
	fmt.Println("use it:")
	fmt.Printf("  %s get pods -A -o wide\n", c.KubectlLine())
	fmt.Printf("  %s nodes | events | status\n", c.WeftctlLine())
	for _, n := range c.KubeNodes() {
		fmt.Printf("  node %s (%s): kubelet log %s, containerd log %s, kube-proxy log %s\n", n.Name, n.UnderlayIP, n.Kubelet.Log, n.Containerd.Log, n.KubeProxy.Log)
	}
	for _, p := range c.Pods() {
		if p.NS != "" {
			fmt.Printf("  ip netns exec %s ip addr    # pod %s on %s, %s\n", p.NS, p.Name, p.Node.Name, p.IP)
		}
	}
	fmt.Printf("remove it: Ctrl-C here (or, after a crash, weft-testenv down --prefix %s)\n", c.Prefix)
}

// splitArgs splits --agent-args at commas; "" is none.
func splitArgs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
