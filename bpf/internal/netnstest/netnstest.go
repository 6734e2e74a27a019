// Package netnstest creates named network namespaces for privileged tests
// and runs code inside them without leaking a thread into a foreign
// namespace.
package netnstest

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/bpf/internal/nsexec"
)

// NS is a named network namespace (/run/netns/Name) owned by a test.
type NS struct {
	Name   string
	handle netns.NsHandle
}

var seq atomic.Uint32

// Prefix returns a short name prefix unique to this process and call, for
// namespaces, pin directories and devices a test creates.
func Prefix() string {
	return fmt.Sprintf("wt%d%d", os.Getpid()%100000, seq.Add(1))
}

// RequireRoot skips t unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)")
	}
}

// New creates the named namespace name and removes it when t ends. The
// loopback device inside is brought up.
func New(t testing.TB, name string) *NS {
	t.Helper()
	ns, err := Create(name)
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() { ns.Delete() })
	if err := ns.Do(func() error { return loUp() }); err != nil {
		t.Fatalf("bring up lo in %s: %v", name, err)
	}
	return ns
}

// Create makes the named namespace name without binding it to a test (for
// benchmark helpers that manage their own lifetime). Delete removes it.
func Create(name string) (*NS, error) {
	errc := make(chan error, 1)
	var h netns.NsHandle
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		h, err = netns.NewNamed(name)
		if err != nil {
			// NewNamed may have switched already; only unlock when we are back.
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		if err := netns.Set(orig); err != nil {
			// Stay locked: the goroutine ends and the thread dies with it.
			errc <- fmt.Errorf("return to original netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return &NS{Name: name, handle: h}, nil
}

// Delete removes the namespace's name and closes the handle; the namespace
// goes away with its last user.
func (n *NS) Delete() {
	n.handle.Close()
	_ = netns.DeleteNamed(n.Name)
}

// Handle is the open namespace handle (valid until Delete).
func (n *NS) Handle() netns.NsHandle { return n.handle }

// Do runs fn on a fresh OS thread switched into the namespace. The thread
// returns to the original namespace afterwards, or dies if it cannot.
func (n *NS) Do(fn func() error) error {
	return nsexec.Do(n.handle, "netns "+n.Name, fn)
}

// MustDo is Do that fails t on error.
func (n *NS) MustDo(t testing.TB, fn func() error) {
	t.Helper()
	if err := n.Do(fn); err != nil {
		t.Fatalf("in %s: %v", n.Name, err)
	}
}
