package bpfpin

import (
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// TestCount: Count agrees with the entries put, read in batches (an LPM
// trie, like weft_tunnels, over more than one batch) and one key at a time.
func TestCount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates eBPF maps")
	}
	for _, n := range []int{0, 1, 1023, 1024, 2500} {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 20, ValueSize: 8, MaxEntries: 4096, Flags: 1})
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
			if err := m.Put(TunnelKey(p), make([]byte, 8)); err != nil {
				t.Fatal(err)
			}
		}
		got, err := Count(m)
		if err != nil || got != n {
			t.Errorf("Count of %d entries = %d, %v", n, got, err)
		}
		if got, err := countByKey(m); err != nil || got != n {
			t.Errorf("countByKey of %d entries = %d, %v", n, got, err)
		}
		m.Close()
	}
}
