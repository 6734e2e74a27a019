package nodeagent

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func TestEtcdReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("write status: %w", rpctypes.ErrPermissionDenied), "etcd refuses this node (is its certificate this node's etcd user, added with weftctl auth add-node n1?): write status: etcdserver: permission denied"},
		{fmt.Errorf("watch events: %w", fmt.Errorf("rpc error: code = PermissionDenied desc = etcdserver: permission denied")), "etcd refuses this node"},
		{fmt.Errorf("read head and config: %w", context.DeadlineExceeded), "etcd unreachable: read head and config: context deadline exceeded"},
	} {
		if got := etcdReason(tc.err, "n1"); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%v: %q, want %q", tc.err, got, tc.want)
		}
	}
}
