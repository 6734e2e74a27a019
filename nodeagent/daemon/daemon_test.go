package daemon

import (
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFlagsEnvAndValidate(t *testing.T) {
	t.Setenv("WEFT_ETCD_ENDPOINTS", "http://10.0.0.1:2379,http://10.0.0.2:2379")
	t.Setenv("WEFT_NODE_NAME", "from-env")
	t.Setenv("WEFT_RECONCILE_INTERVAL", "3s")
	o, err := Parse([]string{"--node-name", "from-flag", "--underlay", "eth1"}, os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	if o.NodeName != "from-flag" || len(o.Endpoints()) != 2 || o.ReconcileInterval != 3*time.Second || o.Underlay != "eth1" {
		t.Fatalf("options = %+v", o)
	}
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{
		{"--node-name", "a/b"},
		{"--lease-ttl", "1"},
		{"--etcd-endpoints", ","},
		{"--log-level", "loud"},
		{"--underlay", "not an interface"},
		{"--etcd-certfile", "x"},
	} {
		o, err := Parse(append([]string{"--node-name", "n1"}, bad...), os.Getenv)
		if err == nil {
			err = o.Check()
		}
		if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(bad[0], "-")) {
			t.Errorf("%v: err = %v", bad, err)
		}
	}
	t.Setenv("WEFT_LEASE_TTL", "ten")
	if _, err := Parse(nil, os.Getenv); err == nil || !strings.Contains(err.Error(), "WEFT_LEASE_TTL") {
		t.Fatalf("bad env: %v", err)
	}
}
