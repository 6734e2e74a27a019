package cni_test

// A runtime repeats ADD for an attachment (containerd and the kubelet do
// after a timeout or a restart): a complete one stays as it is, an
// incomplete one is made again, another plugin's interface is refused.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/nodeagent/cni"
	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/syncbuf"
)

// logTo points e's libcni at the plugins in dirs (binDir first), with
// their stderr going to the returned log.
func (e *env) logTo(t *testing.T, dirs ...string) *syncbuf.Buffer {
	l := &syncbuf.Buffer{}
	ex := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: l}, PluginDecoder: version.PluginDecoder{}}
	e.cni = libcni.NewCNIConfigWithCacheDir(append([]string{binDir}, dirs...), filepath.Join(t.TempDir(), "cache"), ex)
	return l
}

// shippedList is deploy/10-weft.conflist (weft-cni, then portmap) with
// e's subnet file and data directory.
func (e *env) shippedList(t *testing.T) *libcni.NetworkConfigList {
	t.Helper()
	b, err := os.ReadFile("../../deploy/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	plugins := conf["plugins"].([]any)
	weft := plugins[0].(map[string]any)
	if weft["type"] != "weft-cni" || len(plugins) != 2 || plugins[1].(map[string]any)["type"] != "portmap" {
		t.Fatalf("deploy/10-weft.conflist has plugins %v, want weft-cni then portmap", plugins)
	}
	weft["subnetFile"], weft["dataDir"] = e.subnetFile, e.dataDir
	b, err = json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// linkState is what tells a link from a recreated or flapped one.
type linkState struct {
	index int
	mac   string
	// The kernel's carrier counters (IFLA_CARRIER_CHANGES,
	// IFLA_CARRIER_UP_COUNT, IFLA_CARRIER_DOWN_COUNT): a link that went
	// down and up again counts it.
	changes, ups, downs uint32
}

func readLink(t *testing.T, nsPath, name string) linkState {
	t.Helper()
	var s linkState
	err := inNS(nsPath, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		s.index, s.mac = l.Attrs().Index, l.Attrs().HardwareAddr.String()
		req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(s.index)
		req.AddData(msg)
		msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
		if err != nil {
			return err
		}
		if len(msgs) != 1 {
			return fmt.Errorf("RTM_GETLINK %s: %d answers", name, len(msgs))
		}
		attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
		if err != nil {
			return err
		}
		seen := 0
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.IFLA_CARRIER_CHANGES:
				s.changes, seen = binary.NativeEndian.Uint32(a.Value), seen+1
			case unix.IFLA_CARRIER_UP_COUNT:
				s.ups, seen = binary.NativeEndian.Uint32(a.Value), seen+1
			case unix.IFLA_CARRIER_DOWN_COUNT:
				s.downs, seen = binary.NativeEndian.Uint32(a.Value), seen+1
			}
		}
		if seen != 3 {
			return fmt.Errorf("RTM_GETLINK %s: %d of the 3 carrier counters", name, seen)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read %s in %s: %v", name, nsPath, err)
	}
	return s
}

// neighbor returns the MAC the node netns has for ip on weft0 ("" for
// none).
func neighbor(t *testing.T, nodeNS string, ip netip.Addr) string {
	t.Helper()
	mac := ""
	err := inNS(nodeNS, func() error {
		br, err := netlink.LinkByName(cni.BridgeName)
		if err != nil {
			return err
		}
		ns, err := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_ALL)
		for _, n := range ns {
			if n.IP.Equal(ip.AsSlice()) && n.HardwareAddr != nil {
				mac = n.HardwareAddr.String()
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// sameResult reports how b differs from a in addresses, gateways and
// interfaces (names, MACs, sandboxes), or "".
func sameResult(a, b *current.Result) string {
	type itf struct{ Name, Mac, Sandbox string }
	type ipc struct{ Address, Gateway string }
	flat := func(r *current.Result) ([]itf, []ipc) {
		var is []itf
		for _, i := range r.Interfaces {
			is = append(is, itf{i.Name, i.Mac, i.Sandbox})
		}
		var ips []ipc
		for _, c := range r.IPs {
			ips = append(ips, ipc{c.Address.String(), c.Gateway.String()})
		}
		return is, ips
	}
	ai, aa := flat(a)
	bi, ba := flat(b)
	if !slices.Equal(ai, bi) || !slices.Equal(aa, ba) {
		return fmt.Sprintf("interfaces %v, addresses %v; the first ADD gave %v, %v", bi, ba, ai, aa)
	}
	return ""
}

// echo is a TCP connection from a pod to a listener in another netns,
// which echoes what it reads.
type echo struct {
	conn net.Conn
	ln   net.Listener
}

func openEcho(t *testing.T, from, to string, at netip.Addr) *echo {
	t.Helper()
	var ln net.Listener
	if err := inNS(to, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(at, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	var conn net.Conn
	if err := inNS(from, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		return err
	}); err != nil {
		ln.Close()
		t.Fatal(err)
	}
	e := &echo{conn: conn, ln: ln}
	t.Cleanup(func() { conn.Close(); ln.Close() })
	return e
}

// roundTrip sends msg and reads it back (bounded, for a dead connection).
func (e *echo) roundTrip(msg string) error {
	e.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(e.conn, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(e.conn, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, sent %q", buf, msg)
	}
	return nil
}

// TestAddAgainKeepsAttachment: a second ADD of a complete attachment, through
// libcni alone and through the shipped conflist (weft-cni, then Debian's
// portmap with a hostPort), prints the same result and leaves the pair
// alone: same ifindexes and MACs, no carrier change on either end, the
// node's neighbour entry for the pod kept, a TCP connection from the pod
// still carrying data (it would survive a recreated pair too, with the
// same addresses: the ifindexes and carrier counters are what tell), the
// hostPort still forwarded. CHECK passes after it and DEL frees
// everything.
func TestAddAgainKeepsAttachment(t *testing.T) {
	for _, tc := range []struct {
		name    string
		shipped bool
	}{{"weft-cni", false}, {"shipped conflist with portmap", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, subnetDual, "1.1.0")
			log := e.logTo(t)
			list := e.list
			const hostPort = 18080
			rtc := func(id, pod string) *libcni.RuntimeConf { return rt(id, pod) }
			if tc.shipped {
				const debian = "/usr/lib/cni"
				if _, err := os.Stat(debian + "/portmap"); err != nil {
					t.Skipf("no portmap plugin in %s (Debian's containernetworking-plugins): %v", debian, err)
				}
				log = e.logTo(t, debian)
				list = e.shippedList(t)
				rtc = func(id, pod string) *libcni.RuntimeConf {
					r := rt(id, pod)
					r.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
						{"hostPort": hostPort, "containerPort": testenv.WhoPort, "protocol": "tcp"},
					}}
					return r
				}
			}
			add := func(rc *libcni.RuntimeConf) (*current.Result, error) {
				var res *current.Result
				err := inNS(e.nodeNS, func() error {
					r, err := e.cni.AddNetworkList(context.Background(), list, rc)
					if err != nil {
						return err
					}
					res, err = current.NewResultFromResult(r)
					return err
				})
				return res, err
			}
			peerNS, pod := newNS(t), newNS(t)
			peer, err := add(rt("ctr-peer", peerNS))
			if err != nil {
				t.Fatalf("ADD peer: %v", err)
			}
			first, err := add(rtc("ctr-1", pod))
			if err != nil {
				t.Fatalf("ADD: %v\n%s", err, log.Take())
			}
			if l := log.Take(); !strings.Contains(l, "attached pod") {
				t.Fatalf("weft-cni logged %q for the first ADD, want 'attached pod'", l)
			}
			v4, v6 := podIP(t, first, true), podIP(t, first, false)
			host := cni.HostVethName("ctr-1", "eth0")
			for _, a := range []netip.Addr{v4, v6} {
				if err := reachable(e.nodeNS, a); err != nil {
					t.Fatal(err)
				}
			}
			conn := openEcho(t, pod, peerNS, podIP(t, peer, true))
			if err := conn.roundTrip("before"); err != nil {
				t.Fatal(err)
			}
			if tc.shipped {
				w, err := testenv.StartWho(filepath.Base(pod), "ctr-1")
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				if err := who(e.nodeNS, "ctr-1", hostPort); err != nil {
					t.Fatalf("hostPort after the first ADD: %v", err)
				}
			}
			podBefore, hostBefore := readLink(t, pod, "eth0"), readLink(t, e.nodeNS, host)
			macBefore := neighbor(t, e.nodeNS, v4)
			if macBefore != podBefore.mac {
				t.Fatalf("node's neighbour entry for %s is %q, want the pod's %s", v4, macBefore, podBefore.mac)
			}

			second, err := add(rtc("ctr-1", pod))
			if err != nil {
				t.Fatalf("second ADD: %v\n%s", err, log.Take())
			}
			if l := log.Take(); !strings.Contains(l, "pod already attached: kept its veth pair") {
				t.Errorf("weft-cni logged %q for the second ADD, want that it kept the pair", l)
			}
			if d := sameResult(first, second); d != "" {
				t.Errorf("second ADD printed %s", d)
			}
			podAfter, hostAfter := readLink(t, pod, "eth0"), readLink(t, e.nodeNS, host)
			if podAfter != podBefore {
				t.Errorf("pod eth0 %+v after the second ADD, was %+v (recreated or went down)", podAfter, podBefore)
			}
			if hostAfter != hostBefore {
				t.Errorf("host veth %+v after the second ADD, was %+v (recreated or went down)", hostAfter, hostBefore)
			}
			if mac := neighbor(t, e.nodeNS, v4); mac != macBefore {
				t.Errorf("node's neighbour entry for %s is %q after the second ADD, was %s", v4, mac, macBefore)
			}
			if err := conn.roundTrip("after"); err != nil {
				t.Errorf("connection from the pod across the second ADD: %v", err)
			}
			for _, a := range []netip.Addr{v4, v6} {
				if err := reachable(e.nodeNS, a); err != nil {
					t.Error(err)
				}
			}
			if tc.shipped {
				if err := who(e.nodeNS, "ctr-1", hostPort); err != nil {
					t.Errorf("hostPort after the second ADD: %v", err)
				}
			}
			if n := len(e.allocations()); n != 2 {
				t.Errorf("store holds %d leases, want 2: %v", n, e.allocations())
			}
			// weft-cni's CHECK alone (on the result the runtime cached):
			// Debian's portmap 1.1.1 fails CHECK of any hostPort already
			// after the first ADD, looking for its IPv4 rule in the IPv6
			// table (containernetworking/plugins#819).
			if err := e.check("ctr-1", pod); err != nil {
				t.Errorf("CHECK after the second ADD: %v", err)
			}

			err = inNS(e.nodeNS, func() error { return e.cni.DelNetworkList(context.Background(), list, rtc("ctr-1", pod)) })
			if err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if names := podLinks(t, pod); len(names) != 0 {
				t.Errorf("pod netns still has %v after DEL", names)
			}
			if linkExists(t, e.nodeNS, host) {
				t.Error("host veth survived DEL")
			}
			if all := e.allocations(); len(all) != 1 || all[0].ContainerID != "ctr-peer" {
				t.Errorf("store holds %v after DEL, want only ctr-peer's lease", all)
			}
			if tc.shipped {
				if err := who(e.nodeNS, "ctr-1", hostPort); err == nil {
					t.Error("hostPort still forwarded after DEL")
				}
			}
		})
	}
}

// who asks, from the node netns, the gateway's hostPort (portmap's DNAT to
// the pod's testenv.WhoPort) and wants name as the answer.
func who(nodeNS, name string, hostPort int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dst := netip.AddrPortFrom(netip.MustParseAddr("10.244.1.1"), uint16(hostPort))
	got, _, err := testenv.AskWho(ctx, filepath.Base(nodeNS), "tcp", dst)
	if err != nil {
		return err
	}
	if got != name {
		return fmt.Errorf("hostPort %d answered %q, want %q", hostPort, got, name)
	}
	return nil
}

// TestAddAgainReplacesIncomplete: a second ADD of an attachment that is not
// as ADD makes it in a way no repair in place undoes (as an ADD that
// crashed half-way leaves it, or one changed by hand) deletes the pair
// and makes it again, logs why, and the pod works with the same lease.
// TestAddAgainRepairsInPlace has the differences repaired in place.
func TestAddAgainReplacesIncomplete(t *testing.T) {
	for _, tc := range []struct {
		name, reason string
		breakIt      func(t *testing.T, e *env, pod, host string, v4 netip.Addr)
	}{
		// The store lost the lease and gave the pod another address:
		// adding it beside the old one would leave the pod sending as
		// whoever gets the old one next.
		{"pod address not the lease", "not its lease", func(t *testing.T, e *env, pod, host string, v4 netip.Addr) {
			if err := inNS(pod, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				if err := netlink.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: v4.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
					return err
				}
				return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.244.1.200"), Mask: net.CIDRMask(24, 32)}})
			}); err != nil {
				t.Fatal(err)
			}
		}},
		{"default route via another gateway", "has a default route via 10.244.1.9", func(t *testing.T, e *env, pod, host string, v4 netip.Addr) {
			if err := inNS(pod, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
				return netlink.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &dst, Gw: net.ParseIP("10.244.1.9")})
			}); err != nil {
				t.Fatal(err)
			}
		}},
		{"host veth off the bridge", "not attached to " + cni.BridgeName, func(t *testing.T, e *env, pod, host string, v4 netip.Addr) {
			if err := inNS(e.nodeNS, func() error {
				l, err := netlink.LinkByName(host)
				if err != nil {
					return err
				}
				return netlink.LinkSetNoMaster(l)
			}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, subnetDual, "1.1.0")
			log := e.logTo(t)
			pod := newNS(t)
			first, err := e.add(e.list, "ctr-1", pod)
			if err != nil {
				t.Fatal(err)
			}
			v4 := podIP(t, first, true)
			host := cni.HostVethName("ctr-1", "eth0")
			before := readLink(t, e.nodeNS, host)
			tc.breakIt(t, e, pod, host, v4)
			log.Take()
			second, err := e.add(e.list, "ctr-1", pod)
			if err != nil {
				t.Fatalf("ADD again: %v\n%s", err, log.Take())
			}
			if l := log.Take(); !strings.Contains(l, "replacing an incomplete attachment") || !strings.Contains(l, tc.reason) {
				t.Errorf("weft-cni logged %q, want that it replaced the attachment because it %s", l, tc.reason)
			}
			if after := readLink(t, e.nodeNS, host); after.index == before.index {
				t.Errorf("host veth still #%d: the incomplete pair was not replaced", after.index)
			}
			if !slices.EqualFunc(first.IPs, second.IPs, func(a, b *current.IPConfig) bool { return a.Address.String() == b.Address.String() }) {
				t.Errorf("second ADD gave %v, the first %v (the lease must be kept)", second.IPs, first.IPs)
			}
			if err := e.check("ctr-1", pod); err != nil {
				t.Errorf("CHECK after the pair was replaced: %v", err)
			}
			for _, a := range []netip.Addr{v4, podIP(t, second, false)} {
				if err := reachable(e.nodeNS, a); err != nil {
					t.Error(err)
				}
			}
			if err := e.del("ctr-1", pod); err != nil {
				t.Fatal(err)
			}
			if names := podLinks(t, pod); len(names) != 0 || len(e.allocations()) != 0 {
				t.Errorf("after DEL: pod links %v, leases %v", names, e.allocations())
			}
		})
	}
}

