// Package netns is the datapath's network namespace: one open namespace
// with a netlink handle and nftables connections bound to it, so the
// datapath's calls work from any goroutine. Only what the kernel resolves
// in the calling thread's namespace (tcx attachment by ifindex, /proc/sys)
// runs on a thread switched into it, through Do.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is an open network namespace. Close releases it.
type NS struct {
	ns  cnins.NetNS
	ino uint64 // inode of the namespace, to tell a thread already in it
	// own: the namespace is the process's own. Every unlocked goroutine
	// runs on a thread in it, so sockets are opened without setns(2),
	// which needs CAP_SYS_ADMIN: the agent runs with CAP_NET_ADMIN, BPF
	// and PERFMON only (deploy/kubernetes/agent-daemonset.yaml).
	own bool
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
	var st unix.Stat_t
	if err := unix.Fstat(int(h.Fd()), &st); err != nil {
		h.Close()
		return nil, fmt.Errorf("stat netns %s: %w", h.Path(), err)
	}
	var self unix.Stat_t
	own := unix.Stat("/proc/self/ns/net", &self) == nil && self.Ino == st.Ino && self.Dev == st.Dev
	var nl *netlink.Handle
	if own {
		nl, err = netlink.NewHandle()
	} else {
		nl, err = netlink.NewHandleAt(netns.NsHandle(h.Fd()))
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open netlink handle in %s: %w", h.Path(), err)
	}
	return &NS{ns: h, ino: st.Ino, own: own, NL: nl}, nil
}

// NFT returns an nftables connection to the namespace. Each call gives a
// fresh one: a Conn keeps the first encoding error of its batch for good.
func (n *NS) NFT() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if !n.own {
		opts = append(opts, nftables.WithNetNSFd(int(n.ns.Fd())))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables in %s: %w", n.ns.Path(), err)
	}
	return c, nil
}

// Handle is the namespace for netlink subscriptions (their Namespace
// option); valid until Close. nil for the process's own namespace, where
// a subscription needs no setns(2) (and so no CAP_SYS_ADMIN).
func (n *NS) Handle() *netns.NsHandle {
	if n.own {
		return nil
	}
	h := netns.NsHandle(n.ns.Fd())
	return &h
}

// Path is the path the namespace was opened by.
func (n *NS) Path() string { return n.ns.Path() }

// Do runs fn on an OS thread in the namespace: the calling one when it is
// there already (the agent's datapath lives in the agent's namespace),
// else a thread switched into it that goes back to its own namespace
// afterwards or, if it cannot, exits. Use it only for what the kernel
// resolves in the calling thread's namespace.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	var st unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/net", &st) == nil && st.Ino == n.ino {
		defer runtime.UnlockOSThread()
		return fn()
	}
	runtime.UnlockOSThread()
	return n.ns.Do(func(cnins.NetNS) error { return fn() })
}

// Sysctls reads values under /proc/sys/net in the namespace, keys as in
// sysctl(8) ("net.ipv4.ip_forward"); a key that cannot be read gets "" and
// its error (joined into the result's).
func (n *NS) Sysctls(keys ...string) ([]string, error) {
	vals := make([]string, len(keys))
	var errs []error
	err := n.Do(func() error {
		for i, k := range keys {
			b, err := os.ReadFile(sysctlPath(k))
			if err != nil {
				errs = append(errs, fmt.Errorf("read %s: %w", k, err))
				continue
			}
			vals[i] = strings.TrimSpace(string(b))
		}
		return nil
	})
	return vals, errors.Join(append(errs, err)...)
}

// Sysctl reads one value (see Sysctls).
func (n *NS) Sysctl(key string) (string, error) {
	v, err := n.Sysctls(key)
	return v[0], err
}

// SetSysctls sets every key to value in the namespace.
func (n *NS) SetSysctls(value string, keys ...string) error {
	return n.Do(func() error {
		for _, k := range keys {
			if err := os.WriteFile(sysctlPath(k), []byte(value+"\n"), 0o644); err != nil {
				return fmt.Errorf("set %s = %s: %w", k, value, err)
			}
		}
		return nil
	})
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
