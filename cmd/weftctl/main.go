// Command weftctl inspects and checks weft's store and asks the controller
// for config changes. See docs/controlplane.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/weftnet/weft/controlplane/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := ctl.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
