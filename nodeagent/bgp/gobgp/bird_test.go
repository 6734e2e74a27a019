package gobgp

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	"github.com/weftnet/weft/testenv/birdtest"
	"github.com/weftnet/weft/testenv/poll"
)

// birdRouter is a BIRD 2 daemon in a namespace of the lab.
type birdRouter struct {
	t    testing.TB
	dir  string
	sock string
	pid  int
}

func startBIRD(l *lab, ns string, conf birdtest.Config) *birdRouter {
	l.t.Helper()
	bin, err := exec.LookPath("bird")
	if err != nil {
		l.t.Skip("needs BIRD 2 (Debian package bird2): bird not in PATH")
	}
	if _, err := exec.LookPath("birdc"); err != nil {
		l.t.Skip("needs BIRD 2 (Debian package bird2): birdc not in PATH")
	}
	b := &birdRouter{t: l.t, dir: filepath.Join(l.dir, "bird")}
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		l.t.Fatal(err)
	}
	b.sock = filepath.Join(b.dir, "bird.ctl")
	confPath := filepath.Join(b.dir, "bird.conf")
	pidPath := filepath.Join(b.dir, "bird.pid")
	conf.Log = filepath.Join(b.dir, "bird.log")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o600); err != nil {
		l.t.Fatal(err)
	}
	// bird daemonizes: the command returns once it runs.
	cmd := exec.Command(bin, "-c", confPath, "-s", b.sock, "-P", pidPath)
	if err := l.nss[ns].Do(func() error {
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", bin, err, out)
		}
		return nil
	}); err != nil {
		l.t.Fatal(err)
	}
	// bird daemonizes; its PID comes from the pidfile and only that PID is
	// ever signalled.
	l.t.Cleanup(func() {
		if b.pid > 0 {
			_ = syscall.Kill(b.pid, syscall.SIGTERM)
			for range 50 {
				if syscall.Kill(b.pid, 0) != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		if l.t.Failed() {
			out, _ := os.ReadFile(filepath.Join(b.dir, "bird.log"))
			l.t.Logf("bird.log:\n%s", tail(string(out), 40))
		}
	})
	for range 100 {
		if raw, err := os.ReadFile(pidPath); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && pid > 0 {
				b.pid = pid
				return b
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.t.Fatal("bird wrote no pidfile")
	return nil
}

func (b *birdRouter) cli(args ...string) string {
	b.t.Helper()
	out, err := birdtest.CLI(context.Background(), b.sock, args...)
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// routes is BIRD's best route of each prefix: prefix → next hop.
func (b *birdRouter) routes() map[netip.Prefix]netip.Addr {
	b.t.Helper()
	return birdtest.Routes(b.cli("show", "route"))
}

// protocol returns the `show protocols all NAME` text.
func (b *birdRouter) protocol(name string) string {
	b.t.Helper()
	return b.cli("show", "protocols", "all", name)
}

func (b *birdRouter) established(name string) bool {
	b.t.Helper()
	return birdtest.Established(b.cli("show", "protocols", name), name)
}

// eventually polls cond every 100 ms for up to d.
func eventually(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	poll.Eventually(t, d, 100*time.Millisecond, what, cond)
}

// birdConf is the router of TestBIRD: AS 65000, one session per node
// (n1 and n4 with MD5 passwords).
var birdConf = birdtest.Config{RouterID: ip("10.78.1.254"), ASN: 65000, Peers: []birdtest.Peer{
	{Name: "n1", Neighbor: ip("10.78.1.1"), NeighborASN: 65001, Password: "weft-md5-secret"},
	{Name: "n2", Neighbor: ip("10.78.1.2"), NeighborASN: 65002},
	{Name: "n3", Neighbor: ip("10.78.2.3"), NeighborASN: 65003},
	{Name: "n4", Neighbor: ip("10.78.2.4"), NeighborASN: 65004, Password: "right-one"},
	{Name: "n5", Neighbor: ip("10.78.1.5"), NeighborASN: 65005},
}}

// TestBIRD runs BIRD 2 as the router of two segments, A (10.78.1.0/24:
// n1, n2, n5) and B (10.78.2.0/24: n3, n4), every node peering over eBGP
// (its own AS) with it, and asserts on BIRD's own view as well as on the
// speakers':
//   - n1 (MD5), n2, n3 are established; BIRD holds each one's pod CIDR via
//     that node's address; n1 and n2 learn each other directly (BIRD keeps
//     a next hop on the shared segment) and n3's CIDR via the router, n3
//     learns theirs via the router;
//   - n4 (wrong MD5 password) and n5 (expects the wrong AS) stay down with
//     a reason, and nobody logs a password;
//   - n2 (no graceful restart) frozen with SIGSTOP: BIRD's hold timer (3 s)
//     expires and its route is withdrawn everywhere;
//   - n3 (graceful restart) stopped without withdraw: BIRD keeps its route
//     (graceful restart active) and so does n1; a new n3 process takes
//     over;
//   - n1 stopped with withdraw: its route leaves BIRD at once.
func TestBIRD(t *testing.T) {
	l := newLab(t)
	r := l.ns("r")
	l.bridge(r, "bra", pfx("10.78.1.254/24"))
	l.bridge(r, "brb", pfx("10.78.2.254/24"))
	type node struct {
		name  string
		addr  netip.Addr
		seg   string
		asn   uint32
		peer  bgp.Peer
		gr    bool
		cidr  netip.Prefix
		ns    string
		p     *proc
		level string
	}
	rA, rB := ip("10.78.1.254"), ip("10.78.2.254")
	nodes := []*node{
		{name: "n1", addr: ip("10.78.1.1"), seg: "bra", asn: 65001, peer: bgp.Peer{Address: rA, ASN: 65000, Password: "weft-md5-secret"}, gr: true, level: "trace"},
		{name: "n2", addr: ip("10.78.1.2"), seg: "bra", asn: 65002, peer: bgp.Peer{Address: rA, ASN: 65000}},
		{name: "n3", addr: ip("10.78.2.3"), seg: "brb", asn: 65003, peer: bgp.Peer{Address: rB, ASN: 65000}, gr: true},
		{name: "n4", addr: ip("10.78.2.4"), seg: "brb", asn: 65004, peer: bgp.Peer{Address: rB, ASN: 65000, Password: "wrong-one"}, level: "trace"},
		{name: "n5", addr: ip("10.78.1.5"), seg: "bra", asn: 65005, peer: bgp.Peer{Address: rA, ASN: 65099}},
	}
	for i, n := range nodes {
		n.ns = l.ns(n.name)
		n.cidr = pfx(fmt.Sprintf("10.244.%d.0/24", i+1))
		l.attach(n.ns, netip.PrefixFrom(n.addr, 24), r, n.seg, "p"+n.name)
	}
	bird := startBIRD(l, r, birdConf)
	cfgOf := func(n *node) bgp.Config {
		return bgp.Config{RouterID: n.addr, ASN: n.asn, ListenPort: 179, LocalAddress: n.addr,
			Peers: []bgp.Peer{n.peer}, HoldTime: 3, Keepalive: 1, GracefulRestart: n.gr, RestartTime: 30}
	}
	for _, n := range nodes {
		n.p = l.speaker(n.ns, n.name, n.level)
		n.p.apply(cfgOf(n), n.addr, n.cidr)
	}
	n1, n2, n3, n4, n5 := nodes[0], nodes[1], nodes[2], nodes[3], nodes[4]

	// Every good node's CIDR reaches BIRD with the node as next hop...
	eventually(t, 20*time.Second, "BIRD learns n1..n3", func() (bool, string) {
		got := bird.routes()
		for _, n := range nodes[:3] {
			if got[n.cidr] != n.addr {
				return false, fmt.Sprint(got)
			}
		}
		return true, ""
	})
	for _, n := range nodes[:3] {
		if !bird.established(n.name) {
			t.Errorf("BIRD: %s not established:\n%s", n.name, bird.protocol(n.name))
		}
	}
	// ... and every good node learns the others' through BIRD.
	n1.p.wait(10*time.Second, request{Present: []spec.Route{{Prefix: n2.cidr, Via: n2.addr}, {Prefix: n3.cidr, Via: rA}}})
	n2.p.wait(10*time.Second, request{Present: []spec.Route{{Prefix: n1.cidr, Via: n1.addr}, {Prefix: n3.cidr, Via: rA}}})
	rep := n3.p.wait(10*time.Second, request{Present: []spec.Route{{Prefix: n1.cidr, Via: rB}, {Prefix: n2.cidr, Via: rB}}})
	if len(rep.Routes) != 2 {
		t.Errorf("n3 routes %v, want exactly n1's and n2's", rep.Routes)
	}
	if s := n1.p.session(rA.String()); s.State != "established" || s.Advertised != 1 || s.Received != 2 {
		t.Errorf("n1 session %v: want established, 1 advertised, 2 received\n%s", s, bird.protocol("n1"))
	}

	// Bad peers: down with a reason on both sides, while the rest is up.
	eventually(t, 20*time.Second, "n4 (wrong password) and n5 (wrong AS) report why", func() (bool, string) {
		s4, s5 := n4.p.session(rB.String()), n5.p.session(rA.String())
		return s4.State != "established" && strings.Contains(s4.Reason, "connect") &&
			s5.State != "established" && strings.Contains(s5.Reason, "notification"), fmt.Sprint(s4, s5)
	})
	t.Logf("n4: %v", n4.p.session(rB.String()))
	t.Logf("n5: %v", n5.p.session(rA.String()))
	for _, n := range []*node{n4, n5} {
		if bird.established(n.name) {
			t.Errorf("BIRD: %s established", n.name)
		}
		if _, ok := bird.routes()[n.cidr]; ok {
			t.Errorf("BIRD has %s's CIDR", n.name)
		}
	}
	n1.p.wait(time.Second, request{Established: []string{rA.String()}})
	for _, n := range []*node{n1, n4} {
		if n.p.logHas(n.peer.Password) {
			t.Errorf("%s logged its password", n.name)
		}
	}

	// Hold time: n2 freezes (no GR); BIRD drops the session after 3 s and
	// withdraws n2's CIDR from everyone.
	n2.p.signal(syscall.SIGSTOP)
	n1.p.wait(10*time.Second, request{Absent: []netip.Prefix{n2.cidr}, Present: []spec.Route{{Prefix: n3.cidr}}})
	if _, ok := bird.routes()[n2.cidr]; ok {
		t.Error("BIRD still routes n2's CIDR after its hold time")
	}
	if p := bird.protocol("n2"); !strings.Contains(p, "Hold timer expired") {
		t.Errorf("BIRD n2 did not end by hold timer:\n%s", p)
	}

	// Graceful restart: n3 stops without withdrawing; BIRD keeps its route
	// (stale) for the restart time, and n1 keeps learning it.
	n3.p.must(request{Op: "stop", Withdraw: false})
	n3.p.kill()
	eventually(t, 10*time.Second, "BIRD in graceful restart for n3", func() (bool, string) {
		p := bird.protocol("n3")
		return strings.Contains(p, "Neighbor graceful restart active"), p
	})
	time.Sleep(time.Second)
	if got := bird.routes()[n3.cidr]; got != n3.addr {
		t.Errorf("BIRD dropped n3's CIDR during graceful restart: %v", bird.cli("show", "route", "all"))
	}
	t.Logf("BIRD during restart:\n%s", bird.cli("show", "route", "for", n3.cidr.String(), "all"))
	n1.p.wait(time.Second, request{Present: []spec.Route{{Prefix: n3.cidr, Via: rA}}})
	// The agent comes back: a new process re-advertises, BIRD is fresh.
	n3.p = l.child(n3.ns, "n3-restarted", "n3", "")
	n3.p.apply(cfgOf(n3), n3.addr, n3.cidr)
	n3.p.wait(15*time.Second, request{Established: []string{rB.String()}, Present: []spec.Route{{Prefix: n1.cidr, Via: rB}}})
	eventually(t, 10*time.Second, "BIRD takes n3 back", func() (bool, string) {
		p := bird.protocol("n3")
		return bird.established("n3") && !strings.Contains(p, "graceful restart active") && bird.routes()[n3.cidr] == n3.addr, p
	})

	// Leaving with withdraw: gone from BIRD and from n3.
	n1.p.must(request{Op: "stop", Withdraw: true})
	eventually(t, 5*time.Second, "BIRD withdraws n1", func() (bool, string) {
		_, ok := bird.routes()[n1.cidr]
		return !ok, bird.cli("show", "route")
	})
	n3.p.wait(5*time.Second, request{Absent: []netip.Prefix{n1.cidr}})
}
