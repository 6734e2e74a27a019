package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/nodeagent/model"
	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/netnstest"
)

// TestBigTCP runs a dual-stack cluster with BIG TCP on (pods attached by
// weft-cni): native with both families, and VXLAN encapsulated in the
// programs with IPv4 (tunnel_datapath "bpf": the agents register
// vxlan-big-decap, the controller carries it to the peers, whose models
// mark their tunnels FlagBigDecap; the config refuses big_tcp_v6 there).
// ICMP, TCP and UDP reach every pod over both families; the GSO and GRO
// limits read back through netlink are 192 KiB for each family BIG TCP is
// on for (64 KiB for the other) on each node's underlay, its pod bridge
// and both ends of each pod's veth; the subnet file carries them to
// weft-cni; and a bulk TCP stream between pods over such a family leaves
// the sending node's underlay in packets of more than 64 KiB (the
// kernel's limit without BIG TCP; over VXLAN through the device every
// packet would be segmented to the MTU), over the other in none.
func TestBigTCP(t *testing.T) {
	for _, tc := range []struct {
		name, backend, config string
		v6                    bool
	}{
		{"native", "native", `"big_tcp": true, "big_tcp_v6": true`, true},
		{"vxlan-bpf", "vxlan", `"big_tcp": true, "tunnel_datapath": "bpf"`, false},
	} {
		t.Run(tc.name, func(t *testing.T) { testBigTCP(t, tc.backend, tc.config, tc.v6) })
	}
}

func testBigTCP(t *testing.T, backend, config string, bigV6 bool) {
	c := start(t, testenv.Options{Nodes: 2, PodsPerNode: 1, Backend: backend, IPFamily: testenv.FamilyDual,
		Config: config, ProbeGrace: 5 * time.Second})
	ctx := context.Background()
	nodes := c.Nodes()
	m := testenv.CheckAll(ctx, c.Targets(), nil)
	for _, fam := range []string{"IPv4", "IPv6"} {
		if pairs, failed := m.Count(fam); pairs != 2 || failed != 0 {
			t.Fatalf("%s: %d pairs, %d failed:\n%s", fam, pairs, failed, m)
		}
	}
	const size = model.BigTCPSize
	size6, want6 := 64<<10, ""
	if bigV6 {
		size6, want6 = size, strconv.Itoa(size)
	}
	for _, n := range nodes {
		s, err := testenv.ReadSubnetEnv(n.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]string{"WEFT_GSO_IPV4_MAX_SIZE": strconv.Itoa(size), "WEFT_GSO_IPV6_MAX_SIZE": want6} {
			if s.Raw[k] != want {
				t.Errorf("%s: subnet file %s=%q, want %q", n.Name, k, s.Raw[k], want)
			}
		}
		node := openNS(t, n.NS)
		node.MustDo(t, func() error {
			br, err := netlink.LinkByName("weft0")
			if err != nil {
				return err
			}
			links, err := netlink.LinkList()
			if err != nil {
				return err
			}
			ports := 0
			for _, l := range links {
				name := l.Attrs().Name
				if l.Attrs().MasterIndex == br.Attrs().Index {
					ports++
				} else if name != n.Iface && name != "weft0" {
					continue
				}
				checkSizes(t, n.Name+"/"+name, l, size, size6)
			}
			if ports != len(n.Pods) {
				return fmt.Errorf("weft0 has %d ports, want %d pods' veths", ports, len(n.Pods))
			}
			return nil
		})
		for _, p := range n.Pods {
			openNS(t, p.NS).MustDo(t, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				checkSizes(t, p.Name+"/eth0", l, size, size6)
				return nil
			})
		}
	}
	// Packets as the underlay sees them: a TCP stream from pod 0 to pod 1
	// over each family, the sending node's underlay watched by a packet
	// socket (which sees a GSO packet whole, as tcpdump would).
	for _, v6 := range []bool{false, true} {
		from, to := nodes[0].Pods[0], nodes[1].Pods[0]
		stop := sniffLargest(t, nodes[0])
		stream(t, from.NS, to.NS, to.AddrOf(v6), 64<<20)
		largest, n := stop()
		t.Logf("%s: largest of %d packets out of %s's underlay during the stream: %d bytes", famName(v6), n, nodes[0].Name, largest)
		switch {
		case (!v6 || bigV6) && largest <= 64<<10:
			t.Errorf("%s: largest packet out of the underlay %d bytes: none over 64 KiB", famName(v6), largest)
		case v6 && !bigV6 && largest > 64<<10+128:
			t.Errorf("%s: largest packet out of the underlay %d bytes: over 64 KiB (and its headers) without BIG TCP", famName(v6), largest)
		}
	}
}

// sniffLargest watches the packets n's underlay interface sends until the
// returned function is called, which returns the largest one's length
// and how many there were.
func sniffLargest(t *testing.T, n *testenv.Node) func() (int, int) {
	t.Helper()
	var fd int
	openNS(t, n.NS).MustDo(t, func() error {
		l, err := netlink.LinkByName(n.Iface)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, proto)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		tv := unix.Timeval{Usec: 100000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: l.Attrs().Index})
	})
	var done atomic.Bool
	result := make(chan [2]int, 1)
	go func() {
		defer unix.Close(fd)
		buf := make([]byte, 128)
		largest, count := 0, 0
		for !done.Load() {
			// MSG_TRUNC: the packet's real length, whatever the buffer.
			m, from, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
			if err != nil {
				continue // the timeout, to look at done
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				count++
				largest = max(largest, m)
			}
		}
		result <- [2]int{largest, count}
	}()
	return func() (int, int) {
		done.Store(true)
		r := <-result
		return r[0], r[1]
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func openNS(t *testing.T, name string) *netnstest.NS {
	t.Helper()
	ns, err := netnstest.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// checkSizes fails t unless link's four GSO/GRO limits are size.
func checkSizes(t *testing.T, what string, l netlink.Link, size, size6 int) {
	t.Helper()
	a := l.Attrs()
	got := []uint32{a.GSOMaxSize, a.GROMaxSize, a.GSOIPv4MaxSize, a.GROIPv4MaxSize}
	if want := []uint32{uint32(size6), uint32(size6), uint32(size), uint32(size)}; !slices.Equal(got, want) {
		t.Errorf("%s: gso/gro max size, IPv6 and IPv4 = %v, want %v", what, got, want)
	}
}

// stream sends total bytes over one TCP connection from a socket in
// namespace from to a listener at dst in namespace to.
func stream(t *testing.T, from, to string, dst netip.Addr, total int64) {
	t.Helper()
	var ln net.Listener
	openNS(t, to).MustDo(t, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
		return err
	})
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	var conn net.Conn
	openNS(t, from).MustDo(t, func() (err error) {
		conn, err = net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		return err
	})
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.CopyN(conn, zeros{}, total); err != nil {
		conn.Close()
		t.Fatalf("send to %s: %v", dst, err)
	}
	conn.Close()
	if n := <-got; n != total {
		t.Fatalf("%s received %d of %d bytes", dst, n, total)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
