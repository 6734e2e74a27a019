package gobgp

import (
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
)

// TestFullMesh: three speakers in three namespaces on one bridge, iBGP full
// mesh, each advertising its pod CIDR; each learns the other two with the
// owner's underlay IP as next hop. Node 1 also has an unreachable peer and
// a peer that answers with garbage: both show down with a reason and
// nothing else is disturbed. A changed advertisement is withdrawn and
// re-learned everywhere; a speaker that stops withdrawing leaves no route,
// one that stops without withdrawing (graceful restart) leaves its route
// in the others.
func TestFullMesh(t *testing.T) {
	l := newLab(t)
	sw := l.ns("sw")
	l.bridge(sw, "br0", netip.Prefix{})
	const n = 3
	nodes := make([]*proc, n)
	addrs := make([]netip.Addr, n)
	cidrs := make([]netip.Prefix, n)
	for i := range n {
		ns := l.ns(fmt.Sprintf("n%d", i+1))
		addrs[i] = ip(fmt.Sprintf("10.77.0.%d", i+1))
		cidrs[i] = pfx(fmt.Sprintf("10.244.%d.0/24", i+1))
		l.attach(ns, netip.PrefixFrom(addrs[i], 24), sw, "br0", fmt.Sprintf("p%d", i+1))
		nodes[i] = l.speaker(ns, fmt.Sprintf("n%d", i+1), "")
	}
	junkNS := l.ns("junk")
	l.attach(junkNS, pfx("10.77.0.9/24"), sw, "br0", "pj")
	junk := l.child(junkNS, "junk", "garbage", "")
	if !junk.out.Scan() || junk.out.Text() != "ready" {
		t.Fatalf("garbage peer did not start")
	}

	cfgOf := func(i int) bgp.Config {
		cfg := bgp.Config{RouterID: addrs[i], ASN: 64512, ListenPort: 179, LocalAddress: addrs[i], HoldTime: 3, Keepalive: 1, GracefulRestart: true, RestartTime: 30}
		for j := range n {
			// The whole node list, self included: the speaker skips itself.
			cfg.Peers = append(cfg.Peers, bgp.Peer{Address: addrs[j]})
		}
		if i == 0 {
			cfg.Peers = append(cfg.Peers, bgp.Peer{Address: ip("10.99.0.1")}, bgp.Peer{Address: ip("10.77.0.9")})
		}
		return cfg
	}
	for i, p := range nodes {
		p.apply(cfgOf(i), addrs[i], cidrs[i])
	}
	for i, p := range nodes {
		var want []spec.Route
		var peers []string
		for j := range n {
			if j != i {
				want = append(want, spec.Route{Prefix: cidrs[j], Via: addrs[j], Proto: spec.ProtoBGP})
				peers = append(peers, addrs[j].String())
			}
		}
		rep := p.wait(20*time.Second, request{Present: want, Established: peers})
		if fmt.Sprint(rep.Routes) != fmt.Sprint(want) {
			t.Errorf("%s routes = %v, want exactly %v", p.name, rep.Routes, want)
		}
		for _, s := range rep.Sessions {
			if s.State == "established" && (s.Advertised != 1 || s.Received != 1) {
				t.Errorf("%s session %v: want 1 advertised, 1 received", p.name, s)
			}
		}
	}

	// Bad peers of node 1: down, with the reason, while its mesh sessions
	// stay up.
	deadline := time.Now().Add(20 * time.Second)
	for {
		unreach, garbage := nodes[0].session("10.99.0.1"), nodes[0].session("10.77.0.9")
		ok := strings.Contains(unreach.Reason, "unreachable") && (strings.Contains(garbage.Reason, "malformed") || strings.Contains(garbage.Reason, "sent notification"))
		if ok {
			if unreach.State == "established" || garbage.State == "established" {
				t.Fatalf("bad peer established: %v %v", unreach, garbage)
			}
			t.Logf("unreachable peer: %v; garbage peer: %v", unreach, garbage)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reasons for bad peers: %v / %v", unreach, garbage)
		}
		time.Sleep(300 * time.Millisecond)
	}
	nodes[0].wait(time.Second, request{Established: []string{"10.77.0.2", "10.77.0.3"}})

	// Node 1 moves to another CIDR: the old one is withdrawn everywhere.
	moved := pfx("10.244.11.0/24")
	nodes[0].apply(cfgOf(0), addrs[0], moved)
	for _, p := range nodes[1:] {
		p.wait(10*time.Second, request{Present: []spec.Route{{Prefix: moved, Via: addrs[0]}}, Absent: []netip.Prefix{cidrs[0]}})
	}
	// Applying the same thing again changes nothing.
	nodes[0].apply(cfgOf(0), addrs[0], moved)
	nodes[0].wait(time.Second, request{Established: []string{"10.77.0.2", "10.77.0.3"}})

	// Node 3 leaves with withdraw: its prefix disappears from the others.
	nodes[2].must(request{Op: "stop", Withdraw: true})
	for _, p := range nodes[:2] {
		p.wait(10*time.Second, request{Absent: []netip.Prefix{cidrs[2]}})
	}

	// Node 2's agent goes away without withdrawing (graceful restart): node
	// 1 notices the session is gone but keeps node 2's route.
	nodes[1].must(request{Op: "stop", Withdraw: false})
	nodes[1].kill()
	deadline = time.Now().Add(10 * time.Second)
	for nodes[0].session(addrs[1].String()).State == "established" {
		if time.Now().After(deadline) {
			t.Fatal("node 1 never noticed node 2 leaving")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	nodes[0].wait(time.Second, request{Present: []spec.Route{{Prefix: cidrs[1], Via: addrs[1]}}})
	junk.signal(syscall.SIGKILL)
}
