// Package netns is the datapath's network namespace: one open namespace
// with a netlink handle and nftables connections bound to it, so the
// datapath's calls work from any goroutine. Only what the kernel resolves
// in the calling thread's namespace (tcx attachment by ifindex, /proc/sys)
// runs on a thread switched into it, through Do.
package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is an open network namespace. Close releases it.
type NS struct {
	ns cnins.NetNS
	// NL is a netlink handle whose socket lives in the namespace.
	NL *netlink.Handle
}

// Open opens the network namespace at path (a bind mount such as
// /run/netns/NAME or /proc/PID/ns/net); "" means the namespace of the
// calling thread.
func Open(path string) (*NS, error) {
	var h cnins.NetNS
	var err error
	if path == "" {
		h, err = cnins.GetCurrentNS()
	} else {
		h, err = cnins.GetNS(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open netns %q: %w", path, err)
	}
	nl, err := netlink.NewHandleAt(netns.NsHandle(h.Fd()))
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open netlink handle in %s: %w", h.Path(), err)
	}
	return &NS{ns: h, NL: nl}, nil
}

// NFT returns an nftables connection to the namespace. Each call gives a
// fresh one: a Conn keeps the first encoding error of its batch for good.
func (n *NS) NFT() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns.Fd())))
	if err != nil {
		return nil, fmt.Errorf("open nftables in %s: %w", n.ns.Path(), err)
	}
	return c, nil
}

// Handle is the namespace for netlink subscriptions; valid until Close.
func (n *NS) Handle() netns.NsHandle { return netns.NsHandle(n.ns.Fd()) }

// Path is the path the namespace was opened by.
func (n *NS) Path() string { return n.ns.Path() }

// Do runs fn on an OS thread switched into the namespace (the thread goes
// back to its own namespace afterwards or, if it cannot, exits). Use it
// only for what the kernel resolves in the calling thread's namespace.
func (n *NS) Do(fn func() error) error {
	return n.ns.Do(func(cnins.NetNS) error { return fn() })
}

// Sysctl reads a value under /proc/sys/net, key as in sysctl(8)
// ("net.ipv4.ip_forward"), in the namespace.
func (n *NS) Sysctl(key string) (string, error) {
	var v string
	err := n.Do(func() error {
		b, err := os.ReadFile(sysctlPath(key))
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read %s: %w", key, err)
	}
	return v, nil
}

// SetSysctl writes a value under /proc/sys/net in the namespace.
func (n *NS) SetSysctl(key, value string) error {
	err := n.Do(func() error { return os.WriteFile(sysctlPath(key), []byte(value+"\n"), 0o644) })
	if err != nil {
		return fmt.Errorf("set %s = %s: %w", key, value, err)
	}
	return nil
}

// /proc/sys/net shows the namespace of the thread that opens it.
func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// Close closes the handle and the namespace.
func (n *NS) Close() error {
	n.NL.Close()
	return n.ns.Close()
}
