package spec

import (
	"fmt"
	"net"
	"testing"
)

func TestVTEPMAC(t *testing.T) {
	a := VTEPMAC("node-1")
	if a != VTEPMAC("node-1") {
		t.Fatal("VTEPMAC is not a function of the name")
	}
	hw, err := net.ParseMAC(a.String())
	if err != nil || string(hw) != string(a[:]) {
		t.Fatalf("String() = %q does not parse back: %v", a, err)
	}
	// 5,000 nodes: every MAC a locally administered unicast address, no
	// two alike.
	seen := map[MAC]string{}
	for i := range 5000 {
		name := fmt.Sprintf("node-%05d", i)
		m := VTEPMAC(name)
		if m[0]&0x01 != 0 || m[0]&0x02 == 0 {
			t.Fatalf("%s: %s is not a locally administered unicast MAC", name, m)
		}
		if other, ok := seen[m]; ok {
			t.Fatalf("%s and %s share %s", name, other, m)
		}
		seen[m] = name
	}
	if !(MAC{}).IsZero() || a.IsZero() {
		t.Fatal("IsZero")
	}
}
