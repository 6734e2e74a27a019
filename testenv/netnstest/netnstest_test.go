package netnstest

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestTopologyAndPing wires two namespaces by a veth, pings across in both
// families, and checks that deleting them leaves no name behind.
func TestTopologyAndPing(t *testing.T) {
	RequireRoot(t)
	prefix := Prefix()
	a, err := Create(prefix + "-a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Delete()
	b := New(t, prefix+"-b")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Veth("v0", b, "v1"))
	must(a.Addr("v0", netip.MustParsePrefix("10.123.0.1/24"), netip.MustParsePrefix("fd00:123::1/64")))
	must(b.Addr("v1", netip.MustParsePrefix("10.123.0.2/24"), netip.MustParsePrefix("fd00:123::2/64")))
	must(a.Up("v0"))
	must(b.Up("v1"))
	for _, dst := range []string{"10.123.0.2", "fd00:123::2"} {
		if !Reach(t, a, netip.MustParseAddr(dst), 3*time.Second) {
			t.Fatalf("no reply from %s", dst)
		}
	}
	// A pinger opened in b sends from b: a's address answers, and so
	// does b's own.
	p, err := NewPinger(b, false)
	must(err)
	defer p.Close()
	must(p.Ping(netip.MustParseAddr("10.123.0.1"), 1, 3*time.Second))
	if err := p.Ping(netip.MustParseAddr("10.123.0.2"), 2, 200*time.Millisecond); err != nil {
		t.Fatalf("b cannot ping its own address: %v", err)
	}
	names, err := List(prefix + "-")
	must(err)
	if !slices.Equal(names, []string{prefix + "-a", prefix + "-b"}) {
		t.Fatalf("List = %v", names)
	}
	must(a.Delete())
	if names, _ := List(prefix + "-a"); len(names) != 0 {
		t.Fatalf("after Delete: %v", names)
	}
}
