package bpf

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/gsosize"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/testenv/netnstest"
)

// The pod-to-pod comparison builds five two-node clusters side by side
// and measures them in rotation, so machine noise hits all five alike:
//
//	weft:   weft's flow-based VXLAN device driven by the eBPF tunnel map,
//	        with the bridge fast path
//	weft-bpf: weft with VXLAN in the programs (Overlay.InProgram):
//	        weft_from_port encapsulates and sends out of the underlay
//	        (lib/encap.h), weft_from_underlay decapsulates (lib/decap.h);
//	        the device is not in the pods' path
//	weft-nofast: the same without the bridge fast path (pod traffic is
//	        routed by the node's stack to the overlay device)
//	kvxlan: flannel's vxlan backend (VXLAN device per node with a route,
//	        neighbour and FDB entry per remote node)
//	plain:  routing pod CIDRs via the peer's underlay IP, no encapsulation
//	weft-native: weft's native mode (the same direct routes, set by weft)
//	        with host routing in eBPF (bpf_fib_lookup out, bpf_redirect_peer
//	        in; lib/hostroute.h), the pod check and the underlay check
//	weft-native-big: weft-native with BIG TCP on (the config's big_tcp
//	        and big_tcp_v6), as the agent and weft-cni set it
//	plain-big: plain with the same GSO/GRO limits set by hand on the
//	        same devices, for the fair comparison (docs/datapath.md, "BIG
//	        TCP": it is the kernel's packet size, not weft's datapath)
//	weft-bpf-big: weft-bpf with BIG TCP on, as the agent asks for it over
//	        VXLAN in the programs (the size in the desired state, pod
//	        veths raised as weft-cni does, FlagBigDecap on the tunnels to
//	        the peer that registered spec.CapBigDecap): packets over
//	        64 KiB cross the underlay whole (docs/datapath.md, "BIG TCP
//	        over VXLAN in the programs"); plain-big is its fair match
//
// Every setup gets identical treatment: same pod MTU rule (1450 with
// encapsulation, 1500 without), same CPU pinning, same tools, same number
// of rounds. Run it with -benchtime=1x (see bpf/bench/throughput.sh); b.N
// is ignored.

type podSetup struct {
	name string
	c    *testCluster
}

func setupWeft(b *testing.B, fast bool) *testCluster {
	c := newTestCluster(b, AttachAuto)
	for _, n := range c.nodes {
		n.cfg.NoBridgeFastPath = !fast
	}
	c.openAll(b)
	for _, n := range c.nodes {
		w := c.overlayWant(n, spec.ModeVXLAN, netip.Addr{})
		n.sync(w)
	}
	return c
}

// setupWeftBPF is weft with VXLAN in the programs (transmit and receive) on
// both nodes.
func setupWeftBPF(b *testing.B) *testCluster {
	c := newTestCluster(b, AttachAuto)
	c.openAll(b)
	for _, n := range c.nodes {
		w := c.overlayWant(n, spec.ModeVXLAN, netip.Addr{})
		w.Overlay.InProgram = true
		n.sync(w)
	}
	return c
}

// setupWeftBPFBig is weft-bpf with BIG TCP on, the way a user gets it
// from big_tcp and big_tcp_v6 with tunnel_datapath "bpf": the agent's size
// in the desired state (Sync raises the underlay and the bridge),
// FlagBigDecap on the IPv4 tunnels (the peer registered spec.CapBigDecap)
// and both ends of the pod's veth raised as weft-cni does at ADD. The pods
// keep the overlay's MTU.
func setupWeftBPFBig(b *testing.B) *testCluster {
	c := newTestCluster(b, AttachAuto)
	c.openAll(b)
	for _, n := range c.nodes {
		size := bigTCPSize(b, n)
		w := c.overlayWant(n, spec.ModeVXLAN, netip.Addr{})
		w.Overlay.InProgram = true
		w.BigTCP = spec.BigTCP{IPv4: size} // IPv4 only over the tunnel
		for i := range w.Tunnels {
			if w.Tunnels[i].Flags&spec.FlagIPv6Endpoint == 0 {
				w.Tunnels[i].Flags |= spec.FlagBigDecap
			}
		}
		n.sync(w)
		raiseGSO(b, n.ns, "vpod", w.BigTCP)
		raiseGSO(b, n.pod, "eth0", w.BigTCP)
	}
	return c
}

