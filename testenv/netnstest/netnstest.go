// Package netnstest creates named network namespaces for tests and for
// testenv, wires small topologies in them (veths, bridges, addresses,
// routes) through netlink handles bound to each namespace, and runs code
// inside them. It is the one home of those helpers: the datapath's tests,
// the agent's kernel tests, the BGP and CNI tests and testenv's clusters
// all build on it.
//
// Code that must run on a thread inside a namespace (opening sockets,
// starting processes, /proc/sys) goes through Do, which is
// containernetworking's ns.NetNS.Do: a fresh OS thread that goes back to
// its own namespace afterwards or, if it cannot, exits.
package netnstest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are bind-mounted (as by iproute2, so `ip
// netns` sees them).
const Dir = "/run/netns"

// PathOf is the bind mount of the namespace called name.
func PathOf(name string) string { return filepath.Join(Dir, name) }

// NS is an open named network namespace.
type NS struct {
	Name string
	ns   cnins.NetNS
	mu   sync.Mutex
	nl   *netlink.Handle // made on first use
}

var seq atomic.Uint32

// Prefix returns a short name prefix unique to this process and call, for
// namespaces, pin directories and devices a test creates. It starts with
// "wn", never testenv's "wt": `weft-testenv down` reaps names that look
// like a cluster run's.
func Prefix() string {
	return fmt.Sprintf("wn%d%d", os.Getpid()%100000, seq.Add(1))
}

// RequireRoot skips t unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)")
	}
}

// New creates the namespace name for t (loopback up) and deletes it when
// t ends.
func New(t testing.TB, name string) *NS {
	t.Helper()
	n, err := Create(name)
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() { n.Delete() })
	return n
}

// Create creates the named namespace name with its loopback up. Delete
// removes it.
func Create(name string) (*NS, error) {
	// A fresh namespace, made on a thread of its own (TempNetNS never
	// leaves a thread in it), bind-mounted under Dir to give it a name.
	tmp, err := cnins.TempNetNS()
	if err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	defer tmp.Close()
	path := PathOf(name)
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()
	src := fmt.Sprintf("/proc/self/fd/%d", tmp.Fd())
	if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("create netns %s: bind mount: %w", name, err)
	}
	n, err := Open(name)
	if err != nil {
		_ = Delete(name)
		return nil, err
	}
	if err := n.Up("lo"); err != nil {
		n.Delete()
		return nil, err
	}
	return n, nil
}

// Open opens the existing named namespace name.
func Open(name string) (*NS, error) {
	h, err := cnins.GetNS(PathOf(name))
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	return &NS{Name: name, ns: h}, nil
}

// Delete removes the name of the namespace name; a missing one is not an
// error. The namespace goes away with its last user (open handle, process
// or socket), and every link in it with it.
func Delete(name string) error {
	path := PathOf(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// List returns the named namespaces whose name starts with prefix.
func List(prefix string) ([]string, error) {
	ents, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Dir, err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Path is the namespace's bind mount.
func (n *NS) Path() string { return PathOf(n.Name) }

// Close releases the handles; the namespace stays.
func (n *NS) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	return n.ns.Close()
}

// Delete closes n and removes its name.
func (n *NS) Delete() error {
	return errors.Join(n.Close(), Delete(n.Name))
}

// NL is a netlink handle whose socket lives in the namespace (valid until
// Close).
func (n *NS) NL() (*netlink.Handle, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nl == nil {
		h, err := netlink.NewHandleAt(netns.NsHandle(n.ns.Fd()))
		if err != nil {
			return nil, fmt.Errorf("netlink handle in %s: %w", n.Name, err)
		}
		n.nl = h
	}
	return n.nl, nil
}

// Do runs fn on an OS thread inside the namespace. Sockets fn opens stay
// in the namespace and may be used from any goroutine afterwards;
// processes it starts begin there.
func (n *NS) Do(fn func() error) error {
	return n.ns.Do(func(cnins.NetNS) error { return fn() })
}

// MustDo is Do that fails t on error.
func (n *NS) MustDo(t testing.TB, fn func() error) {
	t.Helper()
	if err := n.Do(fn); err != nil {
		t.Fatalf("in %s: %v", n.Name, err)
	}
}

// Run runs fn on an OS thread inside the named namespace name.
func Run(name string, fn func() error) error { return RunAt(PathOf(name), fn) }

// RunAt runs fn on an OS thread inside the namespace at path.
func RunAt(path string, fn func() error) error {
	return cnins.WithNetNSPath(path, func(cnins.NetNS) error { return fn() })
}

// Sysctl sets key (as in sysctl(8), "net.ipv4.ip_forward") to value in
// the namespace.
func (n *NS) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	err := n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("set %s in %s: %w", key, n.Name, err)
	}
	return nil
}
