// Package waitfor polls a condition until it holds or a deadline passes: what
// tests use instead of sleeping a guessed while.
package waitfor

import (
	"testing"
	"time"
)

// Every is how often Cond asks again.
const Every = 20 * time.Millisecond

// Cond asks ok every Every until it returns true, and fails t (naming what it
// waited for) when it has not after timeout. ok runs on the calling goroutine.
func Cond(t testing.TB, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	if !Within(timeout, ok) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Within asks ok every Every until it returns true (true) or timeout passed
// (false, after a last try).
func Within(timeout time.Duration, ok func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(Every)
	defer tick.Stop()
	for {
		if ok() {
			return true
		}
		select {
		case <-deadline.C:
			return ok()
		case <-tick.C:
		}
	}
}
