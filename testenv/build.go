package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Binaries are the commands a weft cluster in testenv runs.
var Binaries = []string{"weft-controller", "weft-agent", "weftctl", "weft-testenv", "weft-cni"}

// Build compiles the weft binaries into dir with `go build` (run from
// inside the weft module).
func Build(ctx context.Context, dir string) error {
	args := []string{"build", "-o", dir + "/"}
	for _, b := range Binaries {
		args = append(args, "github.com/weftnet/weft/cmd/"+b)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}
