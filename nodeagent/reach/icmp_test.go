package reach

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/testenv"
)

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestListenICMP runs the real raw sockets between two namespaces: node A
// (10.98.0.1, fd00:98::1) and node B (10.98.0.2, fd00:98::2) on a veth,
// B holding the pod gateways 10.244.2.1 and fd00:244:2::1 on a portless bridge
// device, A routing 10.244.2.0/24 and 10.244.3.0/24 (and the IPv6 twins)
// via B, B forwarding with no route for 10.244.3.0/24.
func TestListenICMP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, raw sockets)")
	}
	p := fmt.Sprintf("wr%d", os.Getpid()%100000)
	a, b := p+"-a", p+"-b"
	for _, ns := range []string{a, b} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	sh(t, "ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
	for i, ns := range []string{a, b} {
		sh(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.98.0.%d/24", i+1), "dev", "eth0")
		sh(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("fd00:98::%d/64", i+1), "dev", "eth0", "nodad")
		sh(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	}
	sh(t, "ip", "-n", b, "link", "add", "weft0", "type", "bridge")
	sh(t, "ip", "-n", b, "addr", "add", "10.244.2.1/24", "dev", "weft0")
	sh(t, "ip", "-n", b, "addr", "add", "fd00:244:2::1/64", "dev", "weft0", "nodad")
	sh(t, "ip", "-n", b, "link", "set", "weft0", "up")
	sh(t, "ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	for _, dst := range []string{"10.244.2.0/24", "10.244.3.0/24"} {
		sh(t, "ip", "-n", a, "route", "add", dst, "via", "10.98.0.2")
	}
	for _, dst := range []string{"fd00:244:2::/64", "fd00:244:3::/64"} {
		sh(t, "ip", "-n", a, "-6", "route", "add", dst, "via", "fd00:98::2")
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
			if err := testenv.InNS(a, func() (err error) { c, err = ListenICMP(fam.v6); return err }); err != nil {
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
