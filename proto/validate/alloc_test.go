package validate

import (
	"testing"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// TestNodeAllocatesOnlyTheMAC: Node runs for every node of a list (5,000
// at a cold start), so a good node costs no allocation beyond the one
// net.ParseMAC makes; field names are formatted only for a refusal.
func TestNodeAllocatesOnlyTheMAC(t *testing.T) {
	c := WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"})
	n := &weftv1.Node{Name: "n1", UnderlayIp: "192.168.1.1", PodCidrs: []string{"10.244.1.0/24"},
		VtepMac: "02:00:00:00:00:01", Capabilities: []string{"tcx", "geneve", "ipv6"}}
	if err := Node(c, n); err != nil {
		t.Fatal(err)
	}
	if got := testing.AllocsPerRun(100, func() { Node(c, n) }); got > 1 {
		t.Fatalf("Node of a good node: %v allocations, want at most 1", got)
	}
}
