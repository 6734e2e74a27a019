package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// RepoRoot finds the weft repository from the working directory upwards
// (the directory whose go.mod is weft's module).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/weftnet/weft\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find the weft repository: run from inside it")
		}
		dir = parent
	}
}

// EnsureBinaries runs testenv/kube/build/build.sh, which builds the
// Kubernetes binaries and runc into its cache (WEFT_KUBE_CACHE, default
// /var/cache/weft-kube) unless they are there already, and returns their
// directory. The first build takes long (the whole of k8s.io/kubernetes);
// later calls return at once.
func EnsureBinaries(ctx context.Context, repo string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(repo, "testenv", "kube", "build", "build.sh"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build the Kubernetes binaries: %w\n%s", err, tail(stderr.String(), 4000))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return lines[len(lines)-1], nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
