package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/chaos"
)

// TestChaos is `weft-testenv chaos` with a short seed: faults drawn from
// the seed against a secure 3-node cluster (3 etcd members, 2
// controllers) while every pod pings every other every 10 ms; after every
// step and at the end weftctl check is clean, no pair lost a ping beyond
// its fault's bound, no NodeRemoved without evidence, nothing left after
// teardown. WEFT_CHAOS_SEED and WEFT_CHAOS_DURATION choose another run.
func TestChaos(t *testing.T) {
	needCluster(t)
	o := chaos.Options{Seed: 7, Duration: 75 * time.Second, BinDir: binDir, Prefix: testenv.NewPrefix(), Out: testWriter{t}}
	if s := os.Getenv("WEFT_CHAOS_SEED"); s != "" {
		seed, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("WEFT_CHAOS_SEED: %v", err)
		}
		o.Seed = seed
	}
	if s := os.Getenv("WEFT_CHAOS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("WEFT_CHAOS_DURATION: %v", err)
		}
		o.Duration = d
	}
	prefixesMu.Lock()
	prefixes = append(prefixes, o.Prefix)
	prefixesMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), o.Duration+10*time.Minute)
	defer cancel()
	r, err := chaos.Run(ctx, o)
	if r != nil {
		var b strings.Builder
		r.WriteTable(&b)
		t.Log(b.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		t.Fatalf("%d invariant violations (seed %d)", len(r.Violations), o.Seed)
	}
	if len(r.Steps) == 0 || r.Sent == 0 {
		t.Fatalf("the run injected %d steps and sent %d pings", len(r.Steps), r.Sent)
	}
}

// testWriter writes each line to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
