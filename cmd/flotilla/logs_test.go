package main

import (
	"testing"

	"github.com/flotilla-dev/flotilla/internal/human"
)

func TestTermSafe(t *testing.T) {
	for in, want := range map[string]string{
		"plain text\twith tab":      "plain text\twith tab",
		"héllo ✓":                   "héllo ✓",
		"\x1b]52;c;cHduZWQ=\x07":    `\x1b]52;c;cHduZWQ=\a`,
		"ok\rFAKE a1 | done":        `ok\rFAKE a1 | done`,
		"\x1b[2K\x1b[1Aoverwritten": `\x1b[2K\x1b[1Aoverwritten`,
		"c1 \u009b31m":              `c1 \u009b31m`,
		"bad utf8 \xff":             "bad utf8 \uFFFD",
	} {
		if got := human.TermSafe(in); got != want {
			t.Errorf("human.TermSafe(%q) = %q, want %q", in, got, want)
		}
	}
}
