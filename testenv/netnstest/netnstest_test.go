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

// TestPingerStampsArrival holds the pinger's reader back (it waits for
// the lock after reading the first reply, the second waits in the socket)
// and checks that the second reply is stamped with its arrival, not with
// the moment the reader got to it: a checker starved by a loaded machine
// must not count a reply that came in time as late.
func TestPingerStampsArrival(t *testing.T) {
	RequireRoot(t)
	n := New(t, Prefix()+"-s")
	if err := n.Up("lo"); err != nil {
		t.Fatal(err)
	}
	p, err := NewPinger(n, false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	// The kernel turns its receive timestamps on a moment after the
	// first socket asks (a deferred static key): until a reply carries
	// one, At is the read time.
	for seq := 100; ; seq++ {
		if seq == 150 {
			t.Fatal("no reply carries the kernel's receive timestamp")
		}
		if err := p.Ping(lo, seq, time.Second); err != nil {
			t.Fatal(err)
		}
		if r, _ := p.Reply(seq); !r.At.Equal(r.Read) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	const hold = 300 * time.Millisecond
	p.mu.Lock()
	sent := time.Now()
	for seq := 1; seq <= 2; seq++ {
		if err := p.Send(lo, seq); err != nil {
			p.mu.Unlock()
			t.Fatal(err)
		}
	}
	time.Sleep(hold)
	p.mu.Unlock()
	if err := p.Wait(2, lo, time.Now().Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	r, _ := p.Reply(2)
	if r.Read.Sub(sent) < hold {
		t.Fatalf("read %v after the send: the reader was not held back", r.Read.Sub(sent))
	}
	if d := r.At.Sub(sent); d < 0 || d > hold/2 {
		t.Fatalf("reply stamped %v after the send, read %v after: At is not the arrival", d, r.Read.Sub(sent))
	}
	if up := p.ReadUpTo(); up.Before(r.At) {
		t.Fatalf("ReadUpTo %v is before the arrival %v of a reply read", up, r.At)
	}
}
