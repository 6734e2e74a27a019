package e2e

import (
	"testing"

	"github.com/weftnet/weft/testenv"
)

// TestZZNoLeftovers runs last (tests run in file-name order, and this file sorts last) and checks that
// nothing any test of this package created is left on the machine:
// namespaces, links, bpffs pins, processes, run directories.
func TestZZNoLeftovers(t *testing.T) {
	needCluster(t)
	prefixesMu.Lock()
	defer prefixesMu.Unlock()
	if len(prefixes) == 0 {
		t.Skip("no cluster ran")
	}
	for _, p := range prefixes {
		if left := testenv.Leftovers(p); len(left) > 0 {
			t.Errorf("run %s left behind: %v", p, left)
		}
	}
	t.Logf("checked runs %v: nothing left", prefixes)
}
