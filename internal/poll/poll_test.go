package poll

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	var n atomic.Int32
	if err := Until(context.Background(), time.Second, time.Millisecond, func() bool { return n.Add(1) >= 3 }); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 3 {
		t.Errorf("checked %d times, want 3", n.Load())
	}
	start := time.Now()
	if err := Until(context.Background(), 30*time.Millisecond, 5*time.Millisecond, func() bool { return false }); err == nil {
		t.Fatal("no error for a condition that never holds")
	}
	if el := time.Since(start); el < 30*time.Millisecond || el > time.Second {
		t.Errorf("gave up after %s, want about 30ms", el)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Until(ctx, time.Minute, time.Millisecond, func() bool { return false }); err == nil {
		t.Fatal("no error for a canceled context")
	}
}
