package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/garbage"
	"github.com/weftnet/weft/testenv/netnstest"
)

// TestTrust is issue 11 on a running cluster: the datapath's half (forged
// packets from the underlay and from pods, Datapath) and the store's half
// (bad values written by hand, Values), each on its own cluster: Values
// restarts controllers and agents, Datapath switches the backend.
func TestTrust(t *testing.T) {
	t.Run("Datapath", trustDatapath)
	t.Run("Values", trustValues)
}

// trustDatapath plays the attacks of docs/datapath.md ("Trust") against a
// running cluster, pods attached by weft-cni, and proves each fails: the
// forged packet never reaches the victim pod and the victim's (or the
// sender's) agent counts it under its reason in
// weft_datapath_drop_reasons_total. A genuine packet of the same kind
// still arrives after each, so the test cannot pass by breaking the path.
func trustDatapath(t *testing.T) {
	c := start(t, testenv.Options{Nodes: 3, PodsPerNode: 2, Backend: "vxlan", Reconcile: "2s"})
	ctx := context.Background()
	n0, n1, n2 := c.Node(0), c.Node(1), c.Node(2)
	victim := n0.Pods[0]
	sink, err := netnstest.NewUDPSinkAt(netnstest.PathOf(victim.NS), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	remote := n1.Pods[0]
	sinkRemote, err := netnstest.NewUDPSinkAt(netnstest.PathOf(remote.NS), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sinkRemote.Close()
	seq := 0
	payload := func(what string) string { seq++; return fmt.Sprintf("%s #%d", what, seq) }

	// underlayAttack sends a plain UDP frame from attacker's underlay
	// interface to the victim node's MAC.
	underlayAttack := func(t *testing.T, attacker *testenv.Node, src netip.Addr, reason string) {
		t.Helper()
		before := dropReason(t, ctx, c, n0, reason)
		p := payload("underlay " + src.String())
		f := netnstest.UDP{DstMAC: macOf(t, n0.NS, n0.Iface), SrcMAC: macOf(t, attacker.NS, attacker.Iface),
			Src: src, Dst: victim.Addr, SrcPort: 4000, DstPort: sink.Port(), Payload: []byte(p)}
		if err := netnstest.SendFrameAt(netnstest.PathOf(attacker.NS), attacker.Iface, f.Frame()); err != nil {
			t.Fatal(err)
		}
		if from, ok := sink.Wait(p, time.Second); ok {
			t.Fatalf("plain frame from %s's underlay with source %s reached %s (seen from %s)", attacker.Name, src, victim.Name, from)
		}
		waitDrop(t, ctx, c, n0, reason, before)
	}
	genuine := func(t *testing.T) {
		t.Helper()
		p := payload("genuine")
		if err := udpFrom(remote.NS, victim.Addr, sink.Port(), p); err != nil {
			t.Fatal(err)
		}
		if from, ok := sink.Wait(p, 3*time.Second); !ok || from != remote.Addr {
			t.Fatalf("genuine datagram from %s: arrived %v from %s", remote.Name, ok, from)
		}
	}

	t.Run("plain frame from the underlay (vxlan)", func(t *testing.T) {
		underlayAttack(t, n2, remote.Addr, "reverse_path")                       // another node's pod
		underlayAttack(t, n2, n0.Pods[1].Addr, "reverse_path")                   // a pod of the victim's node
		underlayAttack(t, n2, netip.MustParseAddr("10.99.0.77"), "plain_to_pod") // outside the pod network
		genuine(t)
	})

	t.Run("pod sends with a neighbour's address", func(t *testing.T) {
		attacker, neighbour := n0.Pods[0], n0.Pods[1]
		before := dropReason(t, ctx, c, n0, "pod_source")
		p := payload("spoofed pod")
		f := netnstest.UDP{DstMAC: macOf(t, n0.NS, "weft0"), SrcMAC: macOf(t, attacker.NS, "eth0"),
			Src: neighbour.Addr, Dst: remote.Addr, SrcPort: 4000, DstPort: sinkRemote.Port(), Payload: []byte(p)}
		if err := netnstest.SendFrameAt(netnstest.PathOf(attacker.NS), "eth0", f.Frame()); err != nil {
			t.Fatal(err)
		}
		if from, ok := sinkRemote.Wait(p, time.Second); ok {
			t.Fatalf("%s sending as %s reached %s (seen from %s)", attacker.Name, neighbour.Addr, remote.Name, from)
		}
		waitDrop(t, ctx, c, n0, "pod_source", before)
		// The same frame with its own address arrives.
		p = payload("own address")
		f.Src, f.Payload = attacker.Addr, []byte(p)
		if err := netnstest.SendFrameAt(netnstest.PathOf(attacker.NS), "eth0", f.Frame()); err != nil {
			t.Fatal(err)
		}
		if from, ok := sinkRemote.Wait(p, 3*time.Second); !ok || from != attacker.Addr {
			t.Fatalf("%s sending as itself: arrived %v from %s", attacker.Name, ok, from)
		}
	})

	t.Run("pod claims a neighbour's address in ARP", func(t *testing.T) {
		attacker, neighbour := n0.Pods[0], n0.Pods[1]
		// The node knows the neighbour's MAC (it just talked to it).
		if err := testenv.CheckICMP(ctx, n0.NS, neighbour.Addr); err != nil {
			t.Fatal(err)
		}
		want := macOf(t, neighbour.NS, "eth0").String()
		before := dropReason(t, ctx, c, n0, "pod_arp")
		time.Sleep(1100 * time.Millisecond) // past the neighbour entry's locktime
		gw := macOf(t, n0.NS, "weft0")
		mac := macOf(t, attacker.NS, "eth0")
		s, err := testenv.ReadSubnetEnv(n0.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		f := netnstest.ARP{DstMAC: gw, SrcMAC: mac, SenderMAC: mac, SenderIP: neighbour.Addr, TargetMAC: gw, TargetIP: s.Subnet.Addr(), Reply: true}
		if err := netnstest.SendFrameAt(netnstest.PathOf(attacker.NS), "eth0", f.Frame()); err != nil {
			t.Fatal(err)
		}
		waitDrop(t, ctx, c, n0, "pod_arp", before)
		if got := neighMAC(t, n0.NS, "weft0", neighbour.Addr); got != want {
			t.Fatalf("node's neighbour entry for %s moved to %s (the neighbour has %s)", neighbour.Addr, got, want)
		}
	})

	t.Run("ipv4-mapped inner source", func(t *testing.T) {
		// Node 1 owns remote's prefix and sends from its own underlay
		// address: only the IPv4-mapped form of the source is wrong.
		before := dropReason(t, ctx, c, n0, "ipv4_mapped")
		p := payload("mapped")
		inner := netnstest.UDP{DstMAC: macOf(t, n0.NS, "weft0"), SrcMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 1},
			Src: netip.AddrFrom16(remote.Addr.As16()), Dst: netip.AddrFrom16(victim.Addr.As16()),
			SrcPort: 4000, DstPort: sink.Port(), Payload: []byte(p)}
		vx := append([]byte{0x08, 0, 0, 0, 0, 0, 1, 0}, inner.Frame()...) // VNI 1
		err := testenv.InNS(n1.NS, func() error {
			conn, err := net.DialUDP("udp", &net.UDPAddr{IP: n1.UnderlayIP.AsSlice()}, &net.UDPAddr{IP: n0.UnderlayIP.AsSlice(), Port: 8472})
			if err != nil {
				return err
			}
			defer conn.Close()
			_, err = conn.Write(vx)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if from, ok := sink.Wait(p, time.Second); ok {
			t.Fatalf("IPv6 packet with source ::ffff:%s reached %s (seen from %s)", remote.Addr, victim.Name, from)
		}
		waitDrop(t, ctx, c, n0, "ipv4_mapped", before)
		genuine(t)
	})

	t.Run("plain frame from the underlay (native)", func(t *testing.T) {
		err := c.SetConfig(ctx, func(cfg *weftv1.ClusterConfig) {
			cfg.Backend, cfg.AutoDirectNodeRoutes = "native", true
		})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "native mode", func() (bool, string) {
			ok, why, err := c.Converged(ctx)
			if !ok || err != nil {
				return false, fmt.Sprint(why, err)
			}
			for _, n := range c.Nodes() {
				st, err := c.Status(ctx, n.Name)
				if err != nil || st.GetMode() != "native" {
					return false, fmt.Sprintf("%s in mode %q (%v)", n.Name, st.GetMode(), err)
				}
			}
			return true, ""
		})
		requireAllPairs(t, ctx, c)
		// Node 2 is adjacent, but node 1's pods come from node 1.
		underlayAttack(t, n2, remote.Addr, "reverse_path")
		underlayAttack(t, n2, n0.Pods[1].Addr, "reverse_path")
		genuine(t)
	})
}

// dropReason reads node n's drop counter for reason.
func dropReason(t *testing.T, ctx context.Context, c *testenv.Cluster, n *testenv.Node, reason string) float64 {
	t.Helper()
	m, err := c.Metrics(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m[fmt.Sprintf("weft_datapath_drop_reasons_total{reason=%q}", reason)]
	if !ok {
		t.Fatalf("%s exports no weft_datapath_drop_reasons_total{reason=%q}", n.Name, reason)
	}
	return v
}

// waitDrop waits until n counted more drops for reason than before.
func waitDrop(t *testing.T, ctx context.Context, c *testenv.Cluster, n *testenv.Node, reason string, before float64) {
	t.Helper()
	eventually(t, 3*time.Second, n.Name+" counts "+reason, func() (bool, string) {
		got := dropReason(t, ctx, c, n, reason)
		return got > before, fmt.Sprintf("%s drops %v -> %v", reason, before, got)
	})
}

func macOf(t *testing.T, ns, ifName string) net.HardwareAddr {
	t.Helper()
	h, err := netnstest.Open(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mac, err := h.MAC(ifName)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// neighMAC is the MAC of ip in the neighbour table of dev in ns.
func neighMAC(t *testing.T, ns, dev string, ip netip.Addr) string {
	t.Helper()
	var out string
	err := testenv.InNS(ns, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		ns, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		for _, n := range ns {
			if n.IP.Equal(ip.AsSlice()) {
				out = n.HardwareAddr.String()
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// udpFrom sends payload to dst:port from a UDP socket in ns.
func udpFrom(ns string, dst netip.Addr, port uint16, payload string) error {
	return testenv.InNS(ns, func() error {
		conn, err := net.Dial("udp", netip.AddrPortFrom(dst, port).String())
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte(payload))
		return err
	})
}

// trustValues writes bad values into a running cluster's store by hand, as
// a careless operator or an attacker with write access would (issue 11),
// and requires that every other node keeps joining and forwarding without
// losing a ping, that the bad value is named, and that an agent restarted
// while a node's value is bad keeps that node's tunnel and says it is
// degraded. Each subtest logs what it measured.
func trustValues(t *testing.T) {
	c := start(t, testenv.Options{
		Nodes: 3, PodsPerNode: 1, Backend: "vxlan",
		Etcd: testenv.EtcdExternal, EtcdMembers: 1, Controllers: 1,
		LeaseTTL: 3, NodeGrace: 4, ElectionTTL: 3, Reconcile: "2s",
	})
	ctx := context.Background()
	cli, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	k := keys.New("/weft")

	// allPairs streams pings between the pods of every pair of nodes.
	allPairs := func(t *testing.T) func() {
		t.Helper()
		var ss []*testenv.Stream
		var nodes []*testenv.Node
		for _, n := range c.Nodes() {
			if len(n.Pods) > 0 {
				nodes = append(nodes, n)
			}
		}
		for _, from := range nodes {
			var dsts []netip.Addr
			for _, to := range nodes {
				if to != from {
					dsts = append(dsts, to.Pods[0].Addr)
				}
			}
			s, err := testenv.StartStream(from.Pods[0].NS, dsts, 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			ss = append(ss, s)
		}
		return func() {
			t.Helper()
			for i, s := range ss {
				st := s.Stop()
				t.Logf("stream from %s: sent %d received %d lost %d", nodes[i].Name, st.Sent, st.Received, st.Lost)
				if st.Lost != 0 || st.Received != st.Sent {
					t.Errorf("stream from %s lost %d of %d pings", nodes[i].Name, st.Lost, st.Sent)
				}
			}
		}
	}
	leads := func() int {
		b, _ := os.ReadFile(c.Controllers[0].Log)
		return strings.Count(string(b), "controller: leading")
	}
	// joins registers a node without an agent and waits up to 30 s for
	// the controller's NodeAdded; it returns how long that took.
	joins := func(t *testing.T, name, ip string) (time.Duration, bool) {
		t.Helper()
		g, err := cli.Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Revoke(context.Background(), g.ID) })
		reg := keys.EncodeString(&weftv1.Registration{Name: name, UnderlayIp: ip})
		if _, err := cli.Put(ctx, k.Registration(name), reg, clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		begin := time.Now()
		for time.Since(begin) < 30*time.Second {
			if r, err := cli.Get(ctx, k.Node(name)); err == nil && len(r.Kvs) > 0 {
				return time.Since(begin), true
			}
			time.Sleep(100 * time.Millisecond)
		}
		return time.Since(begin), false
	}
	problem := func(t *testing.T, subject string) (string, bool) {
		t.Helper()
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			r, err := cli.Get(ctx, k.Problem(subject))
			if err != nil || len(r.Kvs) == 0 {
				continue
			}
			p, err := keys.DecodeProblem(r.Kvs[0].Value)
			if err != nil {
				return err.Error(), false
			}
			return p.Reason, true
		}
		return "", false
	}
	// repaired waits up to 30 s for weftctl check to pass again.
	repaired := func(t *testing.T) (time.Duration, bool) {
		t.Helper()
		begin := time.Now()
		for time.Since(begin) < 30*time.Second {
			if _, err := c.Weftctl(ctx, "check"); err == nil {
				return time.Since(begin), true
			}
			time.Sleep(200 * time.Millisecond)
		}
		return time.Since(begin), false
	}
	// restartController kills the controller and starts it again, so a
	// new leader starts with the bad value in the store.
	restartController := func(t *testing.T) {
		t.Helper()
		if err := c.KillController(0); err != nil {
			t.Fatal(err)
		}
		if err := c.StartController(0); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("HugeRegistration", func(t *testing.T) {
		stop := allPairs(t)
		defer stop()
		before := leads()
		in, err := c.InjectGarbage(ctx, garbage.Case{Kind: garbage.Registrations, Variant: garbage.Huge}, garbage.Target{Name: "mallory", LeaseTTL: 600})
		if err != nil {
			t.Fatal(err)
		}
		defer c.UndoGarbage(ctx, in)
		begin := time.Now()
		n, err := c.AddNode(ctx)
		if err != nil {
			t.Fatalf("a node joining after a %d-byte registration: %v (leadership taken %d times since)", in.Size, err, leads()-before)
		}
		eventually(t, 60*time.Second, n.Name+" reachable from every other node's pod", func() (bool, string) {
			for _, from := range c.Nodes() {
				if from == n {
					continue
				}
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				err := testenv.CheckICMP(cctx, from.Pods[0].NS, n.Pods[0].Addr)
				cancel()
				if err != nil {
					return false, err.Error()
				}
			}
			return true, ""
		})
		joined := time.Since(begin)
		reason, ok := problem(t, "mallory")
		t.Logf("%d-byte registration: %s joined and reachable %v later; leadership taken %d times; problem: %.200s",
			in.Size, n.Name, joined, leads()-before, reason)
		if !ok || !strings.Contains(reason, "value: ") {
			t.Errorf("no problem of mallory naming the field: %.200q", reason)
		}
		if l := leads() - before; l != 0 {
			t.Errorf("leadership taken %d times: the controller stepped down because of data", l)
		}
	})

	// A bad projection value, with the controller restarted on it (each
	// new leader starts from the store): every other node keeps joining
	// and forwarding, the value is repaired from the log.
	for _, tc := range []struct {
		name string
		g    garbage.Case
		node int // the node whose value is bad, or -1
		ip   string
	}{
		{"MalformedConfig", garbage.Case{Kind: garbage.Config, Variant: garbage.NotJSON}, -1, "10.99.0.201"},
		{"MalformedNodeValue", garbage.Case{Kind: garbage.Nodes, Variant: garbage.NotJSON}, 1, "10.99.0.202"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := allPairs(t)
			defer stop()
			before := leads()
			var target garbage.Target
			if tc.node >= 0 {
				target.Node = c.Node(tc.node).Name
			}
			in, err := c.InjectGarbage(ctx, tc.g, target)
			if err != nil {
				t.Fatal(err)
			}
			defer c.UndoGarbage(ctx, in)
			restartController(t)
			out, err := c.Weftctl(ctx, "nodes")
			if err != nil {
				t.Errorf("weftctl nodes fails with a bad %s: %v", in.Key, err)
			}
			took, joined := joins(t, "probe-"+strings.ToLower(tc.name), tc.ip)
			fixed, ok := repaired(t)
			m, err := c.ControllerMetrics(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("bad %s, controller restarted: a registration got NodeAdded: %v after %v; store consistent again: %v after %v; leadership taken %d times; repairs counted %v; weftctl nodes:\n%s",
				in.Key, joined, took, ok, fixed, leads()-before, testenv.SumMetric(m, "weft_controller_projection_repairs_total"), out)
			if !joined {
				t.Error("the controller appended nothing for a new registration")
			}
			if !ok {
				t.Errorf("%s not repaired from the log", in.Key)
			}
			if l := leads() - before; l != 1 {
				t.Errorf("leadership taken %d times after one restart: the controller stepped down because of data", l)
			}
			if testenv.SumMetric(m, "weft_controller_projection_repairs_total") < 1 {
				t.Error("the repair was not counted (weft_controller_projection_repairs_total)")
			}
		})
	}

	t.Run("BadNodeValueAgentRestart", func(t *testing.T) {
		// No controller to repair the value: the agent is on its own.
		if err := c.KillController(0); err != nil {
			t.Fatal(err)
		}
		victim, restarted := c.Node(1), c.Node(2)
		in, err := c.InjectGarbage(ctx, garbage.Case{Kind: garbage.Nodes, Variant: garbage.NotJSON}, garbage.Target{Node: victim.Name})
		if err != nil {
			t.Fatal(err)
		}
		defer c.UndoGarbage(ctx, in)
		for _, verb := range []string{"nodes", "status"} {
			out, err := c.Weftctl(ctx, verb)
			t.Logf("weftctl %s with a bad %s:\n%s", verb, in.Key, out)
			if err != nil {
				t.Errorf("weftctl %s fails on a bad node value: %v", verb, err)
			} else if !strings.Contains(out, "bad value") {
				t.Errorf("weftctl %s does not show the bad value of %s", verb, victim.Name)
			}
		}
		to, err := testenv.StartStream(restarted.Pods[0].NS, []netip.Addr{victim.Pods[0].Addr}, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		from, err := testenv.StartStream(victim.Pods[0].NS, []netip.Addr{restarted.Pods[0].Addr}, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.RestartAgent(restarted.Index); err != nil {
			t.Fatal(err)
		}
		// Measure first, judge after: the pings say what the restart did.
		var code int
		var body string
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			if code, body = healthz(ctx, c, restarted); code == 503 && strings.Contains(body, in.Key) {
				break
			}
		}
		time.Sleep(3 * time.Second) // the restarted agent has synced; keep streaming
		if code != 503 || !strings.Contains(body, in.Key) {
			t.Errorf("%s does not report degraded naming %s: healthz %d %q", restarted.Name, in.Key, code, body)
		}
		m, err := c.Metrics(ctx, restarted)
		if err != nil {
			t.Fatal(err)
		}
		if m["weft_agent_degraded"] != 1 {
			t.Errorf("weft_agent_degraded = %v, want 1", m["weft_agent_degraded"])
		}
		out, err := c.Weftctl(ctx, "status")
		row := ""
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, restarted.Name+" ") {
				row = line
			}
		}
		if err != nil || !strings.Contains(row, in.Key) {
			t.Errorf("weftctl status does not name %s in the row of %s: %v\n%s", in.Key, restarted.Name, err, out)
		}
		st1, st2 := to.Stop(), from.Stop()
		t.Logf("restart of %s with %s bad: healthz %d %q; pings to %s lost %d of %d, back lost %d of %d",
			restarted.Name, in.Key, code, body, victim.Name, st1.Lost, st1.Sent, st2.Lost, st2.Sent)
		for _, st := range []testenv.Stats{st1, st2} {
			if st.Lost != 0 || st.Received != st.Sent {
				t.Errorf("pings lost across the restart with a bad node value: lost %d of %d", st.Lost, st.Sent)
			}
		}

		// The controller comes back, repairs the value from the log, and
		// the agent notices.
		if err := c.StartController(0); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		eventually(t, 40*time.Second, restarted.Name+" healthy after the repair", func() (bool, string) {
			code, body := healthz(ctx, c, restarted)
			return code == 200, body
		})
		t.Logf("controller restarted: %s repaired and %s healthy %v later", in.Key, restarted.Name, time.Since(back))
		if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	})

	// A node that joins while the controller is away waits for its
	// NodeAdded: it applied the head and is not degraded, but its status
	// says what it waits for, weftctl status shows it converging (it has
	// no row of the log's yet) and Converged is false naming it. The
	// controller back, it converges and the field is gone.
	t.Run("JoinWhileControllerDown", func(t *testing.T) {
		if err := c.KillController(0); err != nil {
			t.Fatal(err)
		}
		n, err := c.StartNode(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := "no NodeAdded of " + n.Name + " in the log (the controller has not given it pod CIDRs)"
		var st *weftv1.AgentStatus
		eventually(t, 30*time.Second, n.Name+"'s status names its missing NodeAdded", func() (bool, string) {
			st, err = c.Status(ctx, n.Name)
			return err == nil && st.GetNotConverged() == want, fmt.Sprint(st, err)
		})
		head, err := c.Head(ctx)
		if err != nil || st.GetAppliedSeq() != head || st.GetDegraded() {
			t.Errorf("%s waiting: status %v, head %d (%v): want the head applied and not degraded", n.Name, st, head, err)
		}
		if ok, why, err := c.Converged(ctx); ok || err != nil || why != n.Name+" converging: "+want {
			t.Errorf("Converged with %s waiting = %v %q %v", n.Name, ok, why, err)
		}
		out, err := c.Weftctl(ctx, "status")
		t.Logf("weftctl status with %s waiting:\n%s", n.Name, out)
		if err != nil || !strings.Contains(out, "converging: "+want) {
			t.Errorf("weftctl status does not show %s converging: %v", n.Name, err)
		}
		if err := c.StartController(0); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitConverged(ctx, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		if st, err := c.Status(ctx, n.Name); err != nil || st.GetNotConverged() != "" || len(st.GetPodCidrs()) == 0 {
			t.Errorf("%s after the controller came back: %v %v", n.Name, st, err)
		}
	})

	t.Run("LogConsistent", func(t *testing.T) {
		if out, err := c.Weftctl(ctx, "check"); err != nil {
			t.Fatalf("weftctl check: %v\n%s", err, out)
		}
	})
}
