package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Binaries are the commands a weft cluster in testenv runs.
var Binaries = []string{"weft-controller", "weft-agent", "weft-bgp", "weftctl", "weft-testenv", "weft-cni"}

// Build compiles the weft binaries into dir with `go build` (run from
// inside the weft module), the way deploy/Containerfile builds what ships
// (static, CGO_ENABLED=0, -trimpath, -ldflags=-s): the binaries a cluster
// test or benchmark runs are the ones users run.
func Build(ctx context.Context, dir string) error {
	return BuildCommands(ctx, dir, Binaries, "-ldflags=-s")
}

// BuildCommands compiles the named commands of cmd/ into dir, static and
// with -trimpath like Build, plus any extra go build flags. Those two
// settings give this build a compile cache of its own (CGO_ENABLED=0 and
// -trimpath change every package's cache key), so on a machine whose cache
// is cold it compiles every dependency: minutes on two cores. Builds from
// concurrent test binaries take turns (a lock file in the temporary
// directory), so the second finds the first one's cache instead of
// compiling the same packages at the same time; .ci/run warms the cache
// before the tests with the same settings.
func BuildCommands(ctx context.Context, dir string, commands []string, flags ...string) error {
	args := append([]string{"build", "-trimpath"}, flags...)
	args = append(args, "-o", dir+"/")
	for _, b := range commands {
		args = append(args, "github.com/weftnet/weft/cmd/"+b)
	}
	unlock, err := lockBuild(ctx, filepath.Join(os.TempDir(), "weft-go-build.lock"))
	if err != nil {
		return err
	}
	defer unlock()
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

// lockBuild takes the lock file at path, which every BuildCommands holds
// while it runs. It waits for ctx, polling, since flock itself cannot be
// cancelled.
func lockBuild(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open build lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for another weft build: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
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
