package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"pgregory.net/rapid"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func cfg(v4 string, m4 uint32, v6 string, m6 uint32) *weftv1.ClusterConfig {
	return &weftv1.ClusterConfig{ClusterCidr: v4, NodeMaskSize: m4, ClusterCidrV6: v6, NodeMaskSizeV6: m6}
}

// TestAllocatorProperties runs random joins, leaves, re-joins and
// releases and checks after every step: no subnet held twice, every
// subnet a node_mask_size subnet inside its cluster CIDR, one per family,
// and a node that re-joins before it is released gets exactly its old
// subnets.
func TestAllocatorProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m4 := rapid.Uint32Range(26, 29).Draw(t, "mask4") // 4..32 subnets of a /24
		dual := rapid.Bool().Draw(t, "dual")
		c := cfg("10.9.8.0/24", m4, "", 0)
		if dual {
			c = cfg("10.9.8.0/24", m4, "fd00:9:8::/60", 64)
		}
		a, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		v4 := netip.MustParsePrefix(c.ClusterCidr)
		held := map[string][]netip.Prefix{} // model: who holds what
		leaving := map[string]bool{}        // model: in their grace period
		everyName := []string{"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "n10", "n11", "n12", "n13", "n14", "n15", "n16", "n17", "n18", "n19"}
		for step := range rapid.IntRange(1, 120).Draw(t, "steps") {
			name := rapid.SampledFrom(everyName).Draw(t, fmt.Sprintf("name%d", step))
			switch rapid.IntRange(0, 3).Draw(t, fmt.Sprintf("op%d", step)) {
			case 0, 1: // join or re-join
				got, err := a.Allocate(name, nil, nil)
				if errors.Is(err, ErrExhausted) {
					if _, ok := held[name]; ok {
						t.Fatalf("node %s holding subnets got ErrExhausted", name)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if old, ok := held[name]; ok && !slices.Equal(old, got) {
					t.Fatalf("node %s re-joined within grace with %v, held %v", name, got, old)
				}
				held[name] = got
				delete(leaving, name) // back within grace
			case 2: // leave: the node keeps its subnets through its grace
				if _, ok := held[name]; ok {
					leaving[name] = true
				}
			case 3: // the grace of every leaving node ends: released
				for n := range leaving {
					a.Release(n)
					delete(held, n)
					delete(leaving, n)
				}
			}
			seen := map[netip.Prefix]string{}
			for n, ps := range held {
				if !slices.Equal(a.Holding(n), ps) {
					t.Fatalf("allocator says %s holds %v, model %v", n, a.Holding(n), ps)
				}
				if len(ps) != len(a.pools) {
					t.Fatalf("node %s holds %v, want one per family", n, ps)
				}
				for _, p := range ps {
					if o, ok := seen[p]; ok {
						t.Fatalf("subnet %s held by %s and %s", p, o, n)
					}
					seen[p] = n
					if p.Addr().Is4() && (!v4.Contains(p.Addr()) || p.Bits() != int(m4)) {
						t.Fatalf("subnet %s is not a /%d of %s", p, m4, v4)
					}
					if p.Addr().Is6() && (!netip.MustParsePrefix("fd00:9:8::/60").Contains(p.Addr()) || p.Bits() != 64) {
						t.Fatalf("subnet %s is not a /64 of the v6 cluster CIDR", p)
					}
					if o, _ := a.Owner(p); o != n {
						t.Fatalf("owner of %s is %q, want %q", p, o, n)
					}
				}
			}
			if a.Len() != len(held) {
				t.Fatalf("allocator holds %d nodes, model %d", a.Len(), len(held))
			}
		}
	})
}

