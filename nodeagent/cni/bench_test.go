package cni_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/nodeagent/cni"
)

// BenchmarkAddDel is one pod attach and detach as a runtime does it:
// two plugin processes through libcni, real veth, addresses and routes.
func BenchmarkAddDel(b *testing.B) {
	e := newEnv(b, subnetV4, "1.1.0")
	pod := newNS(b)
	for b.Loop() {
		if _, err := e.add(e.list, "bench", pod); err != nil {
			b.Fatal(err)
		}
		if err := e.del("bench", pod); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreReserveRelease is the address store alone: lock, read,
// write+fsync+rename, unlock, twice.
func BenchmarkStoreReserveRelease(b *testing.B) {
	s, _ := cni.OpenStore(b.TempDir())
	ps := []cni.Pool{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("10.244.1.1")}}
	for i := range 100 { // a node with 100 pods
		if _, _, err := s.Reserve(fmt.Sprint("bg-", i), "eth0", ps); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, _, err := s.Reserve("c", "eth0", ps); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Release("c", "eth0"); err != nil {
			b.Fatal(err)
		}
	}
}
