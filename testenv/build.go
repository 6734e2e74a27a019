package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Binaries are the commands a weft cluster in testenv runs.
var Binaries = []string{"weft-controller", "weft-agent", "weftctl", "weft-testenv", "weft-cni"}

// Build compiles the weft binaries into dir with `go build` (run from
// inside the weft module), the way deploy/Containerfile builds what ships
// (static, CGO_ENABLED=0, -trimpath, -ldflags=-s): the binaries a cluster
// test or benchmark runs are the ones users run.
func Build(ctx context.Context, dir string) error {
	args := []string{"build", "-trimpath", "-ldflags=-s", "-o", dir + "/"}
	for _, b := range Binaries {
		args = append(args, "github.com/weftnet/weft/cmd/"+b)
	}
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}

// goTool finds the go command: on PATH, or in the GOROOT this binary was
// built with (sudo often resets PATH to one without Go).
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	//lint:ignore SA1019 the build-time GOROOT is the best guess left
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}