// requireBigEncap fails b unless c's sending node (node 1: iperf3's
// client) sent BIG packets encapsulated in the program and the receiving
// node took every one out of the tunnel itself since before.
func requireBigEncap(b *testing.B, c *testCluster, before [2]spec.Counters) {
	tx, rx := c.nodes[0].counters(), c.nodes[1].counters()
	big, got := tx.TxEncapBig-before[0].TxEncapBig, rx.RxDecapBig-before[1].RxDecapBig
	if big == 0 || got < big {
		b.Fatalf("%d BIG packets encapsulated in the program by node 1, %d decapsulated by node 2", big, got)
	}
	b.Logf("%d BIG packets encapsulated in the program by node 1 (of %d), %d decapsulated by node 2",
		big, tx.TxEncap-before[0].TxEncap, got)
}

// requireEncap fails b unless at least 90 % of what each node of c sent
// into the tunnel since before the programs encapsulated themselves.
func requireEncap(b *testing.B, c *testCluster, before [2]spec.Counters) {
	for i, n := range c.nodes {
		c1 := n.counters()
		tx, encap := c1.TxPackets-before[i].TxPackets, c1.TxEncap-before[i].TxEncap
		if encap == 0 || encap*10 < tx*9 {
			b.Fatalf("node %d: %d of %d packets into the tunnel encapsulated in the program", n.idx, encap, tx)
		}
		b.Logf("node %d: %d of %d packets into the tunnel encapsulated in the program", n.idx, encap, tx)
	}
}

// setupWeftNative is weft in native mode: routes via the peer as plain
// has them, host routing in eBPF, the pod check on the pods' veths and the
// underlay check on the underlay; pods at the full underlay MTU like plain
// routing.
func setupWeftNative(b *testing.B) *testCluster {
	c := newTestCluster(b, AttachAuto)
	c.openAll(b)
	for _, n := range c.nodes {
		// The owners as the agent lists them in native mode
		// (nodeagent/model): the peer's pod CIDRs, each with the
		// peer's address of that family.
		w, p := c.nativeWant(n, false), c.peer(n)
		w.PodOwners = []spec.PodOwner{{Prefix: p.podCIDR, Node: p.under}, {Prefix: p.podCIDR6, Node: p.under6}}
		n.sync(w.Normalize())
		fullMTU(b, n)
	}
	return c
}

// setupWeftNativeBig is weft-native with BIG TCP on, the way a user gets
// it from the config's big_tcp and big_tcp_v6: the agent's size (192 KiB
// capped by the underlay's tso_max_size, nodeagent/model) in the desired
// state, so Sync raises the underlay and the bridge, and both ends of the
// pod's veth raised as weft-cni does at ADD.
func setupWeftNativeBig(b *testing.B) *testCluster {
	c := newTestCluster(b, AttachAuto)
	c.openAll(b)
	for _, n := range c.nodes {
		size := bigTCPSize(b, n)
		w, p := c.nativeWant(n, false), c.peer(n)
		w.PodOwners = []spec.PodOwner{{Prefix: p.podCIDR, Node: p.under}, {Prefix: p.podCIDR6, Node: p.under6}}
		w.BigTCP = spec.BigTCP{IPv4: size, IPv6: size}
		n.sync(w.Normalize())
		raiseGSO(b, n.ns, "vpod", w.BigTCP)
		raiseGSO(b, n.pod, "eth0", w.BigTCP)
		fullMTU(b, n)
	}
	return c
}

// setupPlainBig is plain routing with BIG TCP's limits set by hand on the
// same devices weft-native-big has them on.
func setupPlainBig(b *testing.B) *testCluster {
	c := setupPlain(b)
	big := spec.BigTCP{IPv4: 192 << 10, IPv6: 192 << 10}
	for _, n := range c.nodes {
		for _, dev := range []string{"ul0", "weft0", "vpod"} {
			raiseGSO(b, n.ns, dev, big)
		}
		raiseGSO(b, n.pod, "eth0", big)
	}
	return c
}

