package cni_test

import (
	"context"
	"testing"
	"time"

	"github.com/weftnet/weft/testenv"
)

// TestClusterWithWeftCNI attaches every pod of a real two-node weft
// cluster (controller, agents, eBPF VXLAN datapath) with weft-cni through
// testenv's CNIAttacher, and checks that every pod reaches every other
// one: the plugin's wiring is what the datapath expects.
func TestClusterWithWeftCNI(t *testing.T) {
	newNS(t) // skips without root
	// The build has its own, longer bound: with a cold build cache it
	// compiles every dependency (testenv.BuildCommands).
	bctx, bcancel := context.WithTimeout(context.Background(), 20*time.Minute)
	err := testenv.Build(bctx, binDir)
	bcancel()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := testenv.New(ctx, testenv.Options{
		Nodes: 2, PodsPerNode: 2, BinDir: binDir,
		Attacher: testenv.NewCNIAttacher(binDir),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		if left := testenv.Leftovers(c.Prefix); len(left) > 0 {
			t.Errorf("leftovers: %v", left)
		}
	})
	cctx, ccancel := context.WithTimeout(ctx, time.Minute)
	defer ccancel()
	m := testenv.CheckAll(cctx, c.Targets(), nil)
	if len(m.Results) != 12 {
		t.Fatalf("checked %d pairs, want 12", len(m.Results))
	}
	if f := m.Failed(); len(f) > 0 {
		t.Fatalf("pods attached by weft-cni cannot reach each other:\n%s", m)
	}
}
