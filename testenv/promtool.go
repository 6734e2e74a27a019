package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// LintMetrics runs Prometheus's own linter, `promtool check metrics`, on
// a /metrics body as an agent or controller served it: the exposition
// must parse, and names, help texts, units and counter suffixes must be
// what Prometheus expects. promtool comes from Debian's prometheus
// package (.ci/run takes just promtool out of it).
func LintMetrics(ctx context.Context, body string) error {
	bin, err := exec.LookPath("promtool")
	if err != nil {
		return fmt.Errorf("promtool missing (Debian package prometheus; .ci/run installs just promtool): %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("promtool check metrics: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}
