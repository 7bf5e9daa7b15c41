package ratelog

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestWarn(t *testing.T) {
	now := time.Unix(1000, 0)
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), 10*time.Second, WithClock(func() time.Time { return now }))
	for _, tc := range []struct {
		name           string
		advance        time.Duration
		sender, kind   string
		logged         bool
		wantSuppressed string
	}{
		{"first of a kind", 0, "n1", "addr", true, ""},
		{"same again at once", time.Second, "n1", "addr", false, ""},
		{"and again", time.Second, "n1", "addr", false, ""},
		{"another kind", 0, "n1", "token", true, ""},
		{"another sender", 0, "n2", "addr", true, ""},
		{"after the interval, with the count", 10 * time.Second, "n1", "addr", true, "alsoRefusedSinceLastWarning=2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now = now.Add(tc.advance)
			buf.Reset()
			if got := l.Warn("node", tc.sender, tc.kind, "refused"); got != tc.logged {
				t.Fatalf("logged %v, want %v", got, tc.logged)
			}
			if tc.logged && !strings.Contains(buf.String(), "node="+tc.sender) {
				t.Errorf("line %q does not name the sender", buf.String())
			}
			if !strings.Contains(buf.String(), tc.wantSuppressed) {
				t.Errorf("line %q lacks %q", buf.String(), tc.wantSuppressed)
			}
		})
	}
}

// TestWarnBoundsItsMap: a flood of distinct senders never holds more than
// the bound.
func TestWarnBoundsItsMap(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Hour, WithMaxKeys(100))
	for i := range 1000 {
		l.Warn("remote", fmt.Sprintf("10.0.%d.%d", i/256, i%256), "flood", "refused")
		if n := l.Len(); n > 100 {
			t.Fatalf("%d keys after %d senders, bound 100", n, i+1)
		}
	}
}
