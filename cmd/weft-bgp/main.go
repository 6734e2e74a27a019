// Command weft-bgp is weft-agent's BGP speaker (GoBGP) in a process of its
// own: weft-agent starts it in bgp mode and drives it over its stdin and
// stdout (package nodeagent/bgp/proc); it logs JSON lines to stderr, which
// the agent forwards into its own log. It is not run by hand. It ignores
// SIGINT, SIGTERM and SIGHUP, which a terminal or a service manager sends
// to the agent's whole group: it ends when the agent says so, closes its
// stdin, or dies (the agent sets a parent death signal, and weft-bgp exits
// once its parent is no longer the process that started it). Keeping
// GoBGP out of weft-agent's binary saves the agent its share of memory on
// every node that does not run BGP (docs/bgp.md, "Two processes").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/weftnet/weft/nodeagent/bgp/gobgp"
	"github.com/weftnet/weft/nodeagent/bgp/proc"
)

type options struct {
	logLevel string
	validate bool
}

func parse(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("weft-bgp", flag.ContinueOnError)
	fs.StringVar(&o.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.BoolVar(&o.validate, "validate", false, "check the flags and exit (dry run)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if hclog.LevelFromString(o.logLevel) == hclog.NoLevel {
		return nil, fmt.Errorf("--log-level: unknown level %q", o.logLevel)
	}
	return o, nil
}

func main() {
	// The agent that started this process, read before anything else: a
	// parent that changes later is an agent gone (see proc.FollowParent).
	parent := os.Getppid()
	o, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "weft-bgp:", err)
		os.Exit(2)
	}
	if o.validate {
		fmt.Println("weft-bgp: flags ok")
		return
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	log := hclog.New(&hclog.LoggerOptions{Name: "weft-bgp", Level: hclog.LevelFromString(o.logLevel), Output: os.Stderr, JSONFormat: true})
	// A stopped agent stops its speaker too, as when they were one
	// process: peers see the sessions' hold timers expire. An agent gone
	// ends it, as the parent death signal would have: the kernel closes
	// the sessions.
	go func() {
		if err := proc.FollowParent(context.Background(), parent); err != nil {
			log.Error("exiting: the agent that started weft-bgp is gone", "error", err)
			os.Exit(1)
		}
	}()
	if err := proc.Serve(os.Stdin, os.Stdout, gobgp.New(log), log); err != nil {
		log.Error("exiting", "error", err)
		os.Exit(1)
	}
}
