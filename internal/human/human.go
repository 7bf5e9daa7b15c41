// Package human formats and reads quantities for people: byte counts with units.
package human

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Bytes formats a byte count with a binary unit: "512 B", "1.5 KiB", "12.0 MiB", "2.3 GiB".
func Bytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// ParseBytes reads a size such as 256KiB, 64MiB, 2GB or 512B (B, KB, MB, GB
// decimal; KiB, MiB, GiB binary; case-insensitive). A number without a unit is
// refused.
func ParseBytes(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"b", 1}} {
		num, ok := strings.CutSuffix(t, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) || v*u.mult > math.MaxInt64/2 {
			break
		}
		return int64(v * u.mult), nil
	}
	return 0, fmt.Errorf("size %q: want a number and a unit, e.g. 256KiB, 64MiB or 2GB", s)
}

// TermSafe shows control characters in text from a node as Go escapes
// (\x1b, \r, …), so that a node's output cannot drive the admin's terminal
// (move the cursor, overwrite lines, set the clipboard). Tabs stay; invalid
// UTF-8 becomes U+FFFD.
func TermSafe(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if isControl(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// TermSafeLines is TermSafe for text of several lines (a health check's
// output): each line made safe, the line breaks kept.
func TermSafeLines(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = TermSafe(strings.TrimSuffix(l, "\r"))
	}
	return strings.Join(lines, "\n")
}

func isControl(r rune) bool {
	return r < 0x20 && r != '\t' || r == 0x7f || r >= 0x80 && r <= 0x9f
}
