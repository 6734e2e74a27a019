package etcdtest

import (
	"testing"

	"go.uber.org/goleak"
)

// VerifyTestMain runs the tests of a package that starts embedded etcd
// members and, as goleak.VerifyTestMain does, fails the run if goroutines
// are left at the end, except the two that etcd's embedded server and grpc
// keep after Close by design. Call it as the whole of TestMain.
func VerifyTestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	)
}