func TestExhaustionNamesCIDR(t *testing.T) {
	a, err := New(cfg("10.1.0.0/29", 30, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := a.Allocate(n, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	_, err = a.Allocate("c", nil, nil)
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("third allocation: %v, want ErrExhausted", err)
	}
	if want := "10.1.0.0/29"; !contains(err.Error(), want) {
		t.Fatalf("error %q does not name %s", err, want)
	}
	if a.Holding("c") != nil {
		t.Fatal("failed node holds subnets")
	}
	a.Release("a")
	got, err := a.Allocate("c", nil, nil)
	if err != nil || got[0] != netip.MustParsePrefix("10.1.0.0/30") {
		t.Fatalf("after release got %v, %v; want the freed 10.1.0.0/30", got, err)
	}
}

func TestDualStackAndPins(t *testing.T) {
	a, err := New(cfg("10.2.0.0/16", 24, "fd00:2::/56", 64))
	if err != nil {
		t.Fatal(err)
	}
	pin4 := netip.MustParsePrefix("10.2.77.0/24")
	got, err := a.Allocate("pinned", []netip.Prefix{pin4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != pin4 || !got[1].Addr().Is6() || got[1].Bits() != 64 {
		t.Fatalf("pinned node got %v", got)
	}
	for _, bad := range []string{"10.3.0.0/24", "10.2.77.0/24", "10.2.5.0/25", "10.2.5.1/24", "fd00:3::/64"} {
		if _, err := a.Allocate("other-"+bad, []netip.Prefix{netip.MustParsePrefix(bad)}, nil); !errors.Is(err, ErrPin) {
			t.Errorf("pin %s: %v, want ErrPin", bad, err)
		}
	}
	// 10.2.77.0/24 is never handed out by the scan.
	for i := range 255 {
		got, err := a.Allocate(fmt.Sprintf("n%d", i), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got[0] == pin4 {
			t.Fatalf("pinned subnet handed to n%d", i)
		}
	}
	if _, err := a.Allocate("one-too-many", nil, nil); !errors.Is(err, ErrExhausted) {
		t.Fatalf("257th v4 subnet: %v", err)
	}
}

// TestFamilyAdded: a node that holds an IPv4 subnet when the config gains
// an IPv6 cluster CIDR gets an IPv6 subnet as well and keeps its IPv4 one;
// when the new family is exhausted it keeps exactly what it had. An
// IPv6-only allocator hands out IPv6 only.
func TestFamilyAdded(t *testing.T) {
	a, err := New(cfg("10.6.0.0/16", 24, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	old, err := a.Allocate("n1", nil, nil)
	if err != nil || len(old) != 1 {
		t.Fatalf("IPv4 allocation: %v, %v", old, err)
	}
	// The controller rebuilds the allocator from the projection under the
	// new config.
	a, err = New(cfg("10.6.0.0/16", 24, "fd00:6::/63", 64))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n1", "n2"} {
		if err := a.Restore(n, []string{fmt.Sprintf("10.6.%s.0/24", n[1:])}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := a.Allocate("n1", nil, nil)
	if err != nil || len(got) != 2 || got[0] != netip.MustParsePrefix("10.6.1.0/24") || !got[1].Addr().Is6() {
		t.Fatalf("n1 after the IPv6 CIDR was added: %v, %v; want its IPv4 subnet and a new IPv6 one", got, err)
	}
	// A pin for the family a node lacks is honoured; one for a family it
	// holds changes nothing.
	pin6 := netip.MustParsePrefix("fd00:6:0:1::/64")
	if got[1] == pin6 {
		pin6 = netip.MustParsePrefix("fd00:6::/64")
	}
	got2, err := a.Allocate("n2", []netip.Prefix{netip.MustParsePrefix("10.6.99.0/24"), pin6}, nil)
	if err != nil || len(got2) != 2 || got2[0] != netip.MustParsePrefix("10.6.2.0/24") || got2[1] != pin6 {
		t.Fatalf("n2 with pins: %v, %v", got2, err)
	}
	// fd00:6::/63 has two /64s, both held now.
	if err := a.Restore("n3", []string{"10.6.3.0/24"}); err != nil {
		t.Fatal(err)
	}
	got3, err := a.Allocate("n3", nil, nil)
	if !errors.Is(err, ErrExhausted) || !contains(err.Error(), "fd00:6::/63") || !slices.Equal(got3, []netip.Prefix{netip.MustParsePrefix("10.6.3.0/24")}) {
		t.Fatalf("n3 with the IPv6 pool exhausted: %v, %v; want its IPv4 subnet and ErrExhausted naming fd00:6::/63", got3, err)
	}
	if h := a.Holding("n3"); len(h) != 1 {
		t.Fatalf("n3 holds %v after the failed top-up", h)
	}

	v6, err := New(cfg("", 0, "fd00:7::/56", 64))
	if err != nil {
		t.Fatal(err)
	}
	got, err = v6.Allocate("x", nil, nil)
	if err != nil || len(got) != 1 || got[0] != netip.MustParsePrefix("fd00:7::/64") {
		t.Fatalf("IPv6-only allocation: %v, %v", got, err)
	}
	if _, err := New(cfg("", 0, "", 0)); err == nil {
		t.Fatal("an allocator without any cluster CIDR")
	}
}

func TestRestoreRejectsConflicts(t *testing.T) {
	a, err := New(cfg("10.4.0.0/16", 24, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Restore("a", []string{"10.4.1.0/24"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Restore("b", []string{"10.4.1.0/24"}); err == nil {
		t.Fatal("restore of a held subnet succeeded")
	}
	if err := a.Restore("c", []string{"10.5.1.0/24"}); err == nil {
		t.Fatal("restore outside the cluster CIDR succeeded")
	}
	got, _ := a.Allocate("d", nil, nil)
	if got[0] == netip.MustParsePrefix("10.4.1.0/24") {
		t.Fatal("restored subnet handed out again")
	}
}

func TestHugeV6Pool(t *testing.T) {
	a, err := New(cfg("10.0.0.0/8", 24, "fd00::/8", 120))
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Allocate("x", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got[1] != netip.MustParsePrefix("fd00::/120") {
		t.Fatalf("first v6 subnet %v", got[1])
	}
	if o, ok := a.Owner(got[1]); !ok || o != "x" {
		t.Fatalf("owner %q %v", o, ok)
	}
}

// TestPrevious: a node released and allocated again with its previous
// subnets as the hint gets them back while they are free, even though the
// scan has moved on; a hint that is taken, outside the cluster CIDR, of
// the wrong size or not a network address is passed over without an
// error; a pin wins over a hint, and subnets the node holds win over both.
func TestPrevious(t *testing.T) {
	a, err := New(cfg("10.8.0.0/16", 24, "fd00:8::/56", 64))
	if err != nil {
		t.Fatal(err)
	}
	first, err := a.Allocate("n1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.Release("n1")
	for _, n := range []string{"n2", "n3"} {
		if _, err := a.Allocate(n, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	got, err := a.Allocate("n1", nil, first)
	if err != nil || !slices.Equal(got, first) {
		t.Fatalf("n1 back with its previous %v: got %v, %v", first, got, err)
	}
	// Without the hint the scan would have given it a new subnet.
	a.Release("n1")
	if got, _ := a.Allocate("n1", nil, nil); slices.Equal(got, first) {
		t.Fatalf("n1 without a hint got %v again: the test shows nothing", got)
	}
	a.Release("n1")

	n2 := a.Holding("n2")
	for _, hint := range [][]netip.Prefix{
		n2,                                       // held by another node
		{netip.MustParsePrefix("10.9.1.0/24")},   // outside the cluster CIDR
		{netip.MustParsePrefix("10.8.200.0/25")}, // wrong size
		{netip.MustParsePrefix("10.8.200.1/24")}, // not a network address
	} {
		got, err := a.Allocate("h", nil, hint)
		if err != nil || len(got) != 2 || slices.Contains(hint, got[0]) || slices.Contains(hint, got[1]) {
			t.Fatalf("hint %v: got %v, %v; want a fresh allocation and no error", hint, got, err)
		}
		if o, _ := a.Owner(n2[0]); o != "n2" {
			t.Fatalf("hint %v moved n2's subnet to %q", hint, o)
		}
		a.Release("h")
	}

	free4 := netip.MustParsePrefix("10.8.250.0/24")
	pin4 := netip.MustParsePrefix("10.8.251.0/24")
	got, err = a.Allocate("p", []netip.Prefix{pin4}, []netip.Prefix{free4})
	if err != nil || got[0] != pin4 {
		t.Fatalf("pin %s and hint %s: got %v, %v; want the pin", pin4, free4, got, err)
	}
	got, err = a.Allocate("p", nil, []netip.Prefix{free4})
	if err != nil || got[0] != pin4 {
		t.Fatalf("held %s and hint %s: got %v, %v; want what it holds", pin4, free4, got, err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// BenchmarkAllocate5000 allocates 5,000 nodes' subnets out of a /16 of /28s.
func BenchmarkAllocate5000(b *testing.B) {
	names := make([]string, 5000)
	for i := range names {
		names[i] = fmt.Sprintf("node-%d", i)
	}
	for b.Loop() {
		a, _ := New(cfg("10.0.0.0/12", 28, "fd00::/48", 64))
		for _, n := range names {
			if _, err := a.Allocate(n, nil, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
}