// TestAddAgainRefusesLookalike: an ADD into a netns whose ifName is not the
// host veth's peer is refused naming the interface, and that interface
// stays, even when it looks like weft's (a veth with the leased address,
// the MTU and the default route), as when a runtime repeats ADD with
// another netns.
func TestAddAgainRefusesLookalike(t *testing.T) {
	e := newEnv(t, subnetV4, "1.1.0")
	podA, podB := newNS(t), newNS(t)
	res, err := e.add(e.list, "ctr-1", podA)
	if err != nil {
		t.Fatal(err)
	}
	v4 := podIP(t, res, true)
	// The same ifindex as weft's eth0 in podA: only the netns tells them
	// apart. (Its peer goes elsewhere: the kernel registers a veth's peer
	// first, which would take the free ifindex.)
	weftEth0 := readLink(t, podA, "eth0")
	elsewherePath := newNS(t)
	elsewhere, err := os.Open(elsewherePath)
	if err != nil {
		t.Fatal(err)
	}
	defer elsewhere.Close()
	if err := inNS(podB, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1450, Index: weftEth0.index},
			PeerName: "peer0", PeerNamespace: netlink.NsFd(int(elsewhere.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: v4.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("10.244.1.1")})
	}); err != nil {
		t.Fatal(err)
	}
	if err := inNS(elsewherePath, func() error {
		l, err := netlink.LinkByName("peer0")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}); err != nil {
		t.Fatal(err)
	}
	lookalike := readLink(t, podB, "eth0")
	if lookalike.index != weftEth0.index {
		t.Fatalf("the lookalike eth0 is #%d, weft's #%d", lookalike.index, weftEth0.index)
	}
	_, err = e.add(e.list, "ctr-1", podB)
	if err == nil || !strings.Contains(err.Error(), "eth0") || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("ADD into a netns with another eth0: %v, want an error naming eth0", err)
	}
	if after := readLink(t, podB, "eth0"); after.index != lookalike.index || after.mac != lookalike.mac {
		t.Fatalf("the netns's own eth0 is now %+v, was %+v", after, lookalike)
	}
}
