package envflags

import (
	"flag"
	"strings"
	"testing"
	"time"
)

func TestApply(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	endpoints := fs.String("etcd-endpoints", "default", "")
	name := fs.String("node-name", "host", "")
	ttl := fs.Int("lease-ttl", 10, "")
	every := fs.Duration("reconcile-interval", time.Second, "")
	out := fs.String("o", "table", "")
	empty := fs.String("underlay", "def", "")
	if err := fs.Parse([]string{"--node-name", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"WEFT_ETCD_ENDPOINTS":      "http://a:1,http://b:2",
		"WEFT_NODE_NAME":           "from-env",
		"WEFT_RECONCILE_INTERVAL":  "3s",
		"WEFT_O":                   "json",
		"WEFT_UNDERLAY":            "",
		"WEFT_SOMETHING_UNRELATED": "x",
	}
	set, err := Apply(fs, func(k string) string { return env[k] }, "o")
	if err != nil {
		t.Fatal(err)
	}
	if *endpoints != "http://a:1,http://b:2" || *name != "from-flag" || *ttl != 10 || *every != 3*time.Second || *out != "table" || *empty != "def" {
		t.Fatalf("values: %q %q %d %v %q %q", *endpoints, *name, *ttl, *every, *out, *empty)
	}
	for f, want := range map[string]bool{"etcd-endpoints": true, "node-name": true, "reconcile-interval": true, "lease-ttl": false, "o": false, "underlay": false} {
		if set[f] != want {
			t.Errorf("set[%s] = %v, want %v", f, set[f], want)
		}
	}

	env = map[string]string{"WEFT_LEASE_TTL": "ten", "WEFT_RECONCILE_INTERVAL": "soon"}
	fs.Parse(nil)
	_, err = Apply(fs, func(k string) string { return env[k] })
	for _, w := range []string{`WEFT_LEASE_TTL="ten"`, `WEFT_RECONCILE_INTERVAL="soon"`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v lacks %s", err, w)
		}
	}
}

func TestVar(t *testing.T) {
	if v := Var("etcd-cafile"); v != "WEFT_ETCD_CAFILE" {
		t.Fatal(v)
	}
}
