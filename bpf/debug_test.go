package bpf

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/weftnet/weft/bpf/spec"
)

func TestDebugHold(t *testing.T) {
	if os.Getenv("WEFT_HOLD") == "" {
		t.Skip("debug only")
	}
	c := newTestCluster(t, AttachAuto)
	c.openAll(t)
	for _, n := range c.nodes {
		n.sync(c.overlayWant(n, spec.ModeVXLAN, netip.Addr{}))
	}
	t.Log(c.nodes[0].ns.Name)
	os.WriteFile("/tmp/weft-hold", []byte(c.nodes[0].ns.Name), 0o644)
	time.Sleep(60 * time.Second)
}
