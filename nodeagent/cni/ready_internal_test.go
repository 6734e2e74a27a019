package cni

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/testenv/netnstest"
)

// TestReadyTimeoutNamesTheLink: a pod link that never gets its carrier
// (its veth peer stays down) makes the wait end at its bound with an
// error that names the link and its state; once the peer is up, the
// same wait returns.
func TestReadyTimeoutNamesTheLink(t *testing.T) {
	netnstest.RequireRoot(t)
	pod := netnstest.New(t, fmt.Sprintf("weftcni-%d-ready", os.Getpid()))
	podNS, err := ns.GetNS(pod.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	err = podNS.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := watchReady(podNS)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h, err := r.handle(podNS)
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	links := []readyLink{{h: h, index: l.Attrs().Index, what: "pod interface eth0"}}
	err = r.wait(links, 300*time.Millisecond)
	// lower-layer-down once the kernel's link-watch work has run.
	if err == nil || !strings.Contains(err.Error(), "pod interface eth0 is up with operstate ") || !strings.Contains(err.Error(), "after 300ms") {
		t.Fatalf("wait with the peer down: %v, want the link and its state named", err)
	}
	peer, err := h.LinkByName("peer0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	if err := r.wait(links, time.Minute); err != nil {
		t.Fatalf("wait with both ends up: %v", err)
	}
}
