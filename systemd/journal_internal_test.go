package systemd

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestSettledJournal: the lines a unit's process writes may reach journald
// after systemd's own; the read waits until the journal stops growing.
func TestSettledJournal(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reads []string // successive answers; the last repeats
		err   error
		want  string
	}{
		{"late exec line", []string{"", "a: status=203/EXEC\n", "a: status=203/EXEC\nFailed to execute /opt/x\n"}, nil, "Failed to execute /opt/x"},
		{"settled at once", []string{"only line\n"}, nil, "only line"},
		{"journal fails", []string{"partial\n"}, errors.New("journalctl: exit 1"), "journal unavailable: journalctl: exit 1"},
		{"never settles: the last read at the deadline", nil, nil, "read 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 0
			m := &Manager{opts: Options{JournalLines: 10, Journal: func(ctx context.Context, unit string, lines int) (string, error) {
				n++
				if tc.reads == nil { // grows on every read, until the deadline
					return strings.Repeat("x\n", n) + "read " + string(rune('0'+min(n, 9))) + "\n", nil
				}
				return tc.reads[min(n, len(tc.reads))-1], tc.err
			}}}
			start := time.Now()
			got := m.settledJournal(context.Background(), "a.service")
			if !strings.Contains(got, tc.want) {
				t.Errorf("journal = %q, want it to contain %q (after %d reads)", got, tc.want, n)
			}
			if el := time.Since(start); el > journalSettleMax+time.Second {
				t.Errorf("took %s, more than the %s bound", el, journalSettleMax)
			}
		})
	}
}
