package waitfor

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestWithin(t *testing.T) {
	var n atomic.Int32
	if !Within(5*time.Second, func() bool { return n.Add(1) >= 3 }) {
		t.Fatal("a condition that holds at the third try: Within gave up")
	}
	if got := n.Load(); got != 3 {
		t.Errorf("asked %d times, want 3", got)
	}
	start := time.Now()
	if Within(100*time.Millisecond, func() bool { return false }) {
		t.Fatal("a condition that never holds: Within reported true")
	}
	if el := time.Since(start); el < 100*time.Millisecond || el > 2*time.Second {
		t.Errorf("gave up after %v, want about 100ms", el)
	}
}