// bigTCPSize is the BIG TCP size the agent asks for on n (192 KiB capped
// by the underlay's tso_max_size, nodeagent/model); b fails when n's
// underlay cannot have BIG TCP at all.
func bigTCPSize(b *testing.B, n *testNode) int {
	u, err := n.dp.Underlay()
	must(b, err)
	size := min(192<<10, u.TSOMaxSize)
	if size <= 64<<10 || !u.BigTCPv4 {
		b.Fatalf("node %d: underlay %+v cannot have BIG TCP", n.idx, u)
	}
	return size
}

// raiseGSO raises dev's GSO/GRO limits in ns to big (gsosize.Raise).
func raiseGSO(b testing.TB, ns *netnstest.NS, dev string, big spec.BigTCP) {
	ns.MustDo(b, func() error {
		nl, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer nl.Close()
		l, err := nl.LinkByName(dev)
		if err != nil {
			return err
		}
		_, err = gsosize.Raise(nl, l, big)
		return err
	})
}

// fullMTU gives n's pod the underlay's MTU (no encapsulation).
func fullMTU(b *testing.B, n *testNode) {
	n.pod.MustDo(b, func() error {
		e, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.LinkSetMTU(e, 1500)
	})
}

func setupKernelVXLAN(b *testing.B) *testCluster {
	c := newTestCluster(b, AttachAuto)
	macs := map[int]net.HardwareAddr{}
	for _, n := range c.nodes {
		n.ns.MustDo(b, func() error {
			ul, err := netlink.LinkByName("ul0")
			if err != nil {
				return err
			}
			vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "flannel.1", MTU: 1450}, VxlanId: 1,
				VtepDevIndex: ul.Attrs().Index, SrcAddr: n.under.AsSlice(), Port: 8472, Learning: false}
			if err := netlink.LinkAdd(vx); err != nil {
				return err
			}
			l, err := netlink.LinkByName("flannel.1")
			if err != nil {
				return err
			}
			macs[n.idx] = l.Attrs().HardwareAddr
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: netnstest.IPNet(netip.PrefixFrom(n.podCIDR.Addr(), 32)), Flags: unix.IFA_F_NODAD}); err != nil {
				return err
			}
			if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		})
	}
	for _, n := range c.nodes {
		p := c.peer(n)
		n.ns.MustDo(b, func() error {
			l, err := netlink.LinkByName("flannel.1")
			if err != nil {
				return err
			}
			gw := net.IPv4(10, 244, byte(p.idx), 0)
			if err := netlink.RouteAdd(&netlink.Route{Dst: netnstest.IPNet(p.podCIDR), Gw: gw, LinkIndex: l.Attrs().Index, Flags: int(netlink.FLAG_ONLINK)}); err != nil {
				return fmt.Errorf("route: %w", err)
			}
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: macs[p.idx]}); err != nil {
				return fmt.Errorf("neigh: %w", err)
			}
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT, IP: p.under.AsSlice(), HardwareAddr: macs[p.idx]}); err != nil {
				return fmt.Errorf("fdb: %w", err)
			}
			return nil
		})
	}
	return c
}

func setupPlain(b *testing.B) *testCluster {
	c := newTestCluster(b, AttachAuto)
	for _, n := range c.nodes {
		p := c.peer(n)
		n.ns.MustDo(b, func() error {
			if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
				return err
			}
			return netlink.RouteAdd(&netlink.Route{Dst: netnstest.IPNet(p.podCIDR), Gw: p.under.AsSlice()})
		})
		// No encapsulation: pods get the full underlay MTU.
		fullMTU(b, n)
	}
	return c
}

// Pinning, the same for all four setups (this VM: Firecracker, 2 vCPUs, no
// cpuidle driver, so a halted vCPU takes the hypervisor tens of µs to wake):
//
//   - iperf3 client and server both on iperfCPU. Throughput is then that
//     one CPU's bytes per second through sender, both nodes' datapaths
//     (veth and VXLAN receive run in softirq on the sending CPU) and
//     receiver: the datapath's cost per byte. Client and server on
//     different CPUs gave 6 or 11 Gbit/s by chance, for every setup.
//   - request/response client on rrClientCPU, server on rrServerCPU, both
//     busy-polling their socket (non-blocking reads in a loop), so no
//     scheduler wakeup and no vCPU halt is in the round trip: only the
//     datapath twice and two syscalls each side. Blocking reads on one
//     CPU were bimodal per connection (28 or 45–50 µs, for every setup:
//     which process preempts which), across CPUs 70–180 µs (vCPU wakeup).
const (
	iperfCPU    = 0
	rrClientCPU = 0
	rrServerCPU = 1
)

