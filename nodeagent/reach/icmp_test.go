package reach

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/testenv/netnstest"
)

// TestListenICMP runs the real raw sockets between two namespaces: node A
// (10.98.0.1, fd00:98::1) and node B (10.98.0.2, fd00:98::2) on a veth,
// B holding the pod gateways 10.244.2.1 and fd00:244:2::1 on a portless
// bridge, A routing 10.244.2.0/24 and 10.244.3.0/24 (and the IPv6 twins)
// via B, B forwarding with no route for 10.244.3.0/24.
func TestListenICMP(t *testing.T) {
	netnstest.RequireRoot(t)
	p := netnstest.Prefix()
	a, b := netnstest.New(t, p+"-a"), netnstest.New(t, p+"-b")
	pfx := netip.MustParsePrefix
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Veth("eth0", b, "eth0"))
	must(a.Addr("eth0", pfx("10.98.0.1/24"), pfx("fd00:98::1/64")))
	must(b.Addr("eth0", pfx("10.98.0.2/24"), pfx("fd00:98::2/64")))
	must(a.Up("eth0"))
	must(b.Up("eth0"))
	must(b.Bridge("weft0", pfx("10.244.2.1/24"), pfx("fd00:244:2::1/64")))
	must(b.Sysctl("net.ipv4.ip_forward", "1"))
	must(b.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	for _, dst := range []string{"10.244.2.0/24", "10.244.3.0/24"} {
		must(a.Route("eth0", pfx(dst), netip.MustParseAddr("10.98.0.2")))
	}
	for _, dst := range []string{"fd00:244:2::/64", "fd00:244:3::/64"} {
		must(a.Route("eth0", pfx(dst), netip.MustParseAddr("fd00:98::2")))
	}

	for _, fam := range []struct {
		v6                       bool
		gw, unrouted, rejected   string
		wantErrFrom, wantErrText string
	}{
		{false, "10.244.2.1", "10.244.9.1", "10.244.3.1", "10.98.0.2", "network unreachable"},
		{true, "fd00:244:2::1", "fd00:244:9::1", "fd00:244:3::1", "fd00:98::2", "no route to destination"},
	} {
		t.Run(fmt.Sprintf("v6=%v", fam.v6), func(t *testing.T) {
			var c Conn
			if err := a.Do(func() (err error) { c, err = ListenICMP(fam.v6); return err }); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			replies := make(chan Reply, 8)
			go func() {
				for {
					r, err := c.Recv()
					if err != nil {
						close(replies)
						return
					}
					replies <- r
				}
			}()
			next := func(what string) Reply {
				t.Helper()
				select {
				case r := <-replies:
					return r
				case <-time.After(5 * time.Second):
					t.Fatalf("%s: no answer in 5 s", what)
				}
				return Reply{}
			}
			// The pod gateway answers.
			if err := c.Send(netip.MustParseAddr(fam.gw), 7); err != nil {
				t.Fatal(err)
			}
			if r := next("echo"); r.Seq != 7 || r.From != netip.MustParseAddr(fam.gw) || r.Err != "" {
				t.Errorf("echo reply %+v, want seq 7 from %s", r, fam.gw)
			}
			// No route on this node: the send itself fails.
			err := c.Send(netip.MustParseAddr(fam.unrouted), 8)
			if !errors.Is(err, ErrNoRoute) {
				t.Errorf("send to unrouted %s: %v, want ErrNoRoute", fam.unrouted, err)
			}
			// Routed to B, which has no route: B's ICMP error names it.
			if err := c.Send(netip.MustParseAddr(fam.rejected), 9); err != nil {
				t.Fatal(err)
			}
			if r := next("icmp error"); r.Seq != 9 || r.From != netip.MustParseAddr(fam.wantErrFrom) || r.Err != fam.wantErrText {
				t.Errorf("answer %+v, want seq 9 from %s saying %q", r, fam.wantErrFrom, fam.wantErrText)
			}
		})
	}
}
