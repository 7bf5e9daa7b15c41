package infra

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// Backoff is the retry policy for provider calls: attempt k (0-based) that
// failed waits a random time in [d/2, d] with d = min(Max, Initial·2^k)
// ("equal jitter": never less than half the back-off, so retries do not
// hammer, and spread so that many machines failing at once do not retry in step).
type Backoff struct {
	Initial, Max time.Duration
	// Attempts is the number of calls before giving up (at least 1).
	Attempts int
}

// DefaultBackoff: 0.5 s, 1 s, 2 s, 4 s, 8 s (each jittered) over 6 attempts.
var DefaultBackoff = Backoff{Initial: 500 * time.Millisecond, Max: 10 * time.Second, Attempts: 6}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = DefaultBackoff.Initial
	}
	if b.Max < b.Initial {
		b.Max = max(DefaultBackoff.Max, b.Initial)
	}
	if b.Attempts <= 0 {
		b.Attempts = DefaultBackoff.Attempts
	}
	return b
}

// Delay is the wait after failed attempt k (0-based); r draws from [0, 1).
func (b Backoff) Delay(k int, r func() float64) time.Duration {
	d := b.Initial
	for i := 0; i < k && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	half := d / 2
	return half + time.Duration(r()*float64(d-half))
}

// caller runs provider calls: at most cap(slots) at once, each under a
// timeout, retried per the back-off unless Permanent.
type caller struct {
	slots   chan struct{}
	backoff Backoff
	timeout time.Duration
	rand    func() float64
	onRetry func(op string, attempt int, wait time.Duration, err error)
}

func newCaller(maxConcurrent int, b Backoff, timeout time.Duration) *caller {
	return &caller{slots: make(chan struct{}, maxConcurrent), backoff: b, timeout: timeout, rand: rand.Float64}
}

// do calls fn until it succeeds, fails permanently, or the attempts or ctx run out.
func (c *caller) do(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	var err error
	for k := 0; k < c.backoff.Attempts; k++ {
		if err = c.once(ctx, fn); err == nil {
			return nil
		}
		if IsPermanent(err) || ctx.Err() != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if k == c.backoff.Attempts-1 {
			break
		}
		wait := c.backoff.Delay(k, c.rand)
		if c.onRetry != nil {
			c.onRetry(op, k+1, wait, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (last error: %v)", op, ctx.Err(), err)
		case <-t.C:
		}
	}
	return fmt.Errorf("%s: gave up after %d attempts: %w", op, c.backoff.Attempts, err)
}

func (c *caller) once(ctx context.Context, fn func(ctx context.Context) error) error {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.slots }()
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return fn(cctx)
}