// iperf runs iperf3 for secs seconds (after one omitted second) from pod 1
// to pod 2, client and server pinned with -A, and returns Gbit/s. A run that
// reports nothing received (seen now and then on the loaded shared machine,
// for every setup) is logged and repeated, up to twice.
func iperf(b *testing.B, c *testCluster, secs int) float64 {
	for try := range 3 {
		g := iperfOnce(b, c, secs)
		if g > 0 {
			return g
		}
		b.Logf("iperf3 run %d received nothing; repeating", try+1)
	}
	return 0
}

func iperfOnce(b *testing.B, c *testCluster, secs int) float64 {
	a, z := c.nodes[0], c.nodes[1]
	cpu := strconv.Itoa(iperfCPU)
	port := "5201"
	srv := exec.Command("ip", "netns", "exec", z.pod.Name, "iperf3", "-s", "-1", "-B", z.podIP.String(), "-p", port,
		"-A", cpu)
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var out []byte
	var err error
	for range 20 {
		time.Sleep(100 * time.Millisecond)
		// -O 1: the first second (slow start) is not counted.
		out, err = exec.Command("ip", "netns", "exec", a.pod.Name, "iperf3", "-c", z.podIP.String(), "-p", port,
			"-A", cpu, "-t", strconv.Itoa(secs), "-O", "1", "-J").Output()
		if err == nil {
			break
		}
	}
	if err != nil {
		b.Fatalf("iperf3: %v %s", err, out)
	}
	g, err := iperfGbits(out)
	if err != nil {
		b.Fatal(err)
	}
	return g
}

