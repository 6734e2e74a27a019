package kubesource_test

// These tests use client-go's fake clientset, which serves List and Watch
// from an in-memory object tracker through the same informer machinery a
// real cluster uses, and a real clientset against a closed port for the
// unreachable API. The source against a real kube-apiserver and kubelets
// is TestKubernetes in testenv/e2e.

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"go.uber.org/goleak"

	"github.com/weftnet/weft/controlplane/kubesource"
	"github.com/weftnet/weft/controlplane/source"
	"github.com/weftnet/weft/proto/validate"
)

func node(name, ip string, cidrs []string, lbls map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
	n.Spec.PodCIDRs = cidrs
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}}
	if ip != "" {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return n
}

type recorder struct {
	syncs   chan []source.Change
	changes chan source.Change
}

func run(t *testing.T, s *kubesource.Source) *recorder {
	t.Helper()
	r := &recorder{syncs: make(chan []source.Change, 16), changes: make(chan source.Change, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Run(ctx, func(c []source.Change) { r.syncs <- c }, func(c source.Change) { r.changes <- c })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
	return r
}

func (r *recorder) sync(t *testing.T) []source.Change {
	t.Helper()
	select {
	case s := <-r.syncs:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no sync")
	}
	return nil
}

func (r *recorder) change(t *testing.T) source.Change {
	t.Helper()
	select {
	case c := <-r.changes:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no change")
	}
	return source.Change{}
}

func upsert(t *testing.T, c source.Change, name, ip string, cidrs ...string) {
	t.Helper()
	if c.Kind != source.Upsert || c.Name != name || c.Registration.UnderlayIp != ip || !slices.Equal(c.Registration.PinnedPodCidrs, cidrs) {
		t.Fatalf("got %+v (reg %v), want Upsert %s %s %v", c, c.Registration, name, ip, cidrs)
	}
}

func TestAddUpdateDelete(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		node("b", "192.168.0.2", []string{"10.244.2.0/24"}, nil),
		node("a", "192.168.0.1", nil, nil),
		node("noip", "", nil, nil),
	)
	s, err := kubesource.New(client)
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, s)
	set := r.sync(t)
	if len(set) != 3 {
		t.Fatalf("initial sync has %d nodes, want 3: %+v", len(set), set)
	}
	upsert(t, set[0], "a", "192.168.0.1")
	upsert(t, set[1], "b", "192.168.0.2", "10.244.2.0/24")
	if set[2].Kind != source.Invalid || set[2].Name != "noip" || !errors.Is(set[2].Err, kubesource.ErrNoInternalIP) {
		t.Fatalf("node without InternalIP: %+v, want Invalid with ErrNoInternalIP", set[2])
	}
	nodes := client.CoreV1().Nodes()

	// Add, dual-stack pod CIDRs.
	if _, err := nodes.Create(ctx, node("c", "192.168.0.3", []string{"10.244.3.0/24", "fd00:10:244:3::/64"}, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	upsert(t, r.change(t), "c", "192.168.0.3", "10.244.3.0/24", "fd00:10:244:3::/64")

	// Update of the address.
	n := node("a", "192.168.0.11", nil, nil)
	if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	upsert(t, r.change(t), "a", "192.168.0.11")

	// An update that changes neither address nor CIDRs reports nothing;
	// the next relevant one (CIDRs assigned) comes through alone.
	n.Labels = map[string]string{"unrelated": "x"}
	if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	n = node("a", "192.168.0.11", []string{"10.244.1.0/24"}, nil)
	if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	upsert(t, r.change(t), "a", "192.168.0.11", "10.244.1.0/24")

	// A bad address becomes Invalid naming the field; fixing it, Upsert.
	if _, err := nodes.Update(ctx, node("b", "not-an-ip", []string{"10.244.2.0/24"}, nil), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := r.change(t)
	if c.Kind != source.Invalid || c.Name != "b" || !errors.Is(c.Err, validate.ErrInvalid) {
		t.Fatalf("bad InternalIP: %+v, want Invalid wrapping validate.ErrInvalid", c)
	}
	if _, err := nodes.Update(ctx, node("noip", "192.168.0.9", nil, nil), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	upsert(t, r.change(t), "noip", "192.168.0.9")

	// Delete: Gone, immediately.
	if err := nodes.Delete(ctx, "c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c = r.change(t)
	if c.Kind != source.Gone || c.Name != "c" || !c.Immediate {
		t.Fatalf("delete: %+v, want Gone Immediate", c)
	}
	select {
	case c := <-r.changes:
		t.Fatalf("unexpected change %+v", c)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestResync(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(node("a", "192.168.0.1", nil, nil))
	s, _ := kubesource.New(client, kubesource.WithResync(100*time.Millisecond))
	r := run(t, s)
	if set := r.sync(t); len(set) != 1 {
		t.Fatalf("initial sync %+v", set)
	}
	if _, err := client.CoreV1().Nodes().Create(ctx, node("b", "192.168.0.2", nil, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	upsert(t, r.change(t), "b", "192.168.0.2")
	// The next resync reports the complete set again.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case set := <-r.syncs:
			if len(set) == 2 {
				upsert(t, set[0], "a", "192.168.0.1")
				upsert(t, set[1], "b", "192.168.0.2")
				return
			}
		case <-deadline:
			t.Fatal("no resync with both nodes")
		}
	}
}

func TestLabelSelector(t *testing.T) {
	ctx := context.Background()
	on := map[string]string{"weft.io/enabled": "true"}
	client := fake.NewClientset(node("a", "192.168.0.1", nil, on), node("b", "192.168.0.2", nil, nil))
	s, err := kubesource.New(client, kubesource.WithLabelSelector("weft.io/enabled=true"))
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, s)
	set := r.sync(t)
	// b is outside the selector: Gone, with the reason.
	if len(set) != 2 || set[0].Name != "a" || set[0].Kind != source.Upsert ||
		set[1].Name != "b" || set[1].Kind != source.Gone || !set[1].Immediate || !errors.Is(set[1].Err, kubesource.ErrOutsideSelector) {
		t.Fatalf("sync with selector: %+v, want a Upsert and b Gone outside the selector", set)
	}
	if _, err := client.CoreV1().Nodes().Update(ctx, node("b", "192.168.0.2", nil, on), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	upsert(t, r.change(t), "b", "192.168.0.2")
	if _, err := client.CoreV1().Nodes().Update(ctx, node("a", "192.168.0.1", nil, nil), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if c := r.change(t); c.Kind != source.Gone || c.Name != "a" || !c.Immediate || !errors.Is(c.Err, kubesource.ErrOutsideSelector) {
		t.Fatalf("node leaving the selector: %+v, want Gone outside the selector", c)
	}
	// Further updates of a node outside the selector report nothing new.
	n := node("a", "192.168.0.1", nil, map[string]string{"other": "x"})
	if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-r.changes:
		t.Fatalf("update outside the selector reported %+v", c)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := kubesource.New(client, kubesource.WithLabelSelector("a in (")); err == nil {
		t.Fatal("bad selector accepted")
	}
}

// The underlay annotation overrides the InternalIP; a malformed one makes
// the node Invalid naming the annotation.
func TestUnderlayAnnotation(t *testing.T) {
	n := node("a", "192.168.0.1", nil, nil)
	n.Annotations = map[string]string{kubesource.UnderlayAnnotation: "10.1.2.3"}
	upsert(t, kubesource.Change(n), "a", "10.1.2.3")
	n.Annotations[kubesource.UnderlayAnnotation] = "10.1.2"
	c := kubesource.Change(n)
	if c.Kind != source.Invalid || !strings.Contains(c.Err.Error(), kubesource.UnderlayAnnotation) {
		t.Fatalf("malformed annotation: %+v, want Invalid naming %s", c, kubesource.UnderlayAnnotation)
	}
}

// TestDualStackNode: a dual-stack Node (two InternalIPs, two pod CIDRs)
// becomes a registration with its IPv4 underlay address, its IPv6 one as
// underlay_ip_v6 and both pod CIDRs pinned; an IPv6-only Node has its IPv6
// address as underlay_ip and no second one.
func TestDualStackNode(t *testing.T) {
	n := node("a", "192.168.0.1", []string{"10.244.3.0/24", "fd00:10:244:3::/64"}, nil)
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd99::1"})
	c := kubesource.Change(n)
	if c.Kind != source.Upsert || c.Registration.UnderlayIp != "192.168.0.1" || c.Registration.UnderlayIpV6 != "fd99::1" ||
		len(c.Registration.PinnedPodCidrs) != 2 || c.Registration.PinnedPodCidrs[1] != "fd00:10:244:3::/64" {
		t.Fatalf("dual-stack node: %+v", c.Registration)
	}
	n = node("b", "fd99::2", []string{"fd00:10:244:4::/64"}, nil)
	c = kubesource.Change(n)
	if c.Kind != source.Upsert || c.Registration.UnderlayIp != "fd99::2" || c.Registration.UnderlayIpV6 != "" {
		t.Fatalf("IPv6-only node: %+v", c.Registration)
	}
}

// An API server that cannot be reached: the source never syncs (so the
// controller removes nothing), and Health says why. A real client-go
// clientset against a closed port, not the fake.
func TestHealthAPIUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: "http://" + addr, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s, err := kubesource.New(client, kubesource.WithHealthInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Health(); err == nil || !strings.Contains(err.Error(), "not synced") {
		t.Fatalf("health before Run: %v, want not synced", err)
	}
	r := run(t, s)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.Health()
		if err != nil && strings.Contains(err.Error(), "kubernetes API unreachable") && strings.Contains(err.Error(), "connection refused") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health with the API down: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case set := <-r.syncs:
		t.Fatalf("sync without an API: %+v", set)
	case c := <-r.changes:
		t.Fatalf("change without an API: %+v", c)
	default:
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
