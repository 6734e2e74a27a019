package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// readyTimeout bounds how long ADD waits for the pod's links to carry
// traffic (see readiness).
const readyTimeout = 10 * time.Second

// readyLink is one link ADD waits for, with the netlink handle of its
// netns.
type readyLink struct {
	h     *netlink.Handle
	index int
	what  string // for errors: "pod interface eth0 in /run/netns/x"
	// ips are the pod's addresses on it: IPv6 ones must be past DAD.
	ips []netip.Addr
}

// readiness waits for a pod's links (both veth ends and the bridge) to
// carry traffic. Setting a link up is not enough: the kernel turns the
// carrier on at once but gives the device its transmit queue (until then
// a queue that drops every packet) and the bridge port its forwarding
// state later, from its link-watch work, and only then reports the link
// operationally up. A pod that sends before that loses its first ARP
// request or neighbour solicitation and waits a second for the retry.
//
// Open it before the last link goes up, so no notification is missed,
// then wait, then Close.
type readiness struct {
	changed chan struct{} // a link notification came, in either netns
	dones   []chan struct{}
	handles []*netlink.Handle
}

// watchReady subscribes to the link notifications of the current netns
// and to the link and route notifications of podNS.
func watchReady(podNS ns.NetNS) (*readiness, error) {
	r := &readiness{changed: make(chan struct{}, 1)}
	host, pod := netns.None(), netns.NsHandle(podNS.Fd())
	// A subscription that ends early (a full socket buffer on a busy
	// node) only costs promptness: wait re-reads on a timer.
	if err := watch(r, func(ch chan netlink.LinkUpdate, done chan struct{}) error {
		return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{Namespace: &host})
	}); err != nil {
		return nil, fmt.Errorf("subscribe to link changes: %w", err)
	}
	if err := watch(r, func(ch chan netlink.LinkUpdate, done chan struct{}) error {
		return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{Namespace: &pod})
	}); err != nil {
		return nil, fmt.Errorf("subscribe to pod link changes: %w", err)
	}
	if err := watch(r, func(ch chan netlink.RouteUpdate, done chan struct{}) error {
		return netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &pod})
	}); err != nil {
		return nil, fmt.Errorf("subscribe to pod route changes: %w", err)
	}
	return r, nil
}

// watch starts one subscription that signals r.changed on every update.
// On error it closes r.
func watch[U any](r *readiness, subscribe func(chan U, chan struct{}) error) error {
	ch := make(chan U, 16)
	done := make(chan struct{})
	if err := subscribe(ch, done); err != nil {
		close(done)
		r.Close()
		return err
	}
	r.dones = append(r.dones, done)
	go func() {
		// Drained to the end, so the subscription's reader never
		// blocks on a send after Close.
		for range ch {
			select {
			case r.changed <- struct{}{}:
			default:
			}
		}
	}()
	return nil
}

// handle returns a netlink handle in podNS (or the current netns for
// nil), closed with r.
func (r *readiness) handle(podNS ns.NetNS) (*netlink.Handle, error) {
	target := netns.None()
	if podNS != nil {
		target = netns.NsHandle(podNS.Fd())
	}
	h, err := netlink.NewHandleAt(target, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	r.handles = append(r.handles, h)
	return h, nil
}

// Close ends the subscriptions.
func (r *readiness) Close() {
	for _, d := range r.dones {
		close(d)
	}
	r.dones = nil
	for _, h := range r.handles {
		h.Close()
	}
	r.handles = nil
}

// wait returns once every link is ready (ready), or an error naming the
// first link that is not and its state when timeout passes. It re-reads
// the links on every notification and, in case one was lost, on a timer
// that backs off from 5 ms to 100 ms.
func (r *readiness) wait(links []readyLink, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	backoff := 5 * time.Millisecond
	recheck := time.NewTimer(backoff)
	defer recheck.Stop()
	for {
		state, err := notReady(links)
		if err != nil {
			return err
		}
		if state == "" {
			return nil
		}
		select {
		case <-r.changed:
		case <-recheck.C:
			backoff = min(2*backoff, 100*time.Millisecond)
			recheck.Reset(backoff)
		case <-deadline.C:
			return fmt.Errorf("wait for the pod's network: %s after %v", state, timeout)
		}
	}
}

// notReady describes the first link that cannot carry the pod's traffic
// yet, or returns "" when all can. A link is ready when it is up
// (IFF_UP) and operationally up (IF_OPER_UP, which the kernel sets with
// the carrier on, in the link-watch work that also gives the device its
// queue). The pod's addresses must be local: the kernel delivers packets
// to them (their host route is in the local table). An IPv6 address gets
// that route from addrconf's DAD work, which runs again when the link
// comes up, also for a nodad address, and until then the pod drops the
// answers to its first packets (counted as Ip6InAddrErrors). A tentative
// IPv6 address (in duplicate address detection) is not ready either; one
// whose DAD failed is an error: waiting does not fix it.
func notReady(links []readyLink) (string, error) {
	for _, l := range links {
		link, err := l.h.LinkByIndex(l.index)
		if err != nil {
			return "", fmt.Errorf("read %s: %w", l.what, err)
		}
		a := link.Attrs()
		if a.Flags&net.FlagUp == 0 || a.OperState != netlink.OperUp {
			up := "down"
			if a.Flags&net.FlagUp != 0 {
				up = "up"
			}
			return fmt.Sprintf("%s is %s with operstate %s", l.what, up, a.OperState), nil
		}
		for _, ip := range l.ips {
			routes, err := l.h.RouteGet(ip.AsSlice())
			if err != nil {
				return "", fmt.Errorf("look up the route to %s in %s: %w", ip, l.what, err)
			}
			if len(routes) == 0 || routes[0].Type != unix.RTN_LOCAL {
				return fmt.Sprintf("address %s on %s is not local yet (no host route)", ip, l.what), nil
			}
		}
		if !hasV6(l.ips) {
			continue
		}
		addrs, err := l.h.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return "", fmt.Errorf("list addresses of %s: %w", l.what, err)
		}
		for _, ip := range l.ips {
			for _, have := range addrs {
				if !have.IP.Equal(ip.AsSlice()) {
					continue
				}
				if have.Flags&unix.IFA_F_DADFAILED != 0 {
					return "", fmt.Errorf("address %s on %s: %w", ip, l.what, errDADFailed)
				}
				if have.Flags&unix.IFA_F_TENTATIVE != 0 {
					return fmt.Sprintf("address %s on %s is tentative (duplicate address detection)", ip, l.what), nil
				}
			}
		}
	}
	return "", nil
}

var errDADFailed = errors.New("cni: duplicate address detection failed")

func hasV6(ips []netip.Addr) bool {
	for _, ip := range ips {
		if ip.Is6() {
			return true
		}
	}
	return false
}
