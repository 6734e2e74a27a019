package testenv

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that the framework leaks no goroutine: echo servers,
// pingers, streams and namespace threads all end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
