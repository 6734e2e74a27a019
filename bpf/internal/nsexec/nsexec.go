// Package nsexec runs a function on an OS thread inside another network
// namespace. The datapath and its test helpers both need it.
package nsexec

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a fresh OS thread switched into target; what names the
// namespace in errors ("enter <what>: ..."). The thread returns to its
// original namespace afterwards, or, if it cannot, stays locked so it exits
// with its goroutine instead of going back to the runtime in a foreign
// namespace.
func Do(target netns.NsHandle, what string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter %s: %w", what, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave %s: %w", what, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
