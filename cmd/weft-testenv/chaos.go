package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/chaos"
)

// chaosCmd runs `weft-testenv chaos --seed N --duration D`: seeded faults
// against a secure 3-node cluster under all-pairs pings, the table of what
// each fault cost, exit 1 on any invariant violation.
func chaosCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	seed := fs.Int64("seed", time.Now().UnixNano()%1_000_000, "seed of the fault draw (the same seed and duration replay the same faults)")
	duration := fs.Duration("duration", 10*time.Minute, "fault time to plan")
	binDir := fs.String("bin-dir", envOr("BIN_DIR", ""), "use the weft binaries in this directory instead of building them")
	prefix := fs.String("prefix", envOr("PREFIX", ""), "run prefix (default: wt + 4 random hex digits)")
	logDir := fs.String("log-dir", envOr("LOG_DIR", ""), "copy the run's logs (agents, controllers, etcd members) here before teardown")
	planOnly := fs.Bool("plan", false, "print the planned faults and exit")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *duration <= 0 {
		return usageError{errors.New("chaos: --duration must be positive")}
	}
	o := chaos.Options{Seed: *seed, Duration: *duration, BinDir: *binDir, Prefix: *prefix, LogDir: *logDir,
		Out: os.Stdout, Logger: stderrLogger()}
	if *planOnly {
		for i, s := range chaos.PlanFor(o) {
			fmt.Printf("%d\t%s\n", i, s)
		}
		return nil
	}
	if o.BinDir == "" {
		dir, err := os.MkdirTemp("", "weft-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		fmt.Println("building weft binaries (go build) ...")
		if err := testenv.Build(ctx, dir); err != nil {
			return err
		}
		o.BinDir = dir
	}
	r, err := chaos.Run(ctx, o)
	if r != nil {
		r.WriteTable(os.Stdout)
	}
	if err != nil {
		return fmt.Errorf("chaos (seed %d): %w", *seed, err)
	}
	if !r.OK() {
		return fmt.Errorf("chaos (seed %d): %d invariant violations", *seed, len(r.Violations))
	}
	return nil
}
