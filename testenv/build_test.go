package testenv

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestBuildsTakeTurns: while one build holds the lock, another waits for
// it (and gives up with its context); once released, the next one gets it.
func TestBuildsTakeTurns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "build.lock")
	unlock, err := lockBuild(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if second, err := lockBuild(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		if second != nil {
			second()
		}
		t.Fatalf("second build while the first holds the lock: %v, want it to wait until its context ends", err)
	}
	got := make(chan error, 1)
	go func() {
		u, err := lockBuild(context.Background(), path)
		if err == nil {
			u()
		}
		got <- err
	}()
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("build after the release: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the lock was released, the waiting build never got it")
	}
}
