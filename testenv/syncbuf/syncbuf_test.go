package syncbuf

import (
	"strings"
	"sync"
	"testing"
)

// TestConcurrentWrites: writers on several goroutines, read while they
// write, lose no line and tear none.
func TestConcurrentWrites(t *testing.T) {
	const writers, lines, line = 8, 20000, "0123456789abcdef\n"
	var b Buffer
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range lines {
				b.Write([]byte(line))
			}
		}()
	}
	for range 100 {
		_ = b.String()
	}
	wg.Wait()
	got := b.String()
	if n := strings.Count(got, line); n != writers*lines || len(got) != writers*lines*len(line) {
		t.Fatalf("%d whole lines in %d bytes, want %d lines", n, len(got), writers*lines)
	}
}

// TestTake: Take returns what came since the last Take, once.
func TestTake(t *testing.T) {
	var b Buffer
	b.Write([]byte("one "))
	b.Write([]byte("two"))
	if got := b.Take(); got != "one two" {
		t.Fatalf("first Take %q, want %q", got, "one two")
	}
	if got := b.Take(); got != "" {
		t.Fatalf("second Take %q, want nothing", got)
	}
	b.Write([]byte("three"))
	if got, s := b.Take(), b.String(); got != "three" || s != "" {
		t.Fatalf("Take %q then String %q, want %q then nothing", got, s, "three")
	}
}
