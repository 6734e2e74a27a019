// Command weft-controller is weft's controller: the single writer of the
// event log in etcd (embedded unless --etcd-endpoints is set). See
// docs/controlplane.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/weftnet/weft/controlplane/daemon"
	"github.com/weftnet/weft/proto/keys"
)

func main() {
	o, err := daemon.Parse(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "weft-controller:", err)
		os.Exit(2)
	}
	if o.Validate {
		cfg, err := o.ClusterConfig()
		if err != nil {
			fmt.Fprintln(os.Stderr, "weft-controller: invalid config:", err)
			os.Exit(1)
		}
		if err := o.ValidateSource(); err != nil {
			fmt.Fprintln(os.Stderr, "weft-controller: invalid node source:", err)
			os.Exit(1)
		}
		fmt.Println(string(keys.Encode(cfg)))
		return
	}
	log := daemon.Logger(o.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, o, log); err != nil {
		log.Error("exiting", "error", err)
		os.Exit(1)
	}
}
