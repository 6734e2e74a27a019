// Command weft-agent runs on every node (as root): it registers the node,
// follows the event log in etcd and programs the node's eBPF datapath.
// See docs/agent.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/weftnet/weft/nodeagent/daemon"
)

func main() {
	o, err := daemon.Parse(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err == nil {
		err = o.Check()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "weft-agent:", err)
		os.Exit(2)
	}
	if o.Validate {
		fmt.Println("weft-agent: flags ok")
		return
	}
	log := daemon.Logger(o.LogLevel)
	// SIGTERM stops the agent; the datapath and the lease stay.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, o, log); err != nil {
		log.Error("exiting", "error", err)
		os.Exit(1)
	}
}
