package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

func pool(p, gw string) Pool {
	return Pool{Prefix: netip.MustParsePrefix(p), Gateway: netip.MustParseAddr(gw)}
}

func TestStoreExhaustionReuseAndRestart(t *testing.T) {
	dir := t.TempDir()
	s, _ := OpenStore(dir)
	ps := []Pool{pool("10.9.0.0/29", "10.9.0.1")}
	got := map[netip.Addr]string{}
	for i := range 5 {
		ips, fresh, err := s.Reserve(fmt.Sprint("c", i), "eth0", ps)
		if err != nil || !fresh {
			t.Fatalf("reserve %d: %v %v", i, ips, err)
		}
		ip := ips[0]
		if ip == netip.MustParseAddr("10.9.0.1") || ip == netip.MustParseAddr("10.9.0.0") || ip == netip.MustParseAddr("10.9.0.7") {
			t.Fatalf("handed out reserved address %s", ip)
		}
		if got[ip] != "" {
			t.Fatalf("%s handed out twice", ip)
		}
		got[ip] = fmt.Sprint("c", i)
	}
	if _, _, err := s.Reserve("c5", "eth0", ps); !errors.Is(err, ErrExhausted) {
		t.Fatalf("6th reserve in a /29: %v, want ErrExhausted", err)
	}
	// Repeated ADD returns the same lease.
	again, fresh, err := s.Reserve("c2", "eth0", ps)
	if err != nil || fresh || got[again[0]] != "c2" {
		t.Fatalf("repeat reserve: %v fresh=%v %v", again, fresh, err)
	}
	if found, err := s.Release("c2", "eth0"); !found || err != nil {
		t.Fatalf("release: %v %v", found, err)
	}
	if found, err := s.Release("c2", "eth0"); found || err != nil {
		t.Fatalf("second release: %v %v", found, err)
	}
	// A new Store on the same dir (a new plugin process) sees the state.
	s2, _ := OpenStore(dir)
	ips, _, err := s2.Reserve("c6", "eth0", ps)
	if err != nil || ips[0] != again[0] {
		t.Fatalf("after release got %v %v, want the freed %s", ips, err, again[0])
	}
	all, _ := s2.List()
	if len(all) != 5 {
		t.Fatalf("store holds %d allocations, want 5", len(all))
	}
}

func TestStoreRoundRobin(t *testing.T) {
	s, _ := OpenStore(t.TempDir())
	ps := []Pool{pool("10.9.0.0/24", "10.9.0.1")}
	a, _, _ := s.Reserve("a", "eth0", ps)
	s.Release("a", "eth0")
	b, _, _ := s.Reserve("b", "eth0", ps)
	if a[0] == b[0] || b[0] != a[0].Next() {
		t.Fatalf("freed %s reused at once (got %s); want round-robin", a[0], b[0])
	}
}

func TestStoreConcurrent(t *testing.T) {
	dir := t.TempDir()
	ps := []Pool{pool("10.9.0.0/24", "10.9.0.1"), pool("fd00:9::/64", "fd00:9::1")}
	var mu sync.Mutex
	seen := map[netip.Addr]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			s, _ := OpenStore(dir) // own lock fd, like a separate process
			ips, _, err := s.Reserve(fmt.Sprint("c", i), "eth0", ps)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, ip := range ips {
				if seen[ip] {
					errs <- fmt.Errorf("%s handed out twice", ip)
				}
				seen[ip] = true
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != 200 {
		t.Fatalf("got %d distinct addresses, want 200", len(seen))
	}
	s, _ := OpenStore(dir)
	freed, err := s.Retain(func(id, _ string) bool { return id == "c1" })
	if err != nil || len(freed) != 99 {
		t.Fatalf("retain freed %d (%v), want 99", len(freed), err)
	}
}

func TestStoreTinyPool(t *testing.T) {
	s, _ := OpenStore(t.TempDir())
	if _, _, err := s.Reserve("a", "eth0", []Pool{pool("10.9.0.0/31", "10.9.0.1")}); !errors.Is(err, ErrExhausted) {
		t.Fatalf("a /31 has no pod addresses, got %v", err)
	}
}
