package testenv

import (
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/testenv/netnstest"
)

// createNS creates the named network namespace name (visible to `ip
// netns`) with its loopback up: agents and pods listen on it.
func createNS(name string) error {
	n, err := netnstest.Create(name)
	if err != nil {
		return err
	}
	return n.Close()
}

// deleteNS removes the named namespace; a missing one is not an error. The
// namespace itself (and every link in it) goes away once no process is left
// in it.
func deleteNS(name string) error { return netnstest.Delete(name) }

// listNS returns the named namespaces whose name starts with prefix.
func listNS(prefix string) ([]string, error) { return netnstest.List(prefix) }

// nsPath is the bind mount of a named namespace.
func nsPath(name string) string { return netnstest.PathOf(name) }

// withNS runs f with the named namespace open.
func withNS(name string, f func(n *netnstest.NS) error) error {
	n, err := netnstest.Open(name)
	if err != nil {
		return err
	}
	defer n.Close()
	return f(n)
}

// withHandle runs f with a netlink handle bound to the named namespace.
// Netlink sockets keep their namespace, so no thread switching is needed.
func withHandle(name string, f func(h *netlink.Handle) error) error {
	return withNS(name, func(n *netnstest.NS) error {
		h, err := n.NL()
		if err != nil {
			return err
		}
		return f(h)
	})
}

// InNS runs f on a thread that is inside the named network namespace.
// Sockets f creates stay in that namespace and may be used from any
// goroutine afterwards. If the thread cannot be returned to the original
// namespace it is not given back to the runtime (it exits).
func InNS(name string, f func() error) error { return netnstest.Run(name, f) }

// sysctl writes a value under /proc/sys inside the named namespace.
func sysctl(ns, key, value string) error {
	return withNS(ns, func(n *netnstest.NS) error { return n.Sysctl(key, value) })
}

// EnsureBPFFS mounts bpffs at /sys/fs/bpf unless one is there already.
// Nodes of a test cluster share it (bpffs is not per network namespace),
// each with its own pin directory; mounting it once before the agents
// start keeps them from racing to mount it.
func EnsureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll("/sys/fs/bpf", 0o755); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", "/sys/fs/bpf", err)
	}
	return nil
}