// iperfGbits reads the received rate, in Gbit/s, from iperf3's JSON
// report (-J).
func iperfGbits(out []byte) (float64, error) {
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("read iperf3 report: %w", err)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// The request/response loop runs in two child processes (this test binary
// re-executed, see init) started with `ip netns exec <pod> taskset -c <cpu>`,
// so client and server are pinned like iperf3 and nothing else of the test
// process (goroutines, GC, the Go scheduler's other threads) shares their
// CPUs' time slices. The children use plain socket syscalls (no netpoller)
// and busy-poll, so one round trip is write → the datapath twice → read.
const (
	rrEnvMode  = "WEFT_BENCH_RR"       // "server" or "client"
	rrEnvAddr  = "WEFT_BENCH_RR_ADDR"  // server address ip:port
	rrEnvCount = "WEFT_BENCH_RR_COUNT" // client: measured round trips
	rrPort     = 5202
	rrWarmup   = 500
)

func init() {
	if mode := os.Getenv(rrEnvMode); mode != "" {
		if err := rrChild(mode); err != nil {
			fmt.Fprintln(os.Stderr, "rr", mode+":", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

func rrChild(mode string) error {
	ap, err := netip.ParseAddrPort(os.Getenv(rrEnvAddr))
	if err != nil {
		return err
	}
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	buf := []byte{1}
	// rd busy-polls: a non-blocking read in a loop, so the process never
	// sleeps (no wakeup, no vCPU halt in the round trip).
	rd := func(fd int, p []byte) (int, error) {
		for {
			n, _, err := unix.Recvfrom(fd, p, unix.MSG_DONTWAIT)
			if err == unix.EAGAIN {
				continue
			}
			return n, err
		}
	}
	// rw does one byte each way with plain syscalls, no netpoller.
	rw := func(fd int, first func(int, []byte) (int, error), second func(int, []byte) (int, error)) error {
		if n, err := first(fd, buf); err != nil || n != 1 {
			return fmt.Errorf("io: %d %v", n, err)
		}
		if n, err := second(fd, buf); err != nil || n != 1 {
			return fmt.Errorf("io: %d %v", n, err)
		}
		return nil
	}
	switch mode {
	case "server":
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, sa); err != nil {
			return fmt.Errorf("bind: %w", err)
		}
		if err := unix.Listen(fd, 1); err != nil {
			return err
		}
		fmt.Println("ready")
		cfd, _, err := unix.Accept(fd)
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		if err := unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			return err
		}
		for {
			n, err := rd(cfd, buf)
			if n == 0 && err == nil {
				return nil // client done
			}
			if err != nil {
				return err
			}
			if _, err := unix.Write(cfd, buf); err != nil {
				return err
			}
		}
	case "client":
		count, err := strconv.Atoi(os.Getenv(rrEnvCount))
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, sa); err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			return err
		}
		for range rrWarmup {
			if err := rw(fd, unix.Write, rd); err != nil {
				return err
			}
		}
		samples := make([]float64, count)
		for i := range samples {
			start := time.Now()
			if err := rw(fd, unix.Write, rd); err != nil {
				return err
			}
			samples[i] = float64(time.Since(start).Nanoseconds()) / 1000
		}
		return json.NewEncoder(os.Stdout).Encode(samples)
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// rr measures count TCP request/response round trips (1 byte each way) from
// pod 1 to pod 2 and returns the median in microseconds (the median, not
// the mean: on a shared machine the mean is dominated by scheduling stalls).
func rr(b *testing.B, c *testCluster, count int) float64 {
	a, z := c.nodes[0], c.nodes[1]
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	env := append(os.Environ(), rrEnvAddr+"="+netip.AddrPortFrom(z.podIP, rrPort).String(), rrEnvCount+"="+strconv.Itoa(count))
	srv := exec.Command("ip", "netns", "exec", z.pod.Name, "taskset", "-c", strconv.Itoa(rrServerCPU), exe)
	srv.Env = append(env, rrEnvMode+"=server")
	srv.Stderr = os.Stderr
	out, err := srv.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		b.Fatalf("rr server: %q %v", line, err)
	}
	cli := exec.Command("ip", "netns", "exec", a.pod.Name, "taskset", "-c", strconv.Itoa(rrClientCPU), exe)
	cli.Env = append(env, rrEnvMode+"=client")
	cli.Stderr = os.Stderr
	res, err := cli.Output()
	if err != nil {
		b.Fatalf("rr client: %v", err)
	}
	var samples []float64
	if err := json.Unmarshal(res, &samples); err != nil || len(samples) != count {
		b.Fatalf("rr client output (%d samples): %v", len(samples), err)
	}
	return median(samples)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// spread formats the median and the min–max of xs.
func spread(xs []float64, prec int) string {
	return fmt.Sprintf("%.*f (%.*f–%.*f)", prec, median(xs), prec, slices.Min(xs), prec, slices.Max(xs))
}

// ratios returns num[i]/den[i] for every round i.
func ratios(num, den []float64) []float64 {
	r := make([]float64, len(num))
	for i := range num {
		r[i] = num[i] / den[i]
	}
	return r
}

func BenchmarkPodToPod(b *testing.B) {
	netnstest.RequireRoot(b)
	if runtime.NumCPU() < 2 {
		b.Skip("needs 2 CPUs: the busy-polling RR client and server each take one")
	}
	for _, tool := range []string{"iperf3", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skip(tool + " not installed")
		}
	}
	setups := []podSetup{
		{"weft", setupWeft(b, true)},
		{"weft-nofast", setupWeft(b, false)},
		{"kvxlan", setupKernelVXLAN(b)},
		{"plain", setupPlain(b)},
		{"weft-native", setupWeftNative(b)},
		{"weft-native-big", setupWeftNativeBig(b)},
		{"plain-big", setupPlainBig(b)},
		{"weft-bpf", setupWeftBPF(b)},
		{"weft-bpf-big", setupWeftBPFBig(b)},
	}
	for _, s := range setups {
		if !netnstest.Reach(b, s.c.nodes[0].pod, s.c.nodes[1].podIP, reachTimeout) {
			b.Fatalf("%s: no pod-to-pod path", s.name)
		}
	}
	rounds, secs, rrs := 11, 1, 5000
	if v := os.Getenv("WEFT_BENCH_ROUNDS"); v != "" { // for quick trials
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("WEFT_BENCH_ROUNDS=%q", v)
		}
		rounds = n
	}
	tput := map[string][]float64{}
	lat := map[string][]float64{}
	pktBytes := map[string][]float64{} // bytes per packet on the underlay, per iperf3 run
	weft, weft2 := setups[0].c.nodes[0], setups[0].c.nodes[1]
	c0, c20 := weft.counters(), weft2.counters()
	native := setups[4].c.nodes
	n0, n20 := native[0].counters(), native[1].counters()
	rxs := setups[7].c.nodes
	r0, r20 := rxs[0].counters(), rxs[1].counters()
	bigs := setups[8].c
	g0 := [2]spec.Counters{bigs.nodes[0].counters(), bigs.nodes[1].counters()}
	for round := range rounds {
		// Strict rotation: each round starts one setup later, so every
		// setup runs in every position about equally often.
		for i := range setups {
			s := setups[(i+round)%len(setups)]
			p0, y0 := ulTx(b, s.c.nodes[0])
			tput[s.name] = append(tput[s.name], iperf(b, s.c, secs))
			p1, y1 := ulTx(b, s.c.nodes[0])
			pktBytes[s.name] = append(pktBytes[s.name], float64(y1-y0)/float64(max(p1-p0, 1)))
			lat[s.name] = append(lat[s.name], rr(b, s.c, rrs))
		}
	}
	if c1 := weft.counters(); c1.TxBytes-c0.TxBytes < 1<<20 {
		b.Fatalf("weft counters did not carry the traffic: %+v -> %+v", c0, c1)
	}
	// The receive fast path: packets for the local pod enter its namespace
	// directly (bpf_redirect_peer) once the endpoint is learned.
	for _, n := range []struct {
		node   *testNode
		before spec.Counters
	}{{weft, c0}, {weft2, c20}} {
		c1 := n.node.counters()
		rx, direct := c1.RxPackets-n.before.RxPackets, c1.RxDirect-n.before.RxDirect
		if direct == 0 || direct*10 < rx*9 {
			b.Fatalf("weft node %d: %d of %d received packets delivered directly", n.node.idx, direct, rx)
		}
		tx, txDirect := c1.TxPackets-n.before.TxPackets, c1.TxDirect-n.before.TxDirect
		if txDirect*10 < tx*9 {
			b.Fatalf("weft node %d: %d of %d sent packets skipped the bridge", n.node.idx, txDirect, tx)
		}
		b.Logf("weft node %d: %d of %d received packets delivered directly to the pod, %d of %d sent from the pod's veth",
			n.node.idx, direct, rx, txDirect, tx)
	}
	// Host routing: pod traffic of the native setup went past both
	// nodes' stacks, out through the FIB lookup and in straight to the pod.
	n1, n21 := native[0].counters(), native[1].counters()
	out, in := n1.RoutedTx-n0.RoutedTx, n21.RoutedRx-n20.RoutedRx
	back, backIn := n21.RoutedTx-n20.RoutedTx, n1.RoutedRx-n0.RoutedRx
	if out < 1000 || in < 1000 || back < 1000 || backIn < 1000 {
		b.Fatalf("weft-native: host routing carried %d out / %d in, %d back / %d in: not the eBPF path", out, in, back, backIn)
	}
	requireEncap(b, setups[7].c, [2]spec.Counters{r0, r20})
	requireBigEncap(b, bigs, g0)
	b.Logf("weft-native: host routing in eBPF carried %d packets node 1 → 2 (%d delivered), %d back (%d delivered)", out, in, back, backIn)
	// The in-program receive: (nearly) every packet weft-bpf's nodes
	// accepted out of the tunnel was decapsulated by weft_from_underlay.
	for _, n := range []struct {
		node   *testNode
		before spec.Counters
	}{{rxs[0], r0}, {rxs[1], r20}} {
		c1 := n.node.counters()
		rx, decap := c1.RxPackets-n.before.RxPackets, c1.RxDecap-n.before.RxDecap
		if decap == 0 || decap*10 < rx*9 {
			b.Fatalf("weft-bpf node %d: %d of %d received packets decapsulated in the program", n.node.idx, decap, rx)
		}
		b.Logf("weft-bpf node %d: %d of %d received packets decapsulated in the program, %.0f bytes each on the underlay",
			n.node.idx, decap, rx, float64(c1.RxDecapBytes-n.before.RxDecapBytes)/float64(decap))
	}
	b.Logf("%d rounds; iperf3 on CPU %d, RR client CPU %d, server CPU %d; median (min–max) over rounds",
		rounds, iperfCPU, rrClientCPU, rrServerCPU)
	for _, s := range setups {
		b.Logf("%-15s Gbit/s %s  RR µs %s  bytes per underlay packet %s", s.name, spread(tput[s.name], 2), spread(lat[s.name], 1), spread(pktBytes[s.name], 0))
		b.Logf("%-15s rounds Gbit/s %.2f", s.name, tput[s.name])
		b.Logf("%-15s rounds RR µs  %.1f", s.name, lat[s.name])
		b.ReportMetric(median(tput[s.name]), s.name+"_Gbit/s")
		b.ReportMetric(median(lat[s.name]), s.name+"_rr_us")
	}
	// Ratios are taken per round (both setups measured minutes apart at
	// most, under the same load) and then their median is reported.
	for _, r := range []struct {
		name     string
		num, den []float64
	}{
		{"weft/kvxlan_tput", tput["weft"], tput["kvxlan"]},
		{"weft/plain_tput", tput["weft"], tput["plain"]},
		{"weft/kvxlan_rr", lat["weft"], lat["kvxlan"]},
		{"nofast/kvxlan_tput", tput["weft-nofast"], tput["kvxlan"]},
		{"nofast/kvxlan_rr", lat["weft-nofast"], lat["kvxlan"]},
		{"weft/nofast_rr", lat["weft"], lat["weft-nofast"]},
		{"native/plain_tput", tput["weft-native"], tput["plain"]},
		{"native/plain_rr", lat["weft-native"], lat["plain"]},
		{"nativebig/plain_tput", tput["weft-native-big"], tput["plain"]},
		{"nativebig/plainbig_tput", tput["weft-native-big"], tput["plain-big"]},
		{"nativebig/native_tput", tput["weft-native-big"], tput["weft-native"]},
		{"plainbig/plain_tput", tput["plain-big"], tput["plain"]},
		{"bpf/kvxlan_tput", tput["weft-bpf"], tput["kvxlan"]},
		{"bpf/plain_tput", tput["weft-bpf"], tput["plain"]},
		{"bpf/weft_tput", tput["weft-bpf"], tput["weft"]},
		// The overlay's ceiling: native mode runs the same programs
		// without the encapsulation, so no overlay of weft's beats
		// native/kvxlan; bpf/native is what the overlay costs.
		{"native/kvxlan_tput", tput["weft-native"], tput["kvxlan"]},
		{"bpf/native_tput", tput["weft-bpf"], tput["weft-native"]},
		{"bpf/kvxlan_rr", lat["weft-bpf"], lat["kvxlan"]},
		{"bpf/weft_rr", lat["weft-bpf"], lat["weft"]},
		{"nativebig/plain_rr", lat["weft-native-big"], lat["plain"]},
		// BIG TCP over VXLAN in the programs; plain-big is the fair
		// comparison (the same packet size without encapsulation).
		{"bpfbig/kvxlan_tput", tput["weft-bpf-big"], tput["kvxlan"]},
		{"bpfbig/plain_tput", tput["weft-bpf-big"], tput["plain"]},
		{"bpfbig/plainbig_tput", tput["weft-bpf-big"], tput["plain-big"]},
		{"bpfbig/bpf_tput", tput["weft-bpf-big"], tput["weft-bpf"]},
		{"bpfbig/nativebig_tput", tput["weft-bpf-big"], tput["weft-native-big"]},
		{"bpfbig/plain_rr", lat["weft-bpf-big"], lat["plain"]},
	} {
		rs := ratios(r.num, r.den)
		b.Logf("%-23s per-round ratio %s", r.name, spread(rs, 3))
		b.ReportMetric(median(rs), r.name)
	}
}
