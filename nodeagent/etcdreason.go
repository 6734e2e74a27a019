package nodeagent

import (
	"errors"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// etcdReason is the health reason for an etcd error: etcd that answers
// with a refusal is not unreachable, and the operator's fix differs (the
// node's etcd user and role, docs/controlplane.md).
func etcdReason(err error, node string) string {
	if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty) ||
		strings.Contains(err.Error(), "etcdserver: permission denied") || strings.Contains(err.Error(), "etcdserver: user name is empty") {
		return "etcd refuses this node (is its certificate this node's etcd user, added with weftctl auth add-node " + node + "?): " + err.Error()
	}
	return "etcd unreachable: " + err.Error()
}
