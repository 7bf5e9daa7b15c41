package plane

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestJoinGuardBoundsItsMap: a flood from many addresses never grows the
// limiter map past its bound, and an address over its rate stays refused.
func TestJoinGuardBoundsItsMap(t *testing.T) {
	g := newJoinGuard(1, 2, 100, 1)
	now := time.Now()
	hot := sourceKey("192.0.2.1:4000")
	for i := range 3 {
		if got, want := g.allow(hot, now), i < 2; got != want {
			t.Fatalf("join %d from one address: allowed=%t, want %t", i, got, want)
		}
	}
	for i := range 10000 {
		g.allow(sourceKey(fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255)), now)
		if n := g.size(); n > 100 {
			t.Fatalf("limiter map holds %d sources, bound 100", n)
		}
	}
	// The least recently seen go first: the hot address was evicted, a fresh
	// bucket is what any new address gets anyway; it is refused again at once.
	g.allow(hot, now)
	g.allow(hot, now)
	if g.allow(hot, now) {
		t.Error("the hot address is not limited after the flood")
	}
	if !g.allow(hot, now.Add(2*time.Second)) {
		t.Error("the bucket does not refill")
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:4000":                 "192.0.2.1",
		"[2001:db8:1:2:aaaa::1]:4000":    "2001:db8:1:2::",
		"[2001:db8:1:2:bbbb::9%eth0]:80": "2001:db8:1:2::",
		"[::ffff:192.0.2.1]:1":           "192.0.2.1",
	} {
		if got := sourceKey(in); got != netip.MustParseAddr(want) {
			t.Errorf("sourceKey(%s) = %s, want %s", in, got, want)
		}
	}
}
