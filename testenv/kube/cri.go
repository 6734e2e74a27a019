package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Sandbox is a pod sandbox a node's containerd held when the node was
// stopped, as the CRI names it.
type Sandbox struct {
	Node      string
	ID        string
	Namespace string
	Name      string
	UID       string
}

// LogDirName is the name the kubelet gives the sandbox's pod log
// directory (<namespace>_<name>_<uid>, under the pod logs directory).
func (s Sandbox) LogDirName() string { return s.Namespace + "_" + s.Name + "_" + s.UID }

// criCallTimeout bounds one CRI call: StopPodSandbox runs the CNI DEL
// chain (weft-cni, portmap), which may wait for locks on a loaded machine.
const criCallTimeout = 60 * time.Second

// removeSandboxes stops and removes every pod sandbox of the node's
// containerd through the CRI, as the kubelet does for a deleted pod (it is
// stopped first, so nothing starts them again): StopPodSandbox runs CNI
// DEL and unmounts and removes the sandbox's network namespace,
// RemovePodSandbox removes its containers. It returns the sandboxes it
// found, also when removing some of them failed.
func (n *Node) removeSandboxes(ctx context.Context) ([]Sandbox, error) {
	conn, err := grpc.NewClient("unix://"+n.Sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial CRI of %s: %w", n.Name, err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	lctx, cancel := context.WithTimeout(ctx, criCallTimeout)
	resp, err := rt.ListPodSandbox(lctx, &runtimeapi.ListPodSandboxRequest{})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("list pod sandboxes of %s: %w", n.Name, err)
	}
	var found []Sandbox
	var errs []error
	for _, sb := range resp.GetItems() {
		m := sb.GetMetadata()
		found = append(found, Sandbox{Node: n.Name, ID: sb.GetId(), Namespace: m.GetNamespace(), Name: m.GetName(), UID: m.GetUid()})
		sctx, cancel := context.WithTimeout(ctx, criCallTimeout)
		_, err := rt.StopPodSandbox(sctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.GetId()})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("stop sandbox %s of pod %s/%s: %w", sb.GetId(), m.GetNamespace(), m.GetName(), err))
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, criCallTimeout)
		_, err = rt.RemovePodSandbox(rctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.GetId()})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox %s of pod %s/%s: %w", sb.GetId(), m.GetNamespace(), m.GetName(), err))
		}
	}
	return found, errors.Join(errs...)
}
