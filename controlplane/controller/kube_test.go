package controller_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/controlplane/kubesource"
	"github.com/weftnet/weft/testenv/etcdtest"
)

func kubeNode(name, ip string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	return n
}

// TestDeletedNodeRemovedWhileAgentRegistered: with Kubernetes Nodes as
// the source, a deleted Node is removed at once although its agent still
// keeps its registration in etcd (every agent does, on every cluster).
// The registration is not the source's entry: a removal that required its
// absence failed its transaction for as long as the agent ran (seen in
// e2e TestKubernetes, "Node deleted from the API").
func TestDeletedNodeRemovedWhileAgentRegistered(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	client := fake.NewClientset(kubeNode("a", "192.168.0.1"), kubeNode("b", "192.168.0.2"))
	src, err := kubesource.New(client, kubesource.WithLogger(logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig()
	cfg.NodeGraceSeconds = 100000 // 1000 s: only an immediate removal happens within the test
	startWith(t, controller.Options{Client: c, ID: "c1", Initial: cfg, Source: src})
	// The agents register as they do on any cluster.
	l := grant(t, c)
	register(t, c, l, reg("a", 0))
	register(t, c, l, reg("b", 1))
	eventually(t, "a and b added", 10*time.Second, func() bool {
		_, n, _ := load(t, c)
		return n["a"] != nil && n["b"] != nil
	})
	if err := client.CoreV1().Nodes().Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b removed", 10*time.Second, func() bool { _, n, _ := load(t, c); return n["b"] == nil })
	if _, n, _ := load(t, c); n["a"] == nil {
		t.Fatal("a removed with b")
	}
	var reason string
	for _, e := range events(t, c) {
		if r := e.GetNodeRemoved(); r != nil {
			reason = r.Reason
		}
	}
	if reason != "deleted from the node source" {
		t.Fatalf("NodeRemoved reason %q, want the deletion", reason)
	}
	r, err := c.Get(ctx, k.Registration("b"))
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("b's registration: %v %v; the test needs it kept while the Node is deleted", r, err)
	}
}
