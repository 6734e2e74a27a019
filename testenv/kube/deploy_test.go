package kube

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClusterCIDR: kube-proxy's --cluster-cidr is the shipped
// ClusterConfig's cluster_cidr, read as the controller reads its --config
// (a value the controller would refuse fails here too).
func TestClusterCIDR(t *testing.T) {
	got, err := ClusterCIDR(filepath.Join("..", "..", "deploy"))
	if err != nil || got != "10.244.0.0/16" {
		t.Fatalf("ClusterCIDR of deploy/ = %q, %v; want 10.244.0.0/16", got, err)
	}

	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(dir, "kubernetes"), 0o755))
	cm := `apiVersion: v1
kind: ConfigMap
metadata: {name: weft-config}
data:
  cluster-config.json: '{"cluster_cidr": "10.244.0.0/16", "vni": 0}'
`
	must(os.WriteFile(filepath.Join(dir, "kubernetes", "configmap.yaml"), []byte(cm), 0o644))
	if got, err := ClusterCIDR(dir); err == nil || !strings.Contains(err.Error(), "vni") {
		t.Fatalf("a config with vni 0: %q, %v; want the error naming vni", got, err)
	}
}
