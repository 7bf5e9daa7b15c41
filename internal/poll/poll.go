// Package poll waits for a condition that no event announces (a file appears,
// a unit becomes active, a process is gone): it checks at a fixed interval
// until the condition holds or the deadline passes. Use it instead of a bare
// sleep-and-hope in tests; prefer a channel or event where one exists.
package poll

import (
	"context"
	"fmt"
	"time"
)

// Until calls cond every interval until it returns true, ctx ends, or timeout
// passes, and says which. The first check is immediate.
func Until(ctx context.Context, timeout, interval time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			if cond() {
				return nil
			}
			return fmt.Errorf("condition not met within %s: %w", timeout, ctx.Err())
		case <-tick.C:
		}
	}
}
