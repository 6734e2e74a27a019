package testenv

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/testenv/netnstest"
)

// TestWho checks the name server the Service tests ask: it answers with
// its name over TCP and UDP, and AskWho reports the address a UDP answer
// really came from, which is how those tests see a missing reverse NAT.
// The server's namespace holds two addresses on one subnet; an answer to
// the secondary one leaves from the primary (the subnet route's source),
// just as a backend's answer leaves with its own address when nothing
// translates it back to the Service's.
func TestWho(t *testing.T) {
	netnstest.RequireRoot(t)
	p := netnstest.Prefix()
	srv := netnstest.New(t, p+"s")
	cli := netnstest.New(t, p+"c")
	if err := srv.Veth("eth0", cli, "eth0"); err != nil {
		t.Fatal(err)
	}
	primary := netip.MustParseAddr("10.99.0.1")
	secondary := netip.MustParseAddr("10.99.0.3")
	for _, step := range []error{
		srv.Addr("eth0", netip.PrefixFrom(primary, 24)),
		srv.Addr("eth0", netip.PrefixFrom(secondary, 24)),
		cli.Addr("eth0", netip.MustParsePrefix("10.99.0.2/24")),
		srv.Up("eth0"),
		cli.Up("eth0"),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}
	w, err := StartWho(srv.Name, "backend-a")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range []struct {
		network  string
		dst      netip.Addr
		wantFrom netip.Addr
	}{
		{"tcp", primary, primary},
		{"udp", primary, primary},
		// A connected TCP socket takes its answer from dst only.
		{"tcp", secondary, secondary},
		// An unconnected UDP socket takes it from anywhere and says where.
		{"udp", secondary, primary},
	} {
		dst := netip.AddrPortFrom(c.dst, WhoPort)
		name, from, err := AskWho(ctx, cli.Name, c.network, dst)
		if err != nil {
			t.Fatalf("%s to %s: %v", c.network, dst, err)
		}
		if name != "backend-a" {
			t.Errorf("%s to %s: name %q, want backend-a", c.network, dst, name)
		}
		if want := netip.AddrPortFrom(c.wantFrom, WhoPort); from != want {
			t.Errorf("%s to %s: answer from %s, want %s", c.network, dst, from, want)
		}
	}

	// Nothing listens on the client's side: both networks say so
	// instead of answering.
	for _, network := range []string{"tcp", "udp"} {
		dst := netip.AddrPortFrom(netip.MustParseAddr("10.99.0.2"), WhoPort)
		if name, _, err := AskWho(ctx, srv.Name, network, dst); err == nil {
			t.Errorf("%s to %s with no server: answered %q, want an error", network, dst, name)
		}
	}
	if _, _, err := AskWho(ctx, cli.Name, "sctp", netip.AddrPortFrom(primary, WhoPort)); err == nil {
		t.Error("network sctp: no error")
	}
}
