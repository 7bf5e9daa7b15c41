package rollout

import (
	"context"
	"fmt"
	"time"
)

// retry is the one policy for a node's attempts, for rollouts and restores: an
// offline node is waited for up to Options.UnreachableTimeout, a lost attempt (the
// agent gone or restarted, the task canceled on the node) is sent again up to the
// Clusterfile's retries, with a back-off doubling up to Options.MaxBackoff.
type retry struct {
	node         string
	unreachable  time.Duration
	retries      int
	backoff, max time.Duration

	offlineSince time.Time
	lost         int
}

func (e *Engine) newRetry(node string, retries int) *retry {
	return &retry{node: node, unreachable: e.opts.UnreachableTimeout, retries: max(retries, 0), backoff: e.opts.RetryBackoff, max: e.opts.MaxBackoff}
}

// offline records an attempt the node could not take: why to retry, or, once it
// has been offline for the unreachable timeout, the error to report it with.
func (t *retry) offline(err error) (why string, gaveUp error) {
	if t.offlineSince.IsZero() {
		t.offlineSince = time.Now()
	}
	if waited := time.Since(t.offlineSince); waited >= t.unreachable {
		return "", fmt.Errorf("node %s offline for %s (unreachable timeout %s): %v", t.node, waited.Round(time.Second), t.unreachable, err)
	}
	return fmt.Sprintf("node %s is offline; retrying (reported unreachable after %s)", t.node, t.unreachable), nil
}

// lostAttempt records an attempt that was lost; false once the retries are spent.
func (t *retry) lostAttempt() bool {
	t.offlineSince = time.Time{}
	t.lost++
	return t.lost <= t.retries
}

// wait sleeps the back-off before the next attempt; false when ctx ended first.
func (t *retry) wait(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(t.backoff):
	}
	t.backoff = min(2*t.backoff, t.max)
	return true
}
