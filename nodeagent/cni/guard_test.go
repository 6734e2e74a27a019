package cni_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/nodeagent/cni"
	"github.com/weftnet/weft/testenv/netnstest"
)

// TestPodCheck: with the agent's datapath open on the node, ADD records the
// pod and links the pod check to its host veth before the veth is up; the
// pod then reaches the node with its own addresses only; CHECK sees the
// check and fails without it; DEL removes both.
func TestPodCheck(t *testing.T) {
	pin := fmt.Sprintf("/sys/fs/bpf/weftcni-%d-%d", os.Getpid(), nsSeq.Add(1))
	t.Cleanup(func() { os.RemoveAll(pin) })
	dual := subnetV4 + "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
	e := newEnv(t, dual+"WEFT_BPFFS_DIR="+pin+"\n", "1.1.0")
	pod := newNS(t)

	t.Run("agent not loaded yet", func(t *testing.T) {
		_, err := e.add(e.list, "ctr-early", pod)
		if te := cniCode(t, err); te.Code != types.ErrTryAgainLater {
			t.Fatalf("ADD before the agent pinned the check: %v, want code %d", te, types.ErrTryAgainLater)
		}
		if l := podLinks(t, pod); len(l) != 0 {
			t.Fatalf("failed ADD left %v in the pod", l)
		}
	})

	dp, err := bpf.Open(bpf.Config{NetNS: e.nodeNS, PinDir: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	res, err := e.add(e.list, "ctr-1", pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	v4, v6 := podIP(t, res, true), podIP(t, res, false)
	host := cni.HostVethName("ctr-1", "eth0")
	var port int
	e.inNode(t, func() error {
		l, err := netlink.LinkByName(host)
		port = l.Attrs().Index
		return err
	})
	linkPin := filepath.Join(pin, fmt.Sprintf("link_pod_%d", port))
	l, err := link.LoadPinnedLink(linkPin, nil)
	if err != nil {
		t.Fatalf("no pod check linked to %s: %v", host, err)
	}
	info, err := l.Info()
	l.Close()
	if err != nil || info.TCX() == nil || int(info.TCX().Ifindex) != port {
		t.Fatalf("pod check link %+v, %v: want tcx on #%d", info, err, port)
	}

	t.Run("own addresses", func(t *testing.T) {
		// ARP, neighbour discovery (with the link-local address) and IP,
		// both ways.
		for _, a := range []netip.Addr{v4, v6} {
			if err := reachable(e.nodeNS, a); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("another address is dropped", func(t *testing.T) {
		c0, err := dp.Counters()
		if err != nil {
			t.Fatal(err)
		}
		var gw, podMAC net.HardwareAddr
		e.inNode(t, func() error {
			br, err := netlink.LinkByName("weft0")
			gw = br.Attrs().HardwareAddr
			return err
		})
		pns, err := netnstest.Open(filepath.Base(pod))
		if err != nil {
			t.Fatal(err)
		}
		defer pns.Close()
		if podMAC, err = pns.MAC("eth0"); err != nil {
			t.Fatal(err)
		}
		f := netnstest.UDP{DstMAC: gw, SrcMAC: podMAC, Src: netip.MustParseAddr("10.244.1.250"), Dst: netip.MustParseAddr("10.244.1.1"),
			SrcPort: 1, DstPort: 9, Payload: []byte("not mine")}
		if err := pns.SendFrame("eth0", f.Frame()); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			c, err := dp.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if c.Drops["pod_source"] == c0.Drops["pod_source"]+1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pod_source drops %d -> %d", c0.Drops["pod_source"], c.Drops["pod_source"])
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("check", func(t *testing.T) {
		if err := e.check("ctr-1", pod); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		// Without the record CHECK says so (and the pod is cut off).
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "weft_pods"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		var v [48]byte
		if err := m.Lookup(uint32(port), &v); err != nil {
			t.Fatal(err)
		}
		if err := m.Delete(uint32(port)); err != nil {
			t.Fatal(err)
		}
		if err := e.check("ctr-1", pod); err == nil {
			t.Fatal("CHECK passed without the pod's record")
		}
		if err := reachable(e.nodeNS, v4); err == nil {
			t.Fatal("pod without a record still reaches the node (the check must fail closed)")
		}
		if err := m.Put(uint32(port), &v); err != nil {
			t.Fatal(err)
		}
		if err := e.check("ctr-1", pod); err != nil {
			t.Fatalf("CHECK after restoring the record: %v", err)
		}
	})

	// A repeated ADD keeps the pair (same port) and records and links
	// the check again: here it brings back a record that went missing.
	t.Run("add again", func(t *testing.T) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "weft_pods"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		var v, again [48]byte
		if err := m.Lookup(uint32(port), &v); err != nil {
			t.Fatal(err)
		}
		if err := m.Delete(uint32(port)); err != nil {
			t.Fatal(err)
		}
		res2, err := e.add(e.list, "ctr-1", pod)
		if err != nil {
			t.Fatalf("second ADD: %v", err)
		}
		if podIP(t, res2, true) != v4 || podIP(t, res2, false) != v6 {
			t.Fatalf("second ADD gave %v, the first %v", res2.IPs, res.IPs)
		}
		e.inNode(t, func() error {
			l, err := netlink.LinkByName(host)
			if err == nil && l.Attrs().Index != port {
				err = fmt.Errorf("host veth is #%d after the second ADD, was #%d (recreated)", l.Attrs().Index, port)
			}
			return err
		})
		if err := m.Lookup(uint32(port), &again); err != nil || again != v {
			t.Fatalf("record of port #%d after the second ADD: %x (%v), want %x", port, again, err, v)
		}
		if err := e.check("ctr-1", pod); err != nil {
			t.Fatalf("CHECK after the second ADD: %v", err)
		}
		for _, a := range []netip.Addr{v4, v6} {
			if err := reachable(e.nodeNS, a); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("del", func(t *testing.T) {
		if err := e.del("ctr-1", pod); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if _, err := os.Stat(linkPin); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("pod check still pinned after DEL: %v", err)
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "weft_pods"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		var v [48]byte
		if err := m.Lookup(uint32(port), &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("pod still recorded after DEL: %v", err)
		}
	})
}

func (e *env) inNode(t *testing.T, fn func() error) {
	t.Helper()
	if err := inNS(e.nodeNS, fn); err != nil {
		t.Fatal(err)
	}
}
